"""Per-sample losses equal the models' own losses per sample; progress-driven schedules."""

from __future__ import annotations

import math

import pytest
import torch

from infobatch.integrations.losses import causal_lm_loss, sequence_classification_loss
from infobatch.integrations.progress import EpochProgress, ProgressLR

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


def test_progress_lr_without_pruning_reproduces_the_step_schedule() -> None:
    """Progress in lockstep with steps: ProgressLR equals the Hugging Face schedule itself."""
    total, warmup = 20, 3
    model = torch.nn.Linear(2, 2)
    reference_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reference = transformers.get_cosine_schedule_with_warmup(reference_opt, warmup, total)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    template = transformers.get_cosine_schedule_with_warmup(opt, warmup, total)
    progress = EpochProgress(num_epochs=4)
    scheduler = ProgressLR.from_lambda_lr(template, total, lambda: progress.fraction)
    for epoch in range(4):
        progress.begin(epoch, remaining=5)
        for _ in range(5):
            assert opt.param_groups[0]["lr"] == pytest.approx(reference.get_last_lr()[0])
            progress.advance()
            opt.step()
            scheduler.step()
            reference_opt.step()
            reference.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_progress_lr_reaches_the_end_with_shrinking_epochs() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    progress = EpochProgress(num_epochs=3)
    scheduler = ProgressLR(opt, lambda pos: 1 - pos / 30, 30, lambda: progress.fraction)
    seen = []
    for epoch, steps in enumerate([10, 4, 7]):  # not known in advance, as with InfoBatch
        progress.begin(epoch, remaining=steps)
        for _ in range(steps):
            seen.append(opt.param_groups[0]["lr"])
            progress.advance()
            opt.step()
            scheduler.step()
    assert seen == sorted(seen, reverse=True) and seen[0] == 1.0
    assert opt.param_groups[0]["lr"] == 0.0
    # Calling step() again (Accelerate steps a prepared scheduler once per process) is harmless.
    scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.0


def test_progress_state_round_trip_and_mid_epoch_begin() -> None:
    progress = EpochProgress(num_epochs=4)
    progress.begin(2, remaining=8)
    progress.advance(3)
    saved = progress.state_dict()
    restored = EpochProgress(num_epochs=4)
    restored.load_state_dict(saved)
    restored.begin(2, remaining=5)  # the resumed epoch: 5 left of 8
    assert (restored.done, restored.total) == (3, 8)
    assert restored.fraction == pytest.approx((2 + 3 / 8) / 4)
    restored.advance(5)
    restored.begin(3, remaining=6)  # the next epoch starts from nothing
    assert (restored.done, restored.total) == (0, 6)
    with pytest.raises(ValueError, match="num_epochs"):
        EpochProgress(0)


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
