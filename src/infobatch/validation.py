"""Argument checks shared by the sampler: each error names the value and says what to do."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .rng import check_uint64

__all__ = [
    "SEED_LIMIT",
    "check_seed",
    "check_flag",
    "check_positive_int",
    "check_per_sample",
    "check_indices",
    "check_update_inputs",
    "check_sampling",
]

#: Seeds are integers in ``[0, SEED_LIMIT)``, as ``torch.initial_seed()`` returns them.
SEED_LIMIT = 1 << 64


def check_seed(seed: Any) -> int:
    """``seed`` as an int in ``[0, 2**64)`` (numpy integers accepted, bools refused)."""
    if isinstance(seed, np.bool_):
        raise TypeError("seed must be an int, got bool")
    return check_uint64("seed", seed)


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool (numpy bools accepted)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_keep_steps(
    keep_steps: bool, batch_size: int | None, drop_last: bool, num_iterations: int | None
) -> None:
    """Raise with the fix unless ``keep_steps=True`` comes with what it needs."""
    if not keep_steps:
        return
    if batch_size is None:
        raise ValueError(
            "keep_steps=True needs batch_size=, the loader's batch size per rank for full data "
            "(pruned epochs are cut into as many batches as full data makes at that size); "
            "then build the loader with DataLoader(dataset, batch_sampler=dataset.batch_sampler)"
        )
    if drop_last:
        raise ValueError(
            "keep_steps=True cuts every planned sample into a batch, so it does not drop a last "
            "partial batch: use drop_last=False (and leave it unset in the DataLoader)"
        )
    if num_iterations is not None:
        raise ValueError(
            "keep_steps=True is for epoch-based training: with num_iterations the run already "
            "makes its number of optimizer steps whatever the pruning (pruned passes are shorter, "
            "so there are more of them); drop keep_steps"
        )


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"Invalid {name} {value}, {name} should be >= 1")
    return value


def check_per_sample(name: str, value: Any) -> int:
    """Validate a per-sample loss or score tensor and return its length."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of per-sample losses, got {type(value).__name__}"
        )
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.ndim == 0:
        raise ValueError(
            f"got a scalar {name}: pass per-sample losses, e.g. "
            "criterion = nn.CrossEntropyLoss(reduction='none'), so each sample can be scored"
        )
    if value.ndim != 1:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}; pass one value per sample, shape "
            "[batch_size] (reduce other dimensions first, e.g. token_loss.mean(dim=1))"
        )
    if value.numel() == 0:
        raise ValueError(f"{name} is empty; pass one value per sample of the batch")
    return int(value.shape[0])


def check_indices(indices: Any, batch: int, num_samples: int, device: torch.device) -> Tensor:
    """Dataset indices of a batch as ``int64`` on ``device``; range-checked when on the CPU
    (checking device tensors would cost a host-device synchronisation)."""
    tensor = torch.as_tensor(indices)
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"indices must be integers, got dtype {tensor.dtype}")
    if tensor.shape != (batch,):
        raise ValueError(
            f"indices has shape {tuple(tensor.shape)} but loss has {batch} elements; give "
            "one dataset index per loss"
        )
    if tensor.device.type == "cpu":
        low, high = int(tensor.min()), int(tensor.max())
        if low < 0 or high >= num_samples:
            raise ValueError(
                f"indices must be in the interval [0, {num_samples - 1}], "
                f"got values from {low} to {high}"
            )
    return tensor.to(device=device, dtype=torch.int64, non_blocking=True)


def check_update_inputs(loss: Any, score: Any, valid: Any) -> int:
    """Check ``update()``'s per-sample ``loss``, ``score`` and ``valid``; return the batch size."""
    batch = check_per_sample("loss", loss)
    if score is not None:
        check_per_sample("score", score)
        if score.shape != loss.shape:
            raise ValueError(
                f"score has shape {tuple(score.shape)} but loss has {tuple(loss.shape)}; "
                "give one score per sample"
            )
    if valid is not None and (
        not isinstance(valid, Tensor) or valid.dtype != torch.bool or valid.shape != loss.shape
    ):
        shown = getattr(valid, "dtype", type(valid).__name__)
        raise TypeError(
            f"valid must be a bool tensor shaped like loss {tuple(loss.shape)}, got {shown}"
        )
    return batch


def check_class_labels(labels: Any, num_samples: int) -> tuple[Tensor | None, int]:
    """``labels`` as an ``int64`` CPU tensor of one class per sample, and the number of
    classes (its maximum plus one); ``(None, 0)`` for ``None``."""
    if labels is None:
        return None, 0
    tensor = torch.as_tensor(labels).detach().cpu()
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(
            f"class_labels must hold integer class labels, got dtype {tensor.dtype}; pass one "
            "int per sample, e.g. torch.as_tensor(train_set.targets)"
        )
    if tensor.shape != (num_samples,):
        raise ValueError(
            f"class_labels has shape {tuple(tensor.shape)} but the dataset has {num_samples} "
            "samples; give one class label per sample"
        )
    low = int(tensor.min())
    if low < 0:
        raise ValueError(f"class_labels must be >= 0, got {low}; give class indices 0..C-1")
    return tensor.to(torch.int64), int(tensor.max()) + 1


def check_sampling(sampling: Any, num_samples: int) -> Any:
    """``sampling`` if it is ``None`` or a ``WeightedSampling`` with one weight per sample."""
    from .sampling import WeightedSampling

    if sampling is not None and not isinstance(sampling, WeightedSampling):
        raise TypeError(
            f"sampling must be a WeightedSampling, got {type(sampling).__name__}; to "
            "compose your own sampler, give its per-sample weights: "
            "WeightedSampling(weights, num_draws)"
        )
    if sampling is not None and sampling.weights.numel() != num_samples:
        raise ValueError(
            f"sampling has {sampling.weights.numel()} weights but the dataset has "
            f"{num_samples} samples; give one weight per sample"
        )
    return sampling
