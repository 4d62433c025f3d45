"""Prompt-level InfoBatch for RL loops: scores, the batch-aligned rule, passes, unbiasedness."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infobatch import (
    PRUNED,
    UPWEIGHTED,
    BatchAlignedPruning,
    PromptPruning,
    epoch_generator,
    prompt_scores,
)


def _run_pass(pruning: PromptPruning, scores_of: torch.Tensor) -> list[torch.Tensor]:
    batches = []
    for batch in pruning.batches():
        batches.append(batch)
        pruning.update(batch, scores=scores_of[batch])
    return batches


# ---------------------------------------------------------------------- scores
def test_reward_std_is_the_groups_population_std() -> None:
    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 4.0, 6.0]])
    expected = rewards.std(dim=1, correction=0)
    assert torch.equal(prompt_scores(rewards), expected)
    assert prompt_scores(rewards)[1] == 0  # all solved: nothing left to teach


def test_scores_ignore_missing_rewards_and_give_none_without_any() -> None:
    nan = float("nan")
    rewards = torch.tensor([[1.0, nan, 0.0], [nan, nan, nan]])
    scores = prompt_scores(rewards)
    assert scores[0] == pytest.approx(0.5)
    assert math.isnan(scores[1])


def test_success_variance_is_p_one_minus_p_and_needs_binary_rewards() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.allclose(prompt_scores(rewards, "success_variance"), torch.tensor([0.1875, 0.0]))
    with pytest.raises(ValueError, match="reward_std"):
        prompt_scores(torch.tensor([[0.5, 1.0]]), "success_variance")
    with pytest.raises(ValueError, match="num_prompts, num_generations"):
        prompt_scores(torch.ones(3))
    with pytest.raises(ValueError, match="score must be one of"):
        prompt_scores(torch.ones(2, 2), "entropy")


# ---------------------------------------------------------------------- the aligned rule
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    batch=st.integers(1, 17),
    ratio=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**32),
)
def test_aligned_rule_fills_whole_batches_and_prunes_only_below_the_mean(
    n: int, batch: int, ratio: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, generator=generator)
    scores[torch.rand(n, generator=generator) < 0.1] = float("nan")
    selection = BatchAlignedPruning(ratio, batch).select(scores, epoch_generator(seed, 1))
    status = selection.status
    below = scores < scores.nanmean()
    assert not bool((status[~below] == PRUNED).any())  # at/above the mean, unscored: kept
    assert torch.equal(status != PRUNED, ~below | (status == UPWEIGHTED))
    kept = int((status != PRUNED).sum())
    well = int(below.sum())
    skipped = n - kept
    assert selection.num_well_learned == well
    if n % batch <= max(well - 1, 0):  # an aligned count exists: it is used
        assert kept % batch == 0
        assert skipped < max(well, 1)
        if well:
            assert selection.weight == pytest.approx(well / (well - skipped))


def test_aligned_rule_skips_the_ratio_on_average() -> None:
    scores = torch.arange(100, dtype=torch.float32)  # 50 below the mean 49.5
    rule = BatchAlignedPruning(0.5, 8)  # kept must be 100 - m, m in {4, 12, 20, ...}
    skips = [
        100 - int((rule.select(scores, epoch_generator(s, 0)).status != PRUNED).sum())
        for s in range(400)
    ]
    assert set(skips) == {20, 28}  # the two counts around 25
    assert sum(skips) / len(skips) == pytest.approx(25, abs=0.8)


def _unbiasedness(pruning_of: object, trials: int = 800) -> None:
    """Mean over plans of sum(w_i g_i over kept prompts) equals sum(g_i) (fixed scores)."""
    n, dim = 40, 3
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(n, generator=generator)
    gradients = torch.randn(n, dim, generator=generator)  # per-prompt policy gradients
    full = gradients.sum(dim=0)
    estimates = []
    for trial in range(trials):
        pruning = pruning_of(n, trial)  # type: ignore[operator]
        _run_pass(pruning, scores)  # pass 0: scores everything
        total = torch.zeros(dim)
        for batch in pruning.batches():
            weights = pruning.update(batch, scores=scores[batch])
            total += (weights[:, None] * gradients[batch]).sum(dim=0)
        estimates.append(total)
    stacked = torch.stack(estimates)
    error = stacked.std(dim=0) / math.sqrt(trials)
    assert bool(((stacked.mean(dim=0) - full).abs() < 4 * error + 1e-6).all())
    assert bool((error > 0).all())  # it did prune


def test_prompt_pruning_is_unbiased_on_a_fixed_policy() -> None:
    _unbiasedness(lambda n, seed: PromptPruning(n, 4, 0.5, batch_size=5, seed=seed))


def test_whole_batch_pruning_is_unbiased_on_a_fixed_policy() -> None:
    _unbiasedness(
        lambda n, seed: PromptPruning(n, 4, 0.5, batch_size=6, whole_batches=True, seed=seed)
    )


def test_grpo_gradient_of_a_pruned_pass_is_unbiased() -> None:
    """A tabular softmax policy, G sampled answers per prompt, group-normalised advantages:
    the pruned pass's policy gradient (advantages times the weights) averages to the full
    pass's over rollouts and skipping coins."""
    n, answers, group, trials = 12, 4, 6, 800
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(n, answers, generator=generator)
    correct = torch.randint(answers, (n,), generator=generator)
    scores = torch.rand(n, generator=generator)  # the previous pass's scores, fixed

    def pass_gradient(pruning: PromptPruning | None, rng: torch.Generator) -> torch.Tensor:
        grad = torch.zeros(n, answers)
        probs = logits.softmax(dim=1)
        if pruning is None:
            chunks, weights_of = [torch.arange(n)], None
        else:
            chunks, weights_of = list(pruning.batches()), pruning
        for chunk in chunks:
            weights = torch.ones(len(chunk))
            if weights_of is not None:
                weights = weights_of.weights_of(chunk)
            sampled = torch.multinomial(probs[chunk], group, replacement=True, generator=rng)
            rewards = (sampled == correct[chunk, None]).float()
            advantages = (rewards - rewards.mean(1, keepdim=True)) / (
                rewards.std(1, keepdim=True) + 1e-4
            )
            advantages = advantages * weights[:, None]
            one_hot = torch.nn.functional.one_hot(sampled, answers).float()
            score_fn = one_hot - probs[chunk][:, None, :]  # d log pi(a) / d logits
            grad[chunk] += (advantages[..., None] * score_fn).mean(dim=1)
            if weights_of is not None:
                weights_of.update(chunk, scores=scores[chunk])
        return grad

    full, pruned = [], []
    for trial in range(trials):
        rng = torch.Generator().manual_seed(10_000 + trial)
        full.append(pass_gradient(None, rng))
        pruning = PromptPruning(n, 4, 0.5, batch_size=4, seed=trial)
        _run_pass(pruning, scores)
        pruned.append(pass_gradient(pruning, rng))
    full_t, pruned_t = torch.stack(full), torch.stack(pruned)
    error = (full_t.var(0) / trials + pruned_t.var(0) / trials).sqrt()
    assert bool(((pruned_t.mean(0) - full_t.mean(0)).abs() <= 4 * error + 1e-6).all())


