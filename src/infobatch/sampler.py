"""The InfoBatch sampler: plans each epoch from the scores, yields indices, takes losses back."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar, Union

import torch
from torch import Tensor
from torch.utils.data import Sampler

from .attribution import BatchBoundaries
from .batching import BatchLayout, EpochBatchSampler, full_data_share
from .checkpoint import (
    STATE_VERSION,
    check_state,
    load_state_of,
    plan_from_state,
    plan_state,
    rule_identity,
    sampling_identity,
    state_of,
)
from .context import EpochAwareRule, EpochContext, WithContext
from .distributed import (
    Collectives,
    TorchCollectives,
    agree_on_settings,
    float_bits,
    resolve_replicas,
)
from .errors import InfoBatchError
from .lifecycle import EpochLifecycle, Phase
from .merge import ScoreMerge, digest_of_state, gather_parts, own_part, plan_digest
from .plan import UPWEIGHTED, EpochPlan, build_plan
from .regime import warn_if_short_schedule
from .rng import epoch_generator
from .rule import PruningRule, SoftPruning
from .sampling import WeightedSampling
from .schedule import AnnealingSchedule, IterationSchedule
from .scores import ScoreTable, warn_unrecorded
from .stats import ClassCounts, EpochStats, class_counts, saved_fraction, with_epoch
from .timing import EpochClock, timed_batches
from .validation import (
    check_class_labels,
    check_flag,
    check_indices,
    check_keep_steps,
    check_positive_int,
    check_sampling,
    check_seed,
    check_update_inputs,
)

__all__ = ["InfoBatchSampler", "STATE_VERSION"]

logger = logging.getLogger("infobatch")

_YIELD_CHUNK = 1 << 16
IndexLike = Union[Tensor, Sequence[int]]
T = TypeVar("T")


class InfoBatchSampler(Sampler[int]):
    """Sampler that prunes well-learned samples each epoch and rescales the kept ones.

    Each epoch it plans from the latest per-sample losses: with the default rule, samples below
    the mean score are dropped with probability ``prune_ratio`` and the kept ones are weighted
    ``1 / (1 - prune_ratio)``; epochs at or past ``delta * num_epochs`` use all samples with
    weight 1. :meth:`update` takes the per-sample losses of each batch, records them as scores
    and returns the weighted mean to back-propagate.

    Args:
        num_samples (int): dataset size, at least 1.
        num_epochs (int): total training epochs, at least 1 (sets the annealing boundary);
            ``None`` with ``num_iterations`` for iteration-based training.
        prune_ratio (float, optional): probability of dropping a well-learned sample, in
            ``[0, 1)``. Default: ``0.5``.
        delta (float, optional): fraction of epochs that are pruned, in ``[0, 1]``.
            Default: ``0.875``.
        seed (int, optional): seed of the pruning and shuffling draws, in ``[0, 2**64)``; the
            global RNG is never advanced. Default: ``torch.initial_seed()``, the seed you gave
            ``torch.manual_seed`` (under ``torch.distributed``, rank 0's).
        drop_last (bool, optional): set to the ``drop_last`` of your ``DataLoader``, so the
            sampler knows when an epoch's last update has arrived. Default: ``False``.
        batch_size (int, optional): the loader's batch size (per rank). When given, every
            :meth:`update` is checked to hold exactly one batch. Default: ``None`` (checked as
            far as the sampler can tell, see :mod:`infobatch.attribution`).
        keep_steps (bool, optional): make every pruned epoch as many optimizer steps as a
            full one, in smaller batches (:mod:`infobatch.batching`): the saving stays in
            samples, not in steps. For schedules limited by their number of steps (a few
            epochs, a model still improving at the end), where fewer steps cost accuracy.
            Needs ``batch_size=`` and ``DataLoader(dataset, batch_sampler=sampler.
            batch_sampler)``. Default: ``False``.
        num_replicas (int, optional): number of distributed processes. By default taken from
            the initialised process group, else 1.
        rank (int, optional): this process's rank. By default taken from the process group.
        rule (PruningRule or EpochAwareRule, optional): replaces the InfoBatch rule
            (``SoftPruning(prune_ratio)``), e.g. ``SavingBudget(0.4)``. A rule with
            ``state_dict()``/``load_state_dict()`` is checkpointed with the sampler.
        collectives (Collectives, optional): cross-rank operations; by default a
            :class:`TorchCollectives` when a process group with ``num_replicas`` ranks is
            initialised. Pass a fake to test several ranks in one process.
        sampling (WeightedSampling, optional): your own sampling distribution (e.g.
            class-balanced): each epoch draws from it, then prunes the draws of pruned samples
            (see :mod:`infobatch.sampling`). Default: every sample once per epoch.
        score_momentum (float, optional): ``0`` scores each sample by its latest loss
            (InfoBatch's definition); ``m`` in ``(0, 1)`` by an exponential moving average
            ``m * old + (1 - m) * loss``, steadier under augmentation noise. Default: ``0``.
        num_iterations (int, optional): iteration-based training instead of epochs: the run
            trains this many batches per rank, passes over the pruned data back to back (see
            :func:`infobatch.iterations`), and a pass is pruned only if it starts before
            ``delta * num_iterations`` iterations. Give it with ``num_epochs=None``.
        class_labels (Tensor or sequence of int, optional): each sample's class (``>= 0``),
            so :attr:`history` counts the passes kept and pruned per class
            (:attr:`EpochStats.kept_per_class`, ``pruned_per_class``). Default: ``None``.

    .. warning::
        Call :meth:`update` exactly once per batch, in the order the loader yields batches
        (prefetching, workers and gradient accumulation are fine). Losses are matched to
        samples by position in the epoch plan, unless ``indices=`` is given.

    Epochs (:mod:`infobatch.lifecycle`): an iteration that receives no update (evaluation on
    the training loader, a peek) changes nothing, and the next one yields the same plan. An
    epoch starts at its first update; an iteration begun after it completed (or was broken
    off) trains the next epoch. ``set_epoch(e)`` followed by a loop trains epoch ``e``.

    Under ``torch.distributed`` every rank computes the same plan and takes every
    ``num_replicas``-th index of it (padded so all ranks get the same number of batches).
    Scores are merged across ranks once per epoch by an asynchronous collective on a process
    group of infobatch's own, started by the epoch's last :meth:`update` (which does not wait
    for it) and finished when the next epoch is planned.
    """

    def __init__(
        self,
        num_samples: int,
        num_epochs: int | None,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        *,
        num_iterations: int | None = None,
        sampling: WeightedSampling | None = None,
        score_momentum: float = 0.0,
        seed: int | None = None,
        drop_last: bool = False,
        batch_size: int | None = None,
        keep_steps: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        rule: PruningRule | EpochAwareRule | None = None,
        collectives: Collectives | None = None,
        class_labels: Tensor | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int):
            raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
        if num_samples < 1:
            raise ValueError(
                f"Invalid num_samples {num_samples}: the dataset is empty, give it samples"
            )
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        self.seed_given = seed is not None
        self.seed = check_seed(seed) if seed is not None else torch.initial_seed()
        self.drop_last = check_flag("drop_last", drop_last)
        self.batch_size = batch_size
        self.keep_steps = check_flag("keep_steps", keep_steps)
        self.num_samples = num_samples
        if (num_epochs is None) == (num_iterations is None):
            raise ValueError(
                "give exactly one of num_epochs (epoch-based training) and num_iterations "
                f"(iteration-based training), got num_epochs={num_epochs!r} and "
                f"num_iterations={num_iterations!r}"
            )
        self.schedule: AnnealingSchedule | IterationSchedule = (
            AnnealingSchedule(num_epochs, delta)
            if num_epochs is not None
            else IterationSchedule(num_iterations, delta)  # type: ignore[arg-type]
        )
        self._iterations_done = 0  # update() calls (batches) over the whole run
        check_keep_steps(self.keep_steps, batch_size, self.drop_last, num_iterations)
        self.sampling = check_sampling(sampling, num_samples)
        default_rule = SoftPruning(prune_ratio)
        self.prune_ratio = float(prune_ratio)
        self.rule: PruningRule | EpochAwareRule = rule if rule is not None else default_rule
        self._rule_prunes = rule is not None or prune_ratio > 0
        self._default_rule = rule is None
        check_schedule = getattr(self.rule, "check_schedule", None)
        if callable(check_schedule) and isinstance(self.schedule, AnnealingSchedule):
            check_schedule(self.schedule.num_epochs, self.schedule.pruned_epochs)
        self.num_replicas, self.rank, merge = resolve_replicas(num_replicas, rank)
        if isinstance(self.schedule, AnnealingSchedule) and self.rank == 0:
            warn_if_short_schedule(
                self.schedule.num_epochs,
                self.schedule.pruned_epochs,
                self.schedule.delta,
                keep_steps=self.keep_steps,
                prunes=self._rule_prunes,
            )
        if collectives is None and merge:
            collectives = TorchCollectives()
        self._collectives = collectives
        self._scores = ScoreTable(
            num_samples,
            track_updates=collectives is not None,
            momentum=score_momentum,
            spare=ScoreMerge.SPARE if collectives is not None else 0,
            track_iterations=bool(getattr(self.rule, "needs_score_iterations", False)),
        )
        self._merge = ScoreMerge(self._scores, collectives) if collectives is not None else None
        if collectives is not None:
            self.seed = agree_on_settings(
                collectives,
                {
                    "num_samples": self.num_samples,
                    "num_epochs": self.num_epochs if self.num_epochs is not None else -1,
                    "num_iterations": (
                        self.num_iterations if self.num_iterations is not None else -1
                    ),
                    "prune_ratio": float_bits(self.prune_ratio),
                    "delta": float_bits(self.delta),
                    "score_momentum": float_bits(self.score_momentum),
                    "drop_last": int(self.drop_last),
                    "num_replicas": self.num_replicas,
                    "batch_size": self.batch_size if self.batch_size is not None else -1,
                    "keep_steps": int(self.keep_steps),
                    "sampling_draws": sampling.num_draws if sampling is not None else -1,
                    "sampling_weights": sampling.digest() if sampling is not None else -1,
                },
                self.seed,
                self.seed_given,
            )

        self._life = EpochLifecycle()
        self._batches = BatchBoundaries(batch_size=batch_size, drop_last=self.drop_last)
        self._plan: EpochPlan | None = None
        self._batch_sampler: EpochBatchSampler | None = None
        self._plan_fresh = True  # no score changed since the plan was made
        self._share = self._share_cpu = torch.empty(0, dtype=torch.int64)
        self._share_upweighted = torch.empty(0, dtype=torch.bool)
        self._share_unweighted = False
        self._weights_by_batch: dict[int, tuple[Tensor, Tensor]] = {}
        self._share_unique = False
        self._history: dict[int, EpochStats] = {}
        self._resumed_epoch: int | None = None  # set by load_state_dict until training goes on
        self._side_passes = 0  # iterations open beside the pass training the epoch
        self._nonfinite_total = 0
        self._saturated_total = 0
        self._clock = EpochClock()
        self._labels, self._num_classes = check_class_labels(class_labels, num_samples)
        self._class_counts: ClassCounts | None = None

    # ------------------------------------------------------------------ public state
    @property
    def epoch(self) -> int:
        """The epoch being planned or trained (0-based)."""
        return self._life.epoch

    @property
    def phase(self) -> Phase:
        """Where the current epoch stands (see :class:`infobatch.lifecycle.Phase`)."""
        return self._life.phase

    @property
    def score_momentum(self) -> float:
        """The scores' moving-average momentum (0: the latest loss)."""
        return self._scores.momentum

    @property
    def position(self) -> int:
        """Losses received so far in the current epoch on this rank (its plan position)."""
        return self._life.consumed

    @property
    def epoch_length(self) -> int:
        """Indices planned for this rank in the current epoch (0 before the first plan)."""
        return self._life.length

    @property
    def batch_layout(self) -> BatchLayout:
        """How the current epoch is cut into batches on this rank: batches of ``batch_size``,
        or with ``keep_steps=True`` full data's number of batches
        (:meth:`~infobatch.batching.BatchLayout.keeping_steps`)."""
        if self.batch_size is None:
            raise ValueError("the sampler has no batch size: pass batch_size= to InfoBatch")
        length = self._life.length
        if not self.keep_steps:
            return BatchLayout(length, self.batch_size)
        epoch_passes = self.sampling.num_draws if self.sampling is not None else self.num_samples
        share = full_data_share(epoch_passes, self.num_replicas)
        return BatchLayout.keeping_steps(length, share, self.batch_size)

    @property
    def batch_sampler(self) -> EpochBatchSampler:
        """Batches at each epoch's batch size, for ``DataLoader(batch_sampler=...)`` (always
        the same object; needs ``batch_size=``, and is how ``keep_steps=True`` is used)."""
        if self._batch_sampler is None:
            self._batch_sampler = EpochBatchSampler(self)
        return self._batch_sampler

    @property
    def num_epochs(self) -> int | None:
        """Total training epochs (``None`` in iteration-based training)."""
        schedule = self.schedule
        return schedule.num_epochs if isinstance(schedule, AnnealingSchedule) else None

    @property
    def num_iterations(self) -> int | None:
        """Total training iterations in iteration-based training, else ``None``."""
        schedule = self.schedule
        return schedule.num_iterations if isinstance(schedule, IterationSchedule) else None

    @property
    def iterations_done(self) -> int:
        """Batches trained (``update()`` calls) over the whole run on this rank."""
        return self._iterations_done

    @property
    def delta(self) -> float:
        """Fraction of epochs that are pruned."""
        return self.schedule.delta

    @property
    def scores(self) -> Tensor:
        """Latest score of every sample (float32, ``nan`` = never scored).

        Under ``torch.distributed``, right after an epoch's last update this waits for the
        score merge that update started (no new collective).
        """
        self._finish_merge()
        return self._scores.view()

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
        """Samples skipped, summed over all started epochs."""
        return sum(s.num_pruned for s in self._history.values())

    @property
    def nonfinite_count(self) -> int:
        """Non-finite scores received and not recorded (counted at each epoch's end)."""
        return self._nonfinite_total

    # ------------------------------------------------------------------ epoch lifecycle
    def __len__(self) -> int:
        """Number of indices the next iteration yields on this rank (the current one's, while
        an epoch is being trained).

        Asked before an epoch's loop, it plans that epoch, so ``len(loader)`` is exact.
        """
        epoch = self._life.epoch_to_plan_for_len()
        if epoch is not None:
            self._move_to_epoch(epoch)
        return self._life.remaining()

    def __iter__(self) -> Iterator[int]:
        """Yield this rank's indices of the current plan, or of the next epoch's.

        The current plan if it has received no update yet (an iteration without updates
        changes nothing); the next epoch's after an epoch completed or was broken off.
        """
        life = self._life
        if life.side_pass():  # a pass is training this epoch: this one changes nothing
            return self._side_pass(self._share_cpu[life.start :])
        epoch = life.epoch_to_plan_for_iteration()
        if epoch is not None:
            self._move_to_epoch(epoch)
        pass_number = life.open_pass()
        self._batches.new_pass()
        remaining = life.remaining()
        if remaining == 0 or self._batches.pass_is_empty(remaining):
            self._record_stats()  # an epoch that keeps no sample (or drop_last drops all)
            life.complete()
            self._finish_timing()
        return self._generate(pass_number, life.start, self._share_cpu)

    def end_epoch(self) -> None:
        """End a partly trained epoch here, on purpose (a step cap per epoch).

        A checkpoint taken in a partly trained epoch resumes the rest of that epoch, also after
        its loop was broken off, as a preemption wants (stop, save, exit). After a loop cut at
        a step cap, call this (on every rank): the epoch is complete, its scores are merged
        across ranks, and the next loop and a checkpoint go to the next epoch, without the
        warning about samples that never reached update(). Does nothing if the epoch is not
        partly trained.
        """
        if self._life.end_early():
            self._start_merge()
            self._finish_timing()

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration train ``epoch`` (as with ``DistributedSampler``).

        Calling it is optional. For the epoch already planned and not yet trained it does
        nothing; for the epoch being (or just) trained it restarts that epoch's plan; for any
        other epoch it plans that epoch from the current scores.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise TypeError(f"epoch must be an int, got {type(epoch).__name__}")
        if epoch < 0:
            raise ValueError(f"Invalid epoch {epoch}, epoch should be >= 0")
        if self._resumed_epoch is not None and epoch < self._resumed_epoch:
            warnings.warn(
                f"set_epoch({epoch}) right after loading a checkpoint of epoch "
                f"{self._resumed_epoch}: training goes back to epoch {epoch}. If a framework "
                "restarted its epoch counter on resume (Accelerate's prepared loader does), "
                "call loader.set_epoch(dataset.epoch) after loading the state.",
                stacklevel=2,
            )
        action = self._life.set_epoch_action(epoch)
        if action == "plan":
            self._move_to_epoch(epoch)
        elif action == "restart":
            self._settle()
            self._life.restart()

    def _side_pass(self, share: Tensor) -> Iterator[int]:
        self._side_passes += 1
        try:
            for chunk in torch.split(share, _YIELD_CHUNK):
                yield from chunk.tolist()
        finally:
            self._side_passes -= 1

    def _generate(self, pass_number: int, start: int, share: Tensor) -> Iterator[int]:
        life, position, finished = self._life, start, False
        self._clock.first_index()
        try:
            for chunk in torch.split(share[start:], _YIELD_CHUNK):
                for index in chunk.tolist():
                    if life.passes != pass_number:
                        return  # a newer iteration has taken over
                    position += 1
                    life.yielded = position
                    yield index
            finished = True
        finally:
            if not finished:  # closed early: the loop broke off, or a newer pass took over
                life.closed(pass_number)

    def _move_to_epoch(self, epoch: int) -> None:
        """End the current epoch (its scores merged across ranks) and plan ``epoch``."""
        self._end_epoch()
        planning_started = self._clock.planning_started()
        self._settle()
        self._plan = None  # free the previous plan before the next one is built
        self._share = self._share_cpu = torch.empty(0, dtype=torch.int64)
        self._share_upweighted = torch.empty(0, dtype=torch.bool)
        prunes = self._rule_prunes and self.schedule.prunes(epoch, self._iterations_done)
        generator = epoch_generator(self.seed, epoch)
        rule: PruningRule | None = None
        if prunes:
            rule = (
                WithContext(self.rule, self._context(epoch))
                if isinstance(self.rule, EpochAwareRule)
                else self.rule
            )
        plan = build_plan(epoch, self._scores.values, rule, generator)
        if self.sampling is not None:
            plan = self.sampling.compose(plan, generator)
        self._install(plan, position=0)
        if self._merge is not None:
            self._merge.planned(plan_digest(plan, self._scores.values))
        self._clock.planning_ended(planning_started)

    def _context(self, epoch: int) -> EpochContext:
        schedule = self.schedule
        return EpochContext(
            epoch=epoch,
            num_samples=self.num_samples,
            num_epochs=self.num_epochs,
            pruned_epochs=(
                schedule.pruned_epochs if isinstance(schedule, AnnealingSchedule) else None
            ),
            iterations_done=self._iterations_done,
            num_iterations=self.num_iterations,
            history=tuple(s for s in self.history if s.epoch < epoch),
            epoch_size=self.sampling.num_draws if self.sampling is not None else None,
            sample_weights=self.sampling.weights if self.sampling is not None else None,
            score_iterations=self._scores.iterations,
        )

    def _install(self, plan: EpochPlan, position: int) -> None:
        self._plan = plan
        self._plan_fresh = True
        self._share = plan.share(self.rank, self.num_replicas)
        self._share_cpu = self._share.cpu()
        # 1 byte per position: the batch's weights are then one operation on a slice
        self._share_upweighted = plan.status.index_select(0, self._share) == UPWEIGHTED
        self._share_unweighted = plan.sample_weights is None and not bool(
            self._share_upweighted.any()
        )
        self._weights_by_batch = {}
        # Each sample at most once in this rank's share (a user's draws may repeat a sample,
        # and padding does when fewer samples are kept than there are ranks): its scores may
        # then be recorded a batch of batches at a time.
        self._share_unique = self.sampling is None and plan.num_kept >= self.num_replicas
        self._life.planned(plan.epoch, self._share.numel(), position)
        self._class_counts = (
            class_counts(self._labels, plan, self._num_classes)
            if self._labels is not None
            else None
        )
        if self.keep_steps:
            self._batches.layout = self.batch_layout

    def _end_epoch(self) -> None:
        """Leave the current epoch: report missing updates, start merging its scores."""
        life = self._life
        if life.phase is Phase.TRAINING:
            missing = life.length - life.consumed
            self._finish_timing()  # its span ends at its last update
            warnings.warn(
                f"{missing} of the {life.length} samples planned for epoch {life.epoch} on "
                "this rank never reached update() (the loop was broken off, or update() was "
                "not called for every batch); they keep their previous scores. If your "
                "DataLoader uses drop_last=True, pass drop_last=True to InfoBatch as well; "
                "to cut epochs short on purpose, call end_epoch() after the break.",
                stacklevel=4,
            )
        self._start_merge()

    def _start_merge(self) -> None:
        """Start the cross-rank merge of this epoch's scores (returns at once)."""
        if self._merge is not None:
            self._merge.start(self._life.epoch)

    def _finish_merge(self) -> None:
        """Wait for a started merge; a rank that never joins it becomes a clear error."""
        if self._merge is not None:
            self._merge.finish(rank=self.rank)

    def _settle(self) -> None:
        """Finish a started merge and account for the scores that were not recorded as given."""
        self._finish_merge()
        if not self._scores.has_counts:
            return
        nonfinite, saturated = self._scores.pop_counts()
        warn_unrecorded(
            self._life.epoch,
            nonfinite if self._nonfinite_total == 0 else 0,
            saturated if self._saturated_total == 0 else 0,
        )
        self._nonfinite_total += nonfinite
        self._saturated_total += saturated

    def _record_stats(self) -> None:
        if self._plan is not None:
            self._history = with_epoch(self._history, self._plan, self._class_counts)

    def _finish_timing(self) -> None:
        """The epoch is complete: put its time accounting in its statistics."""
        timing = self._clock.finish()
        stats = self._history.get(self._life.epoch)
        if stats is not None:
            self._history[stats.epoch] = stats.with_timing(timing)

    def timed(self, batches: Iterable[T]) -> Iterator[T]:
        """Iterate ``batches`` (the training loader), counting the time spent waiting for
        each batch in the epoch's :attr:`EpochStats.data_seconds`::

            for x, y in dataset.timed(loader):
                ...

        Optional: without it, ``data_seconds`` is ``nan`` and the wait is part of
        :attr:`EpochStats.training_seconds`.
        """
        return timed_batches(batches, self._clock)

    # ------------------------------------------------------------------ losses in
    def update(
        self,
        loss: Tensor,
        *,
        indices: IndexLike | None = None,
        score: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        """Record a batch's per-sample losses as scores; return the weighted mean to minimise.

        The result is ``sum(w_i * loss_i) / batch_size`` in ``loss.dtype``, with ``w_i`` the
        sample's weight this epoch, accumulated in float64 for float64 losses and in float32
        otherwise (computed as one dot product with the weights ``w_i / batch_size``, so its
        last bit may differ from that formula evaluated in another order). For float16 a
        weighted mean above 65504 becomes ``inf`` when cast back, as ``loss.mean()`` would
        (scale the returned loss, e.g. with ``GradScaler``, not before).
        ``loss`` is not modified. No host-device synchronisation, no collective that waits.

        Args:
            loss (Tensor): per-sample losses, shape ``[batch_size]``, any float dtype/device.
            indices (Tensor or sequence of int, optional): dataset indices of the batch's
                samples, when they travel with the batch; by default they are the next
                ``batch_size`` positions of this epoch's plan.
            score (Tensor, optional): per-sample scores to record instead of ``loss`` (e.g. one
                term of a multi-term loss), same shape as ``loss``.
            valid (Tensor, optional): bool per sample; ``False`` records no score for that
                sample (it keeps its previous one, silently) and gives its loss weight 0 (e.g.
                a sequence with no target token). The mean still divides by the batch size.
        """
        began = self._clock.clock()
        batch = check_update_inputs(loss, score, valid)
        life, plan = self._life, self._plan
        life.check_update(planned=plan is not None, side_pass_open=self._side_passes > 0)
        assert plan is not None
        if loss.device != self._scores.device:
            plan = self._move_to(loss.device, plan)
        start, end = life.consumed, life.consumed + batch
        if indices is None:
            self._batches.check(
                batch,
                epoch=life.epoch,
                start=life.start,
                consumed=start,
                yielded=life.yielded,
                length=life.length,
            )
            batch_indices = self._share[start:end]
            in_plan_order = True
        else:
            # Indices given on the CPU that are the plan's next positions (as an integration
            # passes them) take the plan-order path; others are checked and gathered.
            in_plan_order = self._are_planned(indices, start, end)
            batch_indices = (
                self._share[start:end]
                if in_plan_order
                else check_indices(indices, batch, self.num_samples, self._scores.device)
            )
            if end > life.length:
                raise InfoBatchError(
                    f"update() received losses for {end} samples in epoch {life.epoch} but "
                    f"only {life.length} are planned on this rank; call update() once per batch"
                )
        self._batches.note(batch, final=end == life.length)
        self._iterations_done += 1
        self._resumed_epoch = None
        if life.receive(batch):
            self._record_stats()
        accumulate = torch.float64 if loss.dtype == torch.float64 else torch.float32
        weights: Tensor | None = None  # None: every weight is 1 (epoch 0, annealing)
        if in_plan_order and valid is None and self._share_unweighted:
            pass  # the plain mean below
        elif in_plan_order and accumulate == torch.float32 and plan.sample_weights is None:
            # Each weight divided by the batch size: the mean is then one dot product (one
            # autograd node instead of three; a tiny model's backward notices).
            high, low = self._batch_weights(plan, batch)
            weights = torch.where(self._share_upweighted[start:end], high, low)
        else:
            weights = plan.weights_of(batch_indices, accumulate).div_(batch)
        if valid is not None and weights is not None:
            weights = weights.masked_fill(~valid.to(weights.device), 0.0)
        self._scores.record(
            batch_indices,
            score if score is not None else loss,
            valid,
            iteration=self._iterations_done - 1,  # this batch's 0-based iteration
            defer=in_plan_order and self._share_unique,
        )
        self._plan_fresh = False
        terms = loss if loss.dtype == accumulate else loss.to(accumulate)
        if valid is not None:  # a masked-out loss (e.g. 0/0 = nan) must not reach the result
            terms = torch.where(valid.to(terms.device), terms, 0.0)
        weighted = terms.mean() if weights is None else torch.dot(terms, weights)
        self._clock.add_update(began)
        if self._batches.ends_epoch(end, life.length):
            life.complete()
            self._start_merge()
            self._finish_timing()
        return weighted if weighted.dtype == loss.dtype else weighted.to(loss.dtype)

    def _are_planned(self, indices: IndexLike, start: int, end: int) -> bool:
        """``indices`` is a CPU tensor equal to this rank's plan positions ``start:end``."""
        if not isinstance(indices, Tensor) or indices.device.type != "cpu":
            return False
        planned = self._share_cpu[start:end]
        if indices.shape != planned.shape or indices.dtype not in (torch.int32, torch.int64):
            return False
        return torch.equal(indices, planned.to(indices.dtype))

    def _batch_weights(self, plan: EpochPlan, batch: int) -> tuple[Tensor, Tensor]:
        """The up-weighted and the plain weight divided by ``batch``, as float32 scalars on
        the plan's device (made once per epoch and batch size)."""
        pair = self._weights_by_batch.get(batch)
        if pair is None:
            device = self._share_upweighted.device
            pair = (  # filled on the device: no host-to-device copy
                torch.full((), plan.weight / batch, dtype=torch.float32, device=device),
                torch.full((), 1.0 / batch, dtype=torch.float32, device=device),
            )
            self._weights_by_batch[batch] = pair
        return pair

    def _move_to(self, device: torch.device, plan: EpochPlan) -> EpochPlan:
        """Move scores and the current plan to the losses' device (once); return the plan."""
        self._scores.to(device)
        self._plan = plan.to(device)
        self._share = self._share.to(device)
        self._share_upweighted = self._share_upweighted.to(device)
        self._weights_by_batch = {}
        if self._labels is not None:  # per-class counts are then made where the plan lives
            self._labels = self._labels.to(device)
        if self._merge is not None and self._merge.digest is not None:
            self._merge.digest = self._merge.digest.to(device)
        return self._plan

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self, *, all_ranks: bool = False) -> dict[str, Any]:
        """Everything needed to resume: settings, scores, epoch, position, statistics.

        Randomness needs no state: each epoch's generator is derived from ``(seed, epoch)``.
        Mid-epoch (also after a loop broken off early, as a preemption stops), the current plan
        is included so the epoch continues exactly; after :meth:`end_epoch` the state resumes
        at the next epoch. Right after an epoch's last update it waits for the score
        merge that update started.

        Under ``torch.distributed`` each rank holds scores the others do not have yet until
        the epoch's merge (mid-epoch, or after a broken-off epoch): this rank's are in its
        state, so save and load each rank's own state, or pass ``all_ranks=True``.

        Args:
            all_ranks (bool, optional): call it on every rank; every rank then returns one
                state holding every rank's unmerged scores (three small ``all_gather`` calls
                on infobatch's own process group), so rank 0 can save it alone and every
                rank load it. Default: ``False`` (this rank's state, no collective).
        """
        self._settle()
        life = self._life
        epoch, position, saved_plan = life.epoch, 0, None
        if life.phase is Phase.COMPLETE:
            epoch += 1
        elif self._plan is not None and life.phase is Phase.TRAINING:
            position, saved_plan = life.consumed, plan_state(self._plan)
        elif self._plan is not None and (life.resume_at > 0 or not self._plan_fresh):
            position, saved_plan = life.resume_at, plan_state(self._plan)
        merge = self._merge
        part = merge.part(position) if merge is not None else None
        digest = merge.digest if merge is not None else None
        state = {
            "version": STATE_VERSION,
            **self._plan_settings(),
            "iterations_done": self._iterations_done,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "epoch": epoch,
            "position": position,
            "plan": saved_plan,
            "scores": self._scores.values.cpu().clone(),
            "score_iterations": self._score_iterations_state(all_ranks),
            "unmerged": part,
            "digest": None if digest is None else [int(v) for v in digest.tolist()],
            "history": [s.as_dict() for s in self.history if s.epoch < epoch or saved_plan],
            "nonfinite_count": self._nonfinite_total,
            "rule": state_of(self.rule),
        }
        if all_ranks and merge is not None:
            state["unmerged_by_rank"] = gather_parts(merge.collectives, part, self.num_replicas)
        return state

    def _score_iterations_state(self, all_ranks: bool) -> Tensor | None:
        """The iteration of each score for a checkpoint (``None`` unless the rule needs them).

        Mid-epoch each rank holds the iterations of its own unmerged scores; an ``all_ranks``
        state holds the maximum over the ranks, what the next merge gives every rank anyway.
        """
        iterations = self._scores.iterations
        if iterations is None:
            return None
        iterations = iterations.clone()
        if all_ranks and self._merge is not None:  # on every rank, as gather_parts
            self._merge.collectives.start_all_reduce_max(iterations).wait()
        return iterations.cpu()

    def _plan_settings(self) -> dict[str, Any]:
        """The settings that shape a plan, as a checkpoint records and checks them."""
        return {
            "num_samples": self.num_samples,
            "num_epochs": self.num_epochs,
            "num_iterations": self.num_iterations,
            "prune_ratio": self.prune_ratio,
            "delta": self.delta,
            "score_momentum": self.score_momentum,
            "drop_last": self.drop_last,
            "keep_steps": self.keep_steps,
            "sampling": sampling_identity(self.sampling),
            "rule_identity": rule_identity(self.rule),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the sampler's settings must match the saved ones.

        A checkpoint taken at an epoch boundary may be loaded with any number of replicas;
        one taken mid-epoch needs the same number of replicas, and each rank needs its own
        state or an ``all_ranks=True`` one. A sampler built without ``seed=`` takes the
        checkpoint's seed.
        """
        check_state(state, self._plan_settings())
        saved_seed = check_seed(state.get("seed"))
        if self.seed_given and saved_seed != self.seed:
            raise ValueError(
                f"checkpoint was saved with seed={saved_seed} but this InfoBatch has "
                f"seed={self.seed}; build it with the same seed (or none) to resume"
            )
        epoch, position, saved_plan = state["epoch"], state["position"], state["plan"]
        same_world = state.get("num_replicas") == self.num_replicas
        if saved_plan is not None and not same_world:
            raise ValueError(
                f"checkpoint was taken mid-epoch with num_replicas={state.get('num_replicas')} "
                f"but this run has {self.num_replicas}; resume mid-epoch with the same number "
                "of processes, or from a checkpoint taken at an epoch boundary"
            )
        scores, part = own_part(state, self.rank, self.num_replicas, self._merge is not None)
        if part is not None:
            position = part.get("position", position)
        plan = None
        if saved_plan is not None:
            plan = plan_from_state(saved_plan, epoch, self.num_samples, self._scores.device)
            share_len = len(plan.share(self.rank, self.num_replicas))
            if position > share_len:
                raise ValueError(f"invalid position {position!r} in InfoBatch state")
        self._settle()
        self.seed = saved_seed
        self._scores.load(scores)
        self._scores.load_iterations(state.get("score_iterations"))
        if self._merge is not None:
            self._merge.load_part(part)
            digest = state.get("digest")
            self._merge.planned(
                None if digest is None else digest_of_state(digest, self._scores.device)
            )
        self._history = {int(d["epoch"]): EpochStats(**d) for d in state["history"]}
        self._nonfinite_total = int(state.get("nonfinite_count", 0))
        self._iterations_done = int(state.get("iterations_done", 0))
        if state.get("rule") is not None:
            load_state_of(self.rule, state["rule"])
        self._resumed_epoch = epoch
        self._life.passes += 1  # retire any live iterator
        self._batches.new_pass()
        if plan is None:
            self._plan = None
            self._share = self._share_cpu = torch.empty(0, dtype=torch.int64)
            self._life.unplanned(epoch)
            return
        self._install(plan, position)
        self._plan_fresh = False  # made from the scores of an earlier point

    def __getstate__(self) -> dict[str, Any]:
        """Picklable copy (for ``spawn`` workers): tensors on CPU, no process group."""
        self._finish_merge()
        self._scores.flush()  # the copy below shares the table's tensors
        state = self.__dict__.copy()
        state["_collectives"] = None
        state["_merge"] = None
        if self._scores.device.type != "cpu":
            scores = ScoreTable.__new__(ScoreTable)
            scores.__dict__.update(self._scores.__dict__)
            scores.to(torch.device("cpu"))
            state["_scores"] = scores
            state["_plan"] = self._plan.to(torch.device("cpu")) if self._plan else None
            state["_share"] = self._share.cpu()
            state["_share_upweighted"] = self._share_upweighted.cpu()
            state["_weights_by_batch"] = {}
            if self._labels is not None:
                state["_labels"] = self._labels.cpu()
        return state

    def __repr__(self) -> str:
        rule = (
            f"prune_ratio={self.prune_ratio}"
            if self._default_rule
            else f"rule={rule_identity(self.rule)}"
        )
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, "
            f"num_epochs={self.num_epochs}, {rule}, delta={self.delta}, seed={self.seed}, "
            f"epoch={self.epoch}, rank={self.rank}/{self.num_replicas})"
        )
