"""``benchmarks/overhead.py --integration all --quick``: every integration yields a ratio, a
time breakdown and equal sample passes on both sides (a smoke test of the script, seconds
per integration; the numbers themselves are measured with the full sizes)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "overhead.py"

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("lightning")


def _load_script() -> ModuleType:
    """Import ``benchmarks/overhead.py`` (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("overhead_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["overhead_benchmark"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["overhead_benchmark"]
    return module


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One quick run of every integration, one pair each; the JSON it wrote."""
    output = tmp_path_factory.mktemp("overhead") / "overhead.json"
    threads = torch.get_num_threads()
    try:
        code = _load_script().main(
            ["--integration", "all", "--quick", "--pairs", "1", "--output", str(output)]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    loaded: dict[str, Any] = json.loads(output.read_text())
    return loaded


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_integration_has_a_ratio_and_equal_sample_passes(result: dict[str, Any]) -> None:
    integrations = result["integrations"]
    assert set(integrations) == {"plain", "trainer", "accelerate", "lightning"}
    for name, entry in integrations.items():
        ratio = entry["summary"]["ratio"]
        for clock in ("wall", "cpu"):
            assert _positive(ratio[clock]["median"]), (name, clock)
            assert 0.2 < ratio[clock]["median"] < 5, (name, clock)  # a tiny, noisy run
        checks = entry["summary"]["checks"]
        assert checks["equal_sample_passes"] and checks["equal_batches"], name
        assert checks["equal_steps"] and checks["equal_final_lr"], name
        assert checks["sample_passes"] == entry["sizes"]["num_train"] * entry["sizes"]["epochs"]
        for pair in entry["pairs"]:
            for mode in ("baseline", "infobatch"):
                run = pair[mode]
                assert _positive(run["seconds"]) and _positive(run["cpu_seconds"]), (name, mode)
                assert _positive(run["loop_seconds"]), (name, mode)


def test_every_integration_has_a_breakdown(result: dict[str, Any]) -> None:
    for name, entry in result["integrations"].items():
        ms = entry["summary"]["ms_per_batch"]
        for key in ("baseline_ms", "infobatch_ms", "update_ms", "data_ms"):
            assert _positive(ms[key]), (name, key)
        assert ms["planning_ms"] >= 0, name
        assert ms["update_ms"] < ms["infobatch_ms"], name
        micro = entry["micro"]
        assert "per_sample_loss" in micro, name
        assert any(key.startswith("loader") for key in micro), name
        for key, value in micro.items():
            assert _positive(value["infobatch_ms"]), (name, key)
            assert value["baseline_ms"] >= 0, (name, key)
    trainer = result["integrations"]["trainer"]
    assert {"log", "scheduler_step", "filler_micro_batch"} <= set(trainer["micro"])
    assert all(p["infobatch"]["fillers"] == 0 for p in trainer["pairs"])  # equal passes
    assert "epoch_end_log_dict" in result["integrations"]["lightning"]["micro"]
