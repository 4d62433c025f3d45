"""Finding the InfoBatch sampler behind a ``DataLoader`` (torch only)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import BatchSampler, DataLoader

from ..sampler import InfoBatchSampler

__all__ = ["infobatch_sampler_of"]


def infobatch_sampler_of(loader: DataLoader[Any], caller: str) -> InfoBatchSampler:
    """The ``InfoBatchSampler`` behind a ``DataLoader``; else a ``TypeError`` naming ``caller``."""
    candidates = [loader.sampler, getattr(loader.batch_sampler, "sampler", None)]
    if isinstance(loader.sampler, BatchSampler):
        candidates.append(loader.sampler.sampler)
    for sampler in candidates:
        if isinstance(sampler, InfoBatchSampler):
            return sampler
    raise TypeError(
        f"{caller} expects a DataLoader built with sampler=<InfoBatch>.sampler, got a "
        f"DataLoader whose sampler is {type(loader.sampler).__name__}"
    )
