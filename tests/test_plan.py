"""Invariants of the pruning rule and the epoch plan (property tests)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infobatch.rule as rule_module
from infobatch import KEPT, PRUNED, UPWEIGHTED, Selection, SoftPruning, build_plan, epoch_generator
from infobatch.plan import EpochPlan, _kept_indices, _shuffled_kept
from infobatch.rule import KeepAll, _scored_sum_and_count, chunk_size, count_scored

NAN = float("nan")


@contextmanager
def chunks_of(size: int | None) -> Iterator[None]:
    """Make every chunked pass of planning use chunks of ``size`` elements (None: default)."""
    if size is None:
        yield
        return
    with mock.patch.object(rule_module, "_CPU_CHUNK", size):
        yield


def same_plan(a: EpochPlan, b: EpochPlan) -> bool:
    return (
        torch.equal(a.order, b.order)
        and torch.equal(a.status, b.status)
        and (a.weight, a.num_scored, a.num_well_learned, a.pruning)
        == (b.weight, b.num_scored, b.num_well_learned, b.pruning)
        # the float64 mean is summed chunk by chunk: its last bits depend on the chunk size
        and (
            math.isclose(a.threshold, b.threshold, rel_tol=1e-12)
            or (math.isnan(a.threshold) and math.isnan(b.threshold))
        )
    )


score_lists = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=1e3, allow_nan=False, width=32),
        st.just(float("nan")),
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(
    scores=score_lists,
    ratio=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**64 - 1),
    chunk=st.sampled_from([None, 1, 2, 3, 7, 64]),
)
def test_plan_invariants(scores: list[float], ratio: float, seed: int, chunk: int | None) -> None:
    values = torch.tensor(scores, dtype=torch.float32)
    with chunks_of(chunk):
        plan = build_plan(0, values, SoftPruning(ratio), epoch_generator(seed, 0))
    order = plan.order.long()
    n = len(scores)
    assert plan.order.dtype == torch.int32 and plan.status.dtype == torch.int8
    assert plan.status.shape == (n,)

    # chunking changes neither the coins (one CPU stream, in sample order) nor the shuffle
    if chunk is not None:
        unchunked = build_plan(0, values, SoftPruning(ratio), epoch_generator(seed, 0))
        assert same_plan(plan, unchunked)

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
@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_chunked_kept_indices_and_sums_match_the_unchunked_ones(n: int, chunk: int) -> None:
    values = torch.rand(n, generator=torch.Generator().manual_seed(n)) * 10
    values[:: max(n // 4, 1)] = NAN
    status = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(n + 1))
    status = status.to(torch.int8)
    with chunks_of(chunk):
        assert len(rule_module.split_in_chunks(values)) == -(-n // chunk)
        kept = _kept_indices(status, torch.int32)
        total, count = _scored_sum_and_count(values)
    assert kept.dtype == torch.int32
    assert torch.equal(kept.long(), torch.nonzero(status).view(-1))
    assert total.dtype == torch.float64
    assert total.item() == pytest.approx(torch.nansum(values.double()).item(), rel=1e-12)
    assert int(count) == int((~values.isnan()).sum()) == count_scored(values)


def test_chunk_size_bounds() -> None:
    cpu, elsewhere = torch.device("cpu"), torch.device("meta")
    # CPU: chunks small enough for PyTorch to run each operation on the calling thread
    assert chunk_size(10**8, cpu) == 1 << 15
    # accelerators: N / 16 clamped to [2^16, 2^20] (few launches, an 8 B temporary <= 8 MiB)
    assert chunk_size(10, elsewhere) == 1 << 16
    assert chunk_size(10_000_000, elsewhere) == 625_000
    assert chunk_size(100_000_000, elsewhere) == 1 << 20
    for n in (1, 1000, 1 << 16, 1 << 20, 10**7, 10**8, 3 * 10**9):
        for device in (cpu, elsewhere):
            size = chunk_size(n, device)
            assert size <= 1 << 20 and size <= max(1 << 16, -(-n // 16))


def test_order_of_a_fixed_kept_set_is_uniform_over_permutations() -> None:
    status = torch.tensor([UPWEIGHTED, PRUNED, KEPT, UPWEIGHTED, PRUNED], dtype=torch.int8)
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(3000):
        with chunks_of(2 if seed % 2 else None):  # the in-place gather, chunked or not
            order = tuple(_shuffled_kept(status, epoch_generator(seed, 0), torch.int32).tolist())
        counts[order] = counts.get(order, 0) + 1
    assert set(counts) == {(0, 2, 3), (0, 3, 2), (2, 0, 3), (2, 3, 0), (3, 0, 2), (3, 2, 0)}
    expected = 3000 / 6
    chi_square = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi_square < 20.5  # p = 0.001 for 5 degrees of freedom


# ------------------------------------------------------------------ plans independent of device
SCORES = [0.5, NAN, 3.0, 0.1, 2.0, 0.2, 1.0, 0.05, 4.0, 0.3, 0.7, 0.01]


@pytest.mark.parametrize(
    ("seed", "epoch", "ratio", "order", "status"),
    [
        (2024, 3, 0.5, [4, 5, 7, 3, 11, 9, 1, 0, 10, 8, 2], [2, 1, 1, 2, 1, 2, 0, 2, 1, 2, 2, 2]),
        (2**64 - 1, 0, 0.5, [0, 4, 3, 10, 7, 2, 1, 8], [2, 1, 1, 2, 1, 0, 0, 2, 1, 0, 2, 0]),
        (2**63 + 5, 7, 0.7, [1, 8, 4, 2], [0, 1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0]),
        (2024, 3, None, [11, 4, 3, 9, 2, 5, 10, 0, 1, 7, 6, 8], [1] * 12),
    ],
)
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_plan_of_seed_epoch_and_scores_is_this_literal_plan(
    seed: int,
    epoch: int,
    ratio: float | None,
    order: list[int],
    status: list[int],
    chunk: int | None,
) -> None:
    # Literal plans made with the CPU generator (the values the first implementation gave on
    # the CPU): every draw comes from the CPU stream of (seed, epoch), whatever the device.
    rule = None if ratio is None else SoftPruning(ratio)
    with chunks_of(chunk):
        plan = build_plan(epoch, torch.tensor(SCORES), rule, epoch_generator(seed, epoch))
    assert plan.order.tolist() == order
    assert plan.status.tolist() == status
    assert plan.num_scored == 11
    if ratio is not None:
        mean = float(np.nanmean(np.array(SCORES, dtype=np.float32).astype(np.float64)))
        assert plan.threshold == mean and plan.num_well_learned == 8
        assert plan.weight == 1.0 / (1.0 - ratio)


def test_plan_of_a_large_table_is_the_pinned_one() -> None:
    # 3M samples: several chunks in every pass. Pinned digest of order and status, as the
    # first (unchunked) implementation planned them on the CPU.
    values = torch.rand(3_000_000, generator=torch.Generator().manual_seed(1))
    values[::7] = NAN
    plan = build_plan(5, values, SoftPruning(0.5), epoch_generator(99, 5))
    assert len(rule_module.split_in_chunks(values)) > 1
    digest = hashlib.sha256(plan.order.numpy().tobytes() + plan.status.numpy().tobytes())
    assert plan.num_kept == 2357092
    assert digest.hexdigest() == "a10c6a02c5cd3dbbfdb20e58c5107ca2e3f4f0d36706e094d64e4638e1c54c48"


class _Draws:
    """Records torch.rand / torch.randperm calls: their sizes and keyword arguments."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int, dict[str, Any]]] = []
        for name in ("rand", "randperm"):
            original = getattr(torch, name)
            monkeypatch.setattr(torch, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Any) -> Any:
        def draw(size: Any, *args: Any, **kwargs: Any) -> Any:
            count = size if isinstance(size, int) else math.prod(size)
            self.calls.append((name, count, dict(kwargs)))
            return original(size, *args, **kwargs)

        return draw


