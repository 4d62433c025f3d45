"""What the benchmark trains: tasks, policy settings, and the reduced and full sweeps.

A *setting* is one policy with one choice of its parameters (and the sampler's ``delta`` and
``score_momentum``); every setting runs for every seed of a task, paired by seed with full
data. ``matched`` settings take their per-epoch kept counts from the InfoBatch run at its
defaults with the same seed (the same realised budget, epoch by epoch), so they compare
policies at equal saving. The sweeps vary each policy's saving (``prune_ratio``, ``delta``,
a total-saving target, a subset size) to find the largest saving that stays lossless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Task name -> (label, short description of data and model).
TASKS: dict[str, tuple[str, str]] = {
    "mnist1d": (
        "MNIST-1D",
        "generated offline with `mnist1d.data.make_dataset` (seed 42, 40,000 train / 10,000 "
        "test), 1D CNN with 16-32-32 channels (8k weights)",
    ),
    "mnist": (
        "MNIST",
        "real MNIST (60,000 train / 10,000 test) read from IDX files, 2D CNN with two strided "
        "3x3 convolutions of 8 and 16 channels (9k weights)",
    ),
    "mnist_mlp": (
        "MNIST, MLP-16 (not saturated)",
        "real MNIST (60,000 / 10,000), a 784-16-10 MLP (13k weights): capacity-limited, full "
        "data about 96%, so pruning costs show",
    ),
}

#: Step-limited tasks (``benchmarks/step_limited.py``): accuracy still rises with more optimizer
#: steps when the schedule ends, the regime where issue 14's users lost accuracy. They train with
#: their own loop (cosine schedule over training progress), not :func:`infobatch.experiment.train`.
STEP_LIMITED_TASKS: dict[str, tuple[str, str]] = {
    "mnist6k": (
        "MNIST 6k subset, step-limited",
        "the first 6,000 real MNIST training images (10,000 test), the `mnist` 2D CNN (9k "
        "weights), batch 256 (24 optimizer steps an epoch, 192 in 8 epochs as in issue 14), SGD "
        "with Nesterov momentum 0.9, cosine learning rate from 0.1 (the best of 0.05-0.4 for "
        "full data at 8 epochs) over the run's progress, weight decay 5e-4: still improving "
        "from 4 to 8 to 16 epochs",
    ),
}
#: Epoch counts of the step-limited regime map and seeds of its pilot.
STEP_LIMITED_EPOCHS = (4, 8, 16)
STEP_LIMITED_SEEDS = (0, 1, 2)


#: Policy family -> (label, description), in table order. Families group settings.
FAMILIES: dict[str, tuple[str, str]] = {
    "full": ("full data", "every sample every epoch, plain shuffled DataLoader"),
    "full_short": (
        "full data, fewer epochs",
        "every sample every epoch, for a fraction of the epochs (the one-cycle schedule "
        "compressed to them): what the same saving buys without pruning",
    ),
    "infobatch": (
        "InfoBatch",
        "below-mean samples dropped with probability r, the kept ones weighted 1/(1-r); "
        "annealing after delta",
    ),
    "saving_budget": (
        "InfoBatch, saving budget",
        "InfoBatch's rule with the ratio set per epoch to reach a total saving (`SavingBudget`)",
    ),
    "infobatch_keep_steps": (
        "InfoBatch, full data's steps",
        "InfoBatch with `keep_steps=True`: pruned epochs make full data's number of optimizer "
        "steps, in smaller batches (the saving is in samples, not in steps)",
    ),
    "infobatch_ema": (
        "InfoBatch, EMA scores",
        "InfoBatch with `score_momentum`: scores are a moving average of the loss",
    ),
    "low_loss": (
        "InfoBatch, low-loss threshold (variant)",
        "InfoBatch's rule with the threshold at a fraction of the mean "
        "(`LowLossPruning`): only the lowest losses are pruned, at a higher ratio; unbiased",
    ),
    "no_rescale": ("InfoBatch, no rescaling", "InfoBatch's pruning with every weight 1"),
    "no_anneal": ("InfoBatch, no annealing", "InfoBatch with delta=1.0 (prunes every epoch)"),
    "dynamic_random": (
        "dynamic random",
        "a fresh uniformly random subset every epoch, weight 1",
    ),
    "static_random": ("static random", "one random subset for the whole run, weight 1"),
    "epsilon_greedy": (
        "epsilon-greedy",
        "the highest losses plus a random 10% of the budget (Raju et al. 2021), weight 1",
    ),
    "ucb": (
        "UCB",
        "the highest moving-average loss + 1 std (Raju et al. 2021), weight 1",
    ),
    "orderdp": (
        "OrderDP",
        "a uniformly random subset, then its highest losses up to the budget, 85% of the "
        "subset (Jin et al. 2026), weight 1",
    ),
    "repb": (
        "RePB (reconstructed)",
        "InfoBatch's below-the-mean rule within windows of 10 batches, per-sample weights from "
        "each sample's selection history (Zhou et al. 2026, rule reconstructed)",
    ),
    "ies": (
        "IES",
        "samples whose loss's second difference over epochs fell below 1e-3 are excluded "
        "(Yuan et al. 2025), weight 1",
    ),
    "seta": (
        "SeTa",
        "random down-sampling, 5 k-means loss groups, an easy-to-hard window, partial "
        "annealing (Zhou et al. 2025), weight 1",
    ),
}


@dataclass(frozen=True)
class Setting:
    """One policy with one choice of parameters.

    Attributes:
        family: the policy family (a key of :data:`FAMILIES`).
        params: keyword arguments of the policy's rule (sorted ``(name, value)`` pairs).
        delta: the sampler's ``delta``.
        score_momentum: the sampler's ``score_momentum``.
        matched: kept counts (or the subset size) taken from the default InfoBatch run.
        keep_steps: the sampler's ``keep_steps`` (full data's optimizer steps).
    """

    family: str
    params: tuple[tuple[str, Any], ...] = ()
    delta: float = 0.875
    score_momentum: float = 0.0
    matched: bool = False
    keep_steps: bool = False
    kwargs: dict[str, Any] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", dict(self.params))

    @property
    def key(self) -> str:
        """A stable identifier, stored with each run."""
        parts = [f"{name}={value}" for name, value in self.params]
        if self.family not in ("full", "full_short"):
            parts.append(f"delta={self.delta}")
        if self.score_momentum:
            parts.append(f"score_momentum={self.score_momentum}")
        if self.matched:
            parts.append("matched")
        if self.keep_steps:
            parts.append("keep_steps")
        return f"{self.family}({', '.join(parts)})"

    @property
    def label(self) -> str:
        """Short text for tables: the parameters that differ from the family's defaults."""
        short = {
            "prune_ratio": "r",
            "target": "target",
            "keep_fraction": "keep",
            "threshold_scale": "below",
            "num_groups": "groups",
            "window_scale": "window",
            "epsilon": "eps",
            "epochs_fraction": "epochs x",
        }
        parts = [f"{short.get(name, name)}={value}" for name, value in self.params]
        if self.family not in ("full", "full_short", "no_anneal", "static_random", "seta") and (
            self.delta != 0.875
        ):
            parts.append(f"delta={self.delta}")
        if self.score_momentum:
            parts.append(f"momentum={self.score_momentum}")
        if self.matched:
            parts.append("InfoBatch's budget")
        if self.keep_steps:
            parts.append("full data's steps")
        return ", ".join(parts) or "defaults"


