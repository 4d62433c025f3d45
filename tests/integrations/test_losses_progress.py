"""Per-sample losses equal the models' own losses per sample; progress-driven schedules."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from infobatch import InfoBatchSampler, Phase
from infobatch.integrations.losses import causal_lm_loss, sequence_classification_loss
from infobatch.integrations.progress import ProgressLR, SamplerProgress, full_data_steps

transformers = pytest.importorskip("transformers")

from ._common import InstructionSet, make_records, pad_collate, tiny_gpt2_config  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_causal_lm_loss_equals_the_models_loss_on_each_sample() -> None:
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(tiny_gpt2_config()).eval()
    items = [InstructionSet(make_records(12))[i] for i in range(12)]
    batch = pad_collate(items)  # padded rows, prompts masked, rows 4 and 13 have no output
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per = causal_lm_loss(logits, batch["labels"])
        for row, item in enumerate(items):
            alone = model(input_ids=item["input_ids"][None], labels=item["labels"][None]).loss
            if per.valid[row]:
                assert per.loss[row].item() == pytest.approx(alone.item(), abs=5e-7)
                assert per.label_count[row] == (item["labels"][1:] != -100).sum()
            else:  # nothing to learn from: the model's mean over no token is nan
                assert torch.isnan(alone) and per.loss[row] == 0 and per.label_count[row] == 0
    assert (~per.valid).sum() == 1  # record 4 has an empty output
    # Already-shifted labels (padding-free collators) give the same losses.
    shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    again = causal_lm_loss(logits, shift_labels=shifted)
    torch.testing.assert_close(again.loss, per.loss, rtol=1e-6, atol=1e-7)
    assert torch.equal(again.valid, per.valid)


def test_causal_lm_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="batch, seq, vocab"):
        causal_lm_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        causal_lm_loss(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels or shift_labels"):
        causal_lm_loss(torch.zeros(2, 3, 5))


@pytest.mark.parametrize(
    "problem_type, labels",
    [
        ("single_label_classification", torch.tensor([0, 2, 1, -100])),
        (
            "multi_label_classification",
            torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]]),
        ),
        ("regression", torch.tensor([[0.5, -1, 2], [1, 1, 1], [0, 0, 0], [3, 2, 1]])),
    ],
)
def test_sequence_classification_loss_equals_the_models_loss_on_each_sample(
    problem_type: str, labels: torch.Tensor
) -> None:
    torch.manual_seed(0)
    config = tiny_gpt2_config(num_labels=3, problem_type=problem_type)
    model = transformers.GPT2ForSequenceClassification(config).eval()
    ids = torch.randint(3, 60, (4, 5))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        per = sequence_classification_loss(logits, labels, problem_type=problem_type)
        for row in range(4):
            alone = model(input_ids=ids[row : row + 1], labels=labels[row : row + 1]).loss
            if per.valid[row]:
                assert per.loss[row].item() == pytest.approx(alone.item(), abs=1e-6)
            else:
                assert labels[row] == -100 and per.loss[row] == 0


def test_sequence_classification_infers_the_problem_type() -> None:
    logits = torch.tensor([[0.2], [0.4]])
    assert torch.allclose(
        sequence_classification_loss(logits, torch.tensor([1.0, 0.0])).loss,
        torch.tensor([0.64, 0.16]),
    )
    out = sequence_classification_loss(torch.zeros(2, 4), torch.tensor([1, 3]))
    assert torch.allclose(out.loss, torch.full((2,), math.log(4)))


def _train_epoch(sampler: InfoBatchSampler, batch: int, losses: torch.Tensor, step: Any) -> None:
    """One epoch: the plan in batches of ``batch``, each sample's loss from ``losses``."""
    indices = list(sampler)
    for start in range(0, len(indices), batch):
        chunk = indices[start : start + batch]
        if sampler.drop_last and len(chunk) < batch:
            break
        sampler.update(losses[chunk], indices=chunk)
        step()


