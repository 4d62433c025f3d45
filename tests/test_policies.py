"""The policy zoo: each policy's invariants, exact resume, determinism; the registry."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils.data import DataLoader

from infobatch import (
    KEPT,
    PRUNED,
    UPWEIGHTED,
    EpochAwareRule,
    InfoBatch,
    InfoBatchSampler,
    Selection,
    SoftPruning,
    build_plan,
    epoch_generator,
)
from infobatch.checkpoint import plan_from_state, plan_state
from infobatch.context import EpochContext
from infobatch.merge import digest_of_state, plan_digest
from infobatch.policies import (
    IES,
    POLICIES,
    UCB,
    DynamicRandom,
    EpsilonGreedy,
    LowLossPruning,
    NoRescale,
    OrderDP,
    RePB,
    Rule,
    SeTa,
    StaticRandom,
    kmeans_1d,
    make_policy,
)
from infobatch.rng import random_mask, random_permutation
from infobatch.rule import count_scored, mean_upweighted
from infobatch.scores import ScoreTable
from tests.helpers import POLICY_ARGUMENTS, IndexedDataset

SIZE, EPOCHS = 300, 8

ARGUMENTS = POLICY_ARGUMENTS


def stamps_at(epoch: int, num_samples: int = SIZE) -> Tensor:
    """Iterations of the scores as an epoch of batches of 8 in index order would give them
    (``-1``, never, before epoch 0)."""
    if epoch < 0:
        return torch.full((num_samples,), -1, dtype=torch.int32)
    steps = -(-num_samples // 8)
    return (epoch * steps + torch.arange(num_samples) // 8).to(torch.int32)


def context(
    epoch: int,
    num_samples: int = SIZE,
    num_epochs: int = EPOCHS,
    score_iterations: Tensor | None = None,
) -> EpochContext:
    return EpochContext(
        epoch=epoch,
        num_samples=num_samples,
        num_epochs=num_epochs,
        pruned_epochs=num_epochs,
        iterations_done=0,
        num_iterations=None,
        history=(),
        score_iterations=(
            stamps_at(epoch - 1, num_samples) if score_iterations is None else score_iterations
        ),
    )


def select(rule: Rule, scores: Tensor, seed: int, epoch: int = 1) -> Selection:
    generator = torch.Generator().manual_seed(seed)
    if isinstance(rule, EpochAwareRule):
        return rule.select_for_epoch(scores, generator, context(epoch, scores.numel()))
    return rule.select(scores, generator)


def scores_at(epoch: int, size: int = SIZE) -> Tensor:
    """Scores that move from epoch to epoch (a few never scored in epoch 0)."""
    generator = torch.Generator().manual_seed(1000 + epoch)
    values = torch.rand(size, generator=generator) ** 3 * 4
    if epoch == 0:
        values[:] = math.nan
    return values


def plans(rule: Rule, epochs: range) -> list[Tensor]:
    return [select(rule, scores_at(e), seed=e, epoch=e).status for e in epochs]


# ---------------------------------------------------------------------- registry
def test_every_registered_policy_is_a_rule_the_sampler_accepts() -> None:
    assert set(ARGUMENTS) == set(POLICIES)
    for name, info in POLICIES.items():
        rule = make_policy(name, **ARGUMENTS[name])
        assert hasattr(rule, "select") or isinstance(rule, EpochAwareRule), name
        assert info.name == name and info.summary
        assert info.delta in (None, 1.0)


def test_an_unknown_policy_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"Unknown policy 'random', expected one of \['dynamic"):
        make_policy("random")


def test_budgets_need_exactly_one_of_ratio_and_counts() -> None:
    with pytest.raises(ValueError, match="give exactly one of prune_ratio"):
        DynamicRandom()
    with pytest.raises(ValueError, match="give exactly one of prune_ratio"):
        EpsilonGreedy(0.3, kept_counts=[1, 2])
    with pytest.raises(ValueError, match=r"Invalid prune_ratio 1.0, prune_ratio should be in"):
        UCB(1.0)
    with pytest.raises(ValueError, match="kept_counts has 2 entries"):
        select(DynamicRandom(kept_counts=[5, 5]), scores_at(1), seed=0, epoch=2)
    with pytest.raises(ValueError, match="Invalid kept count 400 for epoch 0"):
        select(DynamicRandom(kept_counts=[400]), scores_at(1), seed=0, epoch=0)
    with pytest.raises(ValueError, match="Invalid num_groups 0"):
        SeTa(num_groups=0)
    with pytest.raises(ValueError, match="gives an empty window"):
        SeTa(num_groups=2, window_scale=0.2)


# ---------------------------------------------------------------------- invariants
def assert_status(selection: Selection, size: int) -> None:
    assert selection.status.dtype == torch.int8 and selection.status.shape == (size,)
    assert set(selection.status.unique().tolist()) <= {PRUNED, KEPT, UPWEIGHTED}


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 400),
    ratio=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**31),
    epsilon=st.floats(0.0, 1.0),
)
def test_budgeted_policies_keep_exactly_their_count_at_weight_1(
    size: int, ratio: float, seed: int, epsilon: float
) -> None:
    scores = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    scores[: size // 5] = math.nan
    expected = size - round(ratio * size)
    for rule in (DynamicRandom(ratio), EpsilonGreedy(ratio, epsilon=epsilon), UCB(ratio)):
        selection = select(rule, scores, seed)
        assert_status(selection, size)
        assert int((selection.status == KEPT).sum()) == expected  # exact, hence no duplicate
        assert not bool((selection.status == UPWEIGHTED).any()) and selection.weight == 1.0


def test_kept_counts_set_each_epochs_size() -> None:
    counts = [300, 211, 190, 250]
    for rule in (DynamicRandom(kept_counts=counts), UCB(kept_counts=counts)):
        kept = [int(select(rule, scores_at(e), seed=e, epoch=e).keep.sum()) for e in range(4)]
        assert kept == counts


def test_dynamic_random_gives_every_sample_the_same_chance() -> None:
    scores = torch.linspace(0, 1, 50)  # scores must not matter
    counts = torch.zeros(50)
    draws = 2000
    for seed in range(draws):
        counts += select(DynamicRandom(0.6), scores, seed).keep
    rate = counts / draws
    spread = (0.4 * 0.6 / draws) ** 0.5
    assert (rate - 0.4).abs().max() < 5 * spread


def test_epsilon_greedy_keeps_the_highest_scores_and_explores_the_rest() -> None:
    scores = torch.arange(SIZE, dtype=torch.float32).flip(0)  # sample 0 has the highest score
    scores[-3:] = math.nan  # never scored: first in line
    greedy = select(EpsilonGreedy(0.5, epsilon=0.0), scores, seed=0).keep
    assert greedy.nonzero().view(-1).tolist() == list(range(147)) + [297, 298, 299]
    explored = select(EpsilonGreedy(0.5, epsilon=0.2), scores, seed=0).keep
    assert explored[:117].all() and explored[-3:].all()  # 150 - 30 greedy, the unscored first
    assert int(explored[120:297].sum()) > 0  # some of the exploration reaches low scores
    draws = [select(EpsilonGreedy(0.5, epsilon=0.2), scores, seed=s).keep for s in range(3)]
    assert not torch.equal(draws[0], draws[1])  # the exploring part is random


def test_ucb_ranks_by_moving_mean_plus_deviation_and_counts_stale_scores_once() -> None:
    rule = UCB(0.5, c=1.0, decay=0.5)
    steady, swinging = torch.full((4,), 1.0), torch.tensor([0.0, 2.0, 0.0, 2.0])
    for epoch in range(4):
        scores = torch.cat([steady, swinging[epoch : epoch + 1].expand(4)])
        select(rule, scores, seed=epoch, epoch=epoch)
    assert rule.mean is not None and rule.var is not None
    # the swinging samples have about the same mean but a deviation: they are kept
    assert select(rule, scores, seed=9, epoch=4).keep.tolist() == [False] * 4 + [True] * 4
    before = rule.state_dict()
    select(rule, scores, seed=9, epoch=4)  # the same epoch planned again: nothing counted twice
    select(rule, scores, seed=9, epoch=5)  # same scores (all stale): nothing counted
    for key in ("mean", "var"):
        assert torch.equal(rule.state_dict()[key], before[key])


def test_no_rescale_keeps_infobatchs_set_with_weight_1() -> None:
    scores = scores_at(3)
    soft = select(SoftPruning(0.5), scores, seed=4)
    plain = select(NoRescale(0.5), scores, seed=4)
    assert torch.equal(soft.keep, plain.keep) and bool(soft.upweighted.any())
    assert not bool(plain.upweighted.any()) and plain.weight == 1.0
    assert plain.num_well_learned == soft.num_well_learned


def test_low_loss_pruning_at_scale_1_is_infobatch_draw_for_draw() -> None:
    scores = torch.rand(100_000, generator=torch.Generator().manual_seed(2)) ** 2  # chunks
    scores[:50] = math.nan
    soft = select(SoftPruning(0.5), scores, seed=8)
    low = select(LowLossPruning(0.5, threshold_scale=1.0), scores, seed=8)
    assert torch.equal(soft.status, low.status) and soft.weight == low.weight == 2.0
    assert low.num_well_learned == soft.num_well_learned and low.num_scored == 99_950


def test_low_loss_pruning_prunes_only_below_its_threshold_and_is_unbiased() -> None:
    scores = torch.linspace(0.0, 2.0, 400)  # mean 1: threshold 0.25 below 0.25
    rule = LowLossPruning(0.8, threshold_scale=0.25)
    total = torch.zeros(400, dtype=torch.float64)
    draws = 500
    for seed in range(draws):
        selection = select(rule, scores, seed)
        assert_status(selection, 400)
        assert bool(selection.keep[scores >= 0.25].all())  # at or above: always kept
        assert not bool(selection.upweighted[scores >= 0.25].any())
        total += torch.where(selection.upweighted, selection.weight, 1.0) * selection.keep
    assert selection.weight == pytest.approx(5.0) and selection.threshold == pytest.approx(0.25)
    expectation = total / draws
    spread = (0.8 / 0.2 / draws) ** 0.5  # std of the mean of kept * weight
    assert (expectation - 1).abs().max() < 5 * spread
    assert float(expectation[scores < 0.25].mean()) == pytest.approx(1.0, abs=5 * spread / 7)
    with pytest.raises(ValueError, match="Invalid threshold_scale 0"):
        LowLossPruning(0.5, threshold_scale=0)


def test_static_random_keeps_one_subset_drawn_from_the_first_epochs_generator() -> None:
    rule = StaticRandom(0.7)
    statuses = plans(rule, range(5))
    assert all(torch.equal(s, statuses[0]) for s in statuses)
    assert int((statuses[0] == KEPT).sum()) == 210
    other = select(StaticRandom(0.7), scores_at(0), seed=1, epoch=0).status
    assert not torch.equal(other, statuses[0])  # another run seed, another subset
    own = StaticRandom(subset_size=20, seed=5)
    seeded = [select(own, scores_at(0), seed=s).status for s in (0, 1)]
    assert torch.equal(seeded[0], seeded[1])  # an own seed ignores the epoch generator


def grouped_scores() -> Tensor:
    """Five well separated loss levels, 60 samples each."""
    levels = torch.tensor([0.01, 0.3, 1.0, 2.0, 4.0]).repeat_interleave(60)
    return levels + torch.linspace(0, 0.001, SIZE)


def test_seta_slides_a_window_over_loss_groups_after_random_down_sampling() -> None:
    rule = SeTa(prune_ratio=0.1, num_groups=5, window_scale=0.9, delta=0.875)
    assert rule.window_size == 4  # round(4.5) = 4, as the authors' code
    scores = grouped_scores()
    generator = torch.Generator().manual_seed(0)
    sampled = set(random_permutation(SIZE, generator, torch.device("cpu"))[:270].tolist())
    group = torch.arange(SIZE) // 60
    for epoch, dropped_group in [(0, None), (1, 0), (2, 4), (3, 0)]:
        keep = select(rule, scores, seed=0, epoch=epoch).keep
        kept = set(keep.nonzero().view(-1).tolist())
        expected = {i for i in sampled if dropped_group is None or group[i] != dropped_group}
        assert kept == expected, epoch
    annealed = select(rule, scores, seed=0, epoch=7).keep  # ceil(0.875 * 8) = 7: annealing
    assert set(annealed.nonzero().view(-1).tolist()) == sampled
    unscored = scores.clone()
    unscored[group == 4] = math.nan
    keep = select(rule, unscored, seed=0, epoch=1).keep
    assert all(keep[i] for i in sampled if group[i] == 4)  # never scored: never windowed out


def test_seta_zero_ratio_and_full_window_is_full_data() -> None:
    keep = select(SeTa(prune_ratio=0.0, num_groups=4, window_scale=1.0), scores_at(2), seed=3).keep
    assert bool(keep.all())


def test_kmeans_1d_finds_separated_groups_in_order_without_sorting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = grouped_scores()[torch.randperm(SIZE, generator=torch.Generator().manual_seed(1))]

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("kmeans_1d must not sort the N values")

    for name in ("sort", "argsort", "topk", "kthvalue", "msort", "quantile"):
        monkeypatch.setattr(torch, name, refuse)
        monkeypatch.setattr(Tensor, name, refuse)
    labels, centres = kmeans_1d(values, 5, torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert centres.tolist() == sorted(centres.tolist()) and centres.numel() == 5
    for level, centre in enumerate(centres.tolist()):
        members = values[labels == level]
        assert members.numel() == 60 and abs(float(members.double().mean()) - centre) < 1e-9
    constant_labels, constant_centres = kmeans_1d(torch.ones(10), 3, torch.Generator())
    assert constant_centres.tolist() == [1.0] and constant_labels.unique().tolist() == [0]


def test_kmeans_1d_is_about_as_good_as_scikit_learn() -> None:
    sklearn = pytest.importorskip("sklearn.cluster")
    uniform = torch.rand(5000, generator=torch.Generator().manual_seed(4))  # not the global RNG
    values = -torch.log1p(-uniform)  # exponential, mean 1
    labels, centres = kmeans_1d(values, 5, torch.Generator().manual_seed(0))
    ours = float(((values.double() - centres[labels]) ** 2).sum())
    theirs = sklearn.KMeans(n_clusters=5, n_init=3, random_state=0).fit(values[:, None].numpy())
    assert ours <= 1.02 * float(theirs.inertia_)


# ---------------------------------------------------------------------- determinism, resume
@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_plans_depend_only_on_the_generator_and_scores(name: str) -> None:
    rng_before = torch.get_rng_state()
    first = plans(make_policy(name, **ARGUMENTS[name]), range(5))
    second = plans(make_policy(name, **ARGUMENTS[name]), range(5))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is never drawn from
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("name", ["static_random", "ucb", "repb", "ies"])
def test_state_round_trip_gives_the_same_next_plans_and_is_needed(name: str) -> None:
    straight = make_policy(name, **ARGUMENTS[name])
    expected = plans(straight, range(6))
    first = make_policy(name, **ARGUMENTS[name])
    plans(first, range(3))
    state = first.state_dict()  # type: ignore[union-attr]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = make_policy(name, **ARGUMENTS[name])
    resumed.load_state_dict(torch.load(buffer, weights_only=False))  # type: ignore[union-attr]
    assert all(torch.equal(a, b) for a, b in zip(plans(resumed, range(3, 6)), expected[3:]))
    fresh = plans(make_policy(name, **ARGUMENTS[name]), range(3, 6))  # negative control
    assert not all(torch.equal(a, b) for a, b in zip(fresh, expected[3:]))


def test_state_is_validated() -> None:
    with pytest.raises(ValueError, match="UCB state has version None"):
        UCB(0.3).load_state_dict({})
    with pytest.raises(ValueError, match="must all be tensors, or all None"):
        UCB(0.3).load_state_dict(
            {"version": 1, "mean": torch.zeros(3), "var": None, "last": None, "updated_epoch": 0}
        )
    with pytest.raises(ValueError, match="generator_state must be a uint8 tensor"):
        StaticRandom(0.5).load_state_dict({"version": 1, "generator_state": [1, 2]})


def loss(index: Tensor, epoch: int) -> Tensor:
    """A loss that changes with the epoch, so stateful policies see new scores."""
    return ((index.double() * 0.618 + epoch * 0.1) % 1.0).float() + 0.01


def run(name: str, epochs: range, dataset: InfoBatch[Any]) -> list[list[int]]:
    loader = DataLoader(dataset, batch_size=32, sampler=dataset.sampler)
    orders = []
    for epoch in epochs:
        dataset.sampler.set_epoch(epoch)
        order: list[int] = []
        for x, _label in loader:
            index = x[:, 0].long()
            dataset.update(loss(index, epoch))
            order += index.tolist()
        orders.append(order)
    return orders


def wrapped(name: str) -> InfoBatch[Any]:
    delta = POLICIES[name].delta or 0.75
    rule = make_policy(name, **ARGUMENTS[name])
    return InfoBatch(IndexedDataset(SIZE), EPOCHS, delta=delta, rule=rule, seed=11)


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_a_run_with_the_policy_resumes_exactly_from_a_checkpoint(name: str) -> None:
    expected = run(name, range(EPOCHS), wrapped(name))
    first = wrapped(name)
    run(name, range(4), first)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = wrapped(name)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert run(name, range(4, EPOCHS), resumed) == expected[4:]
    assert 0.05 < resumed.saved_fraction < 0.6  # the policy really pruned


# ---------------------------------------------------------------------- per-sample weights
class _WeightedRule:
    """Keeps every sample but the last; each kept sample's loss weighted by ``weights``."""

    def __init__(self, weights: Tensor) -> None:
        self.weights = weights

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        status = torch.where(self.weights == 1, KEPT, UPWEIGHTED).to(torch.int8)
        status[-1] = PRUNED
        weight = mean_upweighted(status, self.weights)
        return Selection(status, weight, math.nan, count_scored(scores), 0, self.weights)


