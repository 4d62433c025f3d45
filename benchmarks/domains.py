"""The paper's other domains, measured: each example of ``examples/`` against full data.

Issue 17. Every domain example (``examples/segmentation.py``, ``mae.py``, ``diffusion.py``,
``contrastive.py``) exposes the same contract: ``METRIC``, ``HIGHER_IS_BETTER``,
``INFOBATCH_SCALE`` (1.0 for epoch-based training; below 1 for the iteration-based runner, which
saves by training fewer iterations), ``VARIANTS`` and ``run(method, seed, *, scale, quick,
**options)``. For each domain and seed, paired by seed (same data, same initial model):

- ``full``: plain training on every sample;
- ``infobatch``: InfoBatch at its defaults, at ``INFOBATCH_SCALE`` of the training length;
- ``infobatch:<variant>``: the example's variants (e.g. ``score_momentum`` for diffusion);
- ``control``: full data at the same saving by training less: its training length scaled by
  the InfoBatch run's sample passes over full data's (same seed), schedules compressed to it.

It prints, per domain, full data's metric, each configuration's paired difference from full
data with its standard error over seeds, and the saving; runs are stored per domain in
``--output-dir`` as they finish, and a rerun trains only what is missing::

    python benchmarks/domains.py --seeds 0 1 2 3 4 --threads 1 --jobs 2 \\
        --output-dir benchmarks/results/domains
    python benchmarks/domains.py --quick --seeds 0 --domains segmentation   # smoke run

``benchmarks/report.py`` writes the tables into BENCHMARKS.md from these files.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import platform
import statistics
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DOMAINS = ("segmentation", "mae", "diffusion", "contrastive", "timm")
DEFAULT_DOMAINS = DOMAINS[:4]  # timm needs torchvision: run it where timm is installed
FILES = {"timm": "timm_training"}
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "domains"
COMMAND = (
    "python benchmarks/domains.py --seeds 0 1 2 3 4 --threads 1 --jobs 2\n"
    "python benchmarks/domains.py --domains segmentation mae contrastive --length 3 --seeds 0 1 2 "
    "--threads 1 --jobs 2 --no-variants\n"
    "# timm, in the environment of README's timm section (.venv-timm):\n"
    "python benchmarks/domains.py --domains timm --seeds 0 1 2 3 4 --threads 1"
)
TITLES = {
    "segmentation": "semantic segmentation (iteration-based, CE + Dice)",
    "mae": "masked-autoencoder pre-training",
    "diffusion": "diffusion (DDPM noise prediction)",
    "contrastive": "contrastive learning (SimCLR, InfoNCE)",
    "timm": "ImageNet-style training through timm (mixup/cutmix, prefetcher)",
}


def load_example(domain: str) -> ModuleType:
    """Import ``examples/<domain>.py`` as a module (the examples are scripts, not a package)."""
    path = EXAMPLES / f"{FILES.get(domain, domain)}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no example for domain {domain!r}: {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"infobatch_example_{domain}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Job:
    """One training run: a domain's configuration at a seed."""

    domain: str
    config: str
    seed: int
    quick: bool
    threads: int
    scale: float
    method: str
    options: tuple[tuple[str, Any], ...] = ()


def execute(job: Job) -> dict[str, Any]:
    """Run one job in this process (the worker of ``--jobs``) and return its stored record."""
    import torch  # noqa: PLC0415  (workers set their own thread count before training)

    torch.set_num_threads(job.threads)
    example = load_example(job.domain)
    result = example.run(
        job.method, job.seed, scale=job.scale, quick=job.quick, **dict(job.options)
    )
    for field in ("metric", "sample_passes", "steps", "seconds"):
        if field not in result:
            raise KeyError(f"the {job.domain} example's run() returned no {field!r}")
    return {
        "config": job.config,
        "seed": job.seed,
        "quick": job.quick,
        "method": job.method,
        "scale": job.scale,
        "options": dict(job.options),
        "metric": float(result["metric"]),
        "sample_passes": int(result["sample_passes"]),
        "steps": int(result["steps"]),
        "seconds": float(result["seconds"]),
        "extra": result.get("extra", {}),
    }


