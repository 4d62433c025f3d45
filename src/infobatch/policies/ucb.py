"""Upper-confidence-bound dynamic pruning (Raju et al. 2021): keep the most uncertain samples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..context import EpochContext
from ..rule import Selection, count_scored
from ._common import KeepBudget, check_fraction, cpu_scores, status_of, top_k

__all__ = ["UCB"]

_STATE_VERSION = 1


class UCB:
    """Keep the ``K`` samples with the highest upper confidence bound of their loss.

    Method note (the formulation implemented; Raju et al. 2021, as the InfoBatch paper's
    baseline): each sample is an arm whose reward is its loss. The rule keeps, per sample, an
    exponential moving average of its score ``mu`` and of its squared deviation ``var``
    (decay ``decay``), updated before each pruned epoch for the samples whose score changed
    since the last update (trained samples; a pruned sample's stale score is not counted
    twice). Each pruned epoch keeps the ``K`` samples with the largest
    ``mu + c * sqrt(var)`` (never-scored samples first, ties at random), weight 1: samples
    with a high or a fluctuating loss are trained, steady easy ones are skipped. Biased by
    design. Cost: one sort of N per epoch and 12 bytes per sample of state, on the CPU.

    The state (``mu``, ``var``, the last score seen, the last epoch updated) is in
    :meth:`state_dict`, so it is checkpointed with the sampler; planning the same epoch again
    (a resumed run, ``set_epoch``) does not update it twice, so the plan is the same.

    Args:
        prune_ratio (float, optional): fraction dropped each epoch, in ``[0, 1)``.
        kept_counts (sequence of int, optional): samples kept in epoch 0, 1, ... (give exactly
            one of the two).
        c (float, optional): weight of the deviation in the bound, ``>= 0``. Default: ``1.0``.
        decay (float, optional): decay of the moving averages, in ``[0, 1)``. Default: ``0.8``.
    """

    def __init__(
        self,
        prune_ratio: float | None = None,
        *,
        kept_counts: Sequence[int] | None = None,
        c: float = 1.0,
        decay: float = 0.8,
    ) -> None:
        self.budget = KeepBudget.of(prune_ratio, kept_counts)
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            raise TypeError(f"c must be a float, got {type(c).__name__}")
        if not (c >= 0 and math.isfinite(c)):
            raise ValueError(f"Invalid c {c}, c should be finite and >= 0")
        self.c = float(c)
        self.decay = check_fraction("decay", decay)
        self.mean: Tensor | None = None
        self.var: Tensor | None = None
        self.last: Tensor | None = None
        self.updated_epoch = -1

    def update(self, scores: Tensor, epoch: int) -> None:
        """Fold the scores that changed since the last update into ``mean`` and ``var``."""
        if epoch <= self.updated_epoch and self.mean is not None:
            return  # this epoch was already counted (planned again, or resumed)
        values = cpu_scores(scores)
        n = values.numel()
        if self.mean is None or self.mean.numel() != n:
            self.mean = torch.full((n,), math.nan)
            self.var = torch.zeros(n)
            self.last = torch.full((n,), math.nan)
        assert self.var is not None and self.last is not None
        scored = ~torch.isnan(values)
        changed = scored & ~(values == self.last)  # nan != nan: never-seen scores count
        first = changed & torch.isnan(self.mean)
        again = changed & ~first
        self.mean[first] = values[first]
        diff = values[again] - self.mean[again]
        step = 1.0 - self.decay
        self.mean[again] += step * diff
        self.var[again] = self.decay * (self.var[again] + step * diff * diff)
        self.last[changed] = values[changed]
        self.updated_epoch = epoch

    def bound(self) -> Tensor:
        """``mean + c * sqrt(var)`` per sample (``nan`` for samples never scored)."""
        if self.mean is None or self.var is None:
            raise RuntimeError("UCB.bound() before any update(); plan an epoch first")
        return self.mean + self.c * self.var.clamp(min=0).sqrt()

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """Update the statistics, then keep the ``K`` largest bounds."""
        num_samples = scores.numel()
        count = self.budget.count(context.epoch, num_samples)
        self.update(scores, context.epoch)
        kept = top_k(self.bound(), count, generator)
        status = status_of(kept, num_samples, scores.device)
        return Selection(status, 1.0, float("nan"), count_scored(scores), 0)

    def state_dict(self) -> dict[str, Any]:
        """The moving averages, the last scores seen and the last epoch counted."""

        def copy(value: Tensor | None) -> Tensor | None:
            return None if value is None else value.clone()

        return {
            "version": _STATE_VERSION,
            "mean": copy(self.mean),
            "var": copy(self.var),
            "last": copy(self.last),
            "updated_epoch": self.updated_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (tensors must all be given, or all ``None``)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"UCB state has version {state.get('version')!r}, expected {_STATE_VERSION}"
            )
        tensors = [state.get(key) for key in ("mean", "var", "last")]
        if any(t is None for t in tensors) and any(t is not None for t in tensors):
            raise ValueError("UCB state: mean, var and last must all be tensors, or all None")
        if tensors[0] is not None:
            shapes = {tuple(t.shape) for t in tensors}  # type: ignore[union-attr]
            if len(shapes) != 1:
                raise ValueError(f"UCB state: mean, var and last differ in shape: {shapes}")
        self.mean, self.var, self.last = (
            None if t is None else t.detach().to("cpu", torch.float32).clone() for t in tensors
        )
        self.updated_epoch = int(state["updated_epoch"])

    def __repr__(self) -> str:
        return f"UCB({self.budget}, c={self.c}, decay={self.decay})"
