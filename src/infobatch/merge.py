"""The cross-rank score merge: what is pending, the collective in flight, the digest check.

Under ``torch.distributed`` each rank records the losses of its own share of the plan. Once per
epoch, started by the epoch's last update and finished when the next epoch is planned, one
asynchronous ``all_reduce(MAX)`` combines the ranks' unmerged scores (the local part of the
:class:`~infobatch.scores.ScoreTable`, ``-inf`` where a rank recorded nothing) into the table
every rank plans from.

The same collective carries a digest of the plan each rank trained (epoch, kept count,
threshold bits, the sum of the bits of the scores it was planned from, a position-sensitive
hash of its order, the sum of the bits of its per-sample weights if it has any), as values and
negated values, so that after the reduction every rank holds the maximum and the minimum of
each part: when they differ, the ranks planned differently (their shares overlapped, some
samples were trained twice and others never) and every rank raises the same
:class:`~infobatch.errors.InfoBatchError`, instead of training on silently.

What a checkpoint carries (:meth:`ScoreMerge.part` and :func:`gather_parts`): this rank's
unmerged scores, or every rank's, so that a run resumed at any point merges exactly what the
uninterrupted run merges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .distributed import Collectives, PendingReduce, float_bits
from .errors import InfoBatchError
from .hashing import hash_int64, sum_bits
from .plan import EpochPlan
from .scores import ScoreTable

__all__ = [
    "ScoreMerge",
    "plan_digest",
    "digest_of_state",
    "DIGEST_FIELDS",
    "gather_parts",
    "fold_parts",
    "own_part",
]

#: What the digest of a plan holds, in order.
DIGEST_FIELDS = ("epoch", "kept count", "threshold", "score table", "order", "sample weights")
_CHUNK_BITS = (24, 24, 16)  # an int64 in float32-exact chunks (integers below 2**24)
_SLOTS = len(DIGEST_FIELDS) * len(_CHUNK_BITS)


def plan_digest(plan: EpochPlan, scores: Tensor) -> Tensor:
    """The digest of ``plan`` made from ``scores`` (int64, one value per :data:`DIGEST_FIELDS`).

    Equal on every rank that planned the same epoch from the same table. No host sync.
    """
    header = torch.tensor(
        [plan.epoch, plan.num_kept, float_bits(plan.threshold), 0, 0, 0], dtype=torch.int64
    ).to(scores.device)
    header[3] = sum_bits(scores)
    header[4] = hash_int64(plan.order.to(scores.device))
    if plan.sample_weights is not None:
        header[5] = sum_bits(plan.sample_weights.to(scores.device))
    return header


def digest_of_state(values: Sequence[int], device: torch.device) -> Tensor:
    """A digest saved in a checkpoint, as :func:`plan_digest` gives it (int64 on ``device``).

    States written before the "sample weights" field have one value less: that field was 0
    (no per-sample weights), so it is filled with 0.
    """
    padded = list(values) + [0] * (len(DIGEST_FIELDS) - len(values))
    if len(padded) != len(DIGEST_FIELDS):
        raise ValueError(
            f"InfoBatch state 'digest' has {len(values)} values, expected {len(DIGEST_FIELDS)}"
        )
    return torch.tensor(padded, dtype=torch.int64, device=device)


def _as_slots(digest: Tensor) -> Tensor:
    """``digest`` split into float32 slots exactly representable (chunks below 2**24)."""
    parts, shift = [], 0
    for bits in _CHUNK_BITS:
        parts.append(torch.bitwise_and(torch.bitwise_right_shift(digest, shift), (1 << bits) - 1))
        shift += bits
    return torch.stack(parts, dim=1).flatten().to(torch.float32)


class ScoreMerge:
    """The once-per-epoch merge of the ranks' scores, with the check that they planned alike.

    A table that tracks the iteration of each score (``ScoreTable(track_iterations=True)``)
    has those merged too, by a second ``all_reduce(MAX)`` of the int32 table started and
    waited for with the first (iterations only grow, so the maximum is the latest record).

    Args:
        scores (ScoreTable): this rank's table, built with ``track_updates=True`` and
            ``spare=ScoreMerge.SPARE``.
        collectives (Collectives): the cross-rank operations (a private process group).
    """

    #: Float32 slots the merge sends after the scores (the digest, and its negation).
    SPARE = 2 * _SLOTS

    def __init__(self, scores: ScoreTable, collectives: Collectives) -> None:
        if scores.buffer.numel() != scores.num_samples + self.SPARE:
            raise ValueError("the ScoreTable needs spare=ScoreMerge.SPARE slots for the digest")
        self.scores = scores
        self.collectives = collectives
        self.digest: Tensor | None = None  # of the plan being trained (int64 on the device)
        self._pending: tuple[PendingReduce, int] | None = None
        self._pending_iterations: PendingReduce | None = None  # the table's, if it has them

    @property
    def pending(self) -> bool:
        """A merge was started and not finished yet."""
        return self._pending is not None

    def planned(self, digest: Tensor | None) -> None:
        """The digest of the plan the ranks train now (``None``: unknown, e.g. an old state)."""
        self.digest = digest

    def start(self, epoch: int) -> None:
        """Start merging the unmerged scores (returns at once), if any were recorded.

        Every rank that trained the epoch calls it at the same point: the epoch's last update,
        or the planning of the next epoch after a broken-off one.
        """
        if self._pending is not None or not self.scores.local_dirty:
            return
        buffer = self.scores.buffer
        digest = self.digest
        if digest is None:
            digest = torch.zeros(len(DIGEST_FIELDS), dtype=torch.int64, device=buffer.device)
        slots = _as_slots(digest.to(buffer.device))
        n = self.scores.num_samples
        buffer[n : n + _SLOTS] = slots
        buffer[n + _SLOTS :] = -slots
        self._pending = (self.collectives.start_all_reduce_max(buffer), epoch)
        if self.scores.iterations is not None:  # a second collective, only for rules asking
            self._pending_iterations = self.collectives.start_all_reduce_max(self.scores.iterations)

    def finish(self, rank: int = 0) -> None:
        """Wait for the started merge, check the digests, fold the result into the table.

        Raises:
            InfoBatchError: on every rank, if the ranks' plans differ; on ``rank`` (for the
                message), if another rank did not join the merge in time.
        """
        if self._pending is None:
            return
        pending, epoch = self._pending
        self._pending = None
        pending_iterations, self._pending_iterations = self._pending_iterations, None
        try:
            pending.wait()
            if pending_iterations is not None:
                pending_iterations.wait()
        except RuntimeError as error:
            timeout = getattr(self.collectives, "timeout", None)
            raise InfoBatchError(
                f"InfoBatch's score merge for epoch {epoch} did not complete on rank {rank}"
                f"{f' within {timeout}' if timeout else ''}: another rank has not finished "
                f"epoch {epoch} (it left the loop early, stopped, or ran fewer batches). Every "
                "rank must train each epoch it starts to its end (one update() per batch) or "
                "break off on all ranks together; to cut an epoch short on purpose, call "
                "end_epoch() (or set_epoch(next_epoch)) on every rank. To wait longer, pass "
                f"collectives=TorchCollectives(timeout=...). ({type(error).__name__}: {error})"
            ) from error
        buffer, n = self.scores.buffer, self.scores.num_samples
        high = buffer[n : n + _SLOTS].view(len(DIGEST_FIELDS), len(_CHUNK_BITS))
        low = -buffer[n + _SLOTS :].view(len(DIGEST_FIELDS), len(_CHUNK_BITS))
        differs = torch.ne(high, low).any(dim=1).tolist()
        if any(differs):
            fields = ", ".join(f for f, d in zip(DIGEST_FIELDS, differs) if d)
            self.scores.local.fill_(float("-inf"))
            self.scores.local_dirty = False
            raise InfoBatchError(
                f"InfoBatch's ranks planned epoch {epoch} differently (they differ in: {fields}), "
                "so their shares overlapped: some samples were trained twice and others "
                "never. Usual causes: the ranks resumed from different checkpoints, or from a "
                "mid-epoch checkpoint without every rank's unmerged scores (save "
                "dataset.state_dict(all_ranks=True) on every rank, or each rank's own "
                "state_dict()), or their datasets or settings differ. Restart every rank from "
                "the same checkpoint."
            )
        self.scores.fold(buffer[:n])

    def part(self, position: int) -> dict[str, Any] | None:
        """What a checkpoint needs of this rank: its unmerged scores and position, or ``None``
        when it recorded nothing since the last merge."""
        if not self.scores.local_dirty:
            return None
        indices, values = self.scores.local_entries()
        return {"indices": indices, "scores": values, "position": position}

    def load_part(self, part: dict[str, Any] | None) -> None:
        """Restore :meth:`part` output."""
        if part is None:
            self.scores.local.fill_(float("-inf"))
            self.scores.local_dirty = False
            return
        if not isinstance(part, dict) or not {"indices", "scores"} <= part.keys():
            raise ValueError("InfoBatch state 'unmerged' must be a dict of indices and scores")
        self.scores.load_local(part["indices"], part["scores"])


def gather_parts(
    collectives: Collectives, part: dict[str, Any] | None, num_replicas: int
) -> list[dict[str, Any] | None]:
    """Every rank's :meth:`ScoreMerge.part`, by three ``all_gather`` calls (call on every rank)."""
    count = -1 if part is None else int(part["indices"].numel())
    position = 0 if part is None else int(part["position"])
    sizes = collectives.all_gather(torch.tensor([count, position], dtype=torch.int64))
    longest = max(1, *(int(s[0]) for s in sizes))
    indices = torch.full((longest,), -1, dtype=torch.int64)
    scores = torch.zeros(longest, dtype=torch.float32)
    if part is not None:
        indices[:count] = part["indices"]
        scores[:count] = part["scores"]
    all_indices = collectives.all_gather(indices)
    all_scores = collectives.all_gather(scores.view(torch.int32))
    parts: list[dict[str, Any] | None] = []
    for rank in range(num_replicas):
        n, at = (int(v) for v in sizes[rank].tolist())
        if n < 0:
            parts.append(None)
            continue
        parts.append(
            {
                "indices": all_indices[rank][:n].clone(),
                "scores": all_scores[rank][:n].view(torch.float32).clone(),
                "position": at,
            }
        )
    return parts


