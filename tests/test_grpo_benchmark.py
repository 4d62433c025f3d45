"""``benchmarks/grpo.py --quick``: every method runs through the same GRPO loop, the pruning
methods generate fewer completions when they prune, the matched baseline keeps InfoBatch's
counts, a rerun trains nothing, and the report renders the section (a smoke test of the
script; the numbers themselves come from the full run)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
SCRIPT = BENCHMARKS / "grpo.py"

pytest.importorskip("transformers")


def _load_script() -> ModuleType:
    """Import ``benchmarks/grpo.py`` (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("grpo_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["grpo_benchmark"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["grpo_benchmark"]
    return module


@pytest.fixture(scope="module")
def grpo() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, Any]]:
    """One ``--quick`` run in a subprocess; its output path, its arguments and its JSON."""
    folder = tmp_path_factory.mktemp("grpo")
    output = folder / "grpo.json"
    args = ["--quick", "--output", str(output), "--cache-dir", str(folder / "cache")]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return output, args, json.loads(output.read_text())


def _runs(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    runs = {run["method"]: run for run in data["runs"]}
    assert len(runs) == len(data["runs"]), "one run per method (one seed)"
    return runs


def test_every_method_has_finite_accuracies(
    grpo: ModuleType, quick: tuple[Path, list[str], dict[str, Any]]
) -> None:
    _, _, data = quick
    runs = _runs(data)
    assert set(runs) == set(grpo.METHODS)
    settings = data["settings"]
    assert data["command"].startswith("python benchmarks/grpo.py") and "--quick" in data["command"]
    for run in runs.values():
        assert run["settings"] == settings
        assert len(run["passes"]) == settings["num_passes"]
        values = [run["test_accuracy"], run["initial_test_accuracy"]]
        values += [p["test_accuracy"] for p in run["passes"]]
        values += list(run["test_accuracy_per_level"].values())
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in values), run["method"]
        assert run["test_accuracy"] == run["passes"][-1]["test_accuracy"]
        assert run["grpo_seconds"] > 0 and run["tokens"] > 0
        # every method of the seed starts from the same supervised checkpoint
        assert run["initial_test_accuracy"] == runs[grpo.BASELINE]["initial_test_accuracy"]
        assert run["sft"]["steps"] == runs[grpo.BASELINE]["sft"]["steps"]


def test_completions_follow_the_kept_prompts(
    grpo: ModuleType, quick: tuple[Path, list[str], dict[str, Any]]
) -> None:
    _, _, data = quick
    runs = _runs(data)
    group = data["settings"]["group_size"]
    base = runs[grpo.BASELINE]
    assert base["completions"] == base["full_completions"]
    assert all(p["pruned"] == 0 for p in base["passes"])
    for name, run in runs.items():
        kept = [p["kept"] for p in run["passes"]]
        assert (
            run["completions"] == group * sum(kept) == sum(p["completions"] for p in run["passes"])
        )
        assert run["tokens"] <= run["completions"] * grpo.MAX_ANSWER
        pruned = sum(p["pruned"] for p in run["passes"])
        if pruned:
            assert run["completions"] < base["completions"], name
            assert run["saved_fraction"] == pytest.approx(pruned / (sum(kept) + pruned))
        else:
            assert run["completions"] == base["completions"], name
    # zero-variance groups are near certain: some rule skips prompts, so the checks above bite
    assert any(p["pruned"] for run in runs.values() for p in run["passes"])
    # pass 0 has no score yet: every method rolls out every prompt
    assert {run["passes"][0]["kept"] for run in runs.values()} == {base["passes"][0]["kept"]}


def test_rules_weights_and_matched_budget(
    grpo: ModuleType, quick: tuple[Path, list[str], dict[str, Any]]
) -> None:
    _, _, data = quick
    runs = _runs(data)
    num_prompts = data["settings"]["train_per_level"] * grpo.MAX_DIGITS
    assert runs["dynamic_random"]["kept_per_pass"] == runs["infobatch"]["kept_per_pass"]
    for name in ("dynamic_random", "greso", grpo.BASELINE):
        assert all(p["weight"] == 1.0 for p in runs[name]["passes"]), name
    for name, method in grpo.METHODS.items():
        if method.rule is not None or method.prune_ratio == 0:
            continue
        for p in runs[name]["passes"]:
            if p["pruned"]:  # InfoBatch's rule: kept below-mean prompts weighted 1/(1-r)
                assert p["weight"] == pytest.approx(1 / (1 - method.prune_ratio))
            assert p["kept"] + p["pruned"] == num_prompts


def test_zero_variance_rule_skips_only_zero_scores(grpo: ModuleType) -> None:
    scores = torch.tensor([0.0, 0.0, 0.5, float("nan"), 0.0, 0.3] * 50)
    generator = torch.Generator().manual_seed(0)
    selection = grpo.ZeroVarianceSkip(0.5).select(scores, generator)
    pruned = ~selection.keep
    assert bool((scores[pruned] == 0).all())
    assert 0 < int(pruned.sum()) < int((scores == 0).sum())
    assert selection.weight == 1.0
    again = grpo.ZeroVarianceSkip(0.5).select(scores, torch.Generator().manual_seed(0))
    assert torch.equal(selection.status, again.status)


def test_parameter_count_matches_the_model(grpo: ModuleType) -> None:
    model = grpo.build_model(grpo.QUICK, seed=0)
    assert grpo.parameter_count(grpo.QUICK) == sum(p.numel() for p in model.parameters())


def test_rerun_trains_nothing_and_report_renders(
    grpo: ModuleType, quick: tuple[Path, list[str], dict[str, Any]]
) -> None:
    output, args, data = quick
    threads = torch.get_num_threads()
    try:
        assert grpo.main(args) == 0  # every run is stored: nothing is trained again
    finally:
        torch.set_num_threads(threads)
    rerun = json.loads(output.read_text())
    assert rerun["runs"] == data["runs"]
    summary = rerun["summary"]
    assert {row["method"] for row in summary["rows"]} == set(grpo.METHODS)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import report  # noqa: PLC0415

        lines = report.grpo_lines(output.parent)
    finally:
        sys.path.remove(str(BENCHMARKS))
    text = "\n".join(lines)
    assert data["command"] in text
    for name in grpo.METHODS:
        assert f"| {name}" in text
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