def test_selection_rejects_per_sample_weights_that_are_not_valid() -> None:
    status = torch.tensor([KEPT, UPWEIGHTED, PRUNED], dtype=torch.int8)
    with pytest.raises(TypeError, match="sample_weights must be a float32 tensor.*float64"):
        Selection(status, 1.0, math.nan, 3, 0, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(2,\) on cpu; it must have one weight per"):
        Selection(status, 1.0, math.nan, 3, 0, torch.ones(2))
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=f"1 are not \\(the first, sample 1, has {bad}\\)"):
            Selection(status, 1.0, math.nan, 3, 0, torch.tensor([1.0, bad, 1.0]))
    pruned_nan = Selection(status, 1.0, math.nan, 3, 0, torch.tensor([1.0, 2.0, math.nan]))
    assert pruned_nan.sample_weights is not None  # a pruned sample's entry is never used


def test_the_plan_weights_each_kept_sample_by_its_own_weight_and_checkpoints_them() -> None:
    weights = torch.tensor([1.0, 2.5, 0.75, 1.0, 3.0, 1.0])
    plan = build_plan(3, torch.rand(6), _WeightedRule(weights), epoch_generator(0, 3))
    assert sorted(plan.order.tolist()) == [0, 1, 2, 3, 4]
    assert torch.equal(plan.weights_of(torch.tensor([4, 0, 1, 2])), weights[[4, 0, 1, 2]])
    assert plan.weight == pytest.approx((2.5 + 0.75 + 3.0) / 3)  # the summary: up-weighted mean
    restored = plan_from_state(plan_state(plan), 3, 6, torch.device("cpu"))
    assert restored.sample_weights is not None and torch.equal(restored.sample_weights, weights)
    bad = plan_state(plan)
    bad["sample_weights"] = torch.zeros(6)
    with pytest.raises(ValueError, match="finite and positive at every kept sample"):
        plan_from_state(bad, 3, 6, torch.device("cpu"))
    scores = torch.rand(6)
    other = _WeightedRule(torch.tensor([1.0, 2.5, 0.75, 1.0, 3.5, 1.0]))
    other_plan = build_plan(3, scores, other, epoch_generator(0, 3))
    assert torch.equal(other_plan.order, plan.order)  # same order, other weights:
    assert not torch.equal(plan_digest(plan, scores), plan_digest(other_plan, scores))


