"""A total-saving budget: InfoBatch's rule with the pruning ratio adapted epoch by epoch.

Instead of a per-epoch probability, the user asks for an overall saving ("save 40% of the
run's sample passes"). Before each pruned epoch the ratio is set so that the epochs left to
prune, at the current number of well-learned samples, bring the realised total to the target:

    ratio_e = (target * D * E - passes saved so far) / (pruned epochs left) / (well-learned passes)

clipped to ``[0, max_prune_ratio]``. Everything is counted in sample passes, the unit of
:attr:`~infobatch.EpochStats.num_pruned` and ``saved_fraction``: an epoch has ``D`` of them
(the dataset size, or the draws of a :class:`~infobatch.WeightedSampling`), and the
well-learned passes are the expected draws of the samples below the mean (their count without
sampling). Only well-learned samples are ever pruned, and the kept ones are weighted
``1 / (1 - ratio_e)`` with the ratio actually used, so every epoch stays unbiased. The target
may be unreachable (too few samples below the mean, none at all when every loss is equal, or
too few pruned epochs): then the ratio stays at its cap and a warning, once, gives the
achievable figure. The per-epoch ratios and whether it warned are checkpointed with the sampler
(:meth:`SavingBudget.state_dict`).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .context import EpochContext
from .rule import MeanThreshold, Selection, SoftPruning, chunk_size

__all__ = ["SavingBudget"]

logger = logging.getLogger("infobatch")

_STATE_VERSION = 1
_EPOCHS_NEEDED = (
    "SavingBudget needs epoch-based training (num_epochs); in iteration-based training fix "
    "the saving with fewer iterations instead"
)


@dataclass
class SavingBudget:
    """Save ``target`` of the run's sample passes with InfoBatch's rule (epoch-based training).

    Use it as ``InfoBatch(dataset, num_epochs, rule=SavingBudget(0.4))``: ``prune_ratio`` is
    then ignored; ``delta`` still decides which epochs may be pruned. With a
    :class:`~infobatch.WeightedSampling` the target counts draws, as ``saved_fraction`` does.

    Args:
        target (float): fraction of all sample passes (``N * num_epochs``, or draws per epoch
            times ``num_epochs``) to save, in ``(0, 1)``.
        max_prune_ratio (float, optional): the highest per-epoch pruning probability the
            budget may use, in ``(0, 1)``; kept well-learned samples then weigh up to
            ``1 / (1 - max_prune_ratio)``. Default: ``0.9``.

    Attributes:
        ratios (dict[int, float]): the pruning probability each planned epoch used.
    """

    target: float
    max_prune_ratio: float = 0.9
    ratios: dict[int, float] = field(default_factory=dict, repr=False, compare=False)
    _warned: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("target", "max_prune_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, got {type(value).__name__}")
            if not 0.0 < value < 1.0:
                raise ValueError(f"Invalid {name} {value}, {name} should be in the interval (0, 1)")

    def check_schedule(self, num_epochs: int | None, pruned_epochs: int | None) -> None:
        """Refuse iteration-based training; warn (once) if the schedule cannot reach the target.

        Epoch 0 prunes nothing (no sample is scored yet) and the epochs from ``pruned_epochs``
        on train on all data, so even if every sample were below the mean at most
        ``max_prune_ratio * (pruned_epochs - 1) / num_epochs`` of the passes could be saved.
        The sampler calls this when it is built, so a run that cannot save (``delta=0``,
        ``num_epochs=1``) says so before training rather than never.

        Raises:
            ValueError: ``num_epochs`` or ``pruned_epochs`` is ``None`` (iteration-based
                training).
        """
        if num_epochs is None or pruned_epochs is None:
            raise ValueError(_EPOCHS_NEEDED)
        prunable = max(pruned_epochs - 1, 0)
        bound = self.max_prune_ratio * prunable / num_epochs
        if self._warned or self.target < bound:
            return
        self._warned = True
        if prunable == 0:
            reason = (
                f"no epoch can be pruned: ceil(delta * num_epochs) = {pruned_epochs} of the "
                f"{num_epochs} epochs may be, and epoch 0 trains on all data because no sample "
                "is scored yet, so nothing will be saved. Raise delta or num_epochs"
            )
        else:
            reason = (
                f"only epochs 1 to {pruned_epochs - 1} of {num_epochs} can be pruned (epoch 0 "
                "has no scores yet, later epochs anneal), so even with every sample below the "
                f"mean at most {bound:.1%} can be saved at max_prune_ratio="
                f"{self.max_prune_ratio}. Lower the target, or raise delta, num_epochs or "
                "max_prune_ratio"
            )
        warnings.warn(
            f"SavingBudget: the target of {self.target:.1%} of sample passes saved is out of "
            f"reach: {reason}.",
            stacklevel=2,
        )

    def ratio_for(
        self,
        context: EpochContext,
        well_learned_passes: float,
        projected_passes: float | None = None,
    ) -> tuple[float, float]:
        """The ratio for this epoch, and the total saving reachable at the cap from here.

        ``well_learned_passes`` is the expected number of passes of the well-learned samples
        in a full epoch (their count, unless the context has ``epoch_size`` or
        ``sample_weights``: see :meth:`passes_of`). The reachable figure assumes that many in
        every pruned epoch left, or ``projected_passes`` when given (the well-learned share of
        the scored samples applied to the whole epoch, for samples not scored yet).
        """
        if context.num_epochs is None or context.pruned_epochs is None:
            raise ValueError(_EPOCHS_NEEDED)
        total = context.epoch_passes * context.num_epochs
        left = max(context.pruned_epochs - context.epoch, 1)
        saved = context.passes_saved
        future = well_learned_passes if projected_passes is None else projected_passes
        reachable = (saved + self.max_prune_ratio * future * left) / total
        if well_learned_passes <= 0:
            return 0.0, reachable
        wanted = (self.target * total - saved) / left / well_learned_passes
        return min(max(wanted, 0.0), self.max_prune_ratio), reachable

    @staticmethod
    def passes_of(
        scores: Tensor, below: MeanThreshold, num_well_learned: int, context: EpochContext
    ) -> tuple[float, float]:
        """Expected passes of the well-learned and of the scored samples in a full epoch.

        Without weights each sample makes ``epoch_passes / num_samples`` passes (one, unless
        draws were composed); with ``sample_weights`` ``w`` a set of samples makes
        ``epoch_passes * sum(w[set]) / sum(w)`` of the draws, summed a chunk at a time in
        float64 on the CPU (host copies of 2 bytes per sample: the below-mean and scored masks).
        """
        size = context.epoch_passes
        weights = context.sample_weights
        if weights is None:
            num_scored = int(below.num_scored)
            return (
                num_well_learned * size / context.num_samples,
                num_scored * size / context.num_samples,
            )
        weights = weights.to("cpu", torch.float64)
        step = chunk_size(scores.numel(), scores.device)
        well_sums, scored_sums = [], []
        for part, part_weights in zip(torch.split(scores, step), torch.split(weights, step)):
            well_sums.append(part_weights[torch.lt(part, below.threshold).cpu()].sum())
            scored_sums.append(part_weights[~torch.isnan(part).cpu()].sum())
        all_weights = float(weights.sum())
        return (
            size * float(torch.stack(well_sums).sum()) / all_weights,
            size * float(torch.stack(scored_sums).sum()) / all_weights,
        )

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """InfoBatch's rule at the ratio :meth:`ratio_for` gives."""
        below = MeanThreshold.of(scores)
        num_well = below.count_below(scores)
        num_scored = int(below.num_scored)
        well, scored = self.passes_of(scores, below, num_well, context)
        # Samples not scored yet (draws not made yet) are expected below the mean in the same
        # share as the scored ones: the reachable figure does not count them as lost.
        projected = well * context.epoch_passes / scored if scored > 0 else well
        ratio, reachable = self.ratio_for(context, well, projected)
        if num_scored and reachable < self.target - 1e-9 and not self._warned:
            self._warned = True
            self._warn_out_of_reach(context, num_scored, num_well, reachable)
        self.ratios[context.epoch] = ratio
        total = context.epoch_passes * (context.num_epochs or 1)
        logger.info(
            "saving budget: epoch %d prunes well-learned samples with probability %.4g "
            "(target %.2f%% of sample passes, saved so far %.2f%%)",
            context.epoch,
            ratio,
            100.0 * self.target,
            100.0 * context.passes_saved / total,
        )
        return SoftPruning(ratio).select_below(scores, generator, below)

    def _warn_out_of_reach(
        self, context: EpochContext, num_scored: int, num_well: int, reachable: float
    ) -> None:
        left = (context.pruned_epochs or 0) - context.epoch
        if num_well == 0:
            reason = (
                f"no scored sample is below the mean score in epoch {context.epoch} (all "
                f"{num_scored} scored samples have equal scores), so none can be pruned, and "
                f"while that lasts about {reachable:.1%} is saved. Check that update() gets "
                "per-sample losses (reduction='none'), not the batch's mean"
            )
        else:
            reason = (
                f"with {num_well} of {context.num_samples} samples below the mean and {left} "
                f"pruned epochs left, at most about {reachable:.1%} can be saved at "
                f"max_prune_ratio={self.max_prune_ratio}. Pruning at that cap"
            )
        warnings.warn(
            f"SavingBudget: the target of {self.target:.1%} of sample passes saved is out of "
            f"reach: {reason}.",
            stacklevel=3,
        )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The budget's own state: its settings, the ratio of each epoch, whether it warned."""
        return {
            "version": _STATE_VERSION,
            "target": self.target,
            "max_prune_ratio": self.max_prune_ratio,
            "ratios": dict(self.ratios),
            "warned": self._warned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output, saved by a budget with the same settings.

        Raises:
            TypeError: ``state`` is not a dict.
            ValueError: the state is not a ``SavingBudget`` state of this version, was saved
                with another ``target`` or ``max_prune_ratio``, or holds invalid values.
        """
        if not isinstance(state, dict):
            raise TypeError(
                f"SavingBudget state must be a dict from state_dict(), got {type(state).__name__}"
            )
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"SavingBudget state has version {state.get('version')!r}, expected "
                f"{_STATE_VERSION}; it was not written by SavingBudget.state_dict()"
            )
        missing = {"target", "max_prune_ratio", "ratios", "warned"} - state.keys()
        if missing:
            raise ValueError(f"SavingBudget state is missing keys {sorted(missing)}")
        for name in ("target", "max_prune_ratio"):
            if state[name] != getattr(self, name):
                raise ValueError(
                    f"checkpoint was saved with SavingBudget({name}={state[name]!r}) but this "
                    f"budget has {name}={getattr(self, name)!r}; build it with the same "
                    "settings to resume"
                )
        ratios, warned = state["ratios"], state["warned"]
        if not isinstance(warned, bool):
            raise ValueError(f"SavingBudget state: warned must be a bool, got {warned!r}")
        if not isinstance(ratios, dict) or not all(
            _is_epoch(epoch) and _is_ratio(ratio, self.max_prune_ratio)
            for epoch, ratio in ratios.items()
        ):
            raise ValueError(
                "SavingBudget state: ratios must map epochs (ints >= 0) to ratios in "
                f"[0, max_prune_ratio={self.max_prune_ratio}], got {ratios!r}"
            )
        self.ratios = {int(epoch): float(ratio) for epoch, ratio in sorted(ratios.items())}
        self._warned = warned


def _is_epoch(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_ratio(value: object, cap: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and 0.0 <= value <= cap
