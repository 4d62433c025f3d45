"""The score table: each sample's latest loss (``nan`` until first scored)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["ScoreTable"]


class ScoreTable:
    """Latest score per sample, 4 bytes a sample, living on the device of the losses.

    Recording never synchronises host and device: non-finite scores are skipped and counted in
    a device tensor that is read once per epoch (:meth:`pop_nonfinite_count`).

    Args:
        num_samples (int): dataset size.
        track_updates (bool): keep a mask of samples recorded since the last :meth:`merge`,
            needed to combine the tables of several ranks. Default ``False``.
    """

    def __init__(self, num_samples: int, track_updates: bool = False) -> None:
        self.values = torch.full((num_samples,), float("nan"), dtype=torch.float32)
        self._finite = torch.zeros((), dtype=torch.int64)  # finite scores received (on device)
        self._received = 0  # scores received, finite or not
        self._updated: Tensor | None = (
            torch.zeros(num_samples, dtype=torch.bool) if track_updates else None
        )

    @property
    def device(self) -> torch.device:
        """Where the table lives."""
        return self.values.device

    def to(self, device: torch.device) -> None:
        """Move the table (in place) to ``device``."""
        self.values = self.values.to(device)
        self._finite = self._finite.to(device)
        if self._updated is not None:
            self._updated = self._updated.to(device)

    def record(self, indices: Tensor, scores: Tensor) -> None:
        """Store ``scores`` (any float dtype) for ``indices``; non-finite scores are skipped."""
        scores = scores.detach()
        if scores.dtype != torch.float32 or scores.device != self.device:
            scores = scores.to(device=self.device, dtype=torch.float32)
        finite = torch.isfinite(scores)
        recorded = torch.where(finite, scores, self.values.index_select(0, indices))
        self.values.index_put_((indices,), recorded)
        self._finite.add_(torch.count_nonzero(finite))
        self._received += scores.numel()
        if self._updated is not None:
            self._updated[indices] = self._updated.index_select(0, indices) | finite

    def pop_nonfinite_count(self) -> int:
        """Non-finite scores skipped since the last call (one host sync)."""
        count = self._received - int(self._finite)
        self._finite.zero_()
        self._received = 0
        return count

    def merge(self, all_reduce_max: Callable[[Tensor], None]) -> None:
        """Combine the updates of all ranks since the last merge with one element-wise max.

        Every rank contributes the scores it recorded (``-inf`` elsewhere); samples recorded on
        no rank keep their value. Afterwards all ranks hold identical tables.
        """
        if self._updated is None:
            raise RuntimeError("merge() needs a ScoreTable built with track_updates=True")
        contribution = torch.where(self._updated, self.values, float("-inf"))
        all_reduce_max(contribution)
        # In place, reusing the update mask: one N-float allocation per merge, not two.
        unrecorded = torch.eq(contribution, float("-inf"), out=self._updated)
        self.values = torch.where(unrecorded, self.values, contribution, out=contribution)
        self._updated.zero_()

    def load(self, values: Tensor) -> None:
        """Replace all scores (a checkpoint's), keeping the table's device."""
        if values.shape != self.values.shape:
            raise ValueError(
                f"checkpoint holds {values.numel()} scores but the dataset has "
                f"{self.values.numel()} samples; resume with the same dataset"
            )
        self.values = values.detach().to(device=self.device, dtype=torch.float32).clone()
        if self._updated is not None:
            self._updated.zero_()
