"""A static random subset: drawn once, trained on in every epoch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..context import EpochContext
from ..rng import check_generator
from ..rule import Selection, count_scored
from ._common import check_fraction, status_of

__all__ = ["StaticRandom"]

_STATE_VERSION = 1


class StaticRandom:
    """One uniformly random subset, drawn at the first planned epoch and kept for the run.

    Method note: the classic static baseline of data pruning: a random ``K`` of the ``N``
    samples is chosen before training and every epoch trains on that subset only (weight 1,
    scores ignored). It saves ``1 - K / N`` of every epoch but never sees the other samples,
    so the model learns from less data, not from fewer redundant passes. Use it with
    ``delta=1.0`` so every epoch is planned by this rule (``POLICIES["static_random"].delta``).

    The subset is drawn from the generator of the first epoch the rule plans (so it follows
    the run's pruning seed, identically on every rank and device), or from ``seed`` when given.
    The state kept for checkpoints is that generator's state (about 5 kB), not the subset:
    a resumed run redraws the same subset.

    Args:
        keep_fraction (float, optional): fraction of the samples in the subset, in ``(0, 1]``.
        subset_size (int, optional): number of samples in the subset. Give exactly one.
        seed (int, optional): draw the subset from ``torch.Generator().manual_seed(seed)``
            instead of the first epoch's generator.
    """

    def __init__(
        self,
        keep_fraction: float | None = None,
        *,
        subset_size: int | None = None,
        seed: int | None = None,
    ) -> None:
        if (keep_fraction is None) == (subset_size is None):
            raise ValueError(
                "give exactly one of keep_fraction and subset_size, got "
                f"keep_fraction={keep_fraction!r} and subset_size={subset_size!r}"
            )
        if keep_fraction is not None:
            keep_fraction = check_fraction(
                "keep_fraction", keep_fraction, low_open=True, high_open=False
            )
        if subset_size is not None:
            if isinstance(subset_size, bool) or not isinstance(subset_size, int):
                raise TypeError(f"subset_size must be an int, got {type(subset_size).__name__}")
            if subset_size < 0:
                raise ValueError(f"Invalid subset_size {subset_size}, it should be >= 0")
        self.keep_fraction = keep_fraction
        self.subset_size = subset_size
        self.seed = seed
        self._generator_state: Tensor | None = None
        self._kept: Tensor | None = None

    def size_for(self, num_samples: int) -> int:
        """Samples in the subset for a dataset of ``num_samples``."""
        if self.subset_size is not None:
            if self.subset_size > num_samples:
                raise ValueError(
                    f"Invalid subset_size {self.subset_size}: the dataset has {num_samples} samples"
                )
            return self.subset_size
        return round((self.keep_fraction or 0.0) * num_samples)

    def _subset(self, num_samples: int, generator: torch.Generator) -> Tensor:
        if self._generator_state is None:
            if self.seed is not None:
                generator = torch.Generator().manual_seed(self.seed)
            check_generator(generator)
            self._generator_state = generator.get_state()
        if self._kept is None or self._kept.numel() != self.size_for(num_samples):
            own = torch.Generator()
            own.set_state(self._generator_state)
            permutation = torch.randperm(num_samples, generator=own)
            self._kept = permutation[: self.size_for(num_samples)]
        return self._kept

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """The fixed subset (drawn on the first call); consumes none of later epochs' draws."""
        num_samples = scores.numel()
        kept = self._subset(num_samples, generator)
        status = status_of(kept, num_samples, scores.device)
        return Selection(status, 1.0, float("nan"), count_scored(scores), 0)

    def state_dict(self) -> dict[str, Any]:
        """The state of the generator the subset was drawn from (``None`` before the draw)."""
        state = self._generator_state
        return {
            "version": _STATE_VERSION,
            "generator_state": None if state is None else state.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output: the next plan redraws the same subset."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"StaticRandom state has version {state.get('version')!r}, expected "
                f"{_STATE_VERSION}"
            )
        saved = state.get("generator_state")
        if saved is not None and not (isinstance(saved, Tensor) and saved.dtype == torch.uint8):
            raise ValueError("StaticRandom state: generator_state must be a uint8 tensor or None")
        self._generator_state = None if saved is None else saved.clone()
        self._kept = None

    def __repr__(self) -> str:
        size = (
            f"keep_fraction={self.keep_fraction}"
            if self.keep_fraction is not None
            else f"subset_size={self.subset_size}"
        )
        return f"StaticRandom({size}{'' if self.seed is None else f', seed={self.seed}'})"
