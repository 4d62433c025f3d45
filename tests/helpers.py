"""Shared test helpers: datasets whose items reveal their index."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.utils.data import Dataset


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script (an example, a benchmark) by path, registered in ``sys.modules`` under
    ``name`` (dataclasses and pickling look a module up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: Arguments that make each registered policy of ``infobatch.policies`` prune on a small run.
POLICY_ARGUMENTS: dict[str, dict[str, Any]] = {
    "infobatch": {"prune_ratio": 0.5},
    "no_rescale": {"prune_ratio": 0.5},
    "no_anneal": {"prune_ratio": 0.5},
    "saving_budget": {"target": 0.2},
    "dynamic_random": {"prune_ratio": 0.3},
    "static_random": {"keep_fraction": 0.7},
    "epsilon_greedy": {"prune_ratio": 0.3, "epsilon": 0.2},
    "ucb": {"prune_ratio": 0.3},
    "seta": {"prune_ratio": 0.1, "num_groups": 5, "window_scale": 0.9},
    "low_loss": {"prune_ratio": 0.8, "threshold_scale": 0.5},
    "orderdp": {"prune_ratio": 0.4, "subset_fraction": 0.75},
    "repb": {"prune_ratio": 0.5, "window": 2},
    "ies": {"threshold": 0.5},
}


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
