"""Pieces the integrations share (torch only): finding the sampler, all-rank checkpoint state."""

from __future__ import annotations

from typing import Any

from torch.utils.data import BatchSampler, DataLoader

from ..sampler import InfoBatchSampler

__all__ = ["infobatch_sampler_of", "load_rank_state", "rank_states"]


def infobatch_sampler_of(
    loader: DataLoader[Any], caller: str, *, keep_steps: bool = False
) -> InfoBatchSampler:
    """The ``InfoBatchSampler`` behind a ``DataLoader``; else a ``TypeError`` naming ``caller``.

    ``keep_steps``: whether ``caller`` takes a sampler with ``keep_steps=True`` (its loader
    built with ``batch_sampler=dataset.batch_sampler``); if not, such a sampler is refused.
    """
    candidates = [loader.sampler, getattr(loader.batch_sampler, "sampler", None)]
    if isinstance(loader.sampler, BatchSampler):
        candidates.append(loader.sampler.sampler)
    for sampler in candidates:
        if isinstance(sampler, InfoBatchSampler):
            if sampler.keep_steps and not keep_steps:
                raise ValueError(
                    f"{caller} does not take an InfoBatch with keep_steps=True yet (its smaller "
                    "batches are tested in plain PyTorch loops, with Accelerate's "
                    "prepare_loader and with Lightning's InfoBatchCallback only); build "
                    "InfoBatch without keep_steps here"
                )
            return sampler
    raise TypeError(
        f"{caller} expects a DataLoader built with sampler=<InfoBatch>.sampler, got a "
        f"DataLoader whose sampler is {type(loader.sampler).__name__}"
    )


def rank_states(sampler: InfoBatchSampler) -> dict[str, Any]:
    """``{"world_size": W, "ranks": [state]}``: one state that resumes every rank exactly.

    Call it on every rank (checkpoint code that runs everywhere): under several processes the
    state holds every rank's scores not yet merged across ranks (``state_dict(all_ranks=True)``,
    three small ``all_gather`` calls on infobatch's own process group).
    """
    return {"world_size": sampler.num_replicas, "ranks": [sampler.state_dict(all_ranks=True)]}


def load_rank_state(sampler: InfoBatchSampler, state: dict[str, Any]) -> None:
    """Load this rank's part of :func:`rank_states` output (the only one at a boundary).

    A mid-epoch state needs the same number of processes (the sampler raises otherwise).
    """
    parts = state["ranks"]
    rank = sampler.rank
    mine = parts[rank] if len(parts) > 1 and rank < len(parts) else parts[0]
    sampler.load_state_dict(mine)