def fold_parts(values: Tensor, parts: Sequence[dict[str, Any] | None]) -> Tensor:
    """The table the merge of ``parts`` would give from ``values`` (a new CPU tensor)."""
    merged = torch.full_like(values, float("-inf"))
    for part in parts:
        if part is not None and part["indices"].numel():
            merged.index_reduce_(
                0, part["indices"], part["scores"].to(values.dtype), "amax", include_self=True
            )
    return torch.where(torch.eq(merged, float("-inf")), values, merged)


def own_part(
    state: dict[str, Any], rank: int, num_replicas: int, merging: bool
) -> tuple[Tensor, dict[str, Any] | None]:
    """The table and this rank's unmerged part to load from a checkpoint ``state``.

    An ``all_ranks`` state gives each rank its part (or, loaded with another number of ranks
    at an epoch boundary, is folded as the merge would). A rank's own state with unmerged
    scores loads only on that rank: elsewhere it would resume inexactly, so it raises.
    Without a cross-rank merge (``merging`` false) a part is folded into the table.
    """
    scores = state["scores"]
    same_world = state.get("num_replicas") == num_replicas
    part, parts = state.get("unmerged"), state.get("unmerged_by_rank")
    if parts is not None:
        if not isinstance(parts, list) or len(parts) != state.get("num_replicas"):
            raise ValueError("InfoBatch state 'unmerged_by_rank' needs one entry per rank")
        if not same_world:  # an epoch boundary (checked by the caller): fold every part
            return fold_parts(scores, parts), None
        part = parts[rank]
    elif part is not None and (state.get("rank") != rank or not same_world):
        raise InfoBatchError(
            f"this InfoBatch checkpoint is rank {state.get('rank')}'s state of "
            f"{state.get('num_replicas')} ranks, taken while its scores were not yet merged "
            f"across the ranks (mid-epoch), so it cannot resume rank {rank} exactly: that "
            "rank's unmerged scores are not in it. Save dataset.state_dict(all_ranks=True) on "
            "every rank (one state for all ranks; save it from rank 0), or save and load each "
            "rank's own state_dict(); checkpoints taken right after an epoch's end load "
            "anywhere."
        )
    if part is not None and not merging:
        return fold_parts(scores, [part]), None
    return scores, part
