"""The policy zoo: each policy's invariants, exact resume, determinism; the registry."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils.data import DataLoader

from infobatch import KEPT, PRUNED, UPWEIGHTED, EpochAwareRule, InfoBatch, Selection, SoftPruning
from infobatch.context import EpochContext
from infobatch.policies import (
    POLICIES,
    UCB,
    DynamicRandom,
    EpsilonGreedy,
    LowLossPruning,
    NoRescale,
    Rule,
    SeTa,
    StaticRandom,
    kmeans_1d,
    make_policy,
)
from infobatch.rng import random_permutation
from tests.helpers import POLICY_ARGUMENTS, IndexedDataset

SIZE, EPOCHS = 300, 8

ARGUMENTS = POLICY_ARGUMENTS


def context(epoch: int, num_samples: int = SIZE, num_epochs: int = EPOCHS) -> EpochContext:
    return EpochContext(
        epoch=epoch,
        num_samples=num_samples,
        num_epochs=num_epochs,
        pruned_epochs=num_epochs,
        iterations_done=0,
        num_iterations=None,
        history=(),
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


@pytest.mark.parametrize("name", ["static_random", "ucb"])
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
