"""IES (Yuan et al., ICLR 2025): stop training a sample once its loss curve has flattened."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..context import EpochContext
from ..rule import KEPT, PRUNED, Selection, count_scored
from ._common import cpu_scores

__all__ = ["IES"]

_STATE_VERSION = 1


class IES:
    """Instance-dependent Early Stopping: exclude the samples whose loss has settled.

    Method note (Yuan, Lin, Feng, Han and Liu, "Instance-dependent Early Stopping", ICLR
    2025, arXiv 2502.07547; written from the paper's abstract and summaries and the authors'
    README and CIFAR script, none of their code copied). The paper calls a sample *mastered*
    when the second-order difference of its loss across epochs stays near zero,
    ``|L_t - 2 L_(t-1) + L_(t-2)| < delta``, one threshold for all samples (default ``1e-3``,
    tuned in ``[1e-5, 1e-1]``; the authors double it for CIFAR-100). Mastered samples are
    excluded from back-propagation; the criterion is re-evaluated every epoch, and in the
    authors' code the excluded samples still get a forward pass each epoch, so their loss is
    still computed and a sample whose loss moves again comes back. The released script also
    smooths: it averages ``|second difference|`` over the last 3 epochs (``window=3`` here).

    Implemented: before each pruned epoch the rule takes each score recorded since it last
    looked (its iteration, :attr:`~infobatch.EpochContext.score_iterations`, changed) as a
    new observation of that sample's loss curve, and keeps per sample the last two
    observations and the last ``window`` absolute second differences. A sample is excluded
    (``PRUNED``) exactly when it has ``window`` second differences and their mean is below
    ``threshold`` (strictly); every other sample, those with fewer than three observations
    included, is kept with weight 1. Biased by design (mastered samples stop contributing),
    so ``unbiased=False``.

    What differs, and why: this library runs no forward pass on pruned samples, so an excluded
    sample gets no new loss; its score stays its last recorded loss. Reading that unchanged
    score as a new observation would fake a second difference of ``-(L_t - L_(t-1))`` (an
    exclusion followed by a comeback every other epoch), so a score not recorded again is
    *not* an observation: the sample's history, and with it its exclusion, stays as it was.
    An excluded sample therefore stays excluded until it is trained again (a full-data
    annealing epoch), true per-instance early stopping, where the paper would re-admit it when
    its forward loss moved. (Used outside the sampler without ``score_iterations``, a score
    that changed counts as recorded; a repeated loss then is no observation.) The paper saves
    back-propagation only (it still pays the forward pass); here an excluded sample costs
    nothing. Scores kept as a moving average (``score_momentum``) make the curve the
    average's. The first exclusions come at the fourth pruned epoch (three
    observations are needed, and epoch 0 has no scores). Cost: O(N) per epoch; state
    ``(3 + window) * 4`` bytes per sample on the CPU, in :meth:`state_dict`, so a resumed run
    plans exactly as the uninterrupted one; planning an epoch again (a resumed run,
    ``set_epoch``) does not count its scores twice. It asks the sampler for the iteration of
    each score (``needs_score_iterations``: 4 bytes per sample there, and 4 here).

    Args:
        threshold (float, optional): the bound ``delta`` on the mean absolute second
            difference, finite and ``> 0``. Default: ``1e-3``.
        window (int, optional): how many of the latest second differences are averaged,
            ``>= 1``; ``1`` is the paper's criterion, ``3`` the authors' script. Default: ``1``.
    """

    #: The sampler keeps the iteration of every score for this rule (EpochContext).
    needs_score_iterations = True

    def __init__(self, threshold: float = 1e-3, window: int = 1) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"Invalid threshold {threshold}, threshold should be finite and > 0")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"Invalid window {window!r}, window should be an int >= 1")
        self.threshold = float(threshold)
        self.window = window
        self.last: Tensor | None = None  # the latest observed score (nan: none)
        self.before: Tensor | None = None  # the observation before it
        self.curvature: Tensor | None = (
            None  # [window, N] latest |second differences|, oldest first
        )
        self.stamp: Tensor | None = None  # int32 iteration of the latest observation (-2: none)
        self.updated_epoch = -1

    def observe(self, scores: Tensor, epoch: int, iterations: Tensor | None = None) -> None:
        """Take the scores recorded since the last call (their ``iterations`` changed; without
        them, their value changed) as new observations."""
        if epoch <= self.updated_epoch and self.last is not None:
            return  # this epoch's scores were already taken (planned again, or resumed)
        values = cpu_scores(scores)
        n = values.numel()
        if self.last is None or self.last.numel() != n:
            self.last = torch.full((n,), math.nan)
            self.before = torch.full((n,), math.nan)
            self.curvature = torch.full((self.window, n), math.nan)
            self.stamp = torch.full((n,), -2, dtype=torch.int32)
        assert self.before is not None and self.curvature is not None and self.stamp is not None
        if iterations is None:
            new = ~torch.isnan(values) & ~(values == self.last)  # nan != nan: first scores count
        else:
            stamps = iterations.to("cpu", torch.int32)
            new = ~torch.isnan(values) & (stamps != self.stamp)
            self.stamp[new] = stamps[new]
        second = values[new] - 2.0 * self.last[new] + self.before[new]  # nan until 3 observed
        rows = self.curvature[:, new]
        self.curvature[:, new] = torch.cat([rows[1:], second.abs().unsqueeze(0)])
        self.before[new] = self.last[new]
        self.last[new] = values[new]
        self.updated_epoch = epoch

    def mastered(self) -> Tensor:
        """bool ``[N]``: samples whose mean of the last ``window`` ``|second differences|`` is
        below ``threshold`` (``False`` while fewer are known)."""
        if self.curvature is None:
            raise RuntimeError("IES.mastered() before any observation; plan an epoch first")
        mean = self.curvature.double().mean(dim=0)  # nan while one is missing
        return mean < self.threshold

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """Observe the new scores, then exclude the mastered samples; no randomness."""
        self.observe(scores, context.epoch, context.score_iterations)
        mastered = self.mastered()
        status = torch.full(mastered.shape, KEPT, dtype=torch.int8).masked_fill_(mastered, PRUNED)
        num_mastered = int(mastered.sum())
        return Selection(
            status.to(scores.device), 1.0, self.threshold, count_scored(scores), num_mastered
        )

    def state_dict(self) -> dict[str, Any]:
        """The last two observations, the latest second differences, the last epoch seen."""

        def copy(value: Tensor | None) -> Tensor | None:
            return None if value is None else value.clone()

        return {
            "version": _STATE_VERSION,
            "last": copy(self.last),
            "before": copy(self.before),
            "curvature": copy(self.curvature),
            "stamp": copy(self.stamp),
            "updated_epoch": self.updated_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (tensors all given, or all ``None``), validated."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            found = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"IES state has version {found!r}, expected {_STATE_VERSION}")
        given = [state.get(key) for key in ("last", "before", "curvature", "stamp")]
        if all(t is None for t in given):
            self.last = self.before = self.curvature = self.stamp = None
        else:
            tensors = [t for t in given if isinstance(t, Tensor)]
            if len(tensors) != len(given):
                raise ValueError("IES state: last, before, curvature and stamp must all be tensors")
            last, before, curvature = (t.detach().to("cpu", torch.float32) for t in tensors[:3])
            stamp = tensors[3].detach().to("cpu", torch.int32)
            n = last.numel()
            shapes = (last.shape, before.shape, stamp.shape, curvature.shape)
            if shapes != ((n,), (n,), (n,), (self.window, n)):
                raise ValueError(
                    f"IES state: last, before, stamp and curvature of shapes "
                    f"{[tuple(s) for s in shapes]} do not fit window={self.window} and {n} "
                    "samples; build the rule with the settings it was saved with"
                )
            self.last, self.before, self.curvature = last.clone(), before.clone(), curvature.clone()
            self.stamp = stamp.clone()
        self.updated_epoch = int(state["updated_epoch"])

    def __repr__(self) -> str:
        return f"IES(threshold={self.threshold}, window={self.window})"