def test_update_multiplies_each_loss_by_its_own_weight_exactly() -> None:
    weights = torch.tensor([1.0, 2.0, 0.5, 4.0, 0.25, 8.0, 1.5, 1.0])
    sampler = InfoBatchSampler(8, 4, rule=_WeightedRule(weights), seed=3)
    order = torch.tensor(list(sampler))
    assert order.numel() == 7 and 7 not in order.tolist()
    losses = order.float() + 1.0  # small integers: exact products and sums, / 4 exact too
    result = sampler.update(losses[:4])
    assert float(result) == float((losses[:4] * weights[order[:4]]).sum() / 4)
    state = sampler.state_dict()  # mid-epoch: the plan with its weights
    assert torch.equal(state["plan"]["sample_weights"], weights)
    resumed = InfoBatchSampler(8, 4, rule=_WeightedRule(weights), seed=3)
    resumed.load_state_dict(state)
    assert torch.tensor(list(resumed)).tolist() == order[4:].tolist()
    tail = resumed.update(losses[4:])  # / 3 is rounded: equal up to the last bit
    expected = (losses[4:] * weights[order[4:]]).sum() / 3
    assert torch.allclose(tail, expected, rtol=2e-7, atol=0)
    assert resumed.history[0].weight == pytest.approx(sum([2.0, 0.5, 4.0, 0.25, 8.0, 1.5]) / 6)


