"""The little infobatch needs from ``torch.distributed``: who am I, one max-reduce, one check.

Every collective infobatch makes runs on a process group of its own, created with the sampler
(when every rank builds it), so it can never pair with a collective of the user's or of DDP:
one ``all_gather`` of the settings at construction, then one asynchronous ``all_reduce(MAX)``
of the scores per epoch.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import InfoBatchError
from .validation import SEED_LIMIT

__all__ = [
    "agree_on_settings",
    "float_bits",
    "Collectives",
    "PendingReduce",
    "TorchCollectives",
    "backend_device",
    "resolve_replicas",
    "settings_disagreement",
]


class PendingReduce(Protocol):
    """A started collective; :meth:`wait` blocks until the result is in the tensor."""

    def wait(self) -> None:
        """Block until done; raise if it failed or timed out."""
        ...


class Collectives(Protocol):
    """Cross-rank operations; swap in a fake to test several ranks in one process."""

    def start_all_reduce_max(self, tensor: Tensor) -> PendingReduce:
        """Start an in-place element-wise maximum over all ranks; returns at once."""
        ...

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's copy of ``tensor`` (same shape on all ranks)."""
        ...

    @property
    def device(self) -> torch.device:
        """Device that tensors must be on for these collectives."""
        ...


def backend_device(backend: str) -> torch.device:
    """The device a backend communicates from: the current CUDA device for NCCL, else CPU."""
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _TorchPending:
    """An ``async_op`` work item, waited for with a timeout, its result copied back."""

    def __init__(self, work: Any, sent: Tensor, target: Tensor, timeout: timedelta) -> None:
        self._work, self._sent, self._target, self._timeout = work, sent, target, timeout

    def wait(self) -> None:
        self._work.wait(self._timeout)
        if self._sent is not self._target:
            self._target.copy_(self._sent)


class TorchCollectives:
    """:class:`Collectives` over ``torch.distributed``, on a process group of their own.

    Build it on every rank at the same point (the sampler does, in its constructor): it
    creates a new process group over the ranks of ``group`` (default: all ranks) with the same
    backend. The device follows the backend: CUDA (current device) for NCCL, CPU otherwise.

    Args:
        group (ProcessGroup, optional): the ranks to span. Default: the default group.
        timeout (timedelta, optional): how long a rank waits for the others' part of a score
            merge before infobatch raises. Default: ``torch.distributed.default_pg_timeout``
            (30 minutes).
    """

    def __init__(self, group: Any = None, timeout: timedelta | None = None) -> None:
        self.timeout = timeout if timeout is not None else dist.default_pg_timeout
        backend = str(dist.get_backend(group))
        ranks = None if group is None else dist.get_process_group_ranks(group)
        self.group = dist.new_group(ranks=ranks, timeout=self.timeout, backend=backend)
        self._device = backend_device(backend)

    @property
    def device(self) -> torch.device:
        """Device the backend communicates from."""
        return self._device

    def start_all_reduce_max(self, tensor: Tensor) -> PendingReduce:
        """``all_reduce(MAX, async_op=True)`` on the backend's device, into ``tensor``."""
        sent = tensor if tensor.device == self._device else tensor.to(self._device)
        work = dist.all_reduce(sent, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return _TorchPending(work, sent, tensor, self.timeout)

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
) -> tuple[int, int, bool]:
    """World size, rank, and whether to merge over the initialised process group.

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
    merge = initialized and num_replicas > 1 and num_replicas == dist.get_world_size(group)
    return num_replicas, rank, merge


def gather_settings(collectives: Collectives, values: Sequence[int]) -> list[list[int]]:
    """Every rank's ``values`` (int64 each), by one ``all_gather``."""
    gathered = collectives.all_gather(torch.tensor(list(values), dtype=torch.int64))
    return [[int(v) for v in t.tolist()] for t in gathered]


def settings_disagreement(
    names: Sequence[str], gathered: Sequence[Sequence[int]], float_names: Collection[str] = ()
) -> str | None:
    """Describe the settings whose values differ between ranks, or ``None`` if all agree.

    Values named in ``float_names`` are the int64 bit patterns of floats, shown as floats.
    """

    def shown(name: str, value: int) -> str:
        if name in float_names:
            return repr(struct.unpack("<d", struct.pack("<q", value))[0])
        return str(value)

    differing = [
        f"{name}: "
        + ", ".join(f"rank {r}={shown(name, values[i])}" for r, values in enumerate(gathered))
        for i, name in enumerate(names)
        if any(values[i] != gathered[0][i] for values in gathered)
    ]
    return "; ".join(differing) if differing else None


def raise_if_disagree(
    names: Sequence[str], gathered: Sequence[Sequence[int]], float_names: Collection[str] = ()
) -> None:
    """Raise the same :class:`InfoBatchError` on every rank if any setting differs."""
    differing = settings_disagreement(names, gathered, float_names)
    if differing:
        raise InfoBatchError(
            "InfoBatch settings differ between ranks, so their epoch plans would differ and "
            f"training would hang or train on wrong samples: {differing}. Build InfoBatch with "
            "the same dataset length, num_epochs, prune_ratio, delta, seed, drop_last, "
            "sampling and batch_size on every rank."
        )


def float_bits(value: float) -> int:
    """The int64 with the bits of the float64 ``value`` (to compare floats exactly)."""
    return int(struct.unpack("<q", struct.pack("<d", float(value)))[0])


def agree_on_settings(
    collectives: Collectives, settings: dict[str, int], seed: int, seed_given: bool
) -> int:
    """One ``all_gather``: raise on every rank if a setting differs; return the run's seed.

    ``settings`` are integers (floats as :func:`float_bits`). Seeds given explicitly must agree;
    without one, every rank takes rank 0's (ranks are often seeded ``seed + rank``).
    """
    limit = SEED_LIMIT
    as_int64 = seed - limit if seed >= 1 << 63 else seed  # same bits, fits an int64 tensor
    gathered = gather_settings(collectives, [*settings.values(), as_int64, int(seed_given)])
    float_names = [name for name in settings if name in ("prune_ratio", "delta", "score_momentum")]
    raise_if_disagree(list(settings), gathered, float_names=float_names)
    seeds = [(values[-2] % limit, bool(values[-1])) for values in gathered]
    given = {s for s, was_given in seeds if was_given}
    if len(given) > 1:
        shown = [[s] if was_given else [-1] for s, was_given in seeds]
        raise InfoBatchError(
            "InfoBatch settings differ between ranks, so their epoch plans would differ: "
            f"{settings_disagreement(['seed'], shown)} (-1: no seed given). Give every "
            "rank the same seed=, or none (then rank 0's torch seed is used everywhere)."
        )
    return given.pop() if given else seeds[0][0]
