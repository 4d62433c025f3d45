"""Shared test helpers: datasets whose items reveal their index."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class IndexedDataset(Dataset[tuple[torch.Tensor, int]]):
    """Item ``i`` is ``(tensor([i], float32), i)``, so a batch tells which samples it holds."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.classes = ["even", "odd"]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(index)]), index


def loss_of(index: torch.Tensor) -> torch.Tensor:
    """A per-sample 'loss' that is a known function of the sample index."""
    return (index.float() % 97) / 10 + 0.25