# ---------------------------------------------------------------------- OrderDP
def ranked(values: Tensor) -> Tensor:
    """Scores as OrderDP ranks them: never-scored first."""
    return torch.where(torch.isnan(values), math.inf, values.double())


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 300),
    subset=st.floats(0.05, 1.0),
    share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_orderdp_keeps_exactly_the_top_q_of_a_uniformly_random_subset(
    size: int, subset: float, share: float, seed: int
) -> None:
    scores = torch.rand(size, generator=torch.Generator().manual_seed(seed)).round(decimals=1)
    scores[: size // 7] = math.nan  # ties and unscored samples
    subset_size = round(subset * size)
    count = round(share * subset_size)
    rule = OrderDP(kept_counts=[count, count], subset_fraction=subset)
    selection = select(rule, scores, seed)
    assert_status(selection, size)
    kept = selection.keep
    assert int(kept.sum()) == count and int((selection.status == KEPT).sum()) == count
    assert selection.weight == 1.0 and selection.sample_weights is None
    generator = torch.Generator().manual_seed(seed)
    drawn = random_permutation(size, generator, torch.device("cpu"))[:subset_size]
    in_subset = torch.zeros(size, dtype=torch.bool)
    in_subset[drawn] = True
    assert not bool((kept & ~in_subset).any())  # only subset members
    left_out = in_subset & ~kept
    if count and bool(left_out.any()):
        assert float(ranked(scores)[kept].min()) >= float(ranked(scores)[left_out].max())


def test_orderdp_keeps_the_rank_j_sample_with_the_hypergeometric_probability() -> None:
    size, subset_size, count, draws = 12, 8, 4, 3000
    scores = torch.arange(size, 0, -1, dtype=torch.float32)  # sample j has rank j + 1
    rule = OrderDP(kept_counts=[count] * 2, subset_fraction=subset_size / size)
    total = torch.zeros(size)
    for seed in range(draws):
        total += select(rule, scores, seed).keep
    expected = torch.tensor(
        [
            sum(
                math.comb(j, m) * math.comb(size - 1 - j, subset_size - 1 - m) for m in range(count)
            )
            / math.comb(size, subset_size)
            for j in range(size)
        ]
    )
    assert float(expected.sum()) == pytest.approx(count)  # the budget, exactly, in expectation
    spread = (0.25 / draws) ** 0.5
    assert float((total / draws - expected).abs().max()) < 5 * spread
    assert float(expected[0]) == pytest.approx(subset_size / size)  # the top one: if drawn
    assert float(expected[-1]) == 0.0  # never in the top 4 of 8 among 12: the bias


def test_orderdp_settings_are_validated_with_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"Invalid subset_fraction 0, subset_fraction should be"):
        OrderDP(0.3, subset_fraction=0)
    with pytest.raises(ValueError, match="the random subset .0.5 of the samples. must hold the"):
        OrderDP(0.3, subset_fraction=0.5)
    with pytest.raises(ValueError, match="give exactly one of prune_ratio"):
        OrderDP()
    with pytest.raises(ValueError, match="OrderDP keeps 250 samples in epoch 1 but its random"):
        select(OrderDP(kept_counts=[250, 250], subset_fraction=0.75), scores_at(1), seed=0)
    sized = OrderDP(kept_counts=[170, 170], top_fraction=0.85)
    assert sized.subset_size(SIZE, 170) == 200 and sized.subset_size(SIZE, 290) == SIZE
    kept = select(sized, scores_at(1), 0).status != PRUNED
    assert int(kept.sum()) == 170  # the top 85% of a random subset of 200
    with pytest.raises(ValueError, match="Invalid top_fraction 0,"):
        OrderDP(0.3, top_fraction=0)
    everything = select(OrderDP(kept_counts=[SIZE, SIZE], subset_fraction=0.75), scores_at(1), 0)
    assert bool((everything.status != PRUNED).all())  # a budget of every sample keeps all