@pytest.mark.parametrize("ratio", [None, 0.5])
def test_every_draw_is_made_on_the_cpu_in_bounded_chunks(
    ratio: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, chunk = 1000, 64
    values = torch.rand(n, generator=torch.Generator().manual_seed(0))
    draws = _Draws(monkeypatch)
    with chunks_of(chunk):
        plan = build_plan(
            0, values, None if ratio is None else SoftPruning(ratio), epoch_generator(0, 0)
        )
    assert draws.calls, "planning drew no random numbers"
    for _, _, kwargs in draws.calls:
        assert "device" not in kwargs  # drawn where the generator lives, never on scores.device
        assert kwargs["generator"].device.type == "cpu"
    coins = [count for name, count, _ in draws.calls if name == "rand"]
    shuffles = [count for name, count, _ in draws.calls if name == "randperm"]
    assert shuffles == [plan.num_kept]
    if ratio is None:
        assert coins == []
    else:  # one coin per sample, never more than a chunk at a time: no N-sized float32 coins
        assert sum(coins) == n and max(coins) == chunk and len(coins) == -(-n // chunk)


class _GeneratorOn:
    """Stands in for a generator on another device (none exists on a CPU-only machine)."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)


def test_build_plan_rejects_a_generator_that_is_not_on_the_cpu() -> None:
    values = torch.rand(10)
    for rule in (None, SoftPruning(0.5)):
        with pytest.raises(ValueError, match="CPU generator"):
            build_plan(0, values, rule, _GeneratorOn("cuda"))  # type: ignore[arg-type]


# ------------------------------------------------------------------ selections and custom rules
def test_selection_is_one_int8_status_per_sample() -> None:
    status = torch.tensor([PRUNED, KEPT, UPWEIGHTED], dtype=torch.int8)
    selection = Selection(status, 2.0, 0.5, 3, 2)
    assert selection.keep.tolist() == [False, True, True]
    assert selection.upweighted.tolist() == [False, False, True]
    with pytest.raises(TypeError, match="int8"):
        Selection(torch.tensor([True, False]), 1.0, NAN, 0, 0)
    with pytest.raises(ValueError, match="one entry per sample"):
        Selection(status.view(1, 3), 1.0, NAN, 0, 0)
    for weight in (0.0, -1.0, math.inf, NAN):
        with pytest.raises(ValueError, match="weight"):
            Selection(status, weight, NAN, 0, 0)


def test_soft_pruning_status_matches_its_definition() -> None:
    values = torch.rand(5000, generator=torch.Generator().manual_seed(3))
    values[::11] = NAN
    selection = SoftPruning(0.4).select(values, epoch_generator(4, 1))
    # the same coins, drawn directly from the same stream
    drop = torch.rand(5000, generator=epoch_generator(4, 1)) < 0.4
    well = values.double() < float(np.nanmean(values.double().numpy()))
    expected = torch.where(well, torch.where(drop, PRUNED, UPWEIGHTED), KEPT).to(torch.int8)
    assert torch.equal(selection.status, expected)
    assert selection.num_well_learned == int(well.sum())
    assert selection.num_scored == 5000 - len(range(0, 5000, 11))


def test_keep_all_keeps_every_sample_and_counts_the_scored() -> None:
    values = torch.tensor([NAN, 1.0, NAN, 2.0])
    selection = KeepAll().select(values, epoch_generator(0, 0))
    assert selection.status.tolist() == [KEPT] * 4
    assert selection.num_scored == 2 and selection.weight == 1.0


class _FixedRule:
    def __init__(self, status: torch.Tensor) -> None:
        self.status = status

    def select(self, scores: torch.Tensor, generator: torch.Generator) -> Selection:
        return Selection(self.status, 3.0, NAN, count_scored(scores), 0)


def test_a_custom_rule_plans_through_its_status() -> None:
    status = torch.tensor([UPWEIGHTED, PRUNED, KEPT, UPWEIGHTED, PRUNED, KEPT], dtype=torch.int8)
    plan = build_plan(2, torch.rand(6), _FixedRule(status), epoch_generator(1, 2))
    assert sorted(plan.order.tolist()) == [0, 2, 3, 5]
    assert plan.weights_of(torch.arange(6)).tolist() == [3.0, 1.0, 1.0, 3.0, 1.0, 1.0]
    assert torch.equal(plan.status, status) and plan.pruning


def test_a_plan_made_before_any_score_is_not_pruning() -> None:
    unscored = torch.full((8,), NAN)
    first = build_plan(0, unscored, SoftPruning(0.5), epoch_generator(0, 0))
    assert not first.pruning and first.num_kept == 8 and first.num_scored == 0
    one_scored = unscored.clone()
    one_scored[3] = 1.0
    assert build_plan(1, one_scored, SoftPruning(0.5), epoch_generator(0, 1)).pruning
    # A rule that prunes without scores (a random baseline) did prune.
    status = torch.tensor([PRUNED] + [KEPT] * 7, dtype=torch.int8)
    assert build_plan(0, unscored, _FixedRule(status), epoch_generator(0, 0)).pruning


def test_history_labels_epoch_0_and_the_annealing_epochs_as_full_data() -> None:
    from torch.utils.data import DataLoader

    from infobatch import InfoBatch
    from tests.helpers import IndexedDataset, loss_of

    dataset = InfoBatch(IndexedDataset(64), 4, delta=0.75, seed=0)
    loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler)
    for _ in range(4):
        for x, _label in loader:
            dataset.update(loss_of(x[:, 0]))
    assert [s.pruning for s in dataset.history] == [False, True, True, False]
    assert dataset.history[0].num_pruned == 0 and dataset.history[1].num_pruned > 0


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (torch.tensor([0, 1, 3, 1], dtype=torch.int8), "from 0 to 3"),
        (torch.tensor([0, -1, 2, 1], dtype=torch.int8), "from -1 to 2"),
        (torch.tensor([0, 1, 2], dtype=torch.int8), "one entry per sample"),
    ],
)
def test_build_plan_rejects_an_invalid_status(status: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_plan(0, torch.rand(4), _FixedRule(status), epoch_generator(0, 0))
