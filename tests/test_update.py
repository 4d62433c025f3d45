"""update(): the weighted mean, gradients, dtypes, scores and its errors."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

from infobatch import InfoBatchError, InfoBatchSampler, Phase, ShortScheduleWarning
from infobatch.plan import UPWEIGHTED


def scored_sampler(
    n: int = 40, ratio: float = 0.5, **kwargs: object
) -> tuple[InfoBatchSampler, Iterator[int]]:
    """A sampler whose epoch 1 prunes (epoch 0 trained with distinct losses), and epoch 1's
    iteration."""
    sampler = InfoBatchSampler(n, num_epochs=10, prune_ratio=ratio, **kwargs)  # type: ignore[arg-type]
    order = list(sampler)
    sampler_losses = torch.tensor(order, dtype=torch.float32) / n
    sampler.update(sampler_losses)
    return sampler, iter(sampler)  # epoch 1 plan


def take(iterator: Iterator[int], count: int) -> torch.Tensor:
    """Pull ``count`` indices from an iteration, as a loader does for one batch."""
    return torch.tensor([next(iterator) for _ in range(count)])


def test_update_returns_weighted_mean_with_exact_weights_and_gradients() -> None:
    sampler, indices_of_epoch = scored_sampler()
    assert sampler.plan is not None and sampler.plan.num_pruned > 0
    batch = take(indices_of_epoch, 8)
    loss = torch.rand(8, requires_grad=True)
    weights = torch.where(sampler.plan.status[batch] == UPWEIGHTED, 2.0, 1.0)
    assert (weights == 2.0).any()
    result = sampler.update(loss)
    assert torch.allclose(result, (weights * loss).sum() / 8, rtol=0, atol=1e-7)
    result.backward()
    assert loss.grad is not None
    assert torch.allclose(loss.grad, weights / 8)


def test_update_never_modifies_the_callers_tensor() -> None:
    sampler, indices_of_epoch = scored_sampler()
    take(indices_of_epoch, 8)
    loss = torch.rand(8)
    before, version = loss.clone(), loss._version
    sampler.update(loss)
    assert torch.equal(loss, before) and loss._version == version


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_update_accepts_reduced_precision_and_returns_the_same_dtype(dtype: torch.dtype) -> None:
    sampler, indices_of_epoch = scored_sampler()
    batch = take(indices_of_epoch, 4)
    loss = torch.tensor([0.5, 1.5, 2.5, 3.5], dtype=dtype, requires_grad=True)
    result = sampler.update(loss)
    assert result.dtype == dtype
    result.backward()
    assert sampler.scores.dtype == torch.float32
    assert torch.equal(sampler.scores[batch], loss.detach().float())


def test_score_argument_is_recorded_instead_of_the_loss() -> None:
    sampler, indices_of_epoch = scored_sampler()
    batch = take(indices_of_epoch, 4)
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    score = torch.tensor([9.0, 8.0, 7.0, 6.0])
    result = sampler.update(loss, score=score)
    assert torch.equal(sampler.scores[batch], score)
    weights = sampler.plan.weights_of(batch)  # type: ignore[union-attr]
    assert torch.allclose(result, (weights * loss).mean())


def test_update_forces_no_host_device_sync() -> None:
    # Meta tensors have no data: any .item(), .cpu(), .tolist() or bool() on them raises.
    sampler = InfoBatchSampler(10, num_epochs=2)
    take_iter = iter(sampler)
    [next(take_iter) for _ in range(4)]
    result = sampler.update(torch.rand(4, device="meta"))
    assert result.device.type == "meta"
    assert sampler.scores.device.type == "meta"


def test_scalar_loss_is_rejected_with_instructions() -> None:
    sampler, indices_of_epoch = scored_sampler()
    take(indices_of_epoch, 4)
    with pytest.raises(ValueError, match=r"pass per-sample losses.*reduction='none'"):
        sampler.update(torch.tensor(1.0))


def test_multi_dimensional_loss_is_rejected() -> None:
    sampler, indices_of_epoch = scored_sampler()
    take(indices_of_epoch, 4)
    with pytest.raises(ValueError, match=r"shape \(4, 3\).*\[batch_size\]"):
        sampler.update(torch.rand(4, 3))


def test_non_tensor_and_integer_losses_are_type_errors() -> None:
    sampler, indices_of_epoch = scored_sampler()
    take(indices_of_epoch, 4)
    with pytest.raises(TypeError, match="torch.Tensor"):
        sampler.update([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        sampler.update(torch.ones(4, dtype=torch.int64))


def test_loss_longer_than_loaded_samples_is_an_error() -> None:
    sampler, indices_of_epoch = scored_sampler()
    take(indices_of_epoch, 4)
    with pytest.raises(InfoBatchError, match="received 5 losses but only 4 samples"):
        sampler.update(torch.rand(5))


def test_batch_of_a_different_length_mid_epoch_is_an_error() -> None:
    sampler, indices_of_epoch = scored_sampler()
    take(indices_of_epoch, 12)
    sampler.update(torch.rand(4))
    with pytest.raises(ValueError, match="loss has 3 elements but earlier batches .* had 4"):
        sampler.update(torch.rand(3))


def test_update_before_iteration_is_an_error() -> None:
    sampler = InfoBatchSampler(10, num_epochs=2)
    with pytest.raises(InfoBatchError, match="before the loader yielded any batch"):
        sampler.update(torch.rand(2))


def test_update_after_the_epoch_is_complete_is_an_error() -> None:
    sampler = InfoBatchSampler(6, num_epochs=2)
    list(sampler)
    sampler.update(torch.rand(6))
    with pytest.raises(InfoBatchError, match="after all 6 planned samples of epoch 0"):
        sampler.update(torch.rand(1))


def test_non_finite_losses_are_not_recorded_counted_and_warned_once() -> None:
    sampler = InfoBatchSampler(4, num_epochs=5, prune_ratio=0.0)  # every epoch has 4 samples
    warned = []
    for epoch in range(3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            order = torch.tensor(list(sampler))  # planning closes the previous epoch's books
        warned.append([str(w.message) for w in caught if "non-finite" in str(w.message)])
        if epoch == 2:
            break
        sampler.update(torch.tensor([float("nan"), 1.0, float("inf"), 2.0]))
        assert torch.isnan(sampler.scores[order[0]]) or epoch == 1
        assert sampler.scores[order[1]] == 1.0 and sampler.scores[order[3]] == 2.0
    assert [len(w) for w in warned] == [0, 1, 0]  # once, when epoch 0 ended
    assert "2 non-finite losses (nan/inf) in epoch 0" in warned[1][0]
    assert sampler.nonfinite_count == 4


def test_explicit_indices_attribute_losses_to_the_given_samples() -> None:
    sampler, indices_of_epoch = scored_sampler()
    take(indices_of_epoch, 3)
    indices = sampler.plan.order[-3:].long()  # type: ignore[union-attr]
    sampler.update(torch.tensor([7.0, 8.0, 9.0]), indices=indices)
    assert sampler.scores[indices].tolist() == [7.0, 8.0, 9.0]


def test_explicit_indices_are_validated() -> None:
    sampler, indices_of_epoch = scored_sampler()
    take(indices_of_epoch, 3)
    with pytest.raises(ValueError, match=r"interval \[0, 39\], got values from 0 to 40"):
        sampler.update(torch.rand(2), indices=[0, 40])
    with pytest.raises(ValueError, match="one dataset index per loss"):
        sampler.update(torch.rand(2), indices=[1, 2, 3])
    with pytest.raises(TypeError, match="indices must be integers"):
        sampler.update(torch.rand(2), indices=torch.tensor([1.0, 2.0]))


def test_zero_ratio_update_equals_plain_mean() -> None:
    sampler = InfoBatchSampler(16, num_epochs=4, prune_ratio=0.0)
    for _ in range(3):
        list(sampler)
        loss = torch.rand(16)
        # the same mean up to the last bit (a dot product with 1/16: another summation order)
        assert torch.allclose(sampler.update(loss), loss.sum() / 16, rtol=2e-7, atol=0)
        assert sampler.plan is not None and sampler.plan.num_kept == 16


def test_explicit_indices_with_drop_last_end_the_epoch_at_its_last_full_batch() -> None:
    sampler = InfoBatchSampler(10, num_epochs=3, drop_last=True)
    order = torch.tensor(list(sampler))
    for start in (0, 4):  # two full batches of 4; the last 2 samples are dropped by the loader
        sampler.update(torch.rand(4), indices=order[start : start + 4])
    assert sampler.phase is Phase.COMPLETE
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "never reached update()" warning
        warnings.simplefilter("ignore", ShortScheduleWarning)  # test_regime.py
        iter(sampler)
    assert sampler.epoch == 1


def test_skipped_updates_are_reported_when_the_next_epoch_starts() -> None:
    sampler = InfoBatchSampler(10, num_epochs=3)
    list(sampler)
    sampler.update(torch.rand(4))
    with pytest.warns(UserWarning, match="6 of the 10 samples planned for epoch 0"):
        sampler.set_epoch(1)


def test_a_loop_after_an_epoch_that_missed_updates_raises_at_its_first_update() -> None:
    # The first loop handed out all 10 samples but only 4 reached update() (e.g. a DataLoader
    # with drop_last=True and InfoBatch without): a new loop cannot be told from an evaluation
    # pass while the last batches are in flight, so it changes nothing, and its first update
    # raises with the fix instead of recording the new loop's losses on epoch 0's samples.
    sampler = InfoBatchSampler(10, num_epochs=3)
    list(sampler)
    sampler.update(torch.rand(4))
    second = iter(sampler)
    assert next(second) == sampler.plan.order[0]  # type: ignore[union-attr]
    before = sampler.scores.clone()
    with pytest.raises(InfoBatchError, match="6 still waiting for update.*drop_last=True"):
        sampler.update(torch.rand(4))
    assert torch.equal(sampler.scores.isnan(), before.isnan()) and sampler.position == 4
    del second  # the second loop closed: the earlier epoch's last batches may arrive
    sampler.update(torch.rand(4))
    assert sampler.position == 8


def test_invalid_samples_get_no_score_weight_zero_and_no_warning() -> None:
    sampler, indices_of_epoch = scored_sampler()
    batch = take(indices_of_epoch, 4)
    before = sampler.scores[batch].clone()
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    valid = torch.tensor([True, False, True, False])
    result = sampler.update(loss, valid=valid)
    weights = sampler.plan.weights_of(batch) * valid  # type: ignore[union-attr]
    assert torch.allclose(result, (weights * loss).sum() / 4)
    assert sampler.scores[batch].tolist() == [1.0, before[1].item(), 3.0, before[3].item()]
    assert (sampler.position, sampler.epoch_length) == (4, len(sampler))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ShortScheduleWarning)  # test_regime.py
        sampler.state_dict()  # closes the books: nothing non-finite to report
    assert sampler.nonfinite_count == 0
    with pytest.raises(TypeError, match="valid must be a bool tensor shaped like loss"):
        sampler.update(torch.rand(4), valid=torch.ones(4))


def test_score_momentum_keeps_a_moving_average_and_is_checkpointed() -> None:
    sampler = InfoBatchSampler(4, num_epochs=4, prune_ratio=0.0, score_momentum=0.75, seed=0)
    order = list(sampler)
    sampler.update(torch.tensor([4.0, 8.0, 0.0, 2.0]))  # first scores are stored as they are
    assert sampler.scores[order].tolist() == [4.0, 8.0, 0.0, 2.0]
    second = list(sampler)
    first_score = {i: s for i, s in zip(order, [4.0, 8.0, 0.0, 2.0])}
    sampler.update(torch.tensor([8.0, 8.0, 8.0, 8.0]))
    expected = [0.75 * first_score[i] + 0.25 * 8.0 for i in second]
    assert sampler.scores[second].tolist() == expected
    state = sampler.state_dict()
    assert state["score_momentum"] == 0.75
    with pytest.raises(ValueError, match="saved with score_momentum=0.75"):
        InfoBatchSampler(4, num_epochs=4, prune_ratio=0.0, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"Invalid score_momentum 1.0, .* interval \[0, 1\)"):
        InfoBatchSampler(4, num_epochs=4, score_momentum=1.0)


def take_last(sampler: InfoBatchSampler) -> torch.Tensor:
    """The indices of the batch of 4 that the last update received."""
    share = sampler.plan.share(0, 1)  # type: ignore[union-attr]
    return share[sampler.position - 4 : sampler.position].long()


def test_a_masked_out_nan_loss_does_not_reach_the_result_or_the_gradients() -> None:
    # A sample with no target token: its per-sample mean is 0/0 = nan; valid=False masks it.
    sampler, indices_of_epoch = scored_sampler()
    take(indices_of_epoch, 4)
    token_losses = torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0], [4.0, 0.0]])
    token_losses.requires_grad_(True)
    counts = torch.tensor([2.0, 0.0, 2.0, 1.0])
    per_sample = token_losses.sum(dim=1) / counts  # [2, nan, 2, 4]
    valid = counts > 0
    result = sampler.update(per_sample, valid=valid)
    assert torch.isfinite(result)
    masked = torch.where(valid, per_sample, 0.0).detach()
    weights = sampler.plan.weights_of(take_last(sampler))  # type: ignore[union-attr]
    assert torch.equal(result, (masked * weights).sum() / 4)
    result.backward()
    assert token_losses.grad is not None
    assert torch.isfinite(token_losses.grad[valid]).all()


def test_indices_that_are_the_planned_positions_give_the_implicit_result() -> None:
    """``indices=`` equal to the plan's next positions (what an integration passes) takes the
    plan-order path; reordered ones are gathered: both record each score on its sample."""
    implicit, _ = scored_sampler(seed=5)
    given, _ = scored_sampler(seed=5)
    shuffled, _ = scored_sampler(seed=5)
    assert implicit.plan is not None and given.plan is not None
    order = torch.tensor(list(implicit))
    list(given), list(shuffled)
    for start in range(0, len(order), 8):
        batch = order[start : start + 8]
        loss = batch.float() / 40 + 0.01
        expected = implicit.update(loss)
        assert torch.equal(given.update(loss, indices=batch.long()), expected)
        flip = torch.arange(len(batch) - 1, -1, -1)
        assert torch.allclose(
            shuffled.update(loss[flip], indices=batch[flip]), expected, rtol=2e-7, atol=0
        )
    assert torch.equal(implicit.scores, given.scores)
    assert torch.equal(implicit.scores, shuffled.scores)
