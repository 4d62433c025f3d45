"""Per-sample losses equal the models' own losses per sample; progress-driven schedules."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from infobatch import InfoBatchSampler, Phase
from infobatch.integrations.losses import causal_lm_loss, sequence_classification_loss
from infobatch.integrations.progress import ProgressLR, SamplerProgress, full_data_steps, one_cycle

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


def _momentum(optimizer: torch.optim.Optimizer) -> list[float]:
    return [
        g["betas"][0] if "betas" in g else g.get("momentum", float("nan"))
        for g in optimizer.param_groups
    ]


def _two_groups(kind: str) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Two identical optimizers with two parameter groups each (SGD with momentum, or Adam)."""

    def make() -> torch.optim.Optimizer:
        groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]} for _ in range(2)]
        if kind == "adam":
            return torch.optim.Adam(groups, lr=1.0)
        return torch.optim.SGD(groups, lr=1.0, momentum=0.9)

    return make(), make()


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"anneal_strategy": "linear"},
        {"three_phase": True, "pct_start": 0.25, "div_factor": 10.0},
        {"cycle_momentum": False, "final_div_factor": 100.0},
    ],
    ids=["cos", "linear", "three-phase", "no-momentum"],
)
def test_one_cycle_without_pruning_reproduces_one_cycle_lr_step_for_step(
    kind: str, options: dict[str, Any]
) -> None:
    total = 20  # 4 epochs of 25 samples in batches of 5: 5 steps an epoch
    sampler = InfoBatchSampler(25, num_epochs=4, prune_ratio=0.0, seed=0)
    reference_opt, opt = _two_groups(kind)
    max_lr = [0.1, 0.3]
    reference = torch.optim.lr_scheduler.OneCycleLR(reference_opt, max_lr, total, **options)
    scheduler = one_cycle(opt, max_lr, total, SamplerProgress(sampler, batch_size=5), **options)
    compared = []

    def step() -> None:
        rates = [g["lr"] for g in opt.param_groups]
        assert rates == pytest.approx([g["lr"] for g in reference_opt.param_groups], rel=1e-12)
        assert _momentum(opt) == pytest.approx(_momentum(reference_opt), rel=1e-12, nan_ok=True)
        compared.append(rates[0])
        opt.step()
        scheduler.step()
        reference_opt.step()
        reference.step()

    for _ in range(4):
        _train_epoch(sampler, 5, torch.rand(25), step)
    assert len(compared) == total and max(compared) == pytest.approx(0.1, rel=1e-12)
    divide = options.get("div_factor", 25.0) * options.get("final_div_factor", 1e4)
    finals = [lr / divide for lr in max_lr]
    assert compared[-1] == pytest.approx(finals[0], rel=1e-12)  # the last step: the final rate
    # Past the end it stays there (OneCycleLR itself would step beyond its last phase).
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(finals, rel=1e-12)
    assert not hasattr(scheduler, "total_steps")  # Accelerate would take it for a OneCycleLR


def test_one_cycle_with_pruning_reaches_the_final_rate_at_its_last_step() -> None:
    sampler = InfoBatchSampler(40, num_epochs=4, delta=0.75, seed=1)
    steps = full_data_steps(40, 4, 4)  # 40: the schedule written for full data
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0, momentum=0.9)
    plain_opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0, momentum=0.9)
    scheduler = one_cycle(opt, 0.1, steps, SamplerProgress(sampler, batch_size=4))
    plain = torch.optim.lr_scheduler.OneCycleLR(plain_opt, 0.1, steps)  # counts steps
    seen: list[float] = []
    momenta: list[float] = []

    def step() -> None:
        seen.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0]["momentum"])
        opt.step()
        scheduler.step()
        plain_opt.step()
        plain.step()

    losses = torch.linspace(0.0, 1.0, 40)  # below-mean samples exist: epochs 1 and 2 prune
    for _ in range(4):
        _train_epoch(sampler, 4, losses, step)
    final = 0.1 / 25 / 1e4
    assert len(seen) < steps  # pruned epochs were shorter...
    assert seen[0] == pytest.approx(0.1 / 25) and seen[-1] == pytest.approx(final, rel=1e-12)
    peak = seen.index(max(seen))
    assert seen[: peak + 1] == sorted(seen[: peak + 1]) and max(seen) > 0.09
    assert seen[peak:] == sorted(seen[peak:], reverse=True)  # ...yet the cycle completed
    assert min(momenta) < 0.86 and momenta[0] == momenta[-1] == pytest.approx(0.95)
    assert plain_opt.param_groups[0]["lr"] > 100 * final  # the step-counting one stopped short
    scheduler.step()  # extra steps (Accelerate's prepared scheduler) change nothing
    assert opt.param_groups[0]["lr"] == pytest.approx(final, rel=1e-12)


def test_one_cycle_state_holds_no_code_and_arguments_are_checked() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0, momentum=0.9)
    scheduler = one_cycle(opt, 0.1, 10, lambda: 0.5)
    state = scheduler.state_dict()
    assert not any(callable(v) for v in state.values())
    assert "phases" not in state and "schedule_steps" not in state
    scheduler.load_state_dict(state)
    with pytest.raises(TypeError, match=r"for a OneCycleLR use .*one_cycle\(optimizer"):
        ProgressLR.from_lambda_lr(
            torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, 10),  # type: ignore[arg-type]
            10,
            lambda: 0.0,
        )
    bad: list[tuple[dict[str, Any], str]] = [
        ({"total_steps": 0}, "total_steps should be >= 1"),
        ({"pct_start": 1.5}, r"pct_start should be in \[0, 1\]"),
        ({"anneal_strategy": "exp"}, "'cos' or 'linear'"),
        ({"max_lr": [0.1, 0.2]}, "2 values of max_lr for 1 parameter groups"),
        ({"div_factor": 0.0}, "div_factor should be > 0"),
    ]
    for change, message in bad:
        arguments: dict[str, Any] = {"max_lr": 0.1, "total_steps": 10, **change}
        with pytest.raises(ValueError, match=message):
            one_cycle(
                opt, arguments.pop("max_lr"), arguments.pop("total_steps"), lambda: 0.0, **arguments
            )
    adagrad = torch.optim.Adagrad(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="cycle_momentum=False"):
        one_cycle(adagrad, 0.1, 10, lambda: 0.0)
    one_cycle(adagrad, 0.1, 10, lambda: 0.0, cycle_momentum=False)
