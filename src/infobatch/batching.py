"""Batches of an epoch's plan: full data's number of optimizer steps in pruned epochs.

A pruned epoch holds fewer samples, so at a fixed batch size it makes fewer optimizer steps.
On a schedule limited by its number of steps (a few epochs, a model still improving when it
ends) that is what InfoBatch loses accuracy by (``benchmarks/step_limited.py``). With
``keep_steps=True`` the sampler instead cuts each epoch into as many batches as full data
would make on this rank, their sizes differing by at most one (:class:`BatchLayout`): the
saving stays in samples, the optimizer steps stay those of full data.
:class:`EpochBatchSampler` hands those batches to a ``DataLoader`` (``batch_sampler=``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch.utils.data import Sampler

if TYPE_CHECKING:
    from .sampler import InfoBatchSampler

__all__ = ["BatchLayout", "EpochBatchSampler", "full_data_share"]


def full_data_share(epoch_passes: int, num_replicas: int) -> int:
    """Samples one rank trains in a full epoch: ``ceil(epoch_passes / num_replicas)`` (padded,
    as ``DistributedSampler`` gives)."""
    return math.ceil(epoch_passes / num_replicas)


@dataclass(frozen=True)
class BatchLayout:
    """Where an epoch of ``length`` samples on one rank is cut into batches.

    Plain (``balanced_batches=0``): batches of ``batch_size``, the last one shorter.
    Balanced: ``balanced_batches`` batches whose sizes differ by at most one, the larger ones
    first (what ``keep_steps=True`` gives a pruned epoch, so that it makes full data's number
    of steps).
    """

    length: int
    batch_size: int
    balanced_batches: int = 0

    @classmethod
    def keeping_steps(cls, length: int, full_share: int, batch_size: int) -> BatchLayout:
        """The layout of an epoch of ``length`` samples that makes full data's number of
        batches, ``ceil(full_share / batch_size)``: plain batching when the epoch is not
        smaller than full data's, else balanced over that many batches (one per sample when
        there are fewer samples than batches)."""
        if length >= full_share or length == 0:
            return cls(length, batch_size)
        return cls(length, batch_size, min(math.ceil(full_share / batch_size), length))

    @property
    def num_batches(self) -> int:
        """Batches in the whole epoch."""
        if self.balanced_batches:
            return self.balanced_batches
        return math.ceil(self.length / self.batch_size)

    @property
    def largest(self) -> int:
        """Samples in the epoch's largest batch."""
        if self.balanced_batches:
            return math.ceil(self.length / self.balanced_batches)
        return min(self.batch_size, self.length)

    def batch_at(self, position: int) -> tuple[int, int]:
        """``(batch number, its size)`` of the batch that starts at or holds ``position``."""
        if not self.balanced_batches:
            number = position // self.batch_size
            return number, min(self.batch_size, self.length - number * self.batch_size)
        small, extra = divmod(self.length, self.num_batches)
        if position < extra * (small + 1):
            return position // (small + 1), small + 1
        return extra + (position - extra * (small + 1)) // small, small

    def size_at(self, position: int) -> int:
        """Samples in the batch that starts at ``position``."""
        return self.batch_at(position)[1]

    def batches_from(self, position: int) -> int:
        """Batches left in the epoch when ``position`` samples (whole batches) are done."""
        if position >= self.length:
            return 0
        return self.num_batches - self.batch_at(position)[0]


class EpochBatchSampler(Sampler[list[int]]):
    """The sampler's indices in each epoch's batches, for
    ``DataLoader(dataset, batch_sampler=dataset.batch_sampler)``.

    The batches are :attr:`InfoBatchSampler.batch_layout`'s: batches of the sampler's
    ``batch_size``, or with ``keep_steps=True`` full data's number of batches in every epoch.
    Its length is the number of batches the next iteration yields (asked before an epoch, it
    plans it), so ``len(loader)`` is exact; a run resumed mid-epoch yields the rest of the
    epoch's batches, cut at the same places. It holds no state of its own: checkpoint the
    dataset or sampler.
    """

    def __init__(self, sampler: InfoBatchSampler) -> None:
        if sampler.batch_size is None:
            raise ValueError(
                "the batch sampler needs the batch size: pass batch_size= to InfoBatch (the "
                "loader's batch size per rank for full data)"
            )
        self.sampler = sampler

    def __len__(self) -> int:
        remaining = len(self.sampler)  # plans the next epoch if one is due
        layout = self.sampler.batch_layout
        return layout.batches_from(layout.length - remaining)

    def __iter__(self) -> Iterator[list[int]]:
        indices = iter(self.sampler)  # plans the epoch before its layout is read
        layout = self.sampler.batch_layout
        position = self.sampler.position
        batch: list[int] = []
        size = layout.size_at(position)
        for index in indices:
            batch.append(index)
            if len(batch) == size:
                yield batch
                position += size
                batch = []
                size = layout.size_at(position) if position < layout.length else 0
        if batch:
            yield batch

    def __repr__(self) -> str:
        return f"EpochBatchSampler({self.sampler!r})"
