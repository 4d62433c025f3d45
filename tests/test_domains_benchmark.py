"""benchmarks/domains.py: the harness that measures each domain example against full data."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_script

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def domains() -> ModuleType:
    return load_script(BENCHMARKS / "domains.py", "domains_benchmark")


def _run(config: str, seed: int, metric: float, passes: int, seconds: float = 10.0) -> dict:
    return {
        "config": config,
        "seed": seed,
        "quick": False,
        "metric": metric,
        "sample_passes": passes,
        "steps": passes // 10,
        "seconds": seconds,
    }


def test_summary_pairs_by_seed_and_signs_by_the_metrics_direction(domains: ModuleType) -> None:
    full = {0: 50.0, 1: 54.0, 2: 52.0}
    infobatch = {0: 49.0, 1: 54.5, 2: 51.0}
    runs = [_run("full", s, m, 1000) for s, m in full.items()]
    runs += [_run("infobatch", s, m, 700 + s) for s, m in infobatch.items()]
    runs += [_run("control", 0, 48.0, 700), _run("control", 7, 10.0, 700)]  # seed 7: unpaired
    for higher in (True, False):
        settings = {"metric": "m", "higher_is_better": higher, "infobatch_scale": 1.0}
        summary = domains.summarise({"settings": settings, "runs": runs})
        rows = {row["config"]: row for row in summary["rows"]}
        differences = [infobatch[s] - full[s] for s in full]
        mean, se = rows["infobatch"]["difference"]
        assert mean == pytest.approx(statistics.fmean(differences))
        assert se == pytest.approx(statistics.stdev(differences) / math.sqrt(3))
        assert rows["infobatch"]["better"] == pytest.approx(mean if higher else -mean)
        assert rows["infobatch"]["saved"] == pytest.approx(statistics.fmean([0.3, 0.299, 0.298]))
        assert rows["control"]["seeds"] == 1 and rows["control"]["difference"] == (-2.0, None)
        assert [row["config"] for row in summary["rows"]] == ["infobatch", "control"]
    row = domains.readme_row("mae", summary)
    assert row.startswith("| masked-autoencoder pre-training | m | 52.00 ± 1.15 |")
    assert "| 30% |" in row and "(-0.50 ± 0.50)" in row


def test_the_control_runs_at_infobatchs_sample_passes(domains: ModuleType) -> None:
    assert domains.control_scale({"sample_passes": 1000}, {"sample_passes": 650}) == 0.65


def test_every_domain_example_follows_the_contract(domains: ModuleType) -> None:
    """The harness imports each example by path: its constants and run() are there."""
    for domain in domains.DEFAULT_DOMAINS:
        example = domains.load_example(domain)
        assert isinstance(example.METRIC, str) and example.METRIC
        assert isinstance(example.HIGHER_IS_BETTER, bool)
        assert 0 < example.INFOBATCH_SCALE <= 1
        assert isinstance(example.VARIANTS, dict)
        assert callable(example.run) and callable(example.main)


def test_report_lists_each_schedule_length_and_leaves_quick_runs_out(
    domains: ModuleType, tmp_path: Path
) -> None:
    settings = {"metric": "m", "higher_is_better": True, "infobatch_scale": 1.0}
    runs = [_run("full", 0, 50.0, 1000), _run("infobatch", 0, 49.0, 700)]
    runs += [_run("full", 1, 52.0, 1000), _run("infobatch", 1, 52.0, 700)]
    for length in (1.0, 3.0):
        suffix = domains.length_suffix(length)
        for quick in ("", "_quick"):
            path = tmp_path / f"mae{suffix}{quick}.json"
            path.write_text(json.dumps({"settings": settings, "runs": runs}))
    assert domains.length_suffix(1.0) == "" and domains.length_suffix(3.0) == "_x3"
    found = domains._result_files(tmp_path)
    assert [(domain, length) for domain, length, _ in found] == [("mae", 1.0), ("mae", 3.0)]
    lines = domains.domain_lines(tmp_path)
    rows = [line for line in lines if line.startswith("| masked-autoencoder")]
    assert len(rows) == 2 and "3x the schedule" in rows[1]
    assert "(-0.50 ± 0.50)" in rows[0]


def test_a_quick_run_pairs_full_infobatch_and_the_control_at_infobatchs_passes(
    domains: ModuleType, tmp_path: Path
) -> None:
    args = domains.parse_args(
        ["--domains", "segmentation", "--quick", "--seeds", "0", "--no-variants"]
        + ["--output-dir", str(tmp_path)]
    )
    stores = domains.run_all(args)
    runs = stores["segmentation"].runs
    assert sorted(run["config"] for run in runs.values()) == ["control", "full", "infobatch"]
    full = stores["segmentation"].find("full", 0, True)
    infobatch = stores["segmentation"].find("infobatch", 0, True)
    control = stores["segmentation"].find("control", 0, True)
    assert infobatch["sample_passes"] < full["sample_passes"]
    assert control["scale"] == pytest.approx(infobatch["sample_passes"] / full["sample_passes"])
    batch = full["sample_passes"] // full["steps"]
    assert abs(control["sample_passes"] - infobatch["sample_passes"]) <= batch
    stored = json.loads((tmp_path / "segmentation_quick.json").read_text())
    assert len(stored["runs"]) == 3 and stored["settings"]["length"] == 1.0
    assert domains.domain_lines(tmp_path) == []  # quick runs stay out of the report