def _p(**params: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


FULL = Setting("full")
DEFAULT = Setting("infobatch", _p(prune_ratio=0.5))
#: The setting for step-limited schedules: InfoBatch's defaults with full data's steps.
KEEP_STEPS = Setting("infobatch_keep_steps", _p(prune_ratio=0.5), keep_steps=True)
CONTROL = Setting("full_short", _p(epochs_fraction=0.75))

#: At InfoBatch's default realised budget (the paper's equal-budget comparison).
MATCHED = [
    Setting("dynamic_random", matched=True),
    Setting("static_random", delta=1.0, matched=True),
    Setting("epsilon_greedy", _p(epsilon=0.1), matched=True),
    Setting("ucb", _p(c=1.0, decay=0.8), matched=True),
    Setting("orderdp", _p(top_fraction=0.85), matched=True),  # q = 0.85 S, as its paper
]
#: The newer policies at their papers' settings (issue 14).
NEWER = [
    Setting("orderdp", _p(prune_ratio=0.3625, subset_fraction=0.75), delta=1.0),
    Setting("repb", _p(prune_ratio=0.5, window=10)),
    Setting("ies", _p(threshold=1e-3, window=1)),
    Setting("ies", _p(threshold=1e-3, window=3)),
]
ABLATIONS = [
    Setting("no_rescale", _p(prune_ratio=0.5)),
    Setting("no_anneal", _p(prune_ratio=0.5), delta=1.0),
]
SETA_DEFAULT = Setting("seta", _p(prune_ratio=0.1, num_groups=5, window_scale=0.9), delta=1.0)

#: Settings that push each policy's saving up (part of both sweeps).
REDUCED_SWEEP = [
    KEEP_STEPS,
    Setting("infobatch_keep_steps", _p(prune_ratio=0.7), keep_steps=True),
    CONTROL,
    Setting("full_short", _p(epochs_fraction=0.5)),
    Setting("infobatch", _p(prune_ratio=0.7)),
    Setting("saving_budget", _p(target=0.45)),
    Setting("low_loss", _p(prune_ratio=0.8, threshold_scale=0.25)),
    Setting("dynamic_random", _p(prune_ratio=0.3)),
    Setting("no_rescale", _p(prune_ratio=0.7)),
    SETA_DEFAULT,
]
#: What the full sweep adds.
FULL_SWEEP = [
    Setting("infobatch", _p(prune_ratio=0.3)),
    Setting("infobatch", _p(prune_ratio=0.9)),
    Setting("infobatch", _p(prune_ratio=0.5), delta=0.75),
    Setting("saving_budget", _p(target=0.35)),
    Setting("saving_budget", _p(target=0.55)),
    Setting("low_loss", _p(prune_ratio=0.9, threshold_scale=0.25)),
    Setting("low_loss", _p(prune_ratio=0.9, threshold_scale=0.5)),
    Setting("low_loss", _p(prune_ratio=0.8, threshold_scale=0.5)),
    Setting("dynamic_random", _p(prune_ratio=0.2)),
    Setting("dynamic_random", _p(prune_ratio=0.5)),
    Setting("static_random", _p(keep_fraction=0.8), delta=1.0),
    Setting("static_random", _p(keep_fraction=0.6), delta=1.0),
    Setting("epsilon_greedy", _p(epsilon=0.1, prune_ratio=0.3)),
    Setting("ucb", _p(c=1.0, decay=0.8, prune_ratio=0.3)),
    Setting("seta", _p(prune_ratio=0.3, num_groups=5, window_scale=0.9), delta=1.0),
    Setting("seta", _p(prune_ratio=0.1, num_groups=10, window_scale=0.5), delta=1.0),
    Setting("infobatch_ema", _p(prune_ratio=0.5), score_momentum=0.5),
]
#: Measured on the discriminating task in the reduced sweep already.
HARD_TASK_EXTRA = [
    Setting("infobatch", _p(prune_ratio=0.3)),
    Setting("infobatch_ema", _p(prune_ratio=0.5), score_momentum=0.5),
    Setting("infobatch_ema", _p(prune_ratio=0.5), score_momentum=0.8),
    Setting("low_loss", _p(prune_ratio=0.9, threshold_scale=0.25)),
    Setting("low_loss", _p(prune_ratio=0.8, threshold_scale=0.5)),
    Setting("saving_budget", _p(target=0.35)),
    Setting("dynamic_random", _p(prune_ratio=0.2)),
    Setting("static_random", _p(keep_fraction=0.8), delta=1.0),
    Setting("infobatch", _p(prune_ratio=0.6)),
    Setting("infobatch", _p(prune_ratio=0.7), delta=0.75),
    Setting("infobatch_ema", _p(prune_ratio=0.7), score_momentum=0.8),
    Setting("epsilon_greedy", _p(epsilon=0.1, prune_ratio=0.5)),
    Setting("ucb", _p(c=1.0, decay=0.8, prune_ratio=0.5)),
    Setting("no_rescale", _p(prune_ratio=0.8)),
]

#: The regime map on these tasks: epochs besides each task's own, the settings and seeds.
EPOCH_SWEEP = {"mnist1d": (4, 16), "mnist": (4, 16), "mnist_mlp": (4, 16, 32)}
EPOCH_SWEEP_SETTINGS = [FULL, DEFAULT, CONTROL, KEEP_STEPS]
EPOCH_SWEEP_SEEDS = {"mnist1d": 6, "mnist": 3, "mnist_mlp": 10}

#: Seeds per task in each sweep.
SEEDS = {
    "reduced": {"mnist1d": 5, "mnist": 3, "mnist_mlp": 8},
    "full": {"mnist1d": 10, "mnist": 10, "mnist_mlp": 16},
}


def settings_for(task: str, sweep: str) -> list[Setting]:
    """Every setting a task trains in ``sweep`` (``"reduced"`` or ``"full"``), references first."""
    if sweep not in SEEDS:
        raise ValueError(f"Unknown sweep {sweep!r}, expected one of {list(SEEDS)}")
    chosen = [FULL, DEFAULT, *MATCHED, *ABLATIONS, *REDUCED_SWEEP, *NEWER]
    if task == "mnist_mlp":
        chosen += HARD_TASK_EXTRA
    if sweep == "full":
        chosen += FULL_SWEEP
    unique: list[Setting] = []
    for setting in chosen:
        if setting not in unique:
            unique.append(setting)
    return unique
