"""Invariants of the pruning rule and the epoch plan (property tests)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infobatch import SoftPruning, build_plan, epoch_generator
from infobatch.plan import KEPT, PRUNED, UPWEIGHTED

score_lists = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=1e3, allow_nan=False, width=32),
        st.just(float("nan")),
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(scores=score_lists, ratio=st.floats(0.0, 0.95), seed=st.integers(0, 2**31))
def test_plan_invariants(scores: list[float], ratio: float, seed: int) -> None:
    values = torch.tensor(scores, dtype=torch.float32)
    plan = build_plan(0, values, SoftPruning(ratio), epoch_generator(seed, 0))
    order = plan.order.long()
    n = len(scores)

    # no duplicate indices, all in range, exactly the kept set
    assert order.unique().numel() == order.numel()
    assert order.numel() == 0 or (int(order.min()) >= 0 and int(order.max()) < n)
    assert set(order.tolist()) == set(torch.nonzero(plan.status != PRUNED).flatten().tolist())

    # threshold = mean over scored samples (exact comparison in float64)
    scored = [s for s in scores if not math.isnan(s)]
    mean = float(np.mean(np.array(scored, dtype=np.float64))) if scored else math.nan
    for i, s in enumerate(scores):
        well_learned = (not math.isnan(s)) and s < mean
        status = int(plan.status[i])
        if not well_learned:  # unscored and at-or-above-mean samples are always kept, weight 1
            assert status == KEPT
        else:
            assert status in (PRUNED, UPWEIGHTED)
    assert plan.num_well_learned == sum(1 for s in scores if not math.isnan(s) and s < mean)
    assert plan.num_scored == len(scored)
    assert plan.num_kept + plan.num_pruned == n

    # weights exact: 1/(1-r) for kept well-learned, 1 for the others
    weights = plan.weights_of(plan.order.long())
    expected = torch.where(
        plan.status[plan.order.long()] == UPWEIGHTED, torch.tensor(1.0 / (1.0 - ratio)), 1.0
    ).float()
    assert torch.equal(weights, expected)


def test_threshold_comparison_is_exact_when_mean_is_not_a_float32() -> None:
    # mean of [1, 1 + 2^-23] is 1 + 2^-24: not representable in float32, rounds to 1.0
    low = 1.0
    high = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
    values = torch.tensor([low, high], dtype=torch.float32)
    plan = build_plan(0, values, SoftPruning(0.999), epoch_generator(0, 0))
    assert plan.num_well_learned == 1  # 1.0 < 1 + 2^-24
    assert int(plan.status[1]) == KEPT


def test_zero_ratio_rule_keeps_everything_with_weight_one() -> None:
    values = torch.rand(1000)
    plan = build_plan(0, values, SoftPruning(0.0), epoch_generator(1, 0))
    assert plan.num_kept == 1000
    assert torch.equal(plan.weights_of(plan.order.long()), torch.ones(1000))


def test_no_rule_is_a_plain_shuffle_of_all_samples() -> None:
    plan = build_plan(3, torch.rand(500), None, epoch_generator(7, 3))
    assert sorted(plan.order.tolist()) == list(range(500))
    assert plan.order.tolist() != list(range(500))
    assert not plan.pruning and plan.weight == 1.0


def test_prune_rate_of_well_learned_samples_matches_ratio() -> None:
    n, ratio = 200_000, 0.3
    values = torch.rand(n)
    plan = build_plan(0, values, SoftPruning(ratio), epoch_generator(0, 0))
    dropped = plan.num_pruned / plan.num_well_learned
    assert abs(dropped - ratio) < 0.01  # binomial std ~0.0015


def test_same_seed_same_plan_different_seed_different_plan() -> None:
    values = torch.rand(2000)
    a = build_plan(0, values, SoftPruning(0.5), epoch_generator(11, 0))
    b = build_plan(0, values, SoftPruning(0.5), epoch_generator(11, 0))
    c = build_plan(0, values, SoftPruning(0.5), epoch_generator(12, 0))
    assert torch.equal(a.order, b.order) and torch.equal(a.status, b.status)
    assert not torch.equal(a.status, c.status)


def test_seed_and_epoch_streams_do_not_collide() -> None:
    a = torch.rand(8, generator=epoch_generator(0, 1))
    b = torch.rand(8, generator=epoch_generator(1, 0))
    assert not torch.equal(a, b)


def test_planning_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch = torch.get_rng_state()
    expected_numpy = np.random.get_state()[1].copy()
    build_plan(
        0, torch.rand(100, generator=torch.Generator()), SoftPruning(0.5), epoch_generator(0, 0)
    )
    assert torch.equal(torch.get_rng_state(), expected_torch)
    assert np.array_equal(np.random.get_state()[1], expected_numpy)


@pytest.mark.parametrize(("n", "rank_count"), [(10, 3), (7, 2), (1, 4), (12, 4)])
def test_shares_are_equal_sized_and_cover_the_plan(n: int, rank_count: int) -> None:
    plan = build_plan(0, torch.rand(n), None, epoch_generator(0, 0))
    shares = [plan.share(r, rank_count).tolist() for r in range(rank_count)]
    per_rank = math.ceil(n / rank_count)
    assert all(len(s) == per_rank for s in shares)
    assert set().union(*map(set, shares)) == set(range(n))
    # only the padding repeats indices
    assert sum(map(len, shares)) - n == per_rank * rank_count - n


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 31, 80])
def test_chunked_kept_indices_and_sum_match_the_unchunked_ones(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import infobatch.rule as rule_module
    from infobatch.plan import _kept_indices
    from infobatch.rule import _nansum64

    monkeypatch.setattr(rule_module, "_MIN_CHUNK", 3)  # force several chunks on tiny inputs
    values = torch.rand(n, generator=torch.Generator().manual_seed(n)) * 10
    values[:: max(n // 4, 1)] = float("nan")
    keep = torch.rand(n, generator=torch.Generator().manual_seed(n + 1)) < 0.6
    assert len(rule_module.split_in_chunks(keep)) > 1 or n <= 3
    assert torch.equal(_kept_indices(keep, torch.int32).long(), torch.nonzero(keep).view(-1))
    assert _nansum64(values).item() == pytest.approx(
        torch.nansum(values.double()).item(), rel=1e-12
    )


def test_order_of_a_fixed_kept_set_is_uniform_over_permutations() -> None:
    keep = torch.tensor([True, False, True, True, False])
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(3000):
        from infobatch.plan import _shuffled_kept

        order = tuple(_shuffled_kept(keep, epoch_generator(seed, 0), torch.int32).tolist())
        counts[order] = counts.get(order, 0) + 1
    assert set(counts) == {(0, 2, 3), (0, 3, 2), (2, 0, 3), (2, 3, 0), (3, 0, 2), (3, 2, 0)}
    expected = 3000 / 6
    chi_square = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi_square < 20.5  # p = 0.001 for 5 degrees of freedom
