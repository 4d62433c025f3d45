"""The InfoBatch sampler: plans each epoch from the scores, yields indices, takes losses back."""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Union

import torch
from torch import Tensor
from torch.utils.data import Sampler

from .distributed import Collectives, check_same_on_all_ranks, resolve_replicas
from .errors import InfoBatchError
from .plan import EpochPlan, build_plan
from .rng import epoch_generator
from .rule import PruningRule, SoftPruning
from .schedule import AnnealingSchedule
from .scores import ScoreTable
from .stats import EpochStats, saved_fraction

__all__ = ["InfoBatchSampler", "STATE_VERSION"]

logger = logging.getLogger("infobatch")

#: Version key of :meth:`InfoBatchSampler.state_dict`.
STATE_VERSION = 1

_YIELD_CHUNK = 1 << 16
IndexLike = Union[Tensor, Sequence[int]]


def _float_bits(value: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", float(value)))[0])


def _check_per_sample(name: str, value: Any) -> int:
    """Validate a per-sample loss or score tensor and return its length."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of per-sample losses, got {type(value).__name__}"
        )
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.ndim == 0:
        raise ValueError(
            f"got a scalar {name}: pass per-sample losses, e.g. "
            "criterion = nn.CrossEntropyLoss(reduction='none'), so each sample can be scored"
        )
    if value.ndim != 1:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}; pass one value per sample, shape "
            "[batch_size] (reduce other dimensions first, e.g. token_loss.mean(dim=1))"
        )
    if value.numel() == 0:
        raise ValueError(f"{name} is empty; pass one value per sample of the batch")
    return int(value.shape[0])


class InfoBatchSampler(Sampler[int]):
    """Sampler that prunes well-learned samples each epoch and rescales the kept ones.

    Each epoch it plans from the latest per-sample losses: with the default rule, samples below
    the mean score are dropped with probability ``prune_ratio`` and the kept ones are weighted
    ``1 / (1 - prune_ratio)``; epochs at or past ``delta * num_epochs`` use all samples with
    weight 1. :meth:`update` takes the per-sample losses of each batch, records them as scores
    and returns the weighted mean to back-propagate.

    Args:
        num_samples (int): dataset size, at least 1.
        num_epochs (int): total training epochs, at least 1 (sets the annealing boundary).
        prune_ratio (float, optional): probability of dropping a well-learned sample, in
            ``[0, 1)``. Default: ``0.5``.
        delta (float, optional): fraction of epochs that are pruned, in ``[0, 1]``.
            Default: ``0.875``.
        seed (int, optional): seed of the sampler's own generators; the global RNG is never
            read or changed. Must be the same on every rank. Default: ``0``.
        drop_last (bool, optional): set to the ``drop_last`` of your ``DataLoader``, so the
            sampler knows when an epoch's last update has arrived. Default: ``False``.
        num_replicas (int, optional): number of distributed processes. By default taken from
            the initialised process group, else 1.
        rank (int, optional): this process's rank. By default taken from the process group.
        rule (PruningRule, optional): replaces the InfoBatch rule (``SoftPruning(prune_ratio)``).
        collectives (Collectives, optional): cross-rank operations; by default
            ``torch.distributed`` when a process group with ``num_replicas`` ranks is
            initialised. Pass a fake to test several ranks in one process.

    .. warning::
        Call :meth:`update` exactly once per batch, in the order the loader yields batches
        (prefetching, workers and gradient accumulation are fine). Losses are matched to
        samples by position in the epoch plan.

    Under ``torch.distributed`` every rank computes the same plan and takes every
    ``num_replicas``-th index of it (padded so all ranks get the same number of batches).
    Scores are merged across ranks once per epoch, at the epoch's last :meth:`update`.
    """

    def __init__(
        self,
        num_samples: int,
        num_epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        *,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        rule: PruningRule | None = None,
        collectives: Collectives | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int):
            raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
        if num_samples < 1:
            raise ValueError(
                f"Invalid num_samples {num_samples}: the dataset is empty, give it samples"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not isinstance(drop_last, bool):
            raise TypeError(f"drop_last must be a bool, got {type(drop_last).__name__}")
        self.num_samples = num_samples
        self.schedule = AnnealingSchedule(num_epochs, delta)
        default_rule = SoftPruning(prune_ratio)
        self.prune_ratio = float(prune_ratio)
        self.rule: PruningRule = rule if rule is not None else default_rule
        self._rule_prunes = rule is not None or prune_ratio > 0
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas, self.rank, found = resolve_replicas(num_replicas, rank)
        self._collectives = collectives if collectives is not None else found
        self._scores = ScoreTable(num_samples, track_updates=self._collectives is not None)
        if self._collectives is not None:
            fingerprint = self._fingerprint()
            check_same_on_all_ranks(
                self._collectives,
                list(fingerprint),
                fingerprint.values(),
                float_names=("prune_ratio", "delta"),
            )

        self._epoch = 0
        self._plan: EpochPlan | None = None
        self._share = torch.empty(0, dtype=torch.int64)
        self._share_cpu = self._share
        self._started = False  # the plan's iteration has begun
        self._finished = False  # every update of the plan is in and scores are merged
        self._start = 0  # share position where the current iteration starts
        self._yielded = 0  # share positions handed to the loader
        self._consumed = 0  # share positions whose losses reached update()
        self._batch_len: int | None = None
        self._iteration = 0
        self._history: dict[int, EpochStats] = {}
        self._nonfinite_total = 0

    # ------------------------------------------------------------------ public state
    @property
    def epoch(self) -> int:
        """The epoch being planned or trained (0-based)."""
        return self._epoch

    @property
    def num_epochs(self) -> int:
        """Total training epochs."""
        return self.schedule.num_epochs

    @property
    def delta(self) -> float:
        """Fraction of epochs that are pruned."""
        return self.schedule.delta

    @property
    def scores(self) -> Tensor:
        """Latest score of every sample (float32, ``nan`` = never scored)."""
        return self._scores.values

    @property
    def plan(self) -> EpochPlan | None:
        """The current epoch's plan, or ``None`` before the first epoch is planned."""
        return self._plan

    @property
    def history(self) -> list[EpochStats]:
        """Statistics of every epoch whose training has started, in epoch order."""
        return [self._history[e] for e in sorted(self._history)]

    @property
    def saved_fraction(self) -> float:
        """Fraction of sample passes saved so far versus full-data training."""
        return saved_fraction(self.history)

    @property
    def num_pruned(self) -> int:
        """Samples skipped, summed over all planned epochs."""
        return sum(s.num_pruned for s in self._history.values())

    @property
    def nonfinite_count(self) -> int:
        """Non-finite scores received and not recorded (counted at each epoch's end)."""
        return self._nonfinite_total

    # ------------------------------------------------------------------ epoch lifecycle
    def __len__(self) -> int:
        """Number of indices the next (or current) iteration yields on this rank.

        Queried before an epoch's loop, it plans that epoch, so ``len(loader)`` is exact.
        """
        if self._plan is None:
            self._make_plan(self._epoch)
        elif self._finished:
            self._make_plan(self._epoch + 1)
        return self._share.numel() - self._start

    def __iter__(self) -> Iterator[int]:
        """Start the next epoch (or the one just planned) and yield this rank's indices."""
        if self._plan is None:
            self._make_plan(self._epoch)
        elif self._started:
            self._end_epoch()
            self._make_plan(self._epoch + 1)
        self._record_stats()  # an epoch counts once training on it starts, not when planned
        self._started = True
        self._iteration += 1
        self._start = self._yielded = self._consumed
        return self._generate(self._iteration, self._start)

    def set_epoch(self, epoch: int) -> None:
        """Plan ``epoch`` now (as with ``DistributedSampler``); calling it is optional.

        Calling it again for the epoch already planned or under way does nothing.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise TypeError(f"epoch must be an int, got {type(epoch).__name__}")
        if epoch < 0:
            raise ValueError(f"Invalid epoch {epoch}, epoch should be >= 0")
        if self._plan is not None and epoch == self._epoch:
            return
        if self._plan is not None and self._started:
            self._end_epoch()
        self._make_plan(epoch)

    def _generate(self, iteration: int, start: int) -> Iterator[int]:
        position = start
        for chunk in torch.split(self._share_cpu[start:], _YIELD_CHUNK):
            for index in chunk.tolist():
                if self._iteration != iteration:
                    return  # a newer iteration has taken over
                position += 1
                self._yielded = position
                yield index

    def _make_plan(self, epoch: int) -> None:
        prunes = self._rule_prunes and self.schedule.prunes(epoch)
        generator = epoch_generator(self.seed, epoch, self._scores.device)
        plan = build_plan(epoch, self._scores.values, self.rule if prunes else None, generator)
        self._set_plan(plan, position=0)

    def _set_plan(self, plan: EpochPlan, position: int) -> None:
        self._epoch = plan.epoch
        self._plan = plan
        self._share = plan.share(self.rank, self.num_replicas)
        self._share_cpu = self._share.cpu()
        self._started = self._finished = False
        self._start = self._yielded = self._consumed = position
        self._batch_len = None

    def _record_stats(self) -> None:
        plan = self._plan
        if plan is None:
            return
        earlier = [s for e, s in sorted(self._history.items()) if e < plan.epoch]
        total = sum(s.num_samples for s in earlier) + plan.num_samples
        pruned = sum(s.num_pruned for s in earlier) + plan.num_pruned
        stats = EpochStats(
            epoch=plan.epoch,
            num_samples=plan.num_samples,
            num_kept=plan.num_kept,
            num_pruned=plan.num_pruned,
            num_scored=plan.num_scored,
            num_well_learned=plan.num_well_learned,
            threshold=plan.threshold,
            weight=plan.weight,
            pruning=plan.pruning,
            saved_fraction=pruned / total,
        )
        self._history = {s.epoch: s for s in earlier}
        self._history[plan.epoch] = stats
        logger.info(
            "epoch %d: kept %d of %d samples (pruned %d, well-learned %d, threshold %.6g, "
            "weight %.4g%s); saved so far %.2f%%",
            stats.epoch,
            stats.num_kept,
            stats.num_samples,
            stats.num_pruned,
            stats.num_well_learned,
            stats.threshold,
            stats.weight,
            "" if stats.pruning else ", full data",
            100.0 * stats.saved_fraction,
        )

    def _end_epoch(self) -> None:
        """Close the epoch if its last update did not: report missing updates, merge scores."""
        if self._finished:
            return
        missing = self._share.numel() - self._consumed
        if self.drop_last and self._batch_len is None:
            expected = missing  # no full batch this epoch: the loader may have dropped them all
        elif self.drop_last and self._batch_len:
            expected = (self._share.numel() - self._start) % self._batch_len
        else:
            expected = 0
        if missing > expected:
            warnings.warn(
                f"{missing} of the {self._share.numel()} samples planned for epoch "
                f"{self._epoch} on this rank never reached update(); they keep their previous "
                "scores. Call update() once per batch; if your DataLoader uses drop_last=True, "
                "pass drop_last=True to InfoBatch as well.",
                stacklevel=3,
            )
        self._finish()

    def _finish(self) -> None:
        if self._collectives is not None:
            self._scores.merge(self._collectives.all_reduce_max)
        nonfinite = self._scores.pop_nonfinite_count()
        if nonfinite:
            if self._nonfinite_total == 0:
                warnings.warn(
                    f"{nonfinite} non-finite losses (nan/inf) in epoch {self._epoch} were not "
                    "recorded as scores; those samples keep their previous scores. Further "
                    "ones are counted in nonfinite_count without warning.",
                    stacklevel=4,
                )
            self._nonfinite_total += nonfinite
        self._finished = True

    # ------------------------------------------------------------------ losses in
    def update(
        self, loss: Tensor, *, indices: IndexLike | None = None, score: Tensor | None = None
    ) -> Tensor:
        """Record a batch's per-sample losses as scores; return the weighted mean to minimise.

        The result is ``sum(w_i * loss_i) / batch_size`` in ``loss.dtype``, with ``w_i`` the
        sample's weight this epoch. ``loss`` is not modified. No host-device synchronisation.

        Args:
            loss (Tensor): per-sample losses, shape ``[batch_size]``, any float dtype/device.
            indices (Tensor or sequence of int, optional): dataset indices of the batch's
                samples, when they travel with the batch; by default they are the next
                ``batch_size`` positions of this epoch's plan.
            score (Tensor, optional): per-sample scores to record instead of ``loss`` (e.g. one
                term of a multi-term loss), same shape as ``loss``.
        """
        batch = _check_per_sample("loss", loss)
        if score is not None:
            _check_per_sample("score", score)
            if score.shape != loss.shape:
                raise ValueError(
                    f"score has shape {tuple(score.shape)} but loss has {tuple(loss.shape)}; "
                    "give one score per sample"
                )
        plan = self._plan
        if plan is None or not self._started:
            raise InfoBatchError(
                "update() was called before the loader yielded any batch of this epoch; "
                "iterate a DataLoader built with sampler=<InfoBatch>.sampler, then pass each "
                "batch's per-sample losses to update()"
            )
        share_len = self._share.numel()
        if self._finished:
            raise InfoBatchError(
                f"update() was called after all {share_len} planned samples of epoch "
                f"{self._epoch} were updated; call update() once per batch. If your "
                "DataLoader keeps the last partial batch, build InfoBatch with drop_last=False"
            )
        if loss.device != self._scores.device:
            plan = self._move_to(loss.device, plan)
        start, end = self._consumed, self._consumed + batch
        if indices is None:
            if end > self._yielded:
                raise InfoBatchError(
                    f"update() received {batch} losses but only {self._yielded - start} "
                    f"samples of epoch {self._epoch} were loaded and not yet updated; pass one "
                    "loss per sample of the batch (reduction='none'), once per batch"
                )
            if self._batch_len not in (None, batch) and end != share_len:
                raise ValueError(
                    f"loss has {batch} elements but earlier batches of epoch {self._epoch} had "
                    f"{self._batch_len}; only the epoch's last batch may be shorter. Pass one "
                    "loss per sample, or pass indices= with each batch"
                )
            batch_indices = self._share[start:end]
        else:
            batch_indices = self._check_indices(indices, batch)
            if end > share_len:
                raise InfoBatchError(
                    f"update() received losses for {end} samples in epoch {self._epoch} but "
                    f"only {share_len} are planned on this rank; call update() once per batch"
                )
        if self._batch_len is None:  # the epoch's first batch sets the batch length
            self._batch_len = batch
        self._consumed = end
        weights = plan.weights_of(batch_indices)
        self._scores.record(batch_indices, score if score is not None else loss)
        weighted = (loss.float() * weights).sum() / batch
        if end == share_len or (self.drop_last and share_len - end < self._batch_len):
            self._finish()
        return weighted.to(loss.dtype)

    def _check_indices(self, indices: IndexLike, batch: int) -> Tensor:
        tensor = torch.as_tensor(indices)
        if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.is_complex():
            raise TypeError(f"indices must be integers, got dtype {tensor.dtype}")
        if tensor.shape != (batch,):
            raise ValueError(
                f"indices has shape {tuple(tensor.shape)} but loss has {batch} elements; give "
                "one dataset index per loss"
            )
        if tensor.device.type == "cpu":  # checking here costs no device sync
            low, high = int(tensor.min()), int(tensor.max())
            if low < 0 or high >= self.num_samples:
                raise ValueError(
                    f"indices must be in the interval [0, {self.num_samples - 1}], "
                    f"got values from {low} to {high}"
                )
        return tensor.to(device=self._scores.device, dtype=torch.int64, non_blocking=True)

    def _move_to(self, device: torch.device, plan: EpochPlan) -> EpochPlan:
        """Move scores and the current plan to the losses' device (once); return the plan."""
        self._scores.to(device)
        self._plan = plan.to(device)
        self._share = self._share.to(device)
        return self._plan

    # ------------------------------------------------------------------ checkpointing
    def _fingerprint(self) -> dict[str, int]:
        return {
            "num_samples": self.num_samples,
            "num_epochs": self.num_epochs,
            "prune_ratio": _float_bits(self.prune_ratio),
            "delta": _float_bits(self.delta),
            "seed": self.seed,
            "drop_last": int(self.drop_last),
            "num_replicas": self.num_replicas,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: settings, scores, epoch, position, statistics.

        Randomness needs no state: each epoch's generator is derived from ``(seed, epoch)``.
        Mid-epoch, the current plan is included so the epoch continues exactly.
        """
        epoch, plan_state, position = self._epoch, None, 0
        if self._plan is not None and self._finished:
            epoch += 1
        elif self._plan is not None and self._consumed > 0:
            plan = self._plan
            position = self._consumed
            plan_state = {
                "order": plan.order.cpu().clone(),
                "status": plan.status.cpu().clone(),
                "weight": plan.weight,
                "threshold": plan.threshold,
                "num_scored": plan.num_scored,
                "num_well_learned": plan.num_well_learned,
                "pruning": plan.pruning,
            }
        return {
            "version": STATE_VERSION,
            "num_samples": self.num_samples,
            "num_epochs": self.num_epochs,
            "prune_ratio": self.prune_ratio,
            "delta": self.delta,
            "seed": self.seed,
            "drop_last": self.drop_last,
            "num_replicas": self.num_replicas,
            "epoch": epoch,
            "position": position,
            "plan": plan_state,
            "scores": self._scores.values.cpu().clone(),
            "history": [s.as_dict() for s in self.history if s.epoch < epoch or plan_state],
            "nonfinite_count": self._nonfinite_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the sampler's settings must match the saved ones.

        A checkpoint taken at an epoch boundary may be loaded with any number of replicas;
        one taken mid-epoch needs the same number of replicas.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        version = state.get("version")
        if version != STATE_VERSION:
            raise ValueError(
                f"unsupported InfoBatch state version {version!r}; this infobatch reads "
                f"version {STATE_VERSION}"
            )
        missing = {"epoch", "position", "plan", "scores", "history"} - state.keys()
        if missing:
            raise ValueError(f"InfoBatch state is missing keys {sorted(missing)}")
        for key in ("num_samples", "num_epochs", "prune_ratio", "delta", "seed", "drop_last"):
            mine = getattr(self, key)
            if state.get(key) != mine:
                raise ValueError(
                    f"checkpoint was saved with {key}={state.get(key)!r} but this InfoBatch has "
                    f"{key}={mine!r}; build it with the same settings to resume"
                )
        epoch, position, plan_state = state["epoch"], state["position"], state["plan"]
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"invalid epoch {epoch!r} in InfoBatch state")
        if not isinstance(state["scores"], Tensor):
            raise TypeError("InfoBatch state 'scores' must be a tensor")
        self._scores.load(state["scores"])
        self._history = {int(d["epoch"]): EpochStats(**d) for d in state["history"]}
        self._nonfinite_total = int(state.get("nonfinite_count", 0))
        self._iteration += 1  # retire any live iterator
        if plan_state is None:
            self._epoch, self._plan = epoch, None
            self._started = self._finished = False
            self._start = self._yielded = self._consumed = 0
            return
        if state.get("num_replicas") != self.num_replicas:
            raise ValueError(
                f"checkpoint was taken mid-epoch with num_replicas={state.get('num_replicas')} "
                f"but this run has {self.num_replicas}; resume mid-epoch with the same number "
                "of processes, or from a checkpoint taken at an epoch boundary"
            )
        device = self._scores.device
        plan = EpochPlan(
            epoch=epoch,
            order=plan_state["order"].to(device),
            status=plan_state["status"].to(device),
            weight=float(plan_state["weight"]),
            threshold=float(plan_state["threshold"]),
            num_scored=int(plan_state["num_scored"]),
            num_well_learned=int(plan_state["num_well_learned"]),
            pruning=bool(plan_state["pruning"]),
        )
        if plan.status.shape != (self.num_samples,):
            raise ValueError("InfoBatch state 'plan' does not match the dataset size")
        share_len = len(plan.share(self.rank, self.num_replicas))
        if not isinstance(position, int) or not 0 <= position <= share_len:
            raise ValueError(f"invalid position {position!r} in InfoBatch state")
        self._set_plan(plan, position)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable copy (for ``spawn`` workers): tensors on CPU, no process group."""
        state = self.__dict__.copy()
        state["_collectives"] = None
        if self._scores.device.type != "cpu":
            scores = ScoreTable.__new__(ScoreTable)
            scores.__dict__.update(self._scores.__dict__)
            scores.to(torch.device("cpu"))
            state["_scores"] = scores
            state["_plan"] = self._plan.to(torch.device("cpu")) if self._plan else None
            state["_share"] = self._share.cpu()
        return state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, "
            f"num_epochs={self.num_epochs}, prune_ratio={self.prune_ratio}, "
            f"delta={self.delta}, seed={self.seed}, epoch={self._epoch}, "
            f"rank={self.rank}/{self.num_replicas})"
        )
