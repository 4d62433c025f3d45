"""The little infobatch needs from ``torch.distributed``: who am I, one max-reduce, one check."""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import InfoBatchError

__all__ = ["Collectives", "TorchCollectives", "resolve_replicas"]


class Collectives(Protocol):
    """Cross-rank operations; swap in a fake to test several ranks in one process."""

    def all_reduce_max(self, tensor: Tensor) -> None:
        """In-place element-wise maximum over all ranks."""
        ...

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's copy of ``tensor`` (same shape on all ranks)."""
        ...

    @property
    def device(self) -> torch.device:
        """Device that tensors must be on for these collectives."""
        ...


class TorchCollectives:
    """:class:`Collectives` over an initialised ``torch.distributed`` process group.

    The device follows the backend: CUDA (current device) for NCCL, CPU otherwise.
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group
        backend = dist.get_backend(group)
        if backend == "nccl":
            self._device = torch.device("cuda", torch.cuda.current_device())
        else:
            self._device = torch.device("cpu")

    @property
    def device(self) -> torch.device:
        """Device the backend communicates from."""
        return self._device

    def all_reduce_max(self, tensor: Tensor) -> None:
        """``all_reduce`` with ``ReduceOp.MAX`` on a tensor moved to the backend's device."""
        if tensor.device == self._device:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
            return
        moved = tensor.to(self._device)
        dist.all_reduce(moved, op=dist.ReduceOp.MAX, group=self.group)
        tensor.copy_(moved)

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        """``all_gather`` into a list, one tensor per rank (on CPU)."""
        tensor = tensor.to(self._device)
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(out, tensor, group=self.group)
        return [t.cpu() for t in out]

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("TorchCollectives holds a process group and cannot be pickled")


def resolve_replicas(
    num_replicas: int | None, rank: int | None, group: Any = None
) -> tuple[int, int, Collectives | None]:
    """World size, rank and collectives, from the arguments or the initialised process group.

    As in :class:`torch.utils.data.DistributedSampler`, the process group is consulted only for
    arguments left as ``None``; without an initialised group the defaults are 1 replica, rank 0.
    """
    initialized = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size(group) if initialized else 1
    if rank is None:
        rank = dist.get_rank(group) if initialized else 0
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"Invalid num_replicas {num_replicas!r}, num_replicas should be >= 1")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(
            f"Invalid rank {rank!r}, rank should be in the interval [0, {num_replicas - 1}]"
        )
    collectives: Collectives | None = None
    if initialized and num_replicas > 1 and num_replicas == dist.get_world_size(group):
        collectives = TorchCollectives(group)
    return num_replicas, rank, collectives


def check_same_on_all_ranks(
    collectives: Collectives,
    names: Sequence[str],
    values: Iterable[int],
    float_names: Collection[str] = (),
) -> None:
    """Raise the same :class:`InfoBatchError` on every rank if any of ``values`` differ.

    One ``all_gather`` of a few integers, done once when the sampler is built. Values named in
    ``float_names`` are the int64 bit patterns of floats and are shown as floats in the error.
    """
    mine = torch.tensor(list(values), dtype=torch.int64)
    gathered = collectives.all_gather(mine)

    def shown(name: str, value: int) -> str:
        if name in float_names:
            return repr(struct.unpack("<d", struct.pack("<q", value))[0])
        return str(value)

    differing = [
        f"{name}: "
        + ", ".join(f"rank {r}={shown(name, int(t[i]))}" for r, t in enumerate(gathered))
        for i, name in enumerate(names)
        if any(int(t[i]) != int(gathered[0][i]) for t in gathered)
    ]
    if differing:
        raise InfoBatchError(
            "InfoBatch settings differ between ranks, so their epoch plans would differ and "
            "training would hang or train on wrong samples: "
            + "; ".join(differing)
            + ". Build InfoBatch with the same dataset length, num_epochs, prune_ratio, delta, "
            "seed and drop_last on every rank."
        )
