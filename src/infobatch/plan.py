"""An epoch plan: the shuffled kept indices and each sample's weight class."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .rng import check_generator, random_permutation
from .rule import (
    KEPT,
    PRUNED,
    UPWEIGHTED,
    KeepAll,
    PruningRule,
    Selection,
    chunk_size,
    split_in_chunks,
)

__all__ = ["EpochPlan", "build_plan", "index_dtype", "PRUNED", "KEPT", "UPWEIGHTED"]


def index_dtype(num_samples: int) -> torch.dtype:
    """``int32`` while every index fits (half the memory of ``int64``), else ``int64``."""
    return torch.int32 if num_samples <= torch.iinfo(torch.int32).max else torch.int64


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch trains on. Identical on every rank given the same scores and generator.

    Attributes:
        epoch: the epoch index (0-based).
        order: kept sample indices in training order (``int32`` or ``int64``).
        status: int8 ``[N]``: ``PRUNED`` (0), ``KEPT`` (1) or ``UPWEIGHTED`` (2).
        weight: loss multiplier of ``UPWEIGHTED`` samples; every other kept sample has 1.
        threshold: score threshold of the rule (``nan`` if none).
        num_scored: samples that had a score when the plan was made.
        num_well_learned: scored samples below the threshold.
        pruning: whether the pruning rule decided the epoch: it ran on at least one scored
            sample, or pruned a sample without scores (a random baseline). ``False`` in
            annealing epochs and when nothing was scored yet (epoch 0), whose plans keep all.
        epoch_size: sample passes of the full epoch: the dataset size, or the draws of a
            user's sampling (:class:`~infobatch.WeightedSampling`), whose ``order`` may then
            repeat a sample. ``None`` means the dataset size.
        sample_weights: float32 ``[N]`` per-sample loss weights of the rule
            (:attr:`Selection.sample_weights`), used for every kept sample instead of
            ``weight``/1; ``None`` when the rule gave none. ``weight`` is then a summary.
    """

    epoch: int
    order: Tensor
    status: Tensor
    weight: float
    threshold: float
    num_scored: int
    num_well_learned: int
    pruning: bool
    epoch_size: int | None = None
    sample_weights: Tensor | None = None

    @property
    def num_samples(self) -> int:
        """Sample passes of the full epoch (the dataset size unless draws were composed)."""
        return self.status.numel() if self.epoch_size is None else self.epoch_size

    @property
    def num_kept(self) -> int:
        """Sample passes trained this epoch (before any distributed padding)."""
        return self.order.numel()

    @property
    def num_pruned(self) -> int:
        """Sample passes skipped this epoch."""
        return self.num_samples - self.num_kept

    def weights_of(self, indices: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Loss weights of ``indices`` (a tensor on the plan's device), exact in ``dtype``: the
        entries of ``sample_weights`` when the plan has them, else ``weight`` for
        ``UPWEIGHTED`` samples and 1 for the others."""
        if self.sample_weights is not None:
            return self.sample_weights.index_select(0, indices).to(dtype)
        upweighted = self.status.index_select(0, indices) == UPWEIGHTED
        weights = torch.full(upweighted.shape, self.weight, dtype=dtype, device=indices.device)
        return weights.masked_fill_(~upweighted, 1.0)

    def share(self, rank: int, num_replicas: int) -> Tensor:
        """Rank ``rank``'s part of ``order``: every ``num_replicas``-th index, starting at ``rank``.

        The order is first padded by repeating its head so all ranks get
        ``ceil(num_kept / num_replicas)`` indices (the same number of batches on every rank,
        as :class:`torch.utils.data.DistributedSampler` does). With one replica it is ``order``.
        """
        if num_replicas == 1:
            return self.order
        per_rank = math.ceil(self.num_kept / num_replicas)
        total = per_rank * num_replicas
        padded = self.order
        if total > self.num_kept and self.num_kept > 0:
            repeats = math.ceil(total / self.num_kept)
            padded = self.order.repeat(repeats)[:total]
        return padded[rank:total:num_replicas].contiguous()

    def to(self, device: torch.device) -> EpochPlan:
        """The same plan with its tensors on ``device``."""
        return EpochPlan(
            self.epoch,
            self.order.to(device),
            self.status.to(device),
            self.weight,
            self.threshold,
            self.num_scored,
            self.num_well_learned,
            self.pruning,
            self.epoch_size,
            None if self.sample_weights is None else self.sample_weights.to(device),
        )


def build_plan(
    epoch: int, scores: Tensor, rule: PruningRule | None, generator: torch.Generator
) -> EpochPlan:
    """Plan ``epoch``: apply ``rule`` (``None`` = keep all) and shuffle the kept samples.

    The kept indices, in ascending order, are put in a uniformly random order by one
    permutation of their count: the same distribution as filtering a permutation of all ``N``
    samples, at a fraction of the cost. O(N), no sort, and no ``N``-sized ``int64`` temporaries.

    Deterministic given ``generator``, which must be a CPU generator (as
    :func:`~infobatch.epoch_generator` makes): every random draw is made on the CPU and its
    result copied to ``scores.device``, where the plan's tensors live, so the same
    ``(generator state, scores)`` give the same plan on any device. (One caveat outside the
    randomness: devices sum the float64 mean in different orders; its last bit can differ,
    which moves the float32 threshold only if the mean lies within that rounding of a float32
    number, and then changes only samples whose score is exactly that number.) On an
    accelerator, drawing on the CPU costs one host-to-device copy per epoch of 1 byte per sample
    (the coin flips' mask) and 4 bytes per kept sample (the shuffle's ``int32`` permutation,
    drawn by the CPU's ``randperm``).

    Memory: besides the plan itself (the ``int8`` status, 1 byte per sample, and the ``int32``
    order, 4 bytes per kept sample), the peak holds one more ``int32`` array of the kept count
    (the kept indices, freed before returning) and chunk-sized temporaries.

    Raises:
        ValueError: ``generator`` is not a CPU generator, or the rule's status is not one
            ``PRUNED``/``KEPT``/``UPWEIGHTED`` per sample on ``scores.device``.
    """
    check_generator(generator)
    n = scores.numel()
    dtype = index_dtype(n)
    selection: Selection = (rule or KeepAll()).select(scores, generator)
    _check_status(selection.status, scores)
    if rule is None:
        order = random_permutation(n, generator, scores.device, dtype)
    else:
        order = _shuffled_kept(selection.status, generator, dtype)
    # A rule that saw no score and pruned nothing (epoch 0) did not prune: full data.
    pruning = rule is not None and (selection.num_scored > 0 or order.numel() < n)
    return EpochPlan(
        epoch=epoch,
        order=order,
        status=selection.status,
        weight=selection.weight,
        threshold=selection.threshold,
        num_scored=selection.num_scored,
        num_well_learned=selection.num_well_learned,
        pruning=pruning,
        sample_weights=selection.sample_weights,
    )


def _check_status(status: Tensor, scores: Tensor) -> None:
    """A rule's status must be ``[N]``, on the scores' device, valued in ``{0, 1, 2}``."""
    if status.shape != scores.shape or status.device != scores.device:
        raise ValueError(
            f"the rule's status has shape {tuple(status.shape)} on {status.device}; it must "
            f"have one entry per sample, shape {tuple(scores.shape)}, on {scores.device}"
        )
    if status.numel():
        low, high = (int(v) for v in torch.aminmax(status))
        if low < PRUNED or high > UPWEIGHTED:
            raise ValueError(
                f"the rule's status holds values from {low} to {high}; each must be PRUNED "
                f"({PRUNED}), KEPT ({KEPT}) or UPWEIGHTED ({UPWEIGHTED})"
            )


def _kept_indices(status: Tensor, dtype: torch.dtype) -> Tensor:
    """Ascending indices of ``status``'s nonzero (not ``PRUNED``) entries as ``dtype``.

    Found a chunk at a time: ``torch.nonzero`` returns ``int64`` (and ``masked_select``
    allocates several ``N``-sized buffers); chunking bounds the ``int64`` temporary to a chunk.
    """
    kept = torch.empty(int(torch.count_nonzero(status)), dtype=dtype, device=status.device)
    start = filled = 0
    for chunk in split_in_chunks(status):
        part = torch.nonzero(chunk).view(-1)
        torch.add(part, start, out=kept[filled : filled + part.numel()])
        filled += part.numel()
        start += chunk.numel()
    return kept


def _shuffled_kept(status: Tensor, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """The indices of ``status``'s kept entries in a uniformly random order from ``generator``.

    ``order[i] = kept[permutation[i]]``, gathered in place into the permutation a chunk at a
    time, so at most the kept indices, the permutation and one chunk are alive at once
    (``8 K`` bytes plus a chunk, for ``K`` kept samples and ``int32`` indices).
    """
    kept = _kept_indices(status, dtype)
    order = random_permutation(kept.numel(), generator, kept.device, dtype)
    buffer_size = min(chunk_size(order.numel(), order.device), order.numel())
    gathered = torch.empty(buffer_size, dtype=dtype, device=order.device)
    for chunk in split_in_chunks(order):
        part = gathered[: chunk.numel()]
        torch.index_select(kept, 0, chunk, out=part)
        chunk.copy_(part)
    return order
