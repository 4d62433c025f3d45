"""The checkpoint format of the sampler's state: what is saved, and how it is validated.

A state is a plain dict of primitives and CPU tensors under string keys, with a version key:

* settings: ``num_samples``, ``num_epochs`` or ``num_iterations``, ``prune_ratio``,
  ``delta``, ``score_momentum``, ``seed``, ``drop_last``, ``num_replicas``, ``batch_size``;
* ``iterations_done``: batches trained over the whole run (iteration-based annealing);
* where training stands: ``epoch`` and ``position`` (losses received in that epoch on this
  rank), and ``plan`` (``None`` at an epoch boundary, where the plan is rebuilt exactly from
  ``(seed, epoch, scores)``; else the epoch's order and status);
* ``scores`` (float32, ``nan`` = never scored; under several ranks the table as of the last
  cross-rank merge), ``history`` (one dict per epoch) and ``nonfinite_count``;
* since version 3: ``rank``, ``unmerged`` (this rank's scores not yet merged across ranks, with
  its position, or ``None``), ``unmerged_by_rank`` (every rank's, in an ``all_ranks`` state),
  ``digest`` (of the plan being trained, see :mod:`infobatch.merge`), and what shapes a plan
  beyond the settings: ``sampling`` (the user's draws: their number and a hash of the weights)
  and ``rule_identity`` (the pruning rule's type and settings);
* optional, read as absent when missing (older states): the plan's ``sample_weights``
  (per-sample loss weights of a rule that gives them) and ``score_iterations`` (int32, the
  iteration each score was recorded at, ``-1`` never; kept only for a rule that asks for
  them, see :class:`~infobatch.EpochContext`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from .plan import EpochPlan
from .rule import check_sample_weights

__all__ = [
    "STATE_VERSION",
    "READABLE_VERSIONS",
    "plan_state",
    "plan_from_state",
    "check_state",
    "state_of",
    "load_state_of",
    "rule_identity",
    "sampling_identity",
]

#: Version key written by :meth:`InfoBatchSampler.state_dict`.
STATE_VERSION = 3
#: Versions :meth:`InfoBatchSampler.load_state_dict` reads (1: infobatch 0.1, 2: 0.2).
READABLE_VERSIONS = (1, 2, 3)

_REQUIRED = ("epoch", "position", "plan", "scores", "history")
_SETTINGS = (
    "num_samples",
    "num_epochs",
    "num_iterations",
    "prune_ratio",
    "delta",
    "score_momentum",
    "drop_last",
    "keep_steps",
)
#: Settings added after version 1, with the value an older state implies.
_ADDED_SINCE_VERSION_1 = {"num_iterations": None, "score_momentum": 0.0, "keep_steps": False}
_ADDED_IN_VERSION_3 = ("sampling", "rule_identity")  # not checked in older states
_PLAIN = (int, float, str, bool, type(None))


def rule_identity(rule: object) -> str:
    """The pruning rule's type and plain settings, e.g. ``"SavingBudget(target=0.4, ...)"``."""
    name = type(rule).__qualname__
    if not dataclasses.is_dataclass(rule):
        return name
    shown = [
        f"{field.name}={getattr(rule, field.name)!r}"
        for field in dataclasses.fields(rule)
        if field.compare and isinstance(getattr(rule, field.name), _PLAIN)
    ]
    return f"{name}({', '.join(shown)})"


def sampling_identity(sampling: Any) -> str | None:
    """``WeightedSampling(num_draws=D, weights hash H)``, or ``None`` without one."""
    if sampling is None:
        return None
    return f"WeightedSampling(num_draws={sampling.num_draws}, weights hash {sampling.digest():#x})"


def plan_state(plan: EpochPlan) -> dict[str, Any]:
    """The part of ``plan`` a mid-epoch checkpoint needs, on the CPU."""
    return {
        "order": plan.order.cpu().clone(),
        "status": plan.status.cpu().clone(),
        "weight": plan.weight,
        "threshold": plan.threshold,
        "num_scored": plan.num_scored,
        "num_well_learned": plan.num_well_learned,
        "pruning": plan.pruning,
        "epoch_size": plan.epoch_size,
        "sample_weights": (
            None if plan.sample_weights is None else plan.sample_weights.cpu().clone()
        ),
    }


def plan_from_state(
    state: dict[str, Any], epoch: int, num_samples: int, device: torch.device
) -> EpochPlan:
    """Rebuild a plan saved by :func:`plan_state`, validated against the dataset size."""
    order, status = state["order"], state["status"]
    if not isinstance(order, Tensor) or not isinstance(status, Tensor):
        raise TypeError("InfoBatch state 'plan' must hold 'order' and 'status' tensors")
    epoch_size = state.get("epoch_size")
    if status.shape != (num_samples,) or order.numel() > (epoch_size or num_samples):
        raise ValueError("InfoBatch state 'plan' does not match the dataset size")
    weights = state.get("sample_weights")
    if weights is not None:
        if not isinstance(weights, Tensor):
            raise TypeError("InfoBatch state 'plan' has 'sample_weights' that are not a tensor")
        weights = weights.to(device)
        check_sample_weights(weights, status.to(device))
    return EpochPlan(
        epoch=epoch,
        order=order.to(device),
        status=status.to(device),
        weight=float(state["weight"]),
        threshold=float(state["threshold"]),
        num_scored=int(state["num_scored"]),
        num_well_learned=int(state["num_well_learned"]),
        pruning=bool(state["pruning"]),
        epoch_size=None if epoch_size is None else int(epoch_size),
        sample_weights=weights,
    )


def check_state(state: Any, settings: dict[str, Any]) -> None:
    """Raise a clear error unless ``state`` is a readable state saved with ``settings``."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
    version = state.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"unsupported InfoBatch state version {version!r}; this infobatch reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    missing = set(_REQUIRED) - state.keys()
    if missing:
        raise ValueError(f"InfoBatch state is missing keys {sorted(missing)}")
    for key in _ADDED_IN_VERSION_3:
        if key in state and state[key] != settings[key]:
            raise ValueError(
                f"checkpoint was saved with {key.replace('_identity', '')}={state[key]!r} but "
                f"this InfoBatch has {settings[key]!r}; build it with the same "
                f"{'sampling= (weights and num_draws)' if key == 'sampling' else 'rule='} "
                "to resume"
            )
    for key in _SETTINGS:
        if state.get(key, _ADDED_SINCE_VERSION_1.get(key)) != settings[key]:
            raise ValueError(
                f"checkpoint was saved with {key}={state.get(key)!r} but this InfoBatch has "
                f"{key}={settings[key]!r}; build it with the same settings to resume"
            )
    epoch, position = state["epoch"], state["position"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"invalid epoch {epoch!r} in InfoBatch state")
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise ValueError(f"invalid position {position!r} in InfoBatch state")
    if not isinstance(state["scores"], Tensor):
        raise TypeError("InfoBatch state 'scores' must be a tensor")


def state_of(rule: object) -> Any:
    """A rule's own checkpoint state, if it keeps any (``state_dict()``), else ``None``."""
    state_dict = getattr(rule, "state_dict", None)
    return state_dict() if callable(state_dict) else None


def load_state_of(rule: object, state: Any) -> None:
    """Restore a rule's state saved by :func:`state_of`."""
    load = getattr(rule, "load_state_dict", None)
    if not callable(load):
        raise ValueError(
            f"the checkpoint holds pruning-rule state but {type(rule).__name__} has no "
            "load_state_dict(); build the sampler with the rule it was saved with"
        )
    load(state)
