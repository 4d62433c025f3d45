"""Turn the benchmark's JSON runs into BENCHMARKS.md and PNG plots (no number typed by hand)."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: Policy name -> (label, description), in table order.
POLICIES: dict[str, tuple[str, str]] = {
    "full": ("full data", "every sample every epoch, plain shuffled DataLoader"),
    "infobatch": (
        "InfoBatch",
        "defaults: prune_ratio=0.5, delta=0.875 (rescaling and annealing on)",
    ),
    "dynamic_random": (
        "dynamic random",
        "each epoch drops uniformly at random as many samples as InfoBatch dropped in that "
        "epoch (same seed), weight 1",
    ),
    "static_random": (
        "static random",
        "one random subset, fixed for all epochs, sized so its total passes equal InfoBatch's",
    ),
    "no_rescale": ("InfoBatch, no rescaling", "InfoBatch's pruning with every weight 1"),
    "no_anneal": ("InfoBatch, no annealing", "InfoBatch with delta=1.0 (prunes every epoch)"),
}
DATASET_LABELS = {"mnist1d": "MNIST-1D", "mnist": "MNIST"}
DATASET_SETUP = {
    "mnist1d": (
        "generated offline with `mnist1d.data.make_dataset` (seed 42, 50,000 samples "
        "split 40,000 train / 10,000 test), 1D CNN with 16-32-32 channels (8k weights)"
    ),
    "mnist": (
        "real MNIST (60,000 train / 10,000 test) read from IDX files, 2D CNN with two strided "
        "3x3 convolutions of 8 and 16 channels (9k weights)"
    ),
}
COLORS = {
    "full": "black",
    "infobatch": "tab:red",
    "dynamic_random": "tab:blue",
    "static_random": "tab:cyan",
    "no_rescale": "tab:orange",
    "no_anneal": "tab:purple",
}


def _emphasis(policy: str) -> dict[str, Any]:
    """Line style that draws InfoBatch on top of the policies sharing its curve."""
    return {"zorder": 3, "linewidth": 2.2} if policy == "infobatch" else {"linewidth": 1.2}


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _pm(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "-"
    return f"{scale * _mean(values):.{digits}f} ± {scale * _std(values):.{digits}f}"


def select_runs(
    runs: list[dict[str, Any]], dataset: str, settings: dict[str, Any], seeds: int
) -> dict[str, dict[int, dict[str, Any]]]:
    """``{policy: {seed: run}}`` of ``dataset`` with these settings and seeds below ``seeds``."""
    chosen: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        if run["dataset"] == dataset and run["settings"] == settings and run["seed"] < seeds:
            chosen.setdefault(run["policy"], {})[run["seed"]] = run
    return chosen


def summarise(by_policy: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per-policy means, standard deviations and differences paired by seed with full data."""
    full = by_policy.get("full", {})
    summary: dict[str, dict[str, Any]] = {}
    for policy in POLICIES:
        runs = by_policy.get(policy, {})
        if not runs:
            continue
        seeds = sorted(runs)
        paired = [s for s in seeds if s in full]
        acc = [runs[s]["test_accuracy"] for s in seeds]
        saved = [runs[s]["saved_fraction"] for s in seeds]
        seconds = [runs[s]["train_seconds"] for s in seeds]
        inside = [runs[s]["infobatch_seconds"] for s in seeds]
        wall_saved = [1 - runs[s]["train_seconds"] / full[s]["train_seconds"] for s in paired]
        cpu_saved = [
            1 - runs[s]["train_cpu_seconds"] / full[s]["train_cpu_seconds"] for s in paired
        ]
        summary[policy] = {
            "seeds": seeds,
            "accuracy": acc,
            "accuracy_delta": [runs[s]["test_accuracy"] - full[s]["test_accuracy"] for s in paired],
            "saved": saved,
            "seconds": seconds,
            "wall_saved": wall_saved,
            "cpu_saved": cpu_saved,
            "infobatch_seconds": inside,
            "infobatch_share": [i / t for i, t in zip(inside, seconds)],
        }
    return summary