# ---------------------------------------------------------------------- RePB
def test_repb_compares_scores_within_their_window_of_batches() -> None:
    # window 0 (iterations 0-3) scored high, window 1 (iterations 4-7) low: the global mean
    # would make every window-1 sample a candidate, the window means make half of each
    scores = torch.cat([10 + torch.arange(8.0), torch.arange(8.0)])
    iterations = (torch.arange(16) // 2).to(torch.int32)
    rule = RePB(prune_ratio=0.5, window=4)
    below = rule.candidates(scores, iterations)
    assert below.nonzero().view(-1).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert rule.candidates(scores, torch.zeros(16, dtype=torch.int32)).tolist() == (
        [False] * 8 + [True] * 8
    )  # one window: InfoBatch's global comparison
    unscored = scores.clone()
    unscored[[0, 9]] = math.nan
    assert rule.candidates(unscored, iterations).nonzero().view(-1).tolist() == [
        1,
        2,
        3,
        8,
        10,
        11,
    ]  # the window means are over the scored samples; the unscored are never candidates
    generator = torch.Generator().manual_seed(5)
    selection = rule.select_for_epoch(
        scores, generator, context(1, 16, score_iterations=iterations)
    )
    coins = random_mask(16, 0.5, torch.Generator().manual_seed(5), torch.device("cpu"))
    assert torch.equal(selection.keep, ~(coins & below))  # one coin per sample, in order
    assert selection.num_well_learned == 8 and math.isnan(selection.threshold)


def repb_run(rule: RePB, epochs: int, size: int, seed: int) -> list[Selection]:
    """``epochs`` plans from moving scores and their iterations; epoch 0 unscored."""
    selections = []
    for epoch in range(epochs):
        scores = scores_at(epoch, size)
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        shuffle = torch.randperm(size, generator=generator)
        stamps = (epoch * 50 + shuffle // 4).to(torch.int32)  # batches of 4, a random order
        selections.append(
            select_with(rule, scores, generator, context(epoch, size, score_iterations=stamps))
        )
    return selections


def select_with(
    rule: RePB, scores: Tensor, generator: torch.Generator, ctx: EpochContext
) -> Selection:
    return rule.select_for_epoch(scores, generator, ctx)


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(1, 120),
    ratio=st.floats(0.0, 0.95),
    window=st.integers(1, 6),
    seed=st.integers(0, 2**20),
)
def test_repb_weights_make_each_samples_cumulative_contribution_full_datas_exactly(
    size: int, ratio: float, window: int, seed: int
) -> None:
    rule = RePB(prune_ratio=ratio, window=window)
    received = torch.zeros(size, dtype=torch.float64)
    for epoch, selection in enumerate(repb_run(rule, 7, size, seed)):
        assert_status(selection, size)
        assert selection.sample_weights is not None
        weights = selection.sample_weights.double()
        kept = selection.keep
        assert bool((weights[kept] == weights[kept].round()).all())  # whole epochs owed
        assert torch.equal(selection.upweighted, kept & (weights > 1))
        received += torch.where(kept, weights, 0.0)
        # every sample trained this epoch has received exactly full data's epoch + 1 passes
        assert torch.equal(received[kept], torch.full_like(received[kept], epoch + 1.0))
        assert bool((received[~kept] < epoch + 1).all())  # the others owe what they missed
        if bool(selection.upweighted.any()):
            assert selection.weight == pytest.approx(float(weights[selection.upweighted].mean()))


def test_repb_expected_weight_of_an_always_candidate_tends_to_1_as_1_minus_r_to_the_t() -> None:
    size, draws = 400, 25  # 200 pairs per draw: a low (always a candidate) and a high sample
    scores = torch.arange(size, dtype=torch.float32) % 2  # even samples below their pair's mean
    stamps = (torch.arange(size) // 2).to(torch.int32)  # window=1: each pair is one window
    total = torch.zeros(4, dtype=torch.float64)
    for seed in range(draws):
        rule = RePB(prune_ratio=0.5, window=1)
        for epoch in range(4):
            values = scores if epoch else torch.full((size,), math.nan)
            ctx = context(epoch, size, score_iterations=stamps)
            generator = torch.Generator().manual_seed(seed * 10 + epoch)
            selection = rule.select_for_epoch(values, generator, ctx)
            assert selection.sample_weights is not None
            contribution = torch.where(selection.keep, selection.sample_weights, 0.0)
            total[epoch] += contribution[0::2].double().sum()
            assert bool((contribution[1::2] == 1).all())  # never a candidate: weight 1
    expected = torch.tensor([1.0, 0.5, 0.75, 0.875], dtype=torch.float64)
    spread = (1.0 / (draws * size / 2)) ** 0.5
    assert float((total / (draws * size / 2) - expected).abs().max()) < 5 * spread


def test_repb_needs_the_iterations_and_validates_its_settings_and_state() -> None:
    bare = EpochContext(
        epoch=1,
        num_samples=SIZE,
        num_epochs=EPOCHS,
        pruned_epochs=EPOCHS,
        iterations_done=0,
        num_iterations=None,
        history=(),
    )
    with pytest.raises(ValueError, match="needs the iteration of each score: use it as InfoBatch"):
        RePB().select_for_epoch(scores_at(1), torch.Generator(), bare)
    with pytest.raises(ValueError, match="Invalid window 0, window should be an int >= 1"):
        RePB(window=0)
    with pytest.raises(ValueError, match="Invalid prune_ratio 1.0"):
        RePB(prune_ratio=1.0)
    with pytest.raises(ValueError, match="RePB state has version None, expected 1"):
        RePB().load_state_dict({})
    with pytest.raises(ValueError, match="latest_keep must be a bool tensor shaped as last_kept"):
        RePB().load_state_dict(
            {
                "version": 1,
                "last_kept": torch.zeros(3),
                "latest_keep": torch.ones(2, dtype=torch.bool),
                "latest_epoch": 0,
            }
        )
    with pytest.raises(ValueError, match="score_iterations must be a tensor of one iteration"):
        context(1, SIZE, score_iterations=torch.zeros(3, dtype=torch.int32))


def test_the_sampler_records_the_iteration_of_each_score_only_for_a_rule_asking() -> None:
    dataset = wrapped("repb")
    loader = DataLoader(dataset, batch_size=32, sampler=dataset.sampler)
    order = []
    for step, (x, _label) in enumerate(loader):
        index = x[:, 0].long()
        dataset.update(loss(index, 0))
        order.append((index, step))
    iterations = dataset.state_dict()["score_iterations"]
    assert iterations.dtype == torch.int32
    for index, step in order:
        assert iterations[index].tolist() == [step] * index.numel()
    assert wrapped("ucb").state_dict()["score_iterations"] is None  # no cost for the others
    resumed = wrapped("repb")
    resumed.load_state_dict(dataset.state_dict())
    assert torch.equal(resumed.state_dict()["score_iterations"], iterations)
    old = dataset.state_dict()
    del old["score_iterations"]  # an older checkpoint: every iteration unknown
    resumed.load_state_dict(old)
    assert bool((resumed.state_dict()["score_iterations"] == -1).all())


def test_a_repb_run_resumes_exactly_from_a_mid_epoch_checkpoint() -> None:
    def losses(dataset: InfoBatch[Any], epochs: range, stop: int | None = None) -> list[float]:
        loader = DataLoader(dataset, batch_size=32, sampler=dataset.sampler)
        out = []
        for epoch in epochs:
            dataset.sampler.set_epoch(epoch)
            for step, (x, _label) in enumerate(loader):
                if stop is not None and epoch == epochs[-1] and step == stop:
                    return out
                out.append(float(dataset.update(loss(x[:, 0].long(), epoch))))
        return out

    expected = losses(wrapped("repb"), range(EPOCHS))
    first = wrapped("repb")
    done = losses(first, range(4), stop=3)  # inside epoch 3, after 3 batches
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = wrapped("repb")
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    rest = losses(resumed, range(3, EPOCHS))
    assert done + rest == expected
    assert any(s.weight > 1 for s in resumed.history)  # per-sample weights were in play


# ---------------------------------------------------------------------- IES
def ies_reference(history: list[Tensor], threshold: float, window: int) -> Tensor:
    """Mastered samples from a full loss history (float32, one tensor per observation)."""
    seconds = [
        (history[t] - 2.0 * history[t - 1] + history[t - 2]).abs() for t in range(2, len(history))
    ]
    if len(seconds) < window:
        return torch.zeros(history[0].numel(), dtype=torch.bool)
    return torch.stack(seconds[-window:]).double().mean(dim=0) < threshold


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 60),
    epochs=st.integers(1, 6),
    window=st.integers(1, 3),
    threshold=st.sampled_from([1e-3, 0.05, 0.3]),
    seed=st.integers(0, 2**31),
)
def test_ies_excludes_exactly_the_samples_whose_second_difference_is_below_the_threshold(
    size: int, epochs: int, window: int, threshold: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    start, slope = torch.rand(size, generator=generator), torch.rand(size, generator=generator)
    curve = torch.rand(size, generator=generator) * 0.2 - 0.1
    rule = IES(threshold=threshold, window=window)
    history: list[Tensor] = []
    for epoch in range(epochs + 1):
        if epoch == 0:
            scores = torch.full((size,), math.nan)  # nothing scored yet
        else:
            t = float(epoch)
            scores = (start + slope * t + curve * t * t / 2).to(torch.float32)
            history.append(scores)
        selection = select(rule, scores, seed=epoch, epoch=epoch)
        assert_status(selection, size)
        expected = (
            ies_reference(history, threshold, window)
            if history
            else torch.zeros(size, dtype=torch.bool)
        )
        assert torch.equal(~selection.keep, expected), epoch
        assert selection.num_well_learned == int(expected.sum()) and selection.weight == 1.0
        assert selection.threshold == threshold


def ies_select(rule: IES, scores: list[float], iterations: list[int], epoch: int) -> list[bool]:
    ctx = context(epoch, 2, score_iterations=torch.tensor(iterations, dtype=torch.int32))
    return rule.select_for_epoch(torch.tensor(scores), torch.Generator(), ctx).keep.tolist()


def test_ies_keeps_an_excluded_sample_out_until_it_gets_a_new_loss() -> None:
    rule = IES(threshold=1e-3)
    # sample 0 settles (second difference 0.25), sample 1 is flat at exactly 0.0 (a loss
    # that repeats bit for bit is still a new observation: its iteration changed)
    for epoch, first in enumerate([1.0, 0.5, 0.25]):
        keep = ies_select(rule, [first, 0.0], [epoch * 10, epoch * 10 + 1], epoch + 1)
        assert keep == [True, epoch < 2]
    # sample 1 was excluded: no new loss, its score and iteration stay; it stays out
    assert ies_select(rule, [0.2, 0.0], [30, 21], 4) == [True, False]
    before = rule.state_dict()
    ies_select(rule, [0.2, 0.0], [30, 21], 4)  # planned again: nothing counted twice
    for key in ("last", "curvature", "stamp"):
        assert torch.equal(before[key], rule.state_dict()[key])
    # trained again (an annealing epoch): its loss moved, so it is back
    assert ies_select(rule, [0.2, 0.9], [30, 40], 5) == [True, True]
    values = IES(threshold=1e-3)  # without iterations a repeated score is no observation
    for epoch in range(1, 5):
        selection = values.select_for_epoch(
            torch.tensor([0.0]),
            torch.Generator(),
            replace(context(epoch, 1), score_iterations=None),
        )
        assert selection.keep.tolist() == [True]


def test_ies_settings_and_state_are_validated() -> None:
    for bad in (0, -1e-3, math.inf, math.nan):
        with pytest.raises(ValueError, match=f"Invalid threshold {bad}, threshold should be"):
            IES(threshold=bad)
    with pytest.raises(TypeError, match="threshold must be a float, got str"):
        IES(threshold="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Invalid window 0, window should be an int >= 1"):
        IES(window=0)
    with pytest.raises(ValueError, match="IES state has version None, expected 1"):
        IES().load_state_dict({})
    with pytest.raises(ValueError, match=r"do not fit window=2 and 3 samples"):
        IES(window=2).load_state_dict(
            {
                "version": 1,
                "last": torch.zeros(3),
                "before": torch.zeros(3),
                "curvature": torch.zeros(1, 3),
                "stamp": torch.zeros(3, dtype=torch.int32),
                "updated_epoch": 2,
            }
        )
    with pytest.raises(ValueError, match="must all be tensors"):
        IES().load_state_dict({"version": 1, "last": torch.zeros(3), "updated_epoch": 2})
    with pytest.raises(RuntimeError, match="before any observation"):
        IES().mastered()


def test_the_score_table_stamps_recorded_scores_and_validates_loaded_iterations() -> None:
    table = ScoreTable(4, track_iterations=True)
    table.record(torch.tensor([0, 2, 3]), torch.tensor([1.0, math.nan, 2.0]), iteration=7)
    assert table.iterations is not None and table.iterations.tolist() == [7, -1, -1, 7]
    valid = torch.tensor([True, False])
    table.record(torch.tensor([1, 3]), torch.tensor([3.0, 4.0]), valid, iteration=9)
    assert table.iterations.tolist() == [7, 9, -1, 7]  # not valid: not recorded, not stamped
    with pytest.raises(ValueError, match="tracks iterations: give record"):
        table.record(torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(TypeError, match="must hold integers, got torch.float32"):
        table.load_iterations(torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(4,\), got torch.Size\(\[3\]\)"):
        table.load_iterations(torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="holds values below -1"):
        table.load_iterations(torch.full((4,), -2, dtype=torch.int32))
    assert ScoreTable(4).iterations is None  # off by default: no memory, no collective
    assert digest_of_state([1, 2, 3, 4, 5], torch.device("cpu")).tolist() == [1, 2, 3, 4, 5, 0]
    with pytest.raises(ValueError, match="'digest' has 7 values, expected 6"):
        digest_of_state(list(range(7)), torch.device("cpu"))
