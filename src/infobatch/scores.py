"""The score table: each sample's latest loss (``nan`` until first scored)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["ScoreTable", "warn_unrecorded"]

_FLOAT32_MAX = torch.finfo(torch.float32).max
#: Deferred batches recorded together (see :meth:`ScoreTable.record`).
_MAX_PENDING = 64


class ScoreTable:
    """Latest score per sample, 4 bytes a sample, living on the device of the losses.

    Recording never synchronises host and device: non-finite scores are skipped and counted in
    a device tensor that is read once per epoch (:meth:`pop_counts`). A batch recorded with
    ``defer=True`` is only queued (no tensor operation); queued batches are recorded together,
    in one vectorised pass, every ``64`` batches and before anything reads the table, so a
    reader never sees the difference.

    Under several ranks (``track_updates=True``) the table has two parts: :attr:`values`, the
    table as of the last cross-rank merge (the same on every rank), and a local part holding
    the scores this rank recorded since then (``-inf`` where it recorded none; recorded scores
    are always finite). :meth:`view` is this rank's table, the merge (:mod:`infobatch.merge`)
    reduces the local part over the ranks and folds it into :attr:`values`, and a checkpoint
    carries the local part (:meth:`local_entries`), so a run resumed mid-epoch merges exactly
    what the uninterrupted run merges.

    Args:
        num_samples (int): dataset size.
        track_updates (bool): keep the local part (see above). Default ``False``.
        momentum (float): ``0`` (default) stores the latest score, InfoBatch's definition;
            ``m`` in ``(0, 1)`` stores an exponential moving average ``m * old + (1 - m) *
            new`` (a sample's first score is stored as it is).
        spare (int): extra float32 slots after the local part, sent along with it in the merge
            (the merge's digest). Default ``0``.
        track_iterations (bool): also keep :attr:`iterations`, the iteration (an int32 given
            to :meth:`record`) at which each sample's score was last recorded, ``-1`` never:
            4 more bytes per sample, for rules that compare scores recorded at nearly the same
            time (:class:`~infobatch.EpochContext`). Iterations only grow, so under several
            ranks each rank writes its own samples' iterations into the one table and the
            merge takes the element-wise maximum over the ranks. Default ``False``.
    """

    def __init__(
        self,
        num_samples: int,
        track_updates: bool = False,
        momentum: float = 0.0,
        spare: int = 0,
        track_iterations: bool = False,
    ) -> None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"score_momentum must be a float, got {type(momentum).__name__}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"Invalid score_momentum {momentum}, score_momentum should be in the interval "
                "[0, 1) (0 = the latest loss, InfoBatch's score)"
            )
        self.momentum = float(momentum)
        self.num_samples = num_samples
        self._values = torch.full((num_samples,), float("nan"), dtype=torch.float32)
        self._pending: list[tuple[Tensor, Tensor]] = []  # deferred (indices, scores)
        self._finite = torch.zeros((), dtype=torch.int64)  # finite scores received (on device)
        self._saturated = torch.zeros((), dtype=torch.int64)  # float64 scores beyond float32
        self._invalid = torch.zeros((), dtype=torch.int64)  # entries marked not valid
        self._received = 0  # scores received, finite or not
        self._buffer: Tensor | None = (
            torch.full((num_samples + spare,), float("-inf"), dtype=torch.float32)
            if track_updates
            else None
        )
        self._local_dirty = False  # scores were recorded (or loaded) into the local part
        self.iterations: Tensor | None = (
            torch.full((num_samples,), -1, dtype=torch.int32) if track_iterations else None
        )

    @property
    def device(self) -> torch.device:
        """Where the table lives."""
        return self._values.device

    @property
    def values(self) -> Tensor:
        """Every sample's score as of the last cross-rank merge (float32, ``nan``: unscored)."""
        self.flush()
        return self._values

    @values.setter
    def values(self, values: Tensor) -> None:
        self.flush()
        self._values = values

    @property
    def local_dirty(self) -> bool:
        """Scores were recorded (or loaded) into the local part since the last merge."""
        self.flush()
        return self._local_dirty

    @local_dirty.setter
    def local_dirty(self, dirty: bool) -> None:
        self.flush()
        self._local_dirty = dirty

    @property
    def buffer(self) -> Tensor:
        """The local part followed by the spare slots (what the merge reduces, in place)."""
        self.flush()
        if self._buffer is None:
            raise RuntimeError("this ScoreTable was built without track_updates=True")
        return self._buffer

    @property
    def local(self) -> Tensor:
        """This rank's scores since the last merge (``-inf``: none recorded)."""
        return self.buffer[: self.num_samples]

    def to(self, device: torch.device) -> None:
        """Move the table (in place) to ``device``."""
        self.flush()
        self._values = self._values.to(device)
        self._finite = self._finite.to(device)
        self._saturated = self._saturated.to(device)
        self._invalid = self._invalid.to(device)
        if self._buffer is not None:
            self._buffer = self._buffer.to(device)
        if self.iterations is not None:
            self.iterations = self.iterations.to(device)

    def view(self) -> Tensor:
        """Every sample's latest score as this rank knows it (a new tensor under several ranks)."""
        if self._buffer is None:
            return self.values
        local = self.local
        return torch.where(torch.eq(local, float("-inf")), self.values, local)

    def record(
        self,
        indices: Tensor,
        scores: Tensor,
        valid: Tensor | None = None,
        iteration: int | None = None,
        defer: bool = False,
    ) -> None:
        """Store ``scores`` (any float dtype) for ``indices``; non-finite scores are skipped.

        Entries where ``valid`` (bool, optional) is ``False`` are not recorded and not counted.
        With ``track_iterations``, ``iteration`` (the run's batch count, required then) is
        stored for every recorded score.

        Finite scores beyond float32's range (possible in float64) are stored as the largest
        float32 of their sign and counted (:meth:`pop_counts`), never dropped silently.

        ``defer=True`` queues the batch (recorded at the next :meth:`flush`): only for indices
        that no other queued batch holds (the caller's promise: each sample once per epoch),
        and ignored with ``valid``, iteration tracking or float64 scores.
        """
        if self.iterations is not None and iteration is None:
            raise ValueError("this ScoreTable tracks iterations: give record(iteration=)")
        scores = scores.detach()
        if defer and valid is None and self.iterations is None and scores.dtype != torch.float64:
            # a copy: the caller may change its tensor in place before the queue is recorded
            self._pending.append((indices, scores.clone()))
            if len(self._pending) >= _MAX_PENDING:
                self.flush()
            return
        self.flush()
        self._record_now(indices, scores, valid, iteration)

    def flush(self) -> None:
        """Record the queued batches, all in one vectorised pass."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if len(pending) == 1:
            indices, scores = pending[0]
        else:
            indices = torch.cat([i for i, _ in pending])
            scores = torch.cat([s for _, s in pending])  # mixed float dtypes are promoted
        self._record_now(indices, scores, None, None)

    def _record_now(
        self, indices: Tensor, scores: Tensor, valid: Tensor | None, iteration: int | None
    ) -> None:
        if scores.device != self.device:
            scores = scores.to(self.device)
        finite = torch.isfinite(scores)
        if valid is not None:
            valid = valid.to(self.device)
            self._invalid.add_(torch.count_nonzero(~valid))
            finite &= valid
        if scores.dtype == torch.float64:
            big = finite & (scores.abs() > _FLOAT32_MAX)
            self._saturated.add_(torch.count_nonzero(big))
            scores = scores.clamp(-_FLOAT32_MAX, _FLOAT32_MAX)
        scores = scores.to(torch.float32)
        previous = self._values.index_select(0, indices)
        local_previous: Tensor | None = None
        if self._buffer is not None:
            local_previous = self.local.index_select(0, indices)
            unrecorded = torch.eq(local_previous, float("-inf"))
            previous = torch.where(unrecorded, previous, local_previous)
        if self.momentum:
            average = previous * self.momentum + scores * (1.0 - self.momentum)
            scores = torch.where(torch.isnan(previous), scores, average)
        if local_previous is None:
            self._values.index_put_((indices,), torch.where(finite, scores, previous))
        else:
            self.local.index_put_((indices,), torch.where(finite, scores, local_previous))
            self._local_dirty = True
        self._finite.add_(torch.count_nonzero(finite))
        self._received += scores.numel()
        if self.iterations is not None and iteration is not None:
            stamps = self.iterations.index_select(0, indices)
            self.iterations.index_put_((indices,), stamps.masked_fill_(finite, iteration))

    def load_iterations(self, iterations: Tensor | None) -> None:
        """Replace :attr:`iterations` (a checkpoint's; ``None``: unknown, all ``-1``)."""
        if self.iterations is None:
            return
        if iterations is None:
            self.iterations.fill_(-1)
            return
        if not isinstance(iterations, Tensor) or iterations.shape != self.iterations.shape:
            shown = getattr(iterations, "shape", type(iterations).__name__)
            raise ValueError(
                f"InfoBatch state 'score_iterations' must be a tensor of one iteration per "
                f"sample, shape {tuple(self.iterations.shape)}, got {shown}"
            )
        if iterations.dtype.is_floating_point or iterations.dtype == torch.bool:
            raise TypeError(
                f"InfoBatch state 'score_iterations' must hold integers, got {iterations.dtype}"
            )
        if iterations.numel() and int(iterations.min()) < -1:
            raise ValueError("InfoBatch state 'score_iterations' holds values below -1")
        self.iterations = iterations.to(device=self.device, dtype=torch.int32).clone()

    @property
    def has_counts(self) -> bool:
        """Scores were recorded since the last :meth:`pop_counts`."""
        self.flush()
        return self._received > 0

    def pop_counts(self) -> tuple[int, int]:
        """Non-finite scores skipped and out-of-range scores saturated since the last call.

        One host-device synchronisation; call it once per epoch.
        """
        self.flush()
        counters = torch.stack([self._finite, self._saturated, self._invalid])
        finite, saturated, invalid = (int(v) for v in counters.tolist())
        nonfinite = self._received - finite - invalid
        for counter in (self._finite, self._saturated, self._invalid):
            counter.zero_()
        self._received = 0
        return nonfinite, saturated

    def fold(self, reduced: Tensor) -> None:
        """Take the merged local parts ``reduced`` (``-inf``: no rank recorded) into
        :attr:`values` and empty the local part. In place: no N-float allocation."""
        keep = torch.eq(reduced, float("-inf"))
        torch.where(keep, self.values, reduced, out=self.values)
        self.local.fill_(float("-inf"))
        self._local_dirty = False

    def local_entries(self) -> tuple[Tensor, Tensor]:
        """This rank's unmerged scores as ``(indices int64, scores float32)`` on the CPU."""
        local = self.local
        indices = torch.nonzero(torch.ne(local, float("-inf"))).flatten()
        return indices.cpu(), local.index_select(0, indices).cpu()

    def load_local(self, indices: Tensor, scores: Tensor) -> None:
        """Restore :meth:`local_entries` output (a checkpoint's)."""
        self.flush()
        if indices.shape != scores.shape or indices.ndim != 1:
            raise ValueError("InfoBatch state 'unmerged' must hold 1-d indices and scores")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_samples):
            raise ValueError("InfoBatch state 'unmerged' has indices outside the dataset")
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("InfoBatch state 'unmerged' holds non-finite scores")
        local = self.local
        local.fill_(float("-inf"))
        local.index_put_((indices.to(self.device),), scores.to(self.device, torch.float32))
        self._local_dirty = True

    def load(self, values: Tensor) -> None:
        """Replace all scores (a checkpoint's), keeping the table's device."""
        self.flush()
        if values.shape != self.values.shape:
            raise ValueError(
                f"checkpoint holds {values.numel()} scores but the dataset has "
                f"{self.values.numel()} samples; resume with the same dataset"
            )
        self.values = values.detach().to(device=self.device, dtype=torch.float32).clone()
        if self._buffer is not None:
            self.local.fill_(float("-inf"))
        self._local_dirty = False


def warn_unrecorded(epoch: int, nonfinite: int, saturated: int) -> None:
    """Warn about scores of ``epoch`` not recorded as given (0: nothing to say)."""
    if nonfinite:
        warnings.warn(
            f"{nonfinite} non-finite losses (nan/inf) in epoch {epoch} were not recorded as "
            "scores; those samples keep their previous scores. Further ones are counted in "
            "nonfinite_count without warning.",
            stacklevel=5,
        )
    if saturated:
        warnings.warn(
            f"{saturated} float64 scores in epoch {epoch} exceed float32's range (3.4e38) and "
            "were stored as +-3.4e38 in the float32 score table; rescale your losses or pass "
            "a smaller score= to keep their order.",
            stacklevel=5,
        )