def _key(config: str, seed: int, quick: bool) -> str:
    return f"{config}|{seed}|{int(quick)}"


class Store:
    """A domain's runs in one JSON file, written after each run."""

    def __init__(self, path: Path, settings: dict[str, Any], write: bool = True) -> None:
        self.path, self.settings, self.write = path, settings, write
        self.runs: dict[str, dict[str, Any]] = {}
        if path.is_file():
            data = json.loads(path.read_text())
            for run in data.get("runs", []):
                self.runs[_key(run["config"], run["seed"], run["quick"])] = run

    def find(self, config: str, seed: int, quick: bool) -> dict[str, Any] | None:
        return self.runs.get(_key(config, seed, quick))

    def add(self, run: dict[str, Any]) -> None:
        self.runs[_key(run["config"], run["seed"], run["quick"])] = run
        if self.write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = {"settings": self.settings, "runs": list(self.runs.values())}
            self.path.write_text(json.dumps(data, indent=1) + "\n")


def configs(
    example: ModuleType, variants: bool = True
) -> list[tuple[str, str, float, dict[str, Any]]]:
    """(config, method, scale, options) of the runs that need no other run first."""
    rows = [("full", "full", 1.0, {}), ("infobatch", "infobatch", example.INFOBATCH_SCALE, {})]
    for name, options in example.VARIANTS.items() if variants else ():
        rows.append((f"infobatch:{name}", "infobatch", example.INFOBATCH_SCALE, dict(options)))
    return rows


def length_suffix(length: float) -> str:
    """The results file's suffix for a schedule ``length`` times the example's default."""
    return "" if length == 1 else f"_x{length:g}"


def control_scale(full: dict[str, Any], infobatch: dict[str, Any]) -> float:
    """The control's training length: InfoBatch's sample passes over full data's (same seed)."""
    return infobatch["sample_passes"] / full["sample_passes"]


def run_all(args: argparse.Namespace) -> dict[str, Store]:
    """Train every missing run of every domain; the controls after their InfoBatch runs."""
    stores: dict[str, Store] = {}
    examples = {domain: load_example(domain) for domain in args.domains}
    for domain, example in examples.items():
        settings = {"metric": example.METRIC, "higher_is_better": example.HIGHER_IS_BETTER}
        settings["infobatch_scale"] = example.INFOBATCH_SCALE
        settings["length"] = args.length
        path = args.output_dir / f"{domain}{length_suffix(args.length)}"
        path = path.with_name(path.name + ("_quick" if args.quick else "") + ".json")
        stores[domain] = Store(path, settings, write=not args.no_write)

    def phase(jobs: list[Job]) -> None:
        jobs = [
            job for job in jobs if stores[job.domain].find(job.config, job.seed, job.quick) is None
        ]
        with _executor(args.jobs) as pool:
            runner = pool.map(execute, jobs) if pool is not None else map(execute, jobs)
            for job, record in zip(jobs, runner):
                stores[job.domain].add(record)
                print(_run_line(job.domain, record), flush=True)

    first = []
    for seed in args.seeds:  # seeds outermost: an interrupted run leaves whole pairs
        for domain, example in examples.items():
            for config, method, scale, options in configs(example, not args.no_variants):
                items = tuple(sorted(options.items()))
                first.append(
                    Job(
                        domain,
                        config,
                        seed,
                        args.quick,
                        args.threads,
                        scale * args.length,
                        method,
                        items,
                    )
                )
    phase(first)
    controls = []
    for seed in args.seeds:
        for domain in examples:
            full = stores[domain].find("full", seed, args.quick)
            infobatch = stores[domain].find("infobatch", seed, args.quick)
            assert full is not None and infobatch is not None
            scale = control_scale(full, infobatch) * args.length
            controls.append(Job(domain, "control", seed, args.quick, args.threads, scale, "full"))
    phase(controls)
    return stores


