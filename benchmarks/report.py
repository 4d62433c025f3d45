"""Turn the benchmark's JSON runs into BENCHMARKS.md and PNG plots (no number typed by hand).

Every accuracy comparison is paired by seed with full data: the same seed gives the same
initialisation and data order, and each run prunes with its own seed. "Lossless" means a mean
paired difference of at least -0.1 point (``LOSSLESS``); the standard error (SE) of that mean
says how far the seeds resolve it.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sweep import (  # noqa: E402
    ABLATIONS,
    CONTROL,
    DEFAULT,
    FAMILIES,
    FULL,
    KEEP_STEPS,
    MATCHED,
    SETA_DEFAULT,
    STEP_LIMITED_TASKS,
    TASKS,
    Setting,
)

#: A mean paired difference (points) at or above this is "lossless".
LOSSLESS = -0.1
#: Standard error (points) that resolves a 0.1-point difference at two standard errors.
RESOLVING_SE = 0.05

#: Short names of the settings in the main (equal-budget) comparison, in table order.
MAIN: dict[str, Setting] = {
    "full": FULL,
    "infobatch": DEFAULT,
    "dynamic_random": MATCHED[0],
    "static_random": MATCHED[1],
    "epsilon_greedy": MATCHED[2],
    "ucb": MATCHED[3],
    "orderdp": MATCHED[4],
    "no_rescale": ABLATIONS[0],
    "no_anneal": ABLATIONS[1],
    "seta": SETA_DEFAULT,
}
COLORS = {
    "full": "black",
    "full_short": "dimgray",
    "infobatch": "tab:red",
    "saving_budget": "tab:pink",
    "infobatch_ema": "tab:brown",
    "low_loss": "tab:green",
    "dynamic_random": "tab:blue",
    "static_random": "tab:cyan",
    "epsilon_greedy": "tab:olive",
    "ucb": "teal",
    "no_rescale": "tab:orange",
    "no_anneal": "tab:purple",
    "seta": "gold",
    "infobatch_keep_steps": "darkred",
    "orderdp": "navy",
    "repb": "magenta",
    "ies": "lime",
}
#: The step-limited task's result files (``benchmarks/step_limited.py``), by peak learning rate.
STEP_LIMITED_FILES = {
    "step_limited.json": (
        "peak learning rate 0.1 (the best for full data at 8 epochs)",
        "S='python benchmarks/step_limited.py --mnist-dir ../shared/data/mnist --threads 1'\n"
        "$S --epochs 4 8 16 --seeds $(seq 0 19) --modes full infobatch control keep_steps "
        "dynamic_random orderdp_matched orderdp_matched_keep_steps repb ies\n"
        "$S --epochs 32 --seeds $(seq 0 13) --modes full infobatch control keep_steps\n"
        "$S --epochs 4 8 16 --seeds $(seq 0 9) --modes r_0.7_keep_steps orderdp_paper "
        "late_start saving_budget_0.3\n"
        "$S --epochs 4 8 16 --seeds $(seq 0 5) --modes full_half_batch delta_0.75 r_0.3 "
        "no_rescale infobatch_sized_once dynamic_random_keep_steps",
    ),
    "step_limited_ddp.json": (
        "2 processes (torchrun, gloo) with gradient accumulation 2: micro-batches of 64, 256 "
        "samples an optimizer step, as in the issue's report",
        "torchrun --standalone --nproc_per_node=2 benchmarks/step_limited.py --mnist-dir "
        "../shared/data/mnist --threads 1 --accumulation 2 --epochs 4 8 --seeds $(seq 0 9) "
        "--modes full infobatch keep_steps --output benchmarks/results/step_limited_ddp.json",
    ),
    "step_limited_lr0.02.json": (
        "peak learning rate 0.02 (more step-limited: full data gains more from more steps)",
        "python benchmarks/step_limited.py --mnist-dir ../shared/data/mnist --threads 1 "
        "--max-lr 0.02 --epochs 4 8 16 --seeds $(seq 0 9) --modes full infobatch control "
        "keep_steps r_0.7_keep_steps full_half_batch --output "
        "benchmarks/results/step_limited_lr0.02.json",
    ),
}


def _label(task: str) -> str:
    return TASKS[task][0] if task in TASKS else task


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _se(values: Sequence[float]) -> float:
    return _std(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def _pm(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "-"
    return f"{scale * _mean(values):.{digits}f} ± {scale * _std(values):.{digits}f}"


def _diff(values: Sequence[float]) -> str:
    """Mean paired difference ± its standard error, in points (values are in points)."""
    if not values:
        return "-"
    se = _se(values)
    return f"{_mean(values):+.2f} ± {se:.2f}" if math.isfinite(se) else f"{_mean(values):+.2f}"


# ------------------------------------------------------------------------------ selecting
def select_runs(
    runs: list[dict[str, Any]], dataset: str, settings: dict[str, Any], seeds: int
) -> dict[str, dict[int, dict[str, Any]]]:
    """``{setting key: {seed: run}}`` of ``dataset`` with these settings and seeds < ``seeds``."""
    chosen: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        if run["dataset"] == dataset and run["settings"] == settings and run["seed"] < seeds:
            chosen.setdefault(run["setting"], {})[run["seed"]] = run
    return chosen


def summarise_setting(
    runs: dict[int, dict[str, Any]], full: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """Means and paired differences (points) of one setting's runs."""
    seeds = sorted(runs)
    paired = [s for s in seeds if s in full]
    inside = [runs[s]["infobatch_seconds"] for s in seeds]
    seconds = [runs[s]["train_seconds"] for s in seeds]
    return {
        "seeds": seeds,
        "accuracy": [runs[s]["test_accuracy"] for s in seeds],
        "delta": [100 * (runs[s]["test_accuracy"] - full[s]["test_accuracy"]) for s in paired],
        "saved": [runs[s]["saved_fraction"] for s in seeds],
        "seconds": seconds,
        "wall_saved": [1 - runs[s]["train_seconds"] / full[s]["train_seconds"] for s in paired],
        "cpu_saved": [
            1 - runs[s]["train_cpu_seconds"] / full[s]["train_cpu_seconds"] for s in paired
        ],
        "infobatch_seconds": inside,
        "infobatch_share": [i / t for i, t in zip(inside, seconds) if t > 0],
    }


