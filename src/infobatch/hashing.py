"""Cheap 64-bit digests of integer tensors, computed where the tensor lives, without host sync."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["hash_int64", "sum_bits"]

_CHUNK = 1 << 16  # cache-sized: the temporaries stay in cache, nothing N-sized is allocated


def hash_int64(values: Tensor) -> Tensor:
    """An order-sensitive 64-bit hash of an integer tensor, ``sum((x_i + 1) * (2 i + 1))`` in
    wrapping int64 arithmetic (so the same on every device and in any summation order), as a
    0-d int64 tensor on its device.

    O(n) in chunks (about 5 ms per 10^6 values on one CPU thread, a sixth of ``randperm``).
    Not cryptographic: it tells apart tensors that differ by accident (a value, a swap).
    """
    flat = values.flatten()
    total = torch.zeros((), dtype=torch.int64, device=flat.device)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK].to(torch.int64) + 1  # a copy: never in place
        weight = torch.arange(start, start + chunk.numel(), dtype=torch.int64, device=flat.device)
        total += chunk.mul_(weight.mul_(2).add_(1)).sum()
    return total


def sum_bits(values: Tensor) -> Tensor:
    """The wrapping int64 sum of a float32 tensor's bits, read as pairs (int64 words): one
    vectorised pass, no temporary (4 ms per 10^7 values on one CPU thread).

    Tells tables apart whose values differ (not a permutation of pairs of the same values).
    """
    flat = values.flatten()
    if flat.storage_offset() % 2:  # int64 words need an even offset: a copy has one
        flat = flat.clone()
    even = flat.numel() - flat.numel() % 2
    total = flat[:even].view(torch.int64).sum()
    if even < flat.numel():
        total = total + flat[even:].view(torch.int32).to(torch.int64).sum()
    return total
