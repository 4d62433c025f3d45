"""Every policy plans identically on every rank under ``torch.distributed`` (gloo, 2 ranks)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from infobatch.policies import POLICIES
from tests._ddp_workers import launch
from tests.helpers import POLICY_ARGUMENTS as ARGUMENTS


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return [r["policies"] for r in launch(2, ["policies"], tmp_path_factory.mktemp("policies"))]


def same(left: Any, right: Any) -> bool:
    """Equal nested states (tensors compared exactly, nan equal to nan)."""
    if isinstance(left, torch.Tensor):
        return isinstance(right, torch.Tensor) and torch.equal(
            torch.nan_to_num(left, nan=-1.0), torch.nan_to_num(right, nan=-1.0)
        )
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    return bool(left == right)


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_each_policy_plans_the_same_epochs_on_every_rank(
    ranks: list[dict[str, Any]], name: str
) -> None:
    assert set(ARGUMENTS) == set(POLICIES)
    first, second = ranks[0][name], ranks[1][name]
    assert first["hashes"] == second["hashes"]
    assert len(set(first["hashes"])) == len(first["hashes"])  # a new plan every epoch
    assert same(first["scores"], second["scores"])  # merged: every rank's losses
    unscored = int(torch.isnan(first["scores"]).sum())
    assert unscored == 0 or name == "static_random"  # its subset never trains the others
    assert same(first["rule_state"], second["rule_state"])
    assert first["saved"] == second["saved"] and first["saved"] > 0.05
    iterations = first["iterations"]
    assert same(iterations, second["iterations"])  # merged by the epoch's collective
    if getattr(POLICIES[name].factory, "needs_score_iterations", False):
        assert iterations.dtype == torch.int32 and bool((iterations >= 0).all())
        own = [r[name]["mid_epoch_iterations"]["own"] for r in ranks]
        every = [r[name]["mid_epoch_iterations"]["all_ranks"] for r in ranks]
        assert not same(own[0], own[1])  # mid-epoch each rank knows its own batches only
        assert same(every[0], every[1])  # all_ranks=True: the maximum, as the merge will give
        assert same(every[0], torch.maximum(own[0], own[1]))
    else:
        assert iterations is None  # no table, no collective for the other rules
