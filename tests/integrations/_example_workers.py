"""Runs the examples in a process (for the spawned gloo ranks of test_examples.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


CIFAR_SMOKE = [
    "--dataset", "synthetic", "--model", "tiny", "--epochs", "3", "--num-train", "256",
    "--batch-size", "32", "--workers", "0", "--delta", "0.6", "--lr", "0.05",
]  # fmt: skip


def run_cifar(out_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = load_example("cifar").main([*CIFAR_SMOKE, *config.get("argv", [])])
    return summary
