"""Per-epoch random generators derived from a seed; the global RNG is never touched."""

from __future__ import annotations

import torch

__all__ = ["epoch_generator"]

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator for ``(seed, epoch)``: the same pair always gives the same stream.

    Seeds are mixed (not added), so ``(seed=0, epoch=1)`` and ``(seed=1, epoch=0)`` differ.
    """
    mixed = _splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64))
    generator = torch.Generator(device=device)
    generator.manual_seed(mixed & ((1 << 63) - 1))
    return generator
