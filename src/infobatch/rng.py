"""Per-epoch random generators and the random draws of planning; the global RNG is never touched.

Every random draw of a plan is made on the CPU, from a CPU generator, whatever device the scores
live on, and only its result is copied to that device. The same ``(seed, epoch, scores)``
therefore give the same plan on the CPU and on any accelerator, and a run resumed from a
checkpoint (whose scores are loaded on the CPU) plans exactly as the uninterrupted run did.

The cost, when the scores live on an accelerator: the draws run on the host and their results
cross to the device once per epoch, 1 byte per sample for the coin flips (compared on the host,
copied as a bool mask) and 4 bytes per kept sample for the shuffle (an ``int32`` permutation of
the kept count, drawn by the CPU's ``randperm``, which is slower than a GPU's), instead of being
drawn on the device. Once an epoch, that is milliseconds to a few seconds at 10^8 samples,
against an epoch of training.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

__all__ = [
    "epoch_generator",
    "check_generator",
    "check_uint64",
    "random_mask",
    "random_permutation",
]

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def check_uint64(name: str, value: int) -> int:
    """``value`` as an int in ``[0, 2**64)``, the range of seeds; else a clear error."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if not 0 <= number <= _MASK64:
        raise ValueError(
            f"Invalid {name} {number}, {name} should be in the interval [0, 2**64 - 1] "
            "(the range of torch.initial_seed())"
        )
    return number


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A fresh CPU generator for ``(seed, epoch)``: the same pair always gives the same stream.

    Always a CPU generator, whatever device the scores are on: see the module's notes. Seeds are
    mixed (not added), so ``(seed=0, epoch=1)`` and ``(seed=1, epoch=0)`` differ.

    Args:
        seed (int): any integer in ``[0, 2**64)`` (e.g. ``torch.initial_seed()``).
        epoch (int): the epoch, in ``[0, 2**64)``.

    Raises:
        ValueError: ``seed`` or ``epoch`` is outside ``[0, 2**64)``.
        TypeError: either is not an integer.
    """
    seed = check_uint64("seed", seed)
    epoch = check_uint64("epoch", epoch)
    mixed = _splitmix64(_splitmix64(seed) ^ epoch)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(mixed & ((1 << 63) - 1))
    return generator


def check_generator(generator: torch.Generator) -> None:
    """Raise ``ValueError`` unless ``generator`` is a CPU generator (planning draws on the CPU)."""
    if generator.device.type != "cpu":
        raise ValueError(
            f"planning needs a CPU generator, got one on {generator.device}: every random draw "
            "of a plan is made on the CPU and copied to the scores' device, so plans do not "
            "depend on where the scores live. Use infobatch.epoch_generator(seed, epoch)"
        )


def random_mask(
    size: int, probability: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Bool ``[size]`` on ``device``: each entry ``True`` with ``probability``, independently.

    Draws ``size`` float32 uniforms from the CPU ``generator`` and compares them with
    ``probability`` on the CPU (``True`` where ``uniform < probability``), so only the 1-byte
    mask is copied to ``device``. The values depend on the generator's state only, never on
    ``device``. Temporaries: 5 bytes per entry on the CPU; draw large masks in pieces (the
    generator's stream continues from one call to the next).
    """
    check_generator(generator)
    uniforms = torch.rand(size, generator=generator)
    return torch.lt(uniforms, probability).to(device)


def random_permutation(
    size: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype = torch.int64
) -> Tensor:
    """A uniformly random permutation of ``range(size)`` as ``dtype``, on ``device``.

    Drawn by ``torch.randperm`` on the CPU from the CPU ``generator`` (``size`` entries of
    ``dtype`` in host memory), then copied to ``device``: the values depend on the generator's
    state only, never on ``device``.
    """
    check_generator(generator)
    permutation = torch.randperm(size, generator=generator, dtype=dtype)
    return permutation.to(device)
