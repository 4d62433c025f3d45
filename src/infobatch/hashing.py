"""A cheap, order-sensitive 64-bit hash of integer tensors, computed where the tensor lives."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["hash_int64"]

_CHUNK = 1 << 20
_MIX_A = 0x5851F42D4C957F2D
_MIX_B = 0x14057B7EF767814F


def hash_int64(values: Tensor) -> Tensor:
    """A 64-bit hash of an integer tensor (wrapping int64 arithmetic, so the same on every
    device and in any summation order), as a 0-d int64 tensor on its device; no host sync.

    O(n), in chunks so that the temporaries stay small. Not cryptographic: it tells apart
    tables that differ by accident (a value, a swap), not on purpose.
    """
    flat = values.flatten()
    total = torch.zeros((), dtype=torch.int64, device=flat.device)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK].to(torch.int64)
        position = torch.arange(start, start + chunk.numel(), dtype=torch.int64, device=flat.device)
        total += ((chunk + 1) * torch.bitwise_xor(position * _MIX_A, _MIX_B)).sum()
    return total
