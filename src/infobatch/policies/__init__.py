"""The policy zoo: InfoBatch, its ablations and the baselines it is compared with, by name.

Every policy is a pruning rule for ``InfoBatch(..., rule=...)`` (a
:class:`~infobatch.PruningRule` or :class:`~infobatch.EpochAwareRule`), so it runs through
the same sampler, loader, checkpoints and distributed planning as InfoBatch itself, and none
touches the default path::

    from infobatch import InfoBatch
    from infobatch.policies import POLICIES, make_policy

    name = "dynamic_random"
    rule = make_policy(name, prune_ratio=0.3)
    delta = POLICIES[name].delta or 0.875      # some policies plan every epoch themselves
    dataset = InfoBatch(train_set, num_epochs, delta=delta, rule=rule)

==================  ================================================  ===============
name                what                                              sampler delta
==================  ================================================  ===============
``infobatch``       :class:`~infobatch.SoftPruning` (the default)      yours
``no_rescale``      InfoBatch, kept well-learned samples weight 1      yours
``no_anneal``       InfoBatch pruning every epoch                      1.0
``saving_budget``   :class:`~infobatch.SavingBudget` (a total saving)  yours
``dynamic_random``  :class:`DynamicRandom`                             yours
``static_random``   :class:`StaticRandom`                              1.0
``epsilon_greedy``  :class:`EpsilonGreedy`                             yours
``ucb``             :class:`UCB`                                       yours
``seta``            :class:`SeTa` (anneals partially itself)           1.0
``low_loss``        :class:`LowLossPruning` (an unbiased variant)      yours
``orderdp``         :class:`OrderDP` (random subset, its top-q)        yours
``repb``            :class:`RePB` (windows, per-sample weights)        yours
``ies``             :class:`IES` (instance-dependent early stopping)   yours
==================  ================================================  ===============

"No annealing" is not a rule but a setting: InfoBatch's rule with ``delta=1.0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Union

from ..budget import SavingBudget
from ..context import EpochAwareRule
from ..rule import PruningRule, SoftPruning
from .dynamic_random import DynamicRandom
from .epsilon_greedy import EpsilonGreedy
from .ies import IES
from .kmeans import kmeans_1d
from .low_loss import LowLossPruning
from .no_rescale import NoRescale
from .orderdp import OrderDP
from .repb import RePB
from .seta import SeTa
from .static_random import StaticRandom
from .ucb import UCB

__all__ = [
    "POLICIES",
    "PolicyInfo",
    "Rule",
    "make_policy",
    "DynamicRandom",
    "StaticRandom",
    "EpsilonGreedy",
    "UCB",
    "NoRescale",
    "SeTa",
    "LowLossPruning",
    "OrderDP",
    "RePB",
    "IES",
    "kmeans_1d",
]

#: What ``InfoBatch(rule=...)`` accepts.
Rule = Union[PruningRule, EpochAwareRule]


@dataclass(frozen=True)
class PolicyInfo:
    """A named policy.

    Attributes:
        name: the registry name.
        factory: builds the rule from keyword arguments.
        summary: one line on what it does.
        delta: the ``delta`` the sampler must use with it (``1.0``: the rule plans every
            epoch itself), or ``None`` for the user's own ``delta``.
        unbiased: whether each pruned epoch's expected gradient equals full data's.
    """

    name: str
    factory: Callable[..., Rule]
    summary: str
    delta: float | None = None
    unbiased: bool = False


def _infobatch(prune_ratio: float = 0.5) -> SoftPruning:
    return SoftPruning(prune_ratio)


_ENTRIES = (
    PolicyInfo(
        "infobatch",
        _infobatch,
        "InfoBatch: drop below-mean samples with probability r, rescale the kept ones",
        unbiased=True,
    ),
    PolicyInfo("no_rescale", NoRescale, "InfoBatch's pruning with every weight 1 (ablation)"),
    PolicyInfo(
        "no_anneal",
        _infobatch,
        "InfoBatch's rule in every epoch: delta=1.0, no full-data epochs at the end (ablation)",
        delta=1.0,
        unbiased=True,
    ),
    PolicyInfo(
        "saving_budget",
        SavingBudget,
        "InfoBatch's rule with the ratio set per epoch to reach a total saving",
        unbiased=True,
    ),
    PolicyInfo(
        "dynamic_random",
        DynamicRandom,
        "a fresh uniformly random subset every epoch, at a ratio or per-epoch kept counts",
        unbiased=True,
    ),
    PolicyInfo(
        "static_random",
        StaticRandom,
        "one random subset drawn once and trained on in every epoch",
        delta=1.0,
    ),
    PolicyInfo(
        "epsilon_greedy",
        EpsilonGreedy,
        "the highest losses plus a random epsilon share of the budget (Raju et al. 2021)",
    ),
    PolicyInfo(
        "ucb",
        UCB,
        "the highest upper confidence bounds of the loss (Raju et al. 2021)",
    ),
    PolicyInfo(
        "seta",
        SeTa,
        "random down-sampling, k-means loss groups, an easy-to-hard window (Zhou et al. 2025)",
        delta=1.0,
    ),
    PolicyInfo(
        "low_loss",
        LowLossPruning,
        "InfoBatch with the threshold at a fraction of the mean and a higher ratio (variant)",
        unbiased=True,
    ),
    PolicyInfo(
        "orderdp",
        OrderDP,
        "the top-q losses of a uniformly random subset, an exact budget (Jin et al. 2026); "
        "unbiased only for its ordered surrogate loss",
        unbiased=False,
    ),
    PolicyInfo(
        "repb",
        RePB,
        "InfoBatch's criterion within windows of batches, per-sample weights from the "
        "selection history, exact cumulatively (Zhou et al. 2026)",
        unbiased=False,
    ),
    PolicyInfo(
        "ies",
        IES,
        "exclude samples whose loss's second difference is below a threshold (Yuan et al. 2025)",
        unbiased=False,
    ),
)

#: Every policy by name (read-only).
POLICIES: Mapping[str, PolicyInfo] = MappingProxyType({entry.name: entry for entry in _ENTRIES})


def make_policy(name: str, **kwargs: Any) -> Rule:
    """Build the policy ``name`` with ``kwargs`` (see each class for its arguments).

    >>> make_policy("dynamic_random", prune_ratio=0.3)
    DynamicRandom(prune_ratio=0.3)

    Raises:
        ValueError: ``name`` is not in :data:`POLICIES`.
    """
    if name not in POLICIES:
        raise ValueError(f"Unknown policy {name!r}, expected one of {sorted(POLICIES)}")
    return POLICIES[name].factory(**kwargs)
