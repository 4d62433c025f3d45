"""``benchmarks/gpu_check.py`` on the CPU: every check that can run here passes, the CUDA-only
parts are reported as skipped, and a failing check makes the exit code non-zero."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load_script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``benchmarks/gpu_check.py`` (a script, not a package) for one test."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    """The lines of ``stdout`` that are JSON objects."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def cpu_run() -> tuple[subprocess.CompletedProcess[str], float]:
    """``python benchmarks/gpu_check.py --device cpu --quick``, bounded by a timeout."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, also on a GPU machine
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=120,  # a hang (a process group, a worker) fails instead of stalling
        env=env,
        cwd=REPO,
        check=False,
    )
    return done, time.perf_counter() - started


def test_cpu_run_passes_and_prints_one_json_line(
    cpu_run: tuple[subprocess.CompletedProcess[str], float],
) -> None:
    done, seconds = cpu_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = _json_lines(done.stdout)
    assert len(lines) == 1
    assert done.stdout.rstrip().splitlines()[-1].startswith("{")  # the JSON line is last
    result = lines[0]
    assert result["device"] == "cpu" and result["device_name"] == "cpu"
    assert result["quick"] is True and result["failed"] == []
    statuses = {name: figures["status"] for name, figures in result["checks"].items()}
    assert statuses == {
        "three_lines": "ok",
        "sync_free_update": "skipped",
        "plan_across_devices": "ok",
        "private_merge_group": "ok",
        "bf16_autocast": "ok",
        "time_vs_samples": "ok",
    }
    assert result["checks"]["sync_free_update"]["reason"] == "needs CUDA"
    assert seconds < 90, f"the quick CPU run took {seconds:.0f} s"


def test_three_lines_learn_and_prune(
    cpu_run: tuple[subprocess.CompletedProcess[str], float],
) -> None:
    check = _json_lines(cpu_run[0].stdout)[0]["checks"]["three_lines"]
    before, after = check["train_loss_before_after"]
    assert after < before
    assert check["num_workers"] == 2
    assert check["every_batch_of_len_loader"] and check["every_kept_sample_updated"]
    kept = check["kept_per_epoch"]
    assert kept[0] == 512 and all(k < 512 for k in kept[1:])  # epochs after the first prune


def test_resume_plans_exactly_and_cross_device_is_skipped(
    cpu_run: tuple[subprocess.CompletedProcess[str], float],
) -> None:
    check = _json_lines(cpu_run[0].stdout)[0]["checks"]["plan_across_devices"]
    assert check["cuda_vs_cpu"] == {"status": "skipped", "reason": "needs CUDA"}
    resume = check["resume"]
    assert resume["status"] == "ok"
    for plan in (resume["epoch_1_plan"], resume["epoch_2_plan"]):
        assert plan["equal"] and all(plan["same"].values())
        assert plan["kept"][0] == plan["kept"][1] < 512  # a pruned epoch
    assert resume["scores_equal"] and resume["states_equal"]
    assert resume["lockstep_epoch_1"]["same_batches"]
    assert resume["lockstep_epoch_1"]["same_results"]


def test_merge_group_bf16_and_timing_figures(
    cpu_run: tuple[subprocess.CompletedProcess[str], float],
) -> None:
    checks = _json_lines(cpu_run[0].stdout)[0]["checks"]
    merge = checks["private_merge_group"]
    assert merge["backend"] == merge["private_group_backend"] == "gloo"
    assert merge["private_group_is_not_world"] and merge["destroyed"]
    assert [e["merged_at_epoch_end"] for e in merge["epochs"]] == [True, True]
    assert all(all(e["scores_equal"]) and all(e["plans_equal"]) for e in merge["epochs"])
    bf16 = checks["bf16_autocast"]
    assert "bfloat16" in bf16["loss_dtypes"] and bf16["scores_dtype"] == "float32"
    assert bf16["result_dtype_is_loss_dtype"] and bf16["scores_are_the_losses"]
    timing = checks["time_vs_samples"]
    assert timing["pairs"] == 2 and timing["epochs"] == 2
    assert 0 < timing["samples_saved"]["median"] < 1
    for name in ("wall_clock_saved", "time_per_sample_saving"):
        figures = timing[name]
        assert figures["min"] <= figures["median"] <= figures["max"]


def test_a_failing_check_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _load_script(monkeypatch)
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)  # keep the suite's

    def broken(cfg: Any) -> dict[str, Any]:
        raise RuntimeError("deliberately broken")

    monkeypatch.setattr(
        script,
        "CHECKS",
        [("broken", broken), ("skipped", lambda cfg: {"status": "skipped", "reason": "test"})],
    )
    assert script.main(["--device", "cpu", "--quick"]) == 1
    result = _json_lines(capsys.readouterr().out)[-1]
    assert result["failed"] == ["broken"]
    assert result["checks"]["broken"]["error"] == "RuntimeError: deliberately broken"
    assert result["checks"]["skipped"]["status"] == "skipped"