def test_progress_lr_without_pruning_reproduces_the_step_schedule() -> None:
    """No pruning: ProgressLR over SamplerProgress equals the Hugging Face schedule itself."""
    total, warmup = 20, 3  # 4 epochs of 25 samples in batches of 5: 5 steps an epoch
    sampler = InfoBatchSampler(25, num_epochs=4, prune_ratio=0.0, seed=0)
    model = torch.nn.Linear(2, 2)
    reference_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reference = transformers.get_cosine_schedule_with_warmup(reference_opt, warmup, total)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    template = transformers.get_cosine_schedule_with_warmup(opt, warmup, total)
    progress = SamplerProgress(sampler, batch_size=5)
    scheduler = ProgressLR.from_lambda_lr(template, total, progress)

    def step() -> None:
        assert opt.param_groups[0]["lr"] == pytest.approx(reference.get_last_lr()[0])
        opt.step()
        scheduler.step()
        reference_opt.step()
        reference.step()

    for _ in range(4):
        _train_epoch(sampler, 5, torch.rand(25), step)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_progress_lr_reaches_the_end_with_shrinking_epochs() -> None:
    sampler = InfoBatchSampler(40, num_epochs=4, delta=0.75, seed=1)
    steps = full_data_steps(40, 4, 4)  # 40: the schedule written for full data
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = ProgressLR(opt, lambda pos: 1 - pos / steps, steps, SamplerProgress(sampler))
    seen: list[float] = []

    def step() -> None:
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()

    losses = torch.linspace(0.0, 1.0, 40)  # below-mean samples exist: epochs 1 and 2 prune
    for _ in range(4):
        _train_epoch(sampler, 4, losses, step)
    assert len(seen) < steps  # pruned epochs were shorter...
    assert seen == sorted(seen, reverse=True) and seen[0] == 1.0
    assert opt.param_groups[0]["lr"] == 0.0  # ...yet the schedule reached its end
    # Calling step() again (Accelerate steps a prepared scheduler once per process) is harmless.
    scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.0


def test_sampler_progress_counts_samples_or_optimizer_steps() -> None:
    # 10 samples, batches of 3 with drop_last (3 batches), 2 batches per optimizer step.
    sampler = InfoBatchSampler(10, num_epochs=2, prune_ratio=0.0, drop_last=True, seed=0)
    steps = SamplerProgress(sampler, batch_size=3, accumulation=2)
    samples = SamplerProgress(sampler)
    assert (steps.fraction, samples.fraction) == (0.0, 0.0)  # nothing planned yet
    seen = []
    _train_epoch(
        sampler, 3, torch.ones(10), lambda: seen.append((steps.done, steps.fraction, samples()))
    )
    assert seen == [(1, 0.25, 0.15), (1, 0.25, 0.3), (2, 0.5, 0.5)]  # the dropped sample aside
    assert sampler.phase is Phase.COMPLETE
    assert steps.units(10) == 2 and samples.units(10) == 10
    with pytest.raises(TypeError, match="InfoBatchSampler"):
        SamplerProgress(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="accumulation"):
        SamplerProgress(sampler, accumulation=0)
    with pytest.raises(ValueError, match="num_epochs, not num_iterations"):
        SamplerProgress(InfoBatchSampler(10, None, num_iterations=20))


def test_sampler_progress_resumes_with_the_samplers_checkpoint() -> None:
    sampler = InfoBatchSampler(12, num_epochs=3, seed=2)
    progress = SamplerProgress(sampler, batch_size=4)
    _train_epoch(sampler, 4, torch.rand(12), lambda: None)
    indices = list(sampler)
    sampler.update(torch.rand(4), indices=indices[:4])  # mid-epoch 1
    middle = progress.fraction
    assert 1 / 3 < middle < 2 / 3
    restored = InfoBatchSampler(12, num_epochs=3, seed=2)
    restored.load_state_dict(sampler.state_dict())  # a mid-epoch checkpoint
    assert SamplerProgress(restored, batch_size=4).fraction == middle
    rest = indices[4:]
    for start in range(0, len(rest), 4):
        sampler.update(torch.rand(len(rest[start : start + 4])), indices=rest[start : start + 4])
    boundary = InfoBatchSampler(12, num_epochs=3, seed=2)
    boundary.load_state_dict(sampler.state_dict())  # an epoch-boundary checkpoint
    assert progress.fraction == SamplerProgress(boundary, batch_size=4).fraction == 2 / 3


def test_progress_lr_state_dict_holds_no_code() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = ProgressLR(opt, lambda pos: 1.0, 10, lambda: 0.5)
    state = scheduler.state_dict()
    assert not any(callable(v) for v in state.values())
    scheduler.load_state_dict(state)
    with pytest.raises(ValueError, match="lr_lambdas"):
        ProgressLR(opt, [lambda pos: 1.0, lambda pos: 1.0], 10, lambda: 0.0)
    with pytest.raises(TypeError, match="LambdaLR"):
        ProgressLR.from_lambda_lr(torch.optim.lr_scheduler.StepLR(opt, 2), 10, lambda: 0.0)  # type: ignore[arg-type]
