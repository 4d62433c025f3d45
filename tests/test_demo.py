"""``infobatch demo``: the command line parses, documents its options, runs and writes output."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from infobatch.cli import build_parser, main
from infobatch.demo import DemoOptions, options_from_args, run_demo


def test_console_script_points_at_main() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("infobatch") == "infobatch.cli:main"


def test_demo_options_parse() -> None:
    args = build_parser().parse_args(
        [
            "demo",
            "--dataset",
            "mnist",
            "--epochs",
            "3",
            "--seeds",
            "0",
            "5",
            "--prune-ratio",
            "0.3",
            "--delta",
            "1",
            "--output",
            "out",
            "--cache-dir",
            "c",
            "--data-dir",
            "d",
            "--threads",
            "2",
            "--num-train",
            "600",
            "--no-progress",
        ]
    )
    options = options_from_args(args)
    assert options == DemoOptions(
        dataset="mnist",
        epochs=3,
        seeds=(0, 5),
        prune_ratio=0.3,
        delta=1.0,
        output="out",
        cache_dir="c",
        data_dir="d",
        threads=2,
        num_train=600,
        num_test=None,
        progress=False,
    )
    assert options_from_args(build_parser().parse_args(["demo"])) == DemoOptions()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--prune-ratio", "1"], "outside the interval [0.0, 1.0)"),
        (["--delta", "1.5"], "outside the interval [0.0, 1.0]"),
        (["--epochs", "0"], "positive integer"),
        (["--dataset", "cifar10"], "invalid choice"),
    ],
)
def test_demo_rejects_bad_values_with_a_clear_message(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_documents_every_demo_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--dataset",
        "--epochs",
        "--seeds",
        "--prune-ratio",
        "--delta",
        "--output",
        "--cache-dir",
        "--data-dir",
        "--threads",
        "--no-progress",
    ):
        assert option in text
    assert "default: 0.875" in text and "default: 0.5" in text


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_mnist_without_data_dir_is_an_error_that_says_what_to_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--dataset", "mnist", "--no-progress"]) == 1
    assert "--data-dir" in capsys.readouterr().err


def test_tiny_demo_prints_table_and_writes_plot_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    status = main(
        [
            "demo",
            "--epochs",
            "2",
            "--num-train",
            "300",
            "--num-test",
            "100",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    assert status == 0
    text = capsys.readouterr().out
    for row in ("test accuracy (%)", "sample passes", "training time (s)", "% saved"):
        assert row in text
    assert (output / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads((output / "demo.json").read_text())
    assert [r["policy"] for r in numbers["runs"]] == ["infobatch", "full"]
    pruned, full = numbers["runs"]
    assert full["sample_passes"] == 600 and full["kept_per_epoch"] == [300, 300]
    assert pruned["sample_passes"] == sum(pruned["kept_per_epoch"]) < 600  # epoch 1 is pruned
    assert numbers["table"] in text


def test_demo_with_two_seeds_reports_mean_and_std(tmp_path: Path) -> None:
    lines: list[str] = []
    options = DemoOptions(
        epochs=1,
        seeds=(0, 1),
        num_train=200,
        num_test=100,
        cache_dir=str(tmp_path),
        output=str(tmp_path / "out"),
        progress=False,
    )
    report = run_demo(options, out=lines.append)
    assert [(r.policy, r.seed) for r in report.runs] == [
        ("infobatch", 0),
        ("full", 0),
        ("infobatch", 1),
        ("full", 1),
    ]
    assert "2 seeds (mean ± std)" in report.table and "±" in report.table.splitlines()[3]
