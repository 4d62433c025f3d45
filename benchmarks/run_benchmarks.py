"""Benchmark InfoBatch against full data and the paper's baselines on MNIST-1D and MNIST.

One command regenerates everything (``benchmarks/results/runs.json``, the PNG plots and
``BENCHMARKS.md``)::

    python benchmarks/run_benchmarks.py --mnist-dir ../shared/data/mnist

It is resumable: each run is appended to the JSON file as it finishes, and a rerun skips the
runs already there (same dataset, policy, seed and settings). ``--report-only`` rebuilds the
report from the JSON without training; ``--quick`` is a small smoke run into another folder.

Policies (same model, schedule, loop and seeds; baselines plug into the sampler's ``rule=``):
full data, InfoBatch (defaults), dynamic random at InfoBatch's per-epoch kept counts, a static
random subset with InfoBatch's total passes, InfoBatch without rescaling, without annealing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from infobatch import AnnealingSchedule, PruningRule
from infobatch.experiment import RunResult, Splits, TrainConfig, default_config, load_dataset, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import DynamicRandom, NoRescale, StaticRandom  # noqa: E402
from report import POLICIES, write_report  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_VERSION = 1
PRUNE_RATIO = 0.5
DELTA = 0.875
#: Seeds per dataset (the issue asks for at least 5 on MNIST-1D and 3 on MNIST).
DEFAULT_SEEDS = {"mnist1d": 5, "mnist": 3}
COMMAND = "python benchmarks/run_benchmarks.py --mnist-dir ../shared/data/mnist"


#: (train, test) sizes of the full datasets; ``--quick`` uses a prefix of each.
DATASET_SIZES = {"mnist1d": (40_000, 10_000), "mnist": (60_000, 10_000)}
QUICK_SIZES = (2_000, 500)


def settings_of(config: TrainConfig, sizes: tuple[int, int]) -> dict[str, Any]:
    """The settings that identify a run (a rerun with other settings trains again)."""
    return {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "max_lr": config.max_lr,
        "weight_decay": config.weight_decay,
        "prune_ratio": PRUNE_RATIO,
        "delta": DELTA,
        "num_train": sizes[0],
        "num_test": sizes[1],
    }


class ResultStore:
    """The JSON file of every finished run; rewritten atomically after each run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: list[dict[str, Any]] = []
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("version") != RESULTS_VERSION:
                raise SystemExit(
                    f"{path} has results version {data.get('version')!r}, expected "
                    f"{RESULTS_VERSION}; move it away to start afresh"
                )
            self.runs = list(data["runs"])

    def find(
        self, dataset: str, policy: str, seed: int, settings: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The finished run with these keys, if any."""
        for run in self.runs:
            if (run["dataset"], run["policy"], run["seed"], run["settings"]) == (
                dataset,
                policy,
                seed,
                settings,
            ):
                return run
        return None

    def add(self, run: dict[str, Any]) -> None:
        """Append ``run`` and rewrite the file."""
        self.runs.append(run)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".tmp")
        partial.write_text(json.dumps({"version": RESULTS_VERSION, "runs": self.runs}, indent=1))
        os.replace(partial, self.path)


def policy_setup(
    policy: str, seed: int, config: TrainConfig, reference: dict[str, Any] | None
) -> tuple[bool, float, PruningRule | None]:
    """``(use_infobatch, delta, rule)`` of ``policy``; baselines need InfoBatch's ``reference``."""
    if policy == "full":
        return False, DELTA, None
    if policy == "infobatch":
        return True, DELTA, None
    if policy == "no_rescale":
        return True, DELTA, NoRescale(PRUNE_RATIO)
    if policy == "no_anneal":
        return True, 1.0, None
    if reference is None:
        raise RuntimeError(f"policy {policy} needs the InfoBatch run of seed {seed} first")
    kept = [int(k) for k in reference["kept_per_epoch"]]
    if policy == "dynamic_random":
        pruned_epochs = AnnealingSchedule(config.epochs, DELTA).pruned_epochs
        return True, DELTA, DynamicRandom(kept[:pruned_epochs])
    if policy == "static_random":
        subset = round(sum(kept) / config.epochs)
        return True, 1.0, StaticRandom(subset, seed=seed)
    raise ValueError(f"Unknown policy {policy!r}, expected one of {list(POLICIES)}")


def run_one(
    splits: Splits,
    config: TrainConfig,
    policy: str,
    seed: int,
    reference: dict[str, Any] | None,
) -> RunResult:
    """Train one policy for one seed and check the baselines' realised budgets."""
    use_infobatch, delta, rule = policy_setup(policy, seed, config, reference)
    pruned_epochs = AnnealingSchedule(config.epochs, DELTA).pruned_epochs
    snapshots = sorted({1, pruned_epochs // 2, pruned_epochs - 1}) if policy == "infobatch" else ()
    result = train(
        splits,
        config,
        seed=seed,
        infobatch=use_infobatch,
        prune_ratio=PRUNE_RATIO,
        delta=delta,
        rule=rule,
        eval_each_epoch=True,
        snapshot_epochs=snapshots,
    )
    realised = result.kept_per_epoch
    if policy == "dynamic_random" and reference and realised != reference["kept_per_epoch"]:
        raise RuntimeError(
            "dynamic random did not keep InfoBatch's per-epoch counts: "
            f"{result.kept_per_epoch} vs {reference['kept_per_epoch']}"
        )
    return result


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
    parser.add_argument(
        "--datasets", nargs="+", default=["mnist1d", "mnist"], choices=["mnist1d", "mnist"]
    )
    parser.add_argument("--seeds-mnist1d", type=int, default=DEFAULT_SEEDS["mnist1d"])
    parser.add_argument("--seeds-mnist", type=int, default=DEFAULT_SEEDS["mnist"])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)"
    )
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 epochs on 2,000 samples, 2 seeds, into a temporary folder",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every missing (dataset, seed, policy), then write the report and plots."""
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
    seeds = {"mnist1d": args.seeds_mnist1d, "mnist": args.seeds_mnist}
    if quick:
        seeds = {"mnist1d": 2, "mnist": 2}
    order = sorted(args.policies, key=lambda policy: policy != "infobatch")  # references first
    current: dict[str, dict[str, Any]] = {}
    for dataset in args.datasets:
        config = default_config(dataset)
        sizes = DATASET_SIZES[dataset]
        if quick:
            config = TrainConfig(epochs=3, batch_size=config.batch_size, max_lr=config.max_lr)
            sizes = QUICK_SIZES
        settings = settings_of(config, sizes)
        current[dataset] = {"settings": settings, "seeds": seeds[dataset]}
        if args.report_only:
            continue
        splits = load_dataset(
            dataset, cache_dir=args.cache_dir, mnist_dir=args.mnist_dir, log=print
        ).subset(*sizes)
        for seed in range(seeds[dataset]):
            for policy in order:
                if store.find(dataset, policy, seed, settings) is not None:
                    continue
                reference = store.find(dataset, "infobatch", seed, settings)
                started = time.perf_counter()
                result = run_one(splits, config, policy, seed, reference)
                run = {
                    "dataset": dataset,
                    "policy": policy,
                    "seed": seed,
                    "settings": settings,
                    "environment": environment(),
                    "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    **result.as_dict(),
                    "run_seconds": time.perf_counter() - started,
                }
                store.add(run)
                print(
                    f"{dataset:8s} seed {seed} {policy:15s} "
                    f"acc {100 * result.test_accuracy:6.2f}%  "
                    f"saved {100 * result.saved_fraction:5.1f}%  "
                    f"train {result.train_seconds:6.1f}s  "
                    f"infobatch {result.infobatch_seconds:5.2f}s  "
                    f"(run {time.perf_counter() - started:.0f}s)",
                    flush=True,
                )
    write_report(
        store.runs, current, output, report, command=COMMAND + (" --quick" if quick else "")
    )
    print(f"wrote {report} and plots in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