@contextlib.contextmanager
def _executor(jobs: int) -> Iterator[ProcessPoolExecutor | None]:
    if jobs <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        yield pool


def _run_line(domain: str, run: dict[str, Any]) -> str:
    return (
        f"{domain:>12} {run['config']:<22} seed {run['seed']:>2}: metric {run['metric']:8.3f}"
        f"  passes {run['sample_passes']:>8}  steps {run['steps']:>6}  {run['seconds']:6.1f} s"
    )


# ----------------------------------------------------------------------------------- summary
def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and its standard error (None for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def summarise(data: dict[str, Any], seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Full data's metric and, per configuration, the paired difference and the saving.

    ``data`` is a domain's JSON (``{"settings", "runs"}``); only seeds that have a full-data
    run and the configuration's run are paired. ``better`` is the difference's sign made
    "positive is better" (negated when lower is better).
    """
    settings = data["settings"]
    sign = 1.0 if settings["higher_is_better"] else -1.0
    by_config: dict[str, dict[int, dict[str, Any]]] = {}
    for run in data["runs"]:
        if seeds is None or run["seed"] in seeds:
            by_config.setdefault(run["config"], {})[run["seed"]] = run
    full = by_config.get("full", {})
    rows = []
    for config, runs in by_config.items():
        if config == "full":
            continue
        paired = sorted(seed for seed in runs if seed in full)
        if not paired:
            continue
        differences = [runs[s]["metric"] - full[s]["metric"] for s in paired]
        saved = [1 - runs[s]["sample_passes"] / full[s]["sample_passes"] for s in paired]
        wall = [1 - runs[s]["seconds"] / full[s]["seconds"] for s in paired]
        mean, se = mean_se(differences)
        rows.append(
            {
                "config": config,
                "seeds": len(paired),
                "metric": mean_se([runs[s]["metric"] for s in paired]),
                "difference": (mean, se),
                "better": sign * mean,
                "within_2se": se is not None and abs(mean) <= 2 * se,
                "saved": statistics.fmean(saved),
                "wall_clock_saved": statistics.median(wall),
                "steps": statistics.fmean(runs[s]["steps"] for s in paired),
            }
        )
    order = {"infobatch": 0, "control": 2}
    rows.sort(key=lambda row: (order.get(row["config"], 1), row["config"]))
    return {
        "metric": settings["metric"],
        "higher_is_better": settings["higher_is_better"],
        "full": mean_se([run["metric"] for run in full.values()]) if full else None,
        "full_steps": statistics.fmean(r["steps"] for r in full.values()) if full else None,
        "seeds": len(full),
        "rows": rows,
    }


def _pm(value: tuple[float, float | None] | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "-"
    mean, se = value
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text if se is None else f"{text} ± {se:.{digits}f}"


def domain_table(summary: dict[str, Any]) -> list[str]:
    """A markdown table of one domain: every configuration against full data."""
    arrow = "higher is better" if summary["higher_is_better"] else "lower is better"
    lines = [
        f"{summary['metric']} ({arrow}); full data: {_pm(summary['full'])} over "
        f"{summary['seeds']} seeds, {summary['full_steps']:.0f} optimizer steps.",
        "",
        "| configuration | metric | difference from full data (paired) | sample passes saved "
        "| wall-clock saved (median) | optimizer steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["rows"]:
        lines.append(
            f"| {row['config']} | {_pm(row['metric'])} | {_pm(row['difference'], sign=True)} "
            f"| {row['saved']:.1%} | {row['wall_clock_saved']:.1%} | {row['steps']:.0f} |"
        )
    return lines


def readme_row(domain: str, summary: dict[str, Any], title: str | None = None) -> str:
    """The README's row: domain, metric, full data, InfoBatch, saved, fewer-epochs control."""
    rows = {row["config"]: row for row in summary["rows"]}
    infobatch, control = rows.get("infobatch"), rows.get("control")

    def cell(row: dict[str, Any] | None) -> str:
        if row is None:
            return "-"
        return f"{_pm(row['metric'])} ({_pm(row['difference'], sign=True)})"

    saved = f"{infobatch['saved']:.0%}" if infobatch else "-"
    return (
        f"| {title or TITLES.get(domain, domain)} | {summary['metric']} | {_pm(summary['full'])} "
        f"| {cell(infobatch)} | {saved} | {cell(control)} |"
    )


def _result_files(results: Path) -> list[tuple[str, float, Path]]:
    """(domain, length, path) of the stored results: each domain's default schedule first,
    then its longer or shorter ones (``--length``); quick runs are left out."""
    found = []
    for domain in DOMAINS:
        for path in sorted(results.glob(f"{domain}*.json")):
            suffix = path.stem[len(domain) :]
            if suffix == "":
                found.append((domain, 1.0, path))
            elif suffix.startswith("_x") and not suffix.endswith("_quick"):
                found.append((domain, float(suffix[2:]), path))
    return sorted(found, key=lambda item: (DOMAINS.index(item[0]), item[1] != 1, item[1]))


def _title(domain: str, length: float) -> str:
    title = TITLES.get(domain, domain)
    return title if length == 1 else f"{title}, {length:g}x the schedule"


def domain_lines(results: Path, command: str | None = None) -> list[str]:
    """BENCHMARKS.md's section for the domains, from ``results/domains/*.json``."""
    found = _result_files(results)
    if not found:
        return []
    lines = [
        "## The paper's other domains: segmentation, MAE, diffusion, contrastive, timm",
        "",
        "Each example of `examples/` trained with full data, with InfoBatch at its defaults",
        "(`prune_ratio=0.5`, `delta=0.875`), with the example's variants, and the control: full",
        "data trained for proportionally fewer epochs or iterations, at the InfoBatch run's",
        "sample passes. Differences are paired by seed (same data, same initial model), ± one",
        "standard error over seeds. Wall-clock savings are medians of paired ratios on a shared",
        "2-core machine: indicative only. Made by:",
        "",
        "```bash",
        command or COMMAND,
        "```",
        "",
        "| domain | metric | full data | InfoBatch (difference) | saved | fewer-epochs control "
        "(difference) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    summaries = []
    for domain, length, path in found:
        summary = summarise(json.loads(path.read_text()))
        summaries.append((domain, length, summary))
        lines.append(readme_row(domain, summary, title=_title(domain, length)))
    for domain, length, summary in summaries:
        lines += [
            "",
            f"### {_title(domain, length)} (`examples/{FILES.get(domain, domain)}.py`)",
            "",
        ]
        lines += domain_table(summary)
    return lines + [""]


# -------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", nargs="+", choices=DOMAINS, default=list(DEFAULT_DOMAINS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--quick", action="store_true", help="the examples' tiny versions")
    parser.add_argument(
        "--length",
        type=float,
        default=1.0,
        help="every run's schedule this many times the example's default (results in "
        "<domain>_x<length>.json): is the gap a short-schedule effect?",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-variants", action="store_true", help="full, InfoBatch, control")
    parser.add_argument("--no-write", action="store_true", help="keep the results in memory")
    parser.add_argument(
        "--table", action="store_true", help="print the stored results' tables; train nothing"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print("\n".join(domain_lines(args.output_dir)))
        return 0
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"domains {args.domains}, seeds {args.seeds}, {platform.platform()}, {started}")
    stores = run_all(args)
    for domain, store in stores.items():
        data = {"settings": store.settings, "runs": list(store.runs.values())}
        summary = summarise(data, args.seeds)
        print(f"\n{TITLES[domain]}")
        print("\n".join(domain_table(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