def results_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown table of one dataset."""
    lines = [
        "| policy | seeds | test accuracy (%) | vs full, paired (points) | sample passes saved (%) "
        "| training time (s) | wall-clock saved (%) | wall / sample saving | CPU time saved (%) "
        "| in infobatch (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for policy, s in summary.items():
        wall = _mean(s["wall_saved"])
        sample = _mean(s["saved"])
        ratio = f"{wall / sample:.2f}" if policy != "full" and sample > 0 else "-"
        delta = _pm(s["accuracy_delta"], 100, 2) if policy != "full" else "-"
        inside = (
            f"{_mean(s['infobatch_seconds']):.2f} ({100 * _mean(s['infobatch_share']):.1f}%)"
            if policy != "full"
            else "-"
        )
        lines.append(
            f"| {POLICIES[policy][0]} | {len(s['seeds'])} | {_pm(s['accuracy'], 100)} | {delta} "
            f"| {_pm(s['saved'], 100, 1)} | {_pm(s['seconds'], 1, 1)} "
            f"| {_pm(s['wall_saved'], 100, 1) if policy != 'full' else '-'} | {ratio} "
            f"| {_pm(s['cpu_saved'], 100, 1) if policy != 'full' else '-'} | {inside} |"
        )
    return lines


def targets(summary: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """``(target, met, measured)`` for the issue's four targets."""
    ib, full, dyn = (summary.get(p) for p in ("infobatch", "full", "dynamic_random"))
    rows: list[tuple[str, bool | None, str]] = []
    if ib is None or full is None:
        return rows
    gap = _mean(ib["accuracy"]) - _mean(full["accuracy"])
    tolerance = max(0.001, _std(full["accuracy"]))
    rows.append(
        (
            "InfoBatch mean accuracy within max(0.1 points, full-data std) of full data",
            gap >= -tolerance,
            f"{100 * gap:+.2f} points (tolerance {100 * tolerance:.2f})",
        )
    )
    saved = _mean(ib["saved"])
    rows.append(
        ("InfoBatch saves at least 30% of sample passes", saved >= 0.30, f"{100 * saved:.1f}%")
    )
    if dyn is not None:
        ahead = _mean(ib["accuracy"]) - _mean(dyn["accuracy"])
        by_seed = {s: r for s, r in zip(ib["seeds"], ib["accuracy"])}
        pairs = [(by_seed[s], a) for s, a in zip(dyn["seeds"], dyn["accuracy"]) if s in by_seed]
        wins = sum(1 for mine, theirs in pairs if mine > theirs)
        ties = sum(1 for mine, theirs in pairs if mine == theirs)
        rows.append(
            (
                "InfoBatch ahead of dynamic random at the same budget",
                ahead > 0,
                f"{100 * ahead:+.2f} points "
                f"(ahead on {wins}, tied on {ties}, of {len(pairs)} seeds)",
            )
        )
    wall, cpu = _mean(ib["wall_saved"]), _mean(ib["cpu_saved"])
    for measure, value in (("wall-clock", wall), ("CPU-time (steadier on a shared machine)", cpu)):
        rows.append(
            (
                f"InfoBatch {measure} saving at least 0.9x its sample saving",
                value >= 0.9 * saved,
                f"{100 * value:.1f}% vs {100 * saved:.1f}% of samples (ratio {value / saved:.2f})"
                if saved > 0
                else "no saving",
            )
        )
    return rows