def summarise(
    by_key: dict[str, dict[int, dict[str, Any]]], setups: Sequence[Setting]
) -> dict[Setting, dict[str, Any]]:
    """Per-setting summaries, for the settings of ``setups`` that have runs."""
    full = by_key.get(FULL.key, {})
    return {
        setting: summarise_setting(by_key[setting.key], full)
        for setting in setups
        if by_key.get(setting.key)
    }


def largest_lossless(
    summary: dict[Setting, dict[str, Any]],
) -> dict[str, tuple[Setting, dict[str, Any]] | None]:
    """Per family, the lossless setting with the largest mean saving (``None``: none is)."""
    best: dict[str, tuple[Setting, dict[str, Any]] | None] = {}
    for setting, s in summary.items():
        if setting.family == "full":
            continue
        best.setdefault(setting.family, None)
        if not s["delta"] or _mean(s["delta"]) < LOSSLESS:
            continue
        current = best[setting.family]
        if current is None or _mean(s["saved"]) > _mean(current[1]["saved"]):
            best[setting.family] = (setting, s)
    return best


# ---------------------------------------------------------------------------------- tables
def regime_map_table(runs: list[dict[str, Any]], task: str, spec: dict[str, Any]) -> list[str]:
    """Per number of epochs: full data, and InfoBatch, the fewer-epochs control and
    ``keep_steps`` against it (paired by seed), each with its saving."""
    full_key = FULL.key
    configs = [(spec["settings"], spec["seeds"])]
    configs += [(s, spec["epoch_sweep"]["seeds"]) for s in spec["epoch_sweep"]["settings"]]
    rows = []
    for settings, seeds in sorted(configs, key=lambda c: c[0]["epochs"]):
        by_key = select_runs(runs, task, settings, seeds)
        full = by_key.get(full_key, {})
        if not full:
            continue
        cells = []
        for setting in (DEFAULT, CONTROL, KEEP_STEPS):
            got = by_key.get(setting.key, {})
            if not got:
                cells.append("-")
                continue
            summary = summarise_setting(got, full)
            cells.append(f"{_diff(summary['delta'])} at {100 * _mean(summary['saved']):.1f}%")
        accuracy = [100 * run["test_accuracy"] for run in full.values()]
        rows.append(
            f"| {settings['epochs']} | {len(full)} | {_mean(accuracy):.2f} ± "
            f"{_std(accuracy) / math.sqrt(len(accuracy)):.2f} | " + " | ".join(cells) + " |"
        )
    if not rows:
        return []
    return [
        "| epochs | seeds | full data acc % | InfoBatch - full (saved) "
        "| full data, 3/4 of the epochs - full (saved) | InfoBatch, full data's steps - full "
        "(saved) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]


def step_limited_lines(results: Path) -> list[str]:
    """The step-limited task's regime map and candidates, from ``step_limited.py``'s JSON."""
    import step_limited  # noqa: PLC0415  (imports torch; only needed for the report)

    lines: list[str] = []
    for name, (what, command) in STEP_LIMITED_FILES.items():
        path = results / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        if not data.get("runs"):
            continue
        store = step_limited.Store(path, data["runs"][0]["settings"])
        epochs = sorted({run["epochs"] for run in store.runs})
        seeds = sorted({run["seed"] for run in store.runs})
        rows = step_limited.summarise(store, epochs, seeds)
        shown = step_limited.MAP_VARIANTS if rows else ("full",)  # no control: InfoBatch here
        variants = step_limited.summarise_variants(store, epochs, seeds, exclude=shown)
        lines += [
            f"### {what}",
            "",
            "```bash",
            command,
            "```",
            "",
            *(
                [
                    "Full data against InfoBatch at its defaults and the control (full data "
                    "stopped at InfoBatch's sample passes, its cosine compressed to them), "
                    "paired by seed:",
                    "",
                    step_limited.format_table(rows),
                    "",
                    step_limited.step_limited_check(rows) + ".",
                    "",
                ]
                if rows
                else []
            ),
            "The other variants (`--modes`), paired by seed with full data and with InfoBatch "
            "(LR sum: the learning rate summed over the optimizer steps, against full data's):",
            "",
            step_limited.format_variants(variants),
            "",
            f"Largest lossless saving per policy (mean paired difference >= {LOSSLESS}, at "
            "least 5 seeds; the variant and its difference):",
            "",
            step_limited.format_lossless(rows, variants),
            "",
        ]
    return lines


def grpo_lines(results: Path) -> list[str]:
    """The offline GRPO benchmark (``benchmarks/grpo.py``): prompt-level InfoBatch against
    plain GRPO and the prompt baselines, from ``grpo.json`` (empty when it is missing)."""
    path = results / "grpo.json"
    if not path.is_file():
        return []
    import grpo  # noqa: PLC0415  (imports torch; only needed for the report)

    data = json.loads(path.read_text())
    settings = data.get("settings")
    runs = [run for run in data.get("runs", []) if run["settings"] == settings]
    if not runs:
        return []
    config = grpo.GRPOConfig(**settings)
    summary = grpo.summarise(runs)
    rows = {row["method"]: row for row in summary["rows"]}
    seeds = sorted({run["seed"] for run in runs})
    first = {run["seed"]: run for run in reversed(runs)}  # one run per seed, for its SFT
    sft_steps = [first[s]["sft"]["steps"] for s in seeds]
    sft_accuracy = [100 * first[s]["sft"]["train_accuracy"] for s in seeds]
    levels = grpo.initial_levels(runs)
    num_train = config.train_per_level * grpo.MAX_DIGITS
    _, test = grpo.make_prompt_sets(config.task_seed, config.train_per_level, config.test_per_level)
    test_sizes = [sum(p.level == lv for p in test) for lv in range(1, grpo.MAX_DIGITS + 1)]
    total = data.get("total_seconds")
    seed_minutes = sum(first[s]["seed_seconds"] for s in seeds) / 60
    env = runs[-1]["environment"]
    loads = [
        run["environment"]["load_average"][0]
        for run in runs
        if run["environment"].get("load_average")
    ]
    pruned_passes = math.ceil(config.delta * config.num_passes - 1e-9)
    lines = [
        "Trained by `benchmarks/grpo.py` (its own hand-written GRPO loop, plain PyTorch); every "
        "run is stored in `benchmarks/results/grpo.json` and these tables are made from it. "
        f"The command ({len(runs)} runs, {len(seeds)} seeds; "
        + (f"{total / 60:.0f} minutes in total" if total else f"{seed_minutes:.0f} minutes")
        + f" on {env['cpus']} CPUs shared with other jobs, {env['threads']} torch thread"
        + (f", 1-minute load average {min(loads):.1f}-{max(loads):.1f}" if loads else "")
        + "):",
        "",
        "```bash",
        data.get("command", "python benchmarks/grpo.py"),
        "```",
        "",
        "### Setup",
        "",
        f"- Task: additions `a+b` of two operands with the same number of digits, 1 to "
        f"{grpo.MAX_DIGITS} (the difficulty level), right-aligned to a fixed width "
        '(`"  12+  34="`), the answer least significant digit first and EOS; reward 1 for an '
        f"exact match, else 0. {num_train} fixed training prompts ({config.train_per_level} per "
        f"level) and {sum(test_sizes)} held-out test prompts "
        f"({', '.join(str(n) for n in test_sizes)} per level: level 1 has only 100 distinct "
        "problems, the test set is what the training set leaves). Metric: greedy exact-match "
        "accuracy on the held-out prompts.",
        f"- Model: GPT-2 architecture from a `transformers` config, random weights, "
        f"{grpo.parameter_count(config):,} parameters ({config.n_layer} layers, width "
        f"{config.n_embd}, {config.n_head} heads, MLP {config.n_inner}), a character-level "
        f"vocabulary of {grpo.VOCAB_SIZE} (digits, `+`, `=`, space, EOS, PAD).",
        f"- Supervised start, per seed: AdamW (lr {config.sft_lr}, batch {config.sft_batch}) on "
        "random (prompt, answer) pairs of uniform level (never a test prompt) until greedy "
        f"accuracy on the training prompts reaches {100 * config.sft_target:.0f}% (checked every "
        f"{config.sft_check_every} steps): {min(sft_steps)}-{max(sft_steps)} steps, "
        f"{_mean(sft_accuracy):.1f}% of the training prompts solved. Held-out accuracy of these "
        "models per level (mean ± SE over seeds): "
        + ", ".join(f"{lv} digit(s) {grpo._pm(v, 1, sign=False)}%" for lv, v in levels.items())
        + ". Every method of a seed starts from the same checkpoint.",
        f"- GRPO: {config.num_passes} passes over the training prompts, {config.batch_size} "
        f"prompts per batch, {config.group_size} completions each (`model.generate`, sampling "
        f"at temperature {config.temperature}), advantages `(r - mean) / (std + 1e-4)` within "
        "the group times the prompt's weight from `PromptPruning.update`, loss `-mean(A * sum "
        "of token log-probs / length)`, one Adam step per batch (lr "
        f"{config.lr}, constant), no KL. InfoBatch: `delta={config.delta}`, so passes "
        f"0-{pruned_passes - 1} may prune (pass 0 never does: no prompt is scored yet) and the "
        f"last {config.num_passes - pruned_passes} keep every prompt.",
        "- Methods (the same loop; only `PromptPruning`'s rule differs): "
        + "; ".join(f"`{name}`: {method.what}" for name, method in grpo.METHODS.items())
        + ". The GRESO-style rule is a reconstruction of its idea (skip prompts whose last "
        "group had zero reward variance), not GRESO's adaptive schedule.",
        "- The methods of a seed run interleaved, one pass each in turn (order reversed every "
        "pass), so they share the machine's load; each keeps its own generation RNG state. "
        "Wall-clock is the GRPO phase only (rollouts and updates, not the evaluation after "
        "each pass). **Paired differences**: a method minus plain GRPO for the same seed "
        "(same supervised start), mean ± standard error (SE = std / sqrt(seeds)).",
        "",
        "### Results",
        "",
        "Held-out accuracy after the last pass, what each method generated, and the time it "
        "took (means over seeds; savings and differences paired by seed with plain GRPO). "
        "The last column compares with plain GRPO *at the method's own token count* (plain "
        "GRPO's accuracy read off its per-pass curve, linear between passes):",
        "",
        grpo.format_table(summary),
        "",
        "Held-out accuracy per difficulty level after the last pass (mean ± SE, %):",
        "",
        grpo.format_levels(summary),
        "",
        "Held-out accuracy when a method had generated a given fraction of plain GRPO's tokens "
        "(same seed; linear between the evaluations after each pass; `-`: the run ended "
        "before that budget):",
        "",
        grpo.format_budgets(summary),
        "",
        "Per pass (means over seeds): held-out accuracy after the pass, prompts rolled out, "
        "and the share of rolled-out prompts whose group was all-solved or all-failed (zero "
        "advantage):",
        "",
        grpo.format_curves(summary),
        "",
        "### Reading the results",
        "",
        *_grpo_notes(rows, runs, config),
        "",
    ]
    return lines


def _grpo_notes(
    rows: dict[str, dict[str, Any]], runs: list[dict[str, Any]], config: Any
) -> list[str]:
    """Notes computed from the GRPO runs and summary rows (no number typed by hand)."""
    base = rows.get("grpo")
    if base is None:
        return ["- No plain GRPO runs: nothing to pair with."]
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        by.setdefault(run["method"], {})[run["seed"]] = run

    def paired(a: str, b: str) -> list[float]:
        """Points of ``a`` minus ``b``, per seed that has both."""
        got, other = by.get(a, {}), by.get(b, {})
        return [
            100 * (got[s]["test_accuracy"] - other[s]["test_accuracy"])
            for s in sorted(got)
            if s in other
        ]

    def verdict(values: list[float]) -> str:
        if len(values) < 2:
            return "one seed: no standard error"
        if abs(_mean(values)) <= 2 * _se(values):
            return "within two standard errors of 0 (not resolved by these seeds)"
        return ("above" if _mean(values) > 0 else "below") + " by more than two standard errors"

    group = config.group_size
    lowest = math.sqrt((1 / group) * (1 - 1 / group))  # smallest non-zero reward std
    pruned = [
        p
        for run in by.get("infobatch", {}).values()
        for p in run["passes"]
        if p["threshold"] is not None and p["weight"] != 1.0
    ]
    only_zero = sum(p["threshold"] <= lowest for p in pruned)
    start, end = base["initial_accuracy"][0], base["accuracy"][0]
    zero = base["zero_variance_per_pass"]
    smaller_wall = all(
        row["wall_clock_saving"][0] < row["token_saving"][0]
        for name, row in rows.items()
        if name != "grpo" and row.get("wall_clock_saving") and row.get("token_saving")
    )
    gains = [100 * (r["test_accuracy"] - r["initial_test_accuracy"]) for r in by["grpo"].values()]
    notes = [
        f"- Plain GRPO moves held-out accuracy from {start:.1f}% (the supervised start) to "
        f"{end:.1f}% (paired gain {_diff(gains)} points); "
        f"{min(zero):.0f}-{max(zero):.0f}% of its groups per pass have zero reward variance "
        "(all-solved or all-failed): their rollouts teach nothing, the room for prompt pruning."
    ]
    for name, row in rows.items():
        diff = row.get("minus_grpo")
        if name == "grpo" or diff is None:
            continue
        notes.append(
            f"- `{name}` - plain GRPO: {grpo_pm(diff)} points, "
            f"{verdict(paired(name, 'grpo'))}; {grpo_pm(row.get('rollout_saving'), 1, False)}% "
            f"of the rollouts, {grpo_pm(row.get('token_saving'), 1, False)}% of the tokens and "
            f"{grpo_pm(row.get('wall_clock_saving'), 1, False)}% of the wall-clock saved; "
            f"{row['optimizer_steps']:.0f} optimizer steps against "
            f"{base['optimizer_steps']:.0f}."
        )
    for other in ("dynamic_random", "greso"):
        values = paired("infobatch", other)
        if values:
            notes.append(
                f"- InfoBatch (r=0.5) - `{other}`, paired: {_diff(values)} points, "
                f"{verdict(values)}; ahead on {sum(v > 0 for v in values)} of {len(values)} "
                "seeds."
            )
    same_passes = total_passes = 0
    for seed, run in by.get("greso", {}).items():
        ib = by.get("infobatch", {}).get(seed)
        if ib is None:
            continue
        for a, b in zip(run["passes"], ib["passes"]):
            if a["pruned"] or b["pruned"]:
                total_passes += 1
                same_passes += a["kept"] == b["kept"]
    identical = [
        seed
        for seed, run in by.get("infobatch_success_var", {}).items()
        if seed in by.get("infobatch", {})
        and [p["test_accuracy"] for p in run["passes"]]
        == [p["test_accuracy"] for p in by["infobatch"][seed]["passes"]]
        and run["kept_per_pass"] == by["infobatch"][seed]["kept_per_pass"]
    ]
    notes += [
        "- Fewer rollouts also mean fewer optimizer steps here (one step per batch of kept "
        "prompts, constant learning rate): a pruned run trains fewer batches, each with more "
        "prompts whose last group had reward variance.",
        f"- With 0/1 rewards and groups of {group}, a prompt's score (reward std) is 0 or at "
        f"least {lowest:.2f}. In {only_zero} of InfoBatch's {len(pruned)} pruning passes (all "
        "seeds) the mean threshold was at or below that, so in those passes its below-mean "
        "prompts were exactly the zero-variance ones, the GRESO-style rule's candidates. "
        "Both rules draw the same coins from the same per-pass generator, so from equal "
        "scores they skip the same prompts; they differ by InfoBatch's 1/(1-r) weight on the "
        "kept candidates, which changes the update only where a candidate's new group has "
        "reward variance, and the runs drift apart from there (the same kept count in "
        f"{same_passes} of {total_passes} pruning passes). The success-variance score p(1-p) "
        "ranks prompts the same way; its threshold selected the same prompts in every pass "
        f"on {len(identical)} of {len(by.get('infobatch_success_var', {}))} seeds (identical "
        "runs)"
        + (
            ": in this regime the choice of score changes nothing."
            if len(identical) == len(by.get("infobatch_success_var", {}))
            else "; on the others the two scores kept different prompts in some pass."
        ),
        "- A tiny model on a synthetic task, on a shared CPU: greedy accuracy moves by a few "
        "points from one pass to the next, so single seeds say little; read the paired means "
        "with their SE. The evaluation after each pass is not in the wall-clock."
        + (
            " Wall-clock savings are smaller than the token savings for every method: "
            "each kept prompt still costs its generation and update, and the fixed costs of "
            "a batch and of generation's steps do not shrink with fewer tokens."
            if smaller_wall
            else ""
        ),
    ]
    return notes


def grpo_pm(value: Sequence[float | None] | None, digits: int = 2, sign: bool = True) -> str:
    """``mean ± SE`` as the GRPO tables write it (``-`` when missing)."""
    import grpo  # noqa: PLC0415

    return str(grpo._pm(value, digits, sign))


def main_table(summary: dict[Setting, dict[str, Any]]) -> list[str]:
    """The equal-budget comparison of one task (the paper's table, with timings)."""
    lines = [
        "| policy | setting | seeds | test accuracy (%) | vs full, paired (points ± SE) "
        "| sample passes saved (%) | training time (s) | wall-clock saved (%) "
        "| CPU time saved (%) | in infobatch (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for setting in MAIN.values():
        s = summary.get(setting)
        if s is None:
            continue
        is_full = setting.family == "full"
        inside = (
            f"{_mean(s['infobatch_seconds']):.2f} ({100 * _mean(s['infobatch_share']):.1f}%)"
            if not is_full
            else "-"
        )
        lines.append(
            f"| {FAMILIES[setting.family][0]} | {setting.label} | {len(s['seeds'])} "
            f"| {_pm(s['accuracy'], 100)} | {'-' if is_full else _diff(s['delta'])} "
            f"| {_pm(s['saved'], 100, 1)} | {_pm(s['seconds'], 1, 1)} "
            f"| {'-' if is_full else _pm(s['wall_saved'], 100, 1)} "
            f"| {'-' if is_full else _pm(s['cpu_saved'], 100, 1)} | {inside} |"
        )
    return lines


def sweep_table(summary: dict[Setting, dict[str, Any]]) -> list[str]:
    """Every setting, grouped by policy and ordered by saving."""
    lines = [
        "| policy | setting | seeds | sample passes saved (%) | vs full, paired (points ± SE) "
        "| lossless (mean >= -0.1) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for family in FAMILIES:
        rows = sorted(
            ((k, s) for k, s in summary.items() if k.family == family and family != "full"),
            key=lambda item: _mean(item[1]["saved"]),
        )
        for setting, s in rows:
            verdict = "yes" if s["delta"] and _mean(s["delta"]) >= LOSSLESS else "no"
            lines.append(
                f"| {FAMILIES[family][0]} | {setting.label} | {len(s['seeds'])} "
                f"| {_pm(s['saved'], 100, 1)} | {_diff(s['delta'])} | {verdict} |"
            )
    return lines


def lossless_table(summary: dict[Setting, dict[str, Any]]) -> list[str]:
    """The largest lossless saving each policy reached."""
    lines = [
        "| policy | largest lossless saving (%) | setting | vs full, paired (points ± SE) "
        "| settings tried |",
        "| --- | --- | --- | --- | --- |",
    ]
    tried = {f: sum(1 for k in summary if k.family == f) for f in FAMILIES}
    best = largest_lossless(summary)
    for family in FAMILIES:
        if family not in best:
            continue
        found = best[family]
        if found is None:
            lines.append(f"| {FAMILIES[family][0]} | none | - | - | {tried[family]} |")
            continue
        setting, s = found
        lines.append(
            f"| {FAMILIES[family][0]} | {100 * _mean(s['saved']):.1f} | {setting.label} "
            f"| {_diff(s['delta'])} | {tried[family]} |"
        )
    return lines


def noise_lines(summary: dict[Setting, dict[str, Any]]) -> list[str]:
    """Seed-to-seed noise: full data's spread and the seeds that resolve 0.1 point."""
    full, default = summary.get(FULL), summary.get(DEFAULT)
    if full is None:
        return []
    lines = [
        f"- Full data: {_pm(full['accuracy'], 100)}% over {len(full['seeds'])} seeds (mean ± std)."
    ]
    if default is not None and len(default["delta"]) > 1:
        spread = _std(default["delta"])
        needed = math.ceil((spread / RESOLVING_SE) ** 2)
        lines.append(
            f"- InfoBatch (defaults) minus full data, paired by seed: std {spread:.2f} points, "
            f"so the standard error of the mean difference is {spread:.2f}/sqrt(n): "
            f"{_se(default['delta']):.2f} with these {len(default['delta'])} seeds; about "
            f"{needed} seeds bring it to {RESOLVING_SE} (a 0.1-point difference at two "
            "standard errors)."
        )
    return lines


def gap_table(by_key: dict[str, dict[int, dict[str, Any]]], setups: Sequence[Setting]) -> list[str]:
    """Paired accuracy gap to full data after each epoch: where it opens, how annealing closes it.

    One row per InfoBatch-like setting of ``setups`` (and the matched dynamic random); the
    columns are epochs, the entries the mean over seeds of (policy - full data) test accuracy
    after that epoch, in points; a ``|`` marks the first annealing epoch.
    """
    full = by_key.get(FULL.key, {})
    families = ("infobatch", "low_loss", "no_anneal", "saving_budget", "dynamic_random")
    rows = [s for s in setups if s.family in families and by_key.get(s.key)]
    if not full or not rows:
        return []
    epochs = len(next(iter(full.values()))["test_accuracy_per_epoch"])
    if epochs == 0:
        return []
    header = " | ".join(f"epoch {e}" for e in range(epochs))
    lines = [f"| policy | setting | {header} |", "| --- | --- |" + " --- |" * epochs]
    for setting in rows:
        runs = by_key[setting.key]
        seeds = [s for s in runs if s in full and runs[s]["test_accuracy_per_epoch"]]
        if not seeds:
            continue
        boundary = math.ceil(setting.delta * epochs - 1e-9) if setting.delta < 1 else epochs
        cells = []
        for epoch in range(epochs):
            gap = _mean(
                [
                    100
                    * (
                        runs[s]["test_accuracy_per_epoch"][epoch]
                        - full[s]["test_accuracy_per_epoch"][epoch]
                    )
                    for s in seeds
                ]
            )
            cells.append(f"{'| ' if epoch == boundary else ''}{gap:+.2f}")
        lines.append(
            f"| {FAMILIES[setting.family][0]} | {setting.label} | " + " | ".join(cells) + " |"
        )
    return lines


def targets(task: str, summary: dict[Setting, dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """``(target, met, measured)``: the issue's savings targets and the equal-budget ranking."""
    rows: list[tuple[str, bool, str]] = []
    goal = 0.30 if task == "mnist_mlp" else 0.45
    best = largest_lossless(summary)
    for family in ("infobatch", "saving_budget", "low_loss", "no_rescale"):
        found = best.get(family)
        saved = _mean(found[1]["saved"]) if found else 0.0
        rows.append(
            (
                f"{FAMILIES[family][0]} lossless at >= {100 * goal:.0f}% of sample passes saved",
                saved >= goal,
                f"largest lossless saving {100 * saved:.1f}%" if found else "no lossless setting",
            )
        )
    default = summary.get(DEFAULT)
    if default is not None:
        for setting in MATCHED:
            other = summary.get(setting)
            if other is None:
                continue
            pairs = [
                (a, b)
                for seed_a, a in zip(default["seeds"], default["accuracy"])
                for seed_b, b in zip(other["seeds"], other["accuracy"])
                if seed_a == seed_b
            ]
            ahead = [100 * (a - b) for a, b in pairs]
            resolved = len(ahead) > 1 and _mean(ahead) > 2 * _se(ahead)
            rows.append(
                (
                    f"InfoBatch ahead of {FAMILIES[setting.family][0]} at the same budget "
                    "(mean paired difference above two standard errors)",
                    resolved,
                    f"{_diff(ahead)} points (ahead on {sum(d > 0 for d in ahead)} of "
                    f"{len(ahead)} seeds)",
                )
            )
    return rows


# ----------------------------------------------------------------------------------- plots
def plot_sweep(summaries: dict[str, dict[Setting, dict[str, Any]]], path: Path) -> None:
    """Per task: paired accuracy difference (± SE) against saving, one line per policy."""
    fig, axes = plt.subplots(1, len(summaries), figsize=(6.8 * len(summaries), 5.0), squeeze=False)
    for ax, (task, summary) in zip(axes[0], summaries.items()):
        for family in FAMILIES:
            rows = sorted(
                ((k, s) for k, s in summary.items() if k.family == family and s["delta"]),
                key=lambda item: _mean(item[1]["saved"]),
            )
            if not rows or family == "full":
                continue
            x = [100 * _mean(s["saved"]) for _, s in rows]
            y = [_mean(s["delta"]) for _, s in rows]
            err = [_se(s["delta"]) if len(s["delta"]) > 1 else 0.0 for _, s in rows]
            ax.errorbar(
                x,
                y,
                yerr=err,
                fmt="-o",
                color=COLORS[family],
                capsize=3,
                markersize=5,
                linewidth=2.2 if family == "infobatch" else 1.2,
                label=FAMILIES[family][0],
            )
        ax.axhline(0, color="black", lw=1)
        ax.axhspan(LOSSLESS, 10, color="tab:green", alpha=0.07)
        ax.axhline(LOSSLESS, color="tab:green", lw=1, ls="--", label="lossless bound (-0.1)")
        low = min((_mean(s["delta"]) for s in summary.values() if s["delta"]), default=-1.0)
        ax.set_ylim(max(low - 0.3, -3.0), 0.5)
        ax.set_xlabel("sample passes saved (%)")
        ax.set_ylabel("test accuracy minus full data, paired (points)")
        ax.set_title(f"{_label(task)}: accuracy vs saving (mean ± SE)")
        ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_difference(
    summaries: dict[str, dict[Setting, dict[str, Any]]], path: Path
) -> None:
    """The equal-budget comparison: paired differences per seed and their mean ± SE."""
    fig, axes = plt.subplots(1, len(summaries), figsize=(6.2 * len(summaries), 4.2), squeeze=False)
    for ax, (task, summary) in zip(axes[0], summaries.items()):
        names = [n for n, k in MAIN.items() if n != "full" and summary.get(k, {}).get("delta")]
        for row, name in enumerate(names):
            setting = MAIN[name]
            delta = summary[setting]["delta"]
            color = COLORS[setting.family]
            ax.scatter(delta, [row] * len(delta), color=color, alpha=0.35, s=16)
            se = _se(delta) if len(delta) > 1 else 0.0
            ax.errorbar(_mean(delta), row, xerr=se, fmt="o", color=color, capsize=4)
        ax.axvspan(LOSSLESS, 10, color="tab:green", alpha=0.08)
        ax.axvline(0, color="black", lw=1)
        ax.set_xlim(
            max(min((min(summary[MAIN[n]]["delta"]) for n in names), default=-1) - 0.2, -4),
            max(max((max(summary[MAIN[n]]["delta"]) for n in names), default=0.5) + 0.2, 0.3),
        )
        ax.set_yticks(range(len(names)), [FAMILIES[MAIN[n].family][0] for n in names])
        ax.invert_yaxis()
        ax.set_xlabel("test accuracy minus full data, same seed (points)")
        ax.set_title(f"{_label(task)}: at InfoBatch's budget (mean ± SE)")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_passes(
    chosen: dict[str, dict[str, dict[int, dict[str, Any]]]], path: Path
) -> None:
    """Test accuracy after each epoch against cumulative sample passes, main settings."""
    fig, axes = plt.subplots(1, len(chosen), figsize=(6.2 * len(chosen), 4.4), squeeze=False)
    for ax, (task, by_key) in zip(axes[0], chosen.items()):
        lows = []
        for name in ("full", "infobatch", "no_anneal", "dynamic_random", "seta"):
            runs = list(by_key.get(MAIN[name].key, {}).values())
            if not runs or not runs[0]["test_accuracy_per_epoch"]:
                continue
            epochs = len(runs[0]["test_accuracy_per_epoch"])
            passes = [
                _mean([sum(r["kept_per_epoch"][: e + 1]) for r in runs]) / 1e6
                for e in range(epochs)
            ]
            acc = [
                _mean([100 * r["test_accuracy_per_epoch"][e] for r in runs]) for e in range(epochs)
            ]
            lows.append(min(acc[epochs // 2 :]))
            ax.plot(
                passes,
                acc,
                marker="o",
                markersize=3,
                color=COLORS[MAIN[name].family],
                label=FAMILIES[MAIN[name].family][0],
                linewidth=2.2 if name == "infobatch" else 1.2,
            )
        ax.set_ylim(max(min(lows, default=90.0) - 0.5, 0), None)
        ax.set_xlabel("cumulative sample passes (millions)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{_label(task)}: accuracy vs compute (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kept_fraction(chosen: dict[str, dict[str, dict[int, dict[str, Any]]]], path: Path) -> None:
    """Fraction of the training set kept in each epoch (mean over seeds), main settings."""
    fig, axes = plt.subplots(1, len(chosen), figsize=(6.2 * len(chosen), 4.2), squeeze=False)
    for ax, (task, by_key) in zip(axes[0], chosen.items()):
        for name, setting in MAIN.items():
            runs = list(by_key.get(setting.key, {}).values())
            if not runs or name in ("epsilon_greedy", "ucb", "no_rescale"):
                continue  # the matched ones trace InfoBatch's curve; no_rescale too
            epochs = len(runs[0]["kept_per_epoch"])
            fraction = [
                _mean([r["kept_per_epoch"][e] / r["settings"]["num_train"] for r in runs])
                for e in range(epochs)
            ]
            ax.plot(
                range(epochs),
                fraction,
                "--" if name == "dynamic_random" else "-",
                marker="o",
                markersize=3,
                color=COLORS[setting.family],
                label=FAMILIES[setting.family][0],
            )
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("epoch")
        ax.set_ylabel("fraction of training samples used")
        ax.set_title(f"{_label(task)}: samples kept per epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(chosen: dict[str, dict[str, dict[int, dict[str, Any]]]], path: Path) -> None:
    """InfoBatch's score (loss) histograms with the mean threshold, first seed, a few epochs."""
    rows = [(t, by[DEFAULT.key]) for t, by in chosen.items() if by.get(DEFAULT.key)]
    rows = [(t, runs[min(runs)]) for t, runs in rows if runs[min(runs)]["score_snapshots"]]
    if not rows:
        return
    columns = max(len(run["score_snapshots"]) for _, run in rows)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(4.4 * columns, 3.4 * len(rows)), squeeze=False
    )
    for row, (task, run) in enumerate(rows):
        for col, snap in enumerate(run["score_snapshots"]):
            ax = axes[row][col]
            ax.stairs(snap["counts"], snap["log10_bin_edges"], fill=True, color="tab:gray")
            if snap["log10_threshold"] is not None:
                ax.axvline(snap["log10_threshold"], color="tab:red", label="threshold (mean)")
            below = snap["num_below_threshold"] / max(snap["num_scored"], 1)
            ax.set_title(
                f"{_label(task)}, epoch {snap['epoch']}: {100 * below:.0f}% below the mean",
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


PLOTS = {
    "accuracy_vs_saving.png": "Every setting of every policy: test accuracy minus full data "
    "(paired by seed, mean ± standard error) against the sample passes saved. Points above the "
    "dashed line are lossless by this report's definition; the further right, the more saved.",
    "accuracy_difference.png": "At InfoBatch's own realised budget (matched baselines), the "
    "ablations and SeTa's default: paired differences per seed (dots) and their mean ± SE.",
    "accuracy_vs_passes.png": "Test accuracy after each epoch against cumulative sample passes "
    "(mean over seeds).",
    "kept_per_epoch.png": "Fraction of the training set used in each epoch (the matched "
    "baselines trace InfoBatch's line by construction).",
    "score_distribution.png": "InfoBatch's scores (each sample's latest loss) at a few epochs "
    "(first seed), with the mean threshold: samples left of the line are candidates for "
    "pruning. Losses of exactly 0 are drawn at the smallest positive loss.",
}


def write_report(
    runs: list[dict[str, Any]],
    current: dict[str, dict[str, Any]],
    output: Path,
    report: Path,
    command: str,
    sweep: str = "reduced",
) -> None:
    """Write the plots into ``output`` and the markdown report to ``report``."""
    output.mkdir(parents=True, exist_ok=True)
    chosen = {
        task: select_runs(runs, task, spec["settings"], spec["seeds"])
        for task, spec in current.items()
    }
    chosen = {t: by for t, by in chosen.items() if by}
    summaries = {t: summarise(by, current[t]["setups"]) for t, by in chosen.items()}
    if summaries:
        plot_sweep(summaries, output / "accuracy_vs_saving.png")
        plot_accuracy_difference(summaries, output / "accuracy_difference.png")
        plot_accuracy_vs_passes(chosen, output / "accuracy_vs_passes.png")
        plot_kept_fraction(chosen, output / "kept_per_epoch.png")
        plot_scores(chosen, output / "score_distribution.png")
    used = [
        run
        for task, by in chosen.items()
        for setting in current[task]["setups"]
        for run in by.get(setting.key, {}).values()
    ]
    seconds = {task: 0.0 for task in chosen}
    for run in used:
        seconds[run["dataset"]] += run.get("run_seconds", run["train_seconds"])
    minutes = sum(seconds.values()) / 60
    per_task = ", ".join(f"{_label(task)} {value / 60:.0f}" for task, value in seconds.items())
    relative = _relative(output, report.parent)
    lines = [
        "# Benchmarks",
        "",
        "Everything below (tables, targets, plots) is generated from "
        f"`{_relative(output / 'runs.json', report.parent)}` by this command, run from the "
        f"repository root; it is resumable (finished runs are skipped). The {len(used)} runs "
        f"of this report ({sweep} sweep) took {minutes:.0f} minutes of one core in total "
        f"({per_task} minutes per task; `--jobs 2` trains tasks side by side on two cores; "
        "training and per-epoch evaluation; MNIST-1D generation adds about 30 s once):",
        "",
        "```bash",
        'pip install -e ".[demo]"',
        command,
        "```",
        "",
        "The full sweep (10-16 seeds per task and more settings per policy; several hours on "
        "2 cores, resumable, so it can run in pieces), for later:",
        "",
        "```bash",
        command if "--sweep full" in command else f"{command} --sweep full",
        "```",
        "",
        "Do not edit this file by hand; "
        "rerun the command (add `--report-only` to rebuild the report from the JSON without "
        "training). What each sweep trains is in `benchmarks/sweep.py`.",
        "",
        "## Setup",
        "",
        f"- Machine: {_environment_line(used)}.",
        "- Same model, initialisation, data order seed, optimiser (SGD, Nesterov momentum 0.9, "
        "weight decay 5e-4, batch 128) and learning-rate schedule (OneCycleLR stepped per "
        "batch, re-created each epoch with `steps_per_epoch=len(loader)`) for every policy.",
        "- Every policy is a rule of `infobatch.policies` (selected by name with "
        "`make_policy`) and runs through the same `InfoBatch` wrapper, sampler and loop; each "
        "run prunes with its own seed (the run's seed).",
        "- **Paired differences**: a policy's test accuracy minus full data's for the same seed, "
        "in points; the tables give their mean ± standard error (SE = std / sqrt(seeds)). "
        f"**Lossless** means a mean paired difference >= {LOSSLESS} point, as issue 9 defines "
        "it; with an SE of 0.05-0.1 a single setting's verdict is uncertain near the bound.",
        "- Sample passes saved: 1 - (samples trained on) / (epochs x training-set size). "
        "Training time is the wall-clock of the training loop only; CPU time is this "
        "process's. Two benchmark processes and other jobs shared the 2 cores, so times are "
        "noisy; compare policies by sample passes.",
        "- Runs marked in `runs.json` with `code` = `results version 1` were made by the first "
        "version of this benchmark (full data, InfoBatch's defaults, matched dynamic and "
        "static random, the two ablations on MNIST-1D and MNIST: the same settings, seeds and "
        "training code) and are reused, not retrained.",
        "",
    ]
    for task in chosen:
        settings = current[task]["settings"]
        lines.append(
            f"- {_label(task)}: {TASKS[task][1]}; {settings['epochs']} epochs, max learning "
            f"rate {settings['max_lr']}, {settings['num_train']:,} train / "
            f"{settings['num_test']:,} test samples."
        )
    lines += ["", "Policies (`r` = prune_ratio):", ""]
    for family, (label, description) in FAMILIES.items():
        lines.append(f"- **{label}** (`{family}`): {description}.")
    for task, summary in summaries.items():
        lines += ["", f"## {_label(task)}", "", *noise_lines(summary), ""]
        lines += ["### At InfoBatch's budget", "", *main_table(summary), ""]
        lines += ["### Largest lossless saving per policy", "", *lossless_table(summary), ""]
        lines += ["### Every setting", "", *sweep_table(summary), ""]
        gaps = gap_table(chosen[task], current[task]["setups"])
        if gaps:
            lines += [
                "### The gap to full data, epoch by epoch",
                "",
                "Test accuracy minus full data's after each epoch (paired by seed, mean, "
                "points); `|` marks the first epoch after `delta` (annealing: all data, "
                "weight 1).",
                "",
                *gaps,
                "",
            ]
        lines += ["### Targets", "", "| target | met | measured |", "| --- | --- | --- |"]
        for name, met, measured in targets(task, summary):
            lines.append(f"| {name} | {'yes' if met else 'no'} | {measured} |")
    maps = [
        (task, regime_map_table(runs, task, current[task]))
        for task in chosen
        if current[task].get("epoch_sweep", {}).get("settings")
    ]
    if any(table for _, table in maps):
        lines += [
            "",
            "## The regime map: paired difference against the number of epochs",
            "",
            "Each task also trained at other numbers of epochs (`EPOCH_SWEEP` in "
            "`benchmarks/sweep.py`, fewer seeds), paired by seed with full data at the same "
            "epochs: InfoBatch at its defaults, the control (full data for 3/4 of the epochs, "
            "its one-cycle compressed to them) and `keep_steps=True` (mean ± SE, points).",
        ]
        for task, table in maps:
            if table:
                lines += ["", f"### {_label(task)}", "", *table]
    step_lines = step_limited_lines(output)
    if step_lines:
        lines += [
            "",
            f"## Step-limited task: {STEP_LIMITED_TASKS['mnist6k'][0]}",
            "",
            f"{STEP_LIMITED_TASKS['mnist6k'][1]}. Trained by `benchmarks/step_limited.py` (its "
            "own loop, not the one above); every run is stored in the JSON files below and "
            "these tables are made from them.",
            "",
            *step_lines,
        ]
    rl_lines = grpo_lines(output)
    if rl_lines:
        lines += ["", "## RL post-training: prompt pruning for GRPO", "", *rl_lines]
    from domains import domain_lines  # noqa: PLC0415  (the examples' harness, issue 17)

    other_domains = domain_lines(output / "domains")
    if other_domains:
        lines += ["", *other_domains]
    lines += ["", "## Plots", ""]
    for name, caption in PLOTS.items():
        if (output / name).is_file():
            lines += [f"![{name}]({relative}/{name})", "", caption, ""]
    notes = Path(__file__).resolve().parent / "notes.md"
    if notes.is_file():
        lines += ["## Reading the results", "", notes.read_text().strip(), ""]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines).rstrip() + "\n")
    (output / "summary.md").write_text("\n".join(summary_table(summaries)) + "\n")


def summary_table(summaries: dict[str, dict[Setting, dict[str, Any]]]) -> list[str]:
    """A compact table for the README: InfoBatch's defaults and the largest lossless savings."""
    lines = [
        "| task (seeds) | full data | InfoBatch defaults: vs full (points ± SE), saved "
        "| dynamic random, same budget | largest lossless saving: InfoBatch | variant "
        "(`low_loss`) | best other policy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, summary in summaries.items():
        full, ib, dyn = summary.get(FULL), summary.get(DEFAULT), summary.get(MATCHED[0])
        if full is None or ib is None:
            continue
        best = largest_lossless(summary)

        def saved(family: str, best: dict[str, Any] = best) -> str:
            found = best.get(family)
            return f"{100 * _mean(found[1]['saved']):.1f}%" if found else "none"

        others = [
            (family, found)
            for family, found in best.items()
            if found is not None
            and family not in ("infobatch", "saving_budget", "low_loss", "infobatch_ema")
        ]
        other = max(others, key=lambda item: _mean(item[1][1]["saved"]), default=None)
        other_text = (
            f"{FAMILIES[other[0]][0]}: {100 * _mean(other[1][1]['saved']):.1f}%"
            if other
            else "none"
        )
        lines.append(
            f"| {_label(task)} ({len(full['seeds'])}) | {_pm(full['accuracy'], 100)}% "
            f"| {_diff(ib['delta'])}, {100 * _mean(ib['saved']):.1f}% "
            f"| {_diff(dyn['delta']) if dyn else '-'} "
            f"| {saved('infobatch')} | {saved('low_loss')} | {other_text} |"
        )
    return lines


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` as a POSIX string (for markdown links)."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
