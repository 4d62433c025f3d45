"""The score table: each sample's latest loss (``nan`` until first scored)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .distributed import PendingReduce

__all__ = ["ScoreTable"]

_FLOAT32_MAX = torch.finfo(torch.float32).max


class ScoreTable:
    """Latest score per sample, 4 bytes a sample, living on the device of the losses.

    Recording never synchronises host and device: non-finite scores are skipped and counted in
    a device tensor that is read once per epoch (:meth:`pop_counts`).

    Args:
        num_samples (int): dataset size.
        track_updates (bool): keep a mask of samples recorded since the last merge, needed
            to combine the tables of several ranks (:meth:`start_merge`). Default ``False``.
        momentum (float): ``0`` (default) stores the latest score, InfoBatch's definition;
            ``m`` in ``(0, 1)`` stores an exponential moving average ``m * old + (1 - m) *
            new`` (a sample's first score is stored as it is).
    """

    def __init__(
        self, num_samples: int, track_updates: bool = False, momentum: float = 0.0
    ) -> None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"score_momentum must be a float, got {type(momentum).__name__}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"Invalid score_momentum {momentum}, score_momentum should be in the interval "
                "[0, 1) (0 = the latest loss, InfoBatch's score)"
            )
        self.momentum = float(momentum)
        self.values = torch.full((num_samples,), float("nan"), dtype=torch.float32)
        self._finite = torch.zeros((), dtype=torch.int64)  # finite scores received (on device)
        self._saturated = torch.zeros((), dtype=torch.int64)  # float64 scores beyond float32
        self._invalid = torch.zeros((), dtype=torch.int64)  # entries marked not valid
        self._received = 0  # scores received, finite or not
        self._pending: tuple[Tensor, PendingReduce] | None = None  # a merge under way
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
        self._saturated = self._saturated.to(device)
        self._invalid = self._invalid.to(device)
        if self._updated is not None:
            self._updated = self._updated.to(device)

    def record(self, indices: Tensor, scores: Tensor, valid: Tensor | None = None) -> None:
        """Store ``scores`` (any float dtype) for ``indices``; non-finite scores are skipped.

        Entries where ``valid`` (bool, optional) is ``False`` are not recorded and not counted.

        Finite scores beyond float32's range (possible in float64) are stored as the largest
        float32 of their sign and counted (:meth:`pop_counts`), never dropped silently.
        """
        scores = scores.detach()
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
        previous = self.values.index_select(0, indices)
        if self.momentum:
            average = previous * self.momentum + scores * (1.0 - self.momentum)
            scores = torch.where(torch.isnan(previous), scores, average)
        recorded = torch.where(finite, scores, previous)
        self.values.index_put_((indices,), recorded)
        self._finite.add_(torch.count_nonzero(finite))
        self._received += scores.numel()
        if self._updated is not None:
            self._updated[indices] = self._updated.index_select(0, indices) | finite

    @property
    def has_counts(self) -> bool:
        """Scores were recorded since the last :meth:`pop_counts`."""
        return self._received > 0

    def pop_counts(self) -> tuple[int, int]:
        """Non-finite scores skipped and out-of-range scores saturated since the last call.

        One host-device synchronisation; call it once per epoch.
        """
        counters = torch.stack([self._finite, self._saturated, self._invalid])
        finite, saturated, invalid = (int(v) for v in counters.tolist())
        nonfinite = self._received - finite - invalid
        for counter in (self._finite, self._saturated, self._invalid):
            counter.zero_()
        self._received = 0
        return nonfinite, saturated

    @property
    def merge_pending(self) -> bool:
        """A merge was started and not finished yet."""
        return self._pending is not None

    def start_merge(self, start_all_reduce_max: Callable[[Tensor], PendingReduce]) -> None:
        """Start combining the updates of all ranks since the last merge (one element-wise max).

        Every rank contributes the scores it recorded (``-inf`` elsewhere); samples recorded on
        no rank keep their value. Returns at once; :meth:`finish_merge` applies the result.
        No score may be recorded in between.
        """
        if self._updated is None:
            raise RuntimeError("start_merge() needs a ScoreTable built with track_updates=True")
        if self._pending is not None:
            raise RuntimeError("a merge is already under way; finish_merge() first")
        contribution = torch.where(self._updated, self.values, float("-inf"))
        self._pending = (contribution, start_all_reduce_max(contribution))

    def finish_merge(self) -> None:
        """Wait for the merge started by :meth:`start_merge` and apply it (no-op if none)."""
        if self._pending is None:
            return
        contribution, pending = self._pending
        self._pending = None
        pending.wait()
        assert self._updated is not None
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