# ------------------------------------------------------------------------------------ plots
def plot_accuracy_vs_saving(data: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Test accuracy against sample passes saved, every policy (seeds faint, mean with std)."""
    fig, axes = plt.subplots(1, len(data), figsize=(6.5 * len(data), 4.8), squeeze=False)
    for ax, (dataset, summary) in zip(axes[0], data.items()):
        for position, (policy, s) in enumerate(summary.items()):
            color = COLORS[policy]
            offset = 0.4 * (position - (len(summary) - 1) / 2)  # policies share budgets
            saved = [100 * v + offset for v in s["saved"]]
            acc = [100 * v for v in s["accuracy"]]
            ax.scatter(saved, acc, color=color, alpha=0.3, s=14)
            ax.errorbar(
                _mean(saved),
                _mean(acc),
                xerr=_std(saved),
                yerr=_std(acc),
                fmt="o",
                color=color,
                capsize=4,
                markersize=7,
                label=POLICIES[policy][0],
            )
        ax.set_xlabel(
            "sample passes saved vs full data (%), policies offset by 0.4 to stay visible"
        )
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"{DATASET_LABELS[dataset]}: accuracy vs saving (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_difference(data: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Accuracy minus full data's, paired by seed: mean ± std and single seeds, per policy."""
    fig, axes = plt.subplots(1, len(data), figsize=(6.5 * len(data), 4.0), squeeze=False)
    for ax, (dataset, summary) in zip(axes[0], data.items()):
        names = [p for p in summary if p != "full" and summary[p]["accuracy_delta"]]
        for row, policy in enumerate(names):
            delta = [100 * d for d in summary[policy]["accuracy_delta"]]
            ax.scatter(delta, [row] * len(delta), color=COLORS[policy], alpha=0.35, s=16)
            ax.errorbar(
                _mean(delta), row, xerr=_std(delta), fmt="o", color=COLORS[policy], capsize=4
            )
        full_std = 100 * _std(summary["full"]["accuracy"]) if "full" in summary else 0.0
        band = max(0.1, full_std)
        ax.axvspan(-band, band, color="tab:green", alpha=0.12, label="±max(0.1, full-data std)")
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(range(len(names)), [POLICIES[p][0] for p in names])
        ax.invert_yaxis()
        ax.set_xlabel("test accuracy minus full data, same seed (points)")
        ax.set_title(f"{DATASET_LABELS[dataset]}: accuracy change vs full data")
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kept_fraction(data: dict[str, dict[str, dict[int, dict[str, Any]]]], path: Path) -> None:
    """Fraction of the training set kept in each epoch, mean over seeds, per policy."""
    fig, axes = plt.subplots(1, len(data), figsize=(6.5 * len(data), 4.4), squeeze=False)
    for ax, (dataset, by_policy) in zip(axes[0], data.items()):
        for policy in POLICIES:
            runs = list(by_policy.get(policy, {}).values())
            if not runs:
                continue
            epochs = len(runs[0]["kept_per_epoch"])
            fraction = [
                _mean([r["kept_per_epoch"][e] / r["settings"]["num_train"] for r in runs])
                for e in range(epochs)
            ]
            style = "--" if policy == "dynamic_random" else "-"
            ax.plot(
                range(epochs),
                fraction,
                style,
                marker="o",
                markersize=3,
                color=COLORS[policy],
                label=POLICIES[policy][0],
                **_emphasis(policy),
            )
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("epoch")
        ax.set_ylabel("fraction of training samples used")
        ax.set_title(f"{DATASET_LABELS[dataset]}: samples kept per epoch (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(data: dict[str, dict[str, dict[int, dict[str, Any]]]], path: Path) -> None:
    """InfoBatch's score (loss) histograms with the mean threshold, first seed, a few epochs."""
    rows = [(d, by) for d, by in data.items() if by.get("infobatch")]
    if not rows:
        return
    columns = max(len(by["infobatch"][min(by["infobatch"])]["score_snapshots"]) for _, by in rows)
    fig, axes = plt.subplots(
        len(rows), max(columns, 1), figsize=(4.4 * max(columns, 1), 3.4 * len(rows)), squeeze=False
    )
    for row, (dataset, by_policy) in enumerate(rows):
        run = by_policy["infobatch"][min(by_policy["infobatch"])]
        for col, snap in enumerate(run["score_snapshots"]):
            ax = axes[row][col]
            edges, counts = snap["log10_bin_edges"], snap["counts"]
            ax.stairs(counts, edges, fill=True, color="tab:gray", alpha=0.6)
            if snap["log10_threshold"] is not None:
                ax.axvline(snap["log10_threshold"], color="tab:red", label="threshold (mean)")
            below = snap["num_below_threshold"] / max(snap["num_scored"], 1)
            ax.set_title(
                f"{DATASET_LABELS[dataset]}, epoch {snap['epoch']}: "
                f"{100 * below:.0f}% below the mean",
                fontsize=9,
            )
            ax.set_xlabel("log10(latest loss)")
            ax.set_ylabel("samples")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        for col in range(len(run["score_snapshots"]), columns):
            axes[row][col].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_passes(
    data: dict[str, dict[str, dict[int, dict[str, Any]]]], path: Path
) -> None:
    """Test accuracy after each epoch against cumulative sample passes (mean over seeds)."""
    fig, axes = plt.subplots(1, len(data), figsize=(6.5 * len(data), 4.4), squeeze=False)
    for ax, (dataset, by_policy) in zip(axes[0], data.items()):
        for policy in POLICIES:
            runs = list(by_policy.get(policy, {}).values())
            if not runs or not runs[0]["test_accuracy_per_epoch"]:
                continue
            epochs = len(runs[0]["test_accuracy_per_epoch"])
            passes, acc = [], []
            for e in range(epochs):
                passes.append(_mean([sum(r["kept_per_epoch"][: e + 1]) for r in runs]) / 1e6)
                acc.append(_mean([100 * r["test_accuracy_per_epoch"][e] for r in runs]))
            ax.plot(
                passes,
                acc,
                marker="o",
                markersize=3,
                color=COLORS[policy],
                label=POLICIES[policy][0],
                **_emphasis(policy),
            )
        ax.set_xlabel("cumulative sample passes (millions)")
        ax.set_ylabel("test accuracy (%)")
        low = min(
            (
                100 * min(r["test_accuracy_per_epoch"][len(r["test_accuracy_per_epoch"]) // 2 :])
                for by in by_policy.values()
                for r in by.values()
                if r["test_accuracy_per_epoch"]
            ),
            default=90.0,
        )
        ax.set_ylim(max(low - 0.5, 0), None)
        ax.set_title(f"{DATASET_LABELS[dataset]}: test accuracy vs compute (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------- report
def _environment_line(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs yet"
    env = runs[-1]["environment"]
    loads = [r["environment"].get("load_average") for r in runs]
    first = [load[0] for load in loads if load]
    load_text = (
        f"; 1-minute load average at run starts {min(first):.1f} to {max(first):.1f}"
        if first
        else ""
    )
    return (
        f"{env['cpus']} CPUs, torch {env['torch']} (CPU), {env['threads']} torch thread(s), "
        f"Python {env['python']}, {env['platform']}{load_text}"
    )


def write_report(
    runs: list[dict[str, Any]],
    current: dict[str, dict[str, Any]],
    output: Path,
    report: Path,
    command: str,
) -> None:
    """Write the plots into ``output`` and the markdown report to ``report``."""
    output.mkdir(parents=True, exist_ok=True)
    chosen = {
        dataset: select_runs(runs, dataset, spec["settings"], spec["seeds"])
        for dataset, spec in current.items()
    }
    chosen = {d: by for d, by in chosen.items() if by}
    summaries = {dataset: summarise(by) for dataset, by in chosen.items()}
    plots = {
        "accuracy_vs_saving.png": "Final test accuracy against the fraction of sample passes "
        "saved, every policy (faint dots: single seeds).",
        "accuracy_difference.png": "Final test accuracy minus full data's for the same seed "
        "(dots: seeds; bars: mean ± std); the shaded band is the accuracy target's tolerance.",
        "accuracy_vs_passes.png": "Test accuracy after each epoch against cumulative sample "
        "passes (mean over seeds). InfoBatch and its no-annealing ablation share the curve "
        "until the annealing epochs.",
        "kept_per_epoch.png": "Fraction of the training set used in each epoch (dynamic random "
        "matches InfoBatch by construction).",
        "score_distribution.png": "InfoBatch's scores (each sample's latest loss) at a few "
        "epochs (first seed), with the mean threshold: samples left of the line are candidates for "
        "pruning. Losses of exactly 0 are drawn at the smallest positive loss.",
    }
    if summaries:
        plot_accuracy_vs_saving(summaries, output / "accuracy_vs_saving.png")
        plot_accuracy_difference(summaries, output / "accuracy_difference.png")
        plot_accuracy_vs_passes(chosen, output / "accuracy_vs_passes.png")
        plot_kept_fraction(chosen, output / "kept_per_epoch.png")
        plot_scores(chosen, output / "score_distribution.png")
    used = [r for by in chosen.values() for per in by.values() for r in per.values()]
    relative = _relative(output, report.parent)
    lines = [
        "# Benchmarks",
        "",
        "Everything below (tables, targets, plots) is generated from "
        f"`{_relative(output / 'runs.json', report.parent)}` by this command, run from the "
        "repository root; it is resumable (finished runs are skipped). "
        f"{_duration_text(used)}",
        "",
        "```bash",
        'pip install -e ".[demo]"',
        command,
        "```",
        "",
        "Do not edit this file by hand; rerun the command (add `--report-only` to rebuild the "
        "report from the JSON without training).",
        "",
        "## Setup",
        "",
        f"- Machine: {_environment_line(used)}.",
        "- Same model, initialisation, data order seed, optimiser (SGD, Nesterov momentum 0.9, "
        "weight decay 5e-4, batch 128) and learning-rate schedule (OneCycleLR stepped per batch, "
        "re-created each epoch with `steps_per_epoch=len(loader)`) for every policy.",
        "- Every pruning policy runs through the same `InfoBatch` wrapper, sampler and loop; the "
        "baselines plug in through the sampler's `rule=` hook (`benchmarks/baselines.py`).",
        "- Training time is the wall-clock of the training loop only (no data generation, no "
        "evaluation). Time in infobatch is the epoch planning inside `len(loader)` plus the "
        "`update()` calls. The policies of one seed run back to back, so a change in machine "
        "load hits them alike; the machine was shared with other jobs, so times are noisy. "
        "CPU time is this process's CPU time over the same loop: less sensitive to other jobs.",
        "- Sample passes saved: 1 - (samples trained on) / (epochs x training-set size). "
        "Wall-clock saved and accuracy differences are paired by seed with full data.",
        "",
    ]
    for dataset in chosen:
        settings = current[dataset]["settings"]
        lines.append(
            f"- {DATASET_LABELS[dataset]}: {DATASET_SETUP[dataset]}; "
            f"{settings['epochs']} epochs, max learning rate {settings['max_lr']}, "
            f"{settings['num_train']:,} train / {settings['num_test']:,} test samples."
        )
    lines += ["", "Policies:", ""]
    for policy, (label, description) in POLICIES.items():
        lines.append(f"- **{label}** (`{policy}`): {description}.")
    for dataset, summary in summaries.items():
        lines += ["", f"## {DATASET_LABELS[dataset]}", "", *results_table(summary), ""]
        lines += ["Targets (InfoBatch at its defaults):", ""]
        lines += ["| target | met | measured |", "| --- | --- | --- |"]
        for name, met, measured in targets(summary):
            lines.append(f"| {name} | {'yes' if met else 'no'} | {measured} |")
    lines += ["", "## Plots", ""]
    for name, caption in plots.items():
        if (output / name).is_file():
            lines += [f"![{name}]({relative}/{name})", "", caption, ""]
    notes = Path(__file__).resolve().parent / "notes.md"
    if notes.is_file():
        lines += ["## Reading the results", "", notes.read_text().strip(), ""]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines).rstrip() + "\n")
    (output / "summary.md").write_text("\n".join(summary_table(summaries)) + "\n")


def summary_table(summaries: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """A compact table for the README: accuracy and savings of InfoBatch against full data."""
    lines = [
        "| dataset (seeds) | full data | InfoBatch | dynamic random, same budget "
        "| sample passes saved | wall-clock saved | CPU time saved |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dataset, summary in summaries.items():
        full, ib, dyn = (summary.get(p) for p in ("full", "infobatch", "dynamic_random"))
        if full is None or ib is None:
            continue
        lines.append(
            f"| {DATASET_LABELS[dataset]} ({len(ib['seeds'])}) "
            f"| {_pm(full['accuracy'], 100)}% | {_pm(ib['accuracy'], 100)}% "
            f"| {_pm(dyn['accuracy'], 100) + '%' if dyn else '-'} "
            f"| {100 * _mean(ib['saved']):.1f}% | {100 * _mean(ib['wall_saved']):.1f}% "
            f"| {100 * _mean(ib['cpu_saved']):.1f}% |"
        )
    return lines


def _duration_text(runs: list[dict[str, Any]]) -> str:
    seconds = sum(r.get("run_seconds", r["train_seconds"]) for r in runs)
    if not runs:
        return ""
    return (
        f"The {len(runs)} runs reported here took {seconds / 60:.0f} minutes in total "
        "(training and per-epoch evaluation; MNIST-1D generation adds about 30 s once):"
    )


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` as a POSIX string (for markdown links)."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