# ---------------------------------------------------------------------- passes
@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 80),
    batch=st.integers(1, 9),
    whole=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_passes_hand_out_each_kept_prompt_once_with_exact_weights(
    n: int, batch: int, whole: bool, seed: int
) -> None:
    batch = min(batch, n)
    pruning = PromptPruning(n, 3, 0.5, delta=1.0, batch_size=batch, whole_batches=whole, seed=seed)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    passes_done = 0
    while not pruning.finished:
        assert pruning.epoch == passes_done
        planned, planned_batches = pruning.planned_prompts(), pruning.planned_batches()
        epoch_batches = []
        for chunk in pruning.batches():
            plan = pruning.sampler.plan
            assert plan is not None
            weights = pruning.update(chunk, scores=scores[chunk])
            expected = torch.where(plan.status[chunk] == UPWEIGHTED, plan.weight, 1.0)
            assert torch.equal(weights, expected.float())
            epoch_batches.append(chunk)
        handed = torch.cat(epoch_batches) if epoch_batches else torch.empty(0, dtype=torch.int64)
        assert handed.unique().numel() == handed.numel()
        stats = pruning.history[-1]
        left = pruning.left_out.get(stats.epoch, 0)
        assert handed.numel() == stats.num_kept - left
        assert (handed.numel(), len(epoch_batches)) == (planned, planned_batches)
        if whole:
            assert all(len(c) == batch for c in epoch_batches) and left < batch
        else:
            assert left == 0
        passes_done += 1
        assert pruning.epoch == passes_done  # a complete pass: the next one's number
    assert len(pruning.history) == 3 and pruning.epoch == 3


def test_a_pass_resumes_from_its_state() -> None:
    scores = torch.rand(30, generator=torch.Generator().manual_seed(2))
    first = PromptPruning(30, 3, batch_size=4, whole_batches=True, seed=3)
    _run_pass(first, scores)
    batches = iter(first.batches())
    for _ in range(2):
        chunk = next(batches)
        first.update(chunk, scores=scores[chunk])
    state = first.state_dict()
    rest = [c.tolist() for c in batches]
    second = PromptPruning(30, 3, batch_size=4, whole_batches=True, seed=3)
    second.load_state_dict(state)
    assert [c.tolist() for c in second.batches()] == rest


def test_update_refuses_inputs_it_cannot_score() -> None:
    pruning = PromptPruning(10, 2, batch_size=5)
    chunk = next(iter(pruning.batches()))
    with pytest.raises(ValueError, match="exactly one of rewards"):
        pruning.update(chunk)
    with pytest.raises(ValueError, match=r"shape \[5, num_generations\]"):
        pruning.update(chunk, torch.ones(4, 2))
    with pytest.raises(ValueError, match="one per prompt"):
        pruning.update(chunk, scores=torch.ones(3))
    with pytest.raises(ValueError, match="score must be one of"):
        PromptPruning(10, 2, score="entropy")


def test_rollouts_count_the_completions_scored() -> None:
    pruning = PromptPruning(8, 1, batch_size=4)
    for chunk in pruning.batches():
        pruning.update(chunk, torch.zeros(len(chunk), 3))
    assert pruning.rollouts == {0: 24}
    assert pruning.finished
    assert list(pruning.batches()) == []
