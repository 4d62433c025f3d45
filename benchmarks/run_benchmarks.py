"""Benchmark InfoBatch against full data and the policy zoo on MNIST-1D, MNIST and a hard task.

One command regenerates everything (``benchmarks/results/runs.json``, the PNG plots and
``BENCHMARKS.md``). The reduced sweep (the committed results, under an hour on 2 cores)::

    python benchmarks/run_benchmarks.py --mnist-dir ../shared/data/mnist --threads 1 --jobs 2

and the full sweep (more seeds and settings; hours)::

    python benchmarks/run_benchmarks.py --mnist-dir ../shared/data/mnist --sweep full

It is resumable: each run is appended to the JSON file as it finishes, and a rerun skips the
runs already there (same task, setting, seed and training settings). ``--report-only``
rebuilds the report from the JSON without training; ``--quick`` is a small smoke run into a
temporary folder. What is trained is defined in ``benchmarks/sweep.py``; every policy comes
from :mod:`infobatch.policies` and runs through the same ``InfoBatch`` wrapper and loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from infobatch import AnnealingSchedule
from infobatch.experiment import RunResult, Splits, TrainConfig, default_config, load_dataset, train
from infobatch.policies import Rule, StaticRandom, make_policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402
from sweep import (  # noqa: E402
    ABLATIONS,
    DEFAULT,
    EPOCH_SWEEP,
    EPOCH_SWEEP_SEEDS,
    EPOCH_SWEEP_SETTINGS,
    FULL,
    MATCHED,
    SEEDS,
    TASKS,
    Setting,
    settings_for,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_VERSION = 2
COMMAND = (
    "python benchmarks/run_benchmarks.py --mnist-dir ../shared/data/mnist --threads 1 --jobs 2"
)

#: (train, test) sizes of the full datasets; ``--quick`` uses a prefix of each.
DATASET_SIZES = {
    "mnist1d": (40_000, 10_000),
    "mnist": (60_000, 10_000),
    "mnist_mlp": (60_000, 10_000),
}
QUICK_SIZES = (2_000, 500)

#: Version-1 policy names (the first benchmark) and the settings they ran.
_V1_POLICIES = {
    "full": FULL,
    "infobatch": DEFAULT,
    "dynamic_random": MATCHED[0],
    "static_random": MATCHED[1],
    "no_rescale": ABLATIONS[0],
    "no_anneal": ABLATIONS[1],
}


def settings_of(config: TrainConfig, sizes: tuple[int, int]) -> dict[str, Any]:
    """The training settings that identify a run (a rerun with other settings trains again)."""
    return {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "max_lr": config.max_lr,
        "weight_decay": config.weight_decay,
        "num_train": sizes[0],
        "num_test": sizes[1],
    }


def _upgrade(run: dict[str, Any]) -> dict[str, Any]:
    """A version-1 run in the version-2 layout (the same training, named by its setting)."""
    setting = _V1_POLICIES[run["policy"]]
    settings = {k: v for k, v in run["settings"].items() if k not in ("prune_ratio", "delta")}
    upgraded = {**run, "setting": setting.key, "family": setting.family, "settings": settings}
    upgraded.setdefault("code", "results version 1 (same setting, earlier code)")
    return upgraded


class ResultStore:
    """The JSON file of every finished run; rewritten atomically after each run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: list[dict[str, Any]] = []
        if path.is_file():
            data = json.loads(path.read_text())
            version = data.get("version")
            if version == 1:
                self.runs = [_upgrade(run) for run in data["runs"]]
            elif version == RESULTS_VERSION:
                self.runs = list(data["runs"])
            else:
                raise SystemExit(
                    f"{path} has results version {version!r}, expected {RESULTS_VERSION}; "
                    "move it away to start afresh"
                )

    def find(
        self, dataset: str, setting: str, seed: int, settings: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The finished run with these keys, if any."""
        for run in self.runs:
            if (run["dataset"], run["setting"], run["seed"], run["settings"]) == (
                dataset,
                setting,
                seed,
                settings,
            ):
                return run
        return None

    def add(self, run: dict[str, Any]) -> None:
        """Append ``run`` and rewrite the file, keeping runs other processes added meanwhile.

        Several processes (one per task, say) may share one file: each holds an exclusive
        lock while it re-reads the file, appends its run and replaces the file.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:16]
        with open(Path(tempfile.gettempdir()) / f"infobatch-benchmark-{digest}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.is_file():
                self.runs = ResultStore(self.path).runs
            self.runs.append(run)
            partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            partial.write_text(
                json.dumps({"version": RESULTS_VERSION, "runs": self.runs}, indent=1)
            )
            os.replace(partial, self.path)


def policy_setup(
    setting: Setting, seed: int, config: TrainConfig, reference: dict[str, Any] | None
) -> tuple[bool, Rule | None]:
    """``(use_infobatch, rule)`` of ``setting``; matched settings need InfoBatch's ``reference``."""
    if setting.family in ("full", "full_short"):
        return False, None
    kwargs = dict(setting.kwargs)
    if setting.matched:
        if reference is None:
            raise RuntimeError(
                f"{setting.key} needs the default InfoBatch run of seed {seed} first"
            )
        kept = [int(k) for k in reference["kept_per_epoch"]]
        if setting.family == "static_random":
            return True, StaticRandom(subset_size=round(sum(kept) / config.epochs), seed=seed)
        pruned_epochs = AnnealingSchedule(config.epochs, setting.delta).pruned_epochs
        kwargs["kept_counts"] = kept[:pruned_epochs]
    if setting.family in ("infobatch", "no_anneal", "infobatch_ema", "infobatch_keep_steps"):
        return True, None  # InfoBatch's own rule at the setting's prune_ratio
    return True, make_policy(setting.family, **kwargs)


def run_one(
    splits: Splits,
    config: TrainConfig,
    setting: Setting,
    seed: int,
    reference: dict[str, Any] | None,
) -> RunResult:
    """Train one setting for one seed and check that matched settings met their budget."""
    use_infobatch, rule = policy_setup(setting, seed, config, reference)
    if setting.family == "full_short":  # fewer epochs; the saving counts the full schedule
        epochs = max(1, round(config.epochs * setting.kwargs["epochs_fraction"]))
        short = train(
            splits,
            dataclasses.replace(config, epochs=epochs),
            seed=seed,
            infobatch=False,
            eval_each_epoch=True,
        )
        return dataclasses.replace(short, full_passes=config.epochs * len(splits.y_train))
    pruned_epochs = AnnealingSchedule(config.epochs, setting.delta).pruned_epochs
    snapshots = sorted({1, pruned_epochs // 2, pruned_epochs - 1}) if setting == DEFAULT else ()
    result = train(
        splits,
        config,
        seed=seed,
        infobatch=use_infobatch,
        prune_ratio=float(setting.kwargs.get("prune_ratio", 0.5)),
        delta=setting.delta,
        rule=rule,
        score_momentum=setting.score_momentum,
        keep_steps=setting.keep_steps,
        eval_each_epoch=True,
        snapshot_epochs=snapshots,
    )
    matched = setting.matched and setting.family != "static_random" and reference is not None
    if matched and result.kept_per_epoch != reference["kept_per_epoch"]:
        raise RuntimeError(
            f"{setting.key} did not keep InfoBatch's per-epoch counts: "
            f"{result.kept_per_epoch} vs {reference['kept_per_epoch']}"
        )
    return result


def _code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict[str, Any]:
    """Machine and library versions, stored with each run."""
    return {
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--mnist-dir",
        default=str(REPO_ROOT.parent / "shared" / "data" / "mnist"),
        help="folder with the MNIST IDX .gz files",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="MNIST-1D cache folder (default ~/.cache/infobatch)"
    )
    parser.add_argument(
        "--output", default=None, help="results folder (default benchmarks/results)"
    )
    parser.add_argument(
        "--report", default=None, help="markdown report path (default BENCHMARKS.md)"
    )
    parser.add_argument("--datasets", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--sweep", default="reduced", choices=list(SEEDS), help="which settings and seeds"
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per task (default: the sweep's)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="training processes, each taking whole tasks (they share the results file)",
    )
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report")
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 epochs on 2,000 samples, 2 seeds, into a temporary folder",
    )
    return parser.parse_args(argv)


def _train_in_processes(args: argparse.Namespace, argv: list[str]) -> None:
    """Train the tasks in ``args.jobs`` child processes (largest first), then return."""
    costs = {"mnist_mlp": 1.0, "mnist1d": 1.2, "mnist": 1.0}  # minutes per seed and setting
    groups: list[list[str]] = [[] for _ in range(min(args.jobs, len(args.datasets)))]
    loads = [0.0] * len(groups)
    for task in sorted(args.datasets, key=lambda t: -costs.get(t, 1.0)):
        lightest = loads.index(min(loads))
        groups[lightest].append(task)
        loads[lightest] += costs.get(task, 1.0)
    base = [a for a in argv if not a.startswith("--jobs")]
    if "--jobs" in argv:  # "--jobs N" as two words
        index = argv.index("--jobs")
        base = argv[:index] + argv[index + 2 :]
    children = []
    for group in groups:
        command = [sys.executable, __file__, *base, "--datasets", *group, "--no-report"]
        children.append(subprocess.Popen(command))
    failed = [child.args for child in children if child.wait() != 0]
    if failed:
        raise SystemExit(f"training processes failed: {failed}")


def main(argv: list[str] | None = None) -> int:
    """Run every missing (task, seed, setting), then write the report and plots."""
    args = parse_args(argv)
    quick = args.quick
    default_output = (
        Path(tempfile.gettempdir()) / "infobatch-benchmarks-quick"
        if quick
        else REPO_ROOT / "benchmarks" / "results"
    )
    output = Path(args.output) if args.output else default_output
    default_report = output / "BENCHMARKS.md" if quick else REPO_ROOT / "BENCHMARKS.md"
    report = Path(args.report) if args.report else default_report
    store = ResultStore(output / "runs.json")
    torch.set_num_threads(args.threads)
    if args.jobs > 1 and not args.report_only:
        _train_in_processes(args, argv or sys.argv[1:])
        args.report_only = True
        store = ResultStore(output / "runs.json")  # with the children's runs
    code = _code_version()
    current: dict[str, dict[str, Any]] = {}
    for dataset in args.datasets:
        config = default_config(dataset)
        sizes = DATASET_SIZES[dataset]
        seeds = args.seeds or SEEDS[args.sweep][dataset]
        if quick:
            config = dataclasses.replace(config, epochs=3)
            sizes, seeds = QUICK_SIZES, 2
        settings = settings_of(config, sizes)
        chosen = settings_for(dataset, args.sweep)
        # the regime map: the same task at other numbers of epochs (not in --quick runs)
        epoch_configs = [
            dataclasses.replace(config, epochs=epochs)
            for epochs in ([] if quick else EPOCH_SWEEP.get(dataset, ()))
        ]
        current[dataset] = {
            "settings": settings,
            "seeds": seeds,
            "setups": chosen,
            "epoch_sweep": {
                "settings": [settings_of(c, sizes) for c in epoch_configs],
                "seeds": EPOCH_SWEEP_SEEDS.get(dataset, 0),
            },
        }
        if args.report_only:
            continue
        splits = load_dataset(
            dataset, cache_dir=args.cache_dir, mnist_dir=args.mnist_dir, log=print
        ).subset(*sizes)
        work = [(config, seed, setting) for seed in range(seeds) for setting in chosen]
        work += [
            (epoch_config, seed, setting)
            for epoch_config in epoch_configs
            for seed in range(EPOCH_SWEEP_SEEDS.get(dataset, 0))
            for setting in EPOCH_SWEEP_SETTINGS
        ]
        for run_config, seed, setting in work:
            run_settings = settings_of(run_config, sizes)
            if store.find(dataset, setting.key, seed, run_settings) is not None:
                continue
            reference = store.find(dataset, DEFAULT.key, seed, run_settings)
            started = time.perf_counter()
            result = run_one(splits, run_config, setting, seed, reference)
            run = {
                "dataset": dataset,
                "setting": setting.key,
                "family": setting.family,
                "seed": seed,
                "settings": run_settings,
                "code": code,
                "environment": environment(),
                "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                **result.as_dict(),
                "run_seconds": time.perf_counter() - started,
            }
            store.add(run)
            print(
                f"{dataset:9s} seed {seed} {setting.key:70s} "
                f"acc {100 * result.test_accuracy:6.2f}%  "
                f"saved {100 * result.saved_fraction:5.1f}%  "
                f"train {result.train_seconds:6.1f}s",
                flush=True,
            )
    if args.no_report:
        return 0
    command = COMMAND + (" --quick" if quick else "")
    if args.sweep != "reduced":
        command += f" --sweep {args.sweep}"
    write_report(store.runs, current, output, report, command=command, sweep=args.sweep)
    print(f"wrote {report} and plots in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
