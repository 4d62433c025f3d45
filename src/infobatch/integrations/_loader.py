"""Pieces the integrations share (torch only): finding the sampler, all-rank checkpoint state."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader

from ..lifecycle import Phase
from ..sampler import InfoBatchSampler

__all__ = ["infobatch_sampler_of", "load_rank_state", "mid_epoch", "rank_states"]


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


def mid_epoch(sampler: InfoBatchSampler) -> bool:
    """Whether the sampler stands inside an epoch: losses of it arrived, not all of them.

    Also true for a plan loaded from a mid-epoch checkpoint and not trained further yet. At
    that point each rank's scores of the epoch are its own (they are merged at the epoch's
    end). The answer is the same on every rank, which moves in step with the others.
    """
    phase = sampler.phase
    return phase is Phase.TRAINING or (phase is Phase.READY and sampler.position > 0)


def rank_states(sampler: InfoBatchSampler) -> dict[str, Any]:
    """``{"world_size": W, "ranks": [state of rank 0, ...]}``: every rank's state mid-epoch.

    Call it on every rank (checkpoint code that runs everywhere): mid-epoch under several
    processes it runs one ``all_gather_object``; at an epoch boundary all ranks hold the same
    table and this rank's state is the one entry.
    """
    state = sampler.state_dict()
    world = sampler.num_replicas
    if not mid_epoch(sampler) or world == 1 or not dist.is_initialized():
        return {"world_size": world, "ranks": [state]}
    states: list[Any] = [None] * world
    dist.all_gather_object(states, state)
    return {"world_size": world, "ranks": states}


def load_rank_state(sampler: InfoBatchSampler, state: dict[str, Any]) -> None:
    """Load this rank's part of :func:`rank_states` output (the only one at a boundary).

    A mid-epoch state needs the same number of processes (the sampler raises otherwise).
    """
    parts = state["ranks"]
    rank = sampler.rank
    mine = parts[rank] if len(parts) > 1 and rank < len(parts) else parts[0]
    sampler.load_state_dict(mine)
