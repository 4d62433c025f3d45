"""Trainer runs for the Hugging Face integration tests, in-process or on spawned gloo ranks.

``run_trainer(out_dir, config)`` trains a tiny GPT-2 (or a GPT-2 classifier) with
``InfoBatchTrainer`` and returns what the tests assert on: each epoch's plan (this rank's
share), the samples that reached the loss and their per-sample losses, the score table and
the gradients left at each epoch's end, the learning rate of every step, the final weights.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from infobatch import EpochPlan, InfoBatch
from infobatch.integrations.hf import _GROUP_KEY, INDEX_KEY, InfoBatchTrainer
from infobatch.integrations.losses import PerSampleLoss

from ._common import (
    ClassificationSet,
    InstructionSet,
    Record,
    classification_collate,
    make_records,
    pad_collate,
    tiny_gpt2_config,
)

DEFAULTS: dict[str, Any] = dict(
    task="causal_lm",
    num_samples=60,
    epochs=4,
    batch=4,
    accumulation=2,
    prune_ratio=0.5,
    delta=0.75,  # epochs 0-2 may prune, epoch 3 anneals (full data)
    seed=11,
    lr=5e-3,
    optim="adamw_torch",
    save_steps=None,
    resume_from=None,
    remove_unused_columns=True,
    hf_dataset=False,
    drop_last=False,
    workers=0,
    # dropout in the causal LM: a resumed run must restore the random state to match bitwise
    dropout=0.1,
    bf16=False,
    stop_after_steps=None,
    evaluate=False,
    args={},  # further TrainingArguments
    infobatch=None,  # InfoBatch arguments: pass an InfoBatch built by the test as train_dataset
)


def plan_hash(plan: EpochPlan) -> str:
    digest = hashlib.sha256()
    digest.update(plan.order.cpu().numpy().tobytes())
    digest.update(plan.status.cpu().numpy().tobytes())
    digest.update(repr(plan.weight).encode())
    return digest.hexdigest()


class RecordingTrainer(InfoBatchTrainer):
    """Records what reached the loss; changes nothing in training."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plans: dict[int, Record] = {}
        self.trained: dict[int, list[int]] = defaultdict(list)
        self.losses: dict[int, dict[int, float]] = defaultdict(dict)
        self.unlabelled: dict[int, list[int]] = defaultdict(list)
        self.fillers: dict[int, int] = defaultdict(int)
        self._last: PerSampleLoss | None = None

    def _per_sample(self, outputs: Any, targets: dict[str, Any]) -> PerSampleLoss:
        self._last = super()._per_sample(outputs, targets)
        return self._last

    def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        group = inputs.get(_GROUP_KEY)
        indices = inputs.get(INDEX_KEY)
        result = super().compute_loss(model, inputs, *args, **kwargs)
        if group is None:
            return result
        sampler = self.infobatch.sampler
        epoch = sampler.epoch
        if epoch not in self.plans:
            plan = sampler.plan
            assert plan is not None and plan.epoch == epoch
            self.plans[epoch] = {
                "share": plan.share(sampler.rank, sampler.num_replicas).tolist(),
                "hash": plan_hash(plan),
                "kept": plan.num_kept,
            }
        if group.real == 0:
            self.fillers[epoch] += 1
            return result
        assert self._last is not None
        rows = indices[: group.real].tolist()
        self.trained[epoch].extend(rows)
        for row, loss, valid in zip(
            rows, self._last.loss[: group.real].tolist(), self._last.valid[: group.real].tolist()
        ):
            if valid:
                self.losses[epoch][row] = loss
            else:
                self.unlabelled[epoch].append(row)
        return result


def _callback_class() -> Any:
    from transformers import TrainerCallback

    class EpochEnd(TrainerCallback):  # type: ignore[misc]
        """Scores, leftover gradients and optimizer steps at each InfoBatch epoch's end."""

        def __init__(self, trainer: RecordingTrainer, stop_after: int | None) -> None:
            self.trainer = trainer
            self.stop_after = stop_after
            self.scores: dict[int, Tensor] = {}
            self.leftover: dict[int, float] = {}
            self.steps: dict[int, int] = defaultdict(int)
            self.marks: list[Record] = []  # where each step's checkpoint stands

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            epoch = self.trainer.infobatch.epoch
            self.steps[epoch] += 1
            self.marks.append(
                {
                    "name": f"checkpoint-{state.global_step}",
                    "epoch": epoch,
                    "done": len(self.trainer.trained[epoch]),
                    "epoch_steps": self.steps[epoch],
                    "global_step": state.global_step,
                    "synced": True,  # the Trainer checkpoints at optimizer steps only
                }
            )
            if self.stop_after is not None and state.global_step >= self.stop_after:
                control.should_training_stop = True

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            epoch = self.trainer.infobatch.epoch
            self.scores[epoch] = self.trainer.infobatch.scores.clone()
            grads = [
                p.grad.abs().max() for p in self.trainer.model.parameters() if p.grad is not None
            ]
            self.leftover[epoch] = float(torch.stack(grads).max()) if grads else 0.0

    return EpochEnd


def build_trainer(out_dir: Path, config: dict[str, Any]) -> tuple[RecordingTrainer, Any]:
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel, TrainingArguments

    settings = {**DEFAULTS, **config}
    torch.manual_seed(0)
    if settings["task"] == "causal_lm":
        rate = settings["dropout"]
        model: Any = GPT2LMHeadModel(
            tiny_gpt2_config(resid_pdrop=rate, embd_pdrop=rate, attn_pdrop=rate)
        )
        dataset: Any = InstructionSet(make_records(settings["num_samples"]))
        collate: Any = pad_collate
    else:
        model = GPT2ForSequenceClassification(tiny_gpt2_config(num_labels=2))
        dataset = ClassificationSet(settings["num_samples"])
        collate = classification_collate
    if settings["hf_dataset"]:
        import datasets

        rows = [
            {
                "input_ids": item["input_ids"].tolist(),
                "labels": item["labels"].tolist(),
                "text": f"record {i}",  # a column the model does not take
            }
            for i, item in enumerate(dataset)
        ]
        dataset = datasets.Dataset.from_list(rows).with_format("torch")
    args = TrainingArguments(
        output_dir=str(out_dir / "run"),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        num_train_epochs=settings["epochs"],
        per_device_train_batch_size=settings["batch"],
        gradient_accumulation_steps=settings["accumulation"],
        learning_rate=settings["lr"],
        optim=settings["optim"],
        lr_scheduler_type="linear",
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="steps" if settings["save_steps"] else "no",
        save_steps=settings["save_steps"] or 500,
        seed=settings["seed"],
        remove_unused_columns=settings["remove_unused_columns"],
        dataloader_drop_last=settings["drop_last"],
        dataloader_num_workers=settings["workers"],
        bf16=settings["bf16"],
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        eval_strategy="epoch" if settings["evaluate"] else "no",
        per_device_eval_batch_size=8,
        **settings["args"],
    )
    if settings["infobatch"] is not None:
        dataset = InfoBatch(dataset, settings["epochs"], **settings["infobatch"])
    trainer = RecordingTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset if settings["evaluate"] else None,
        data_collator=collate,
        prune_ratio=settings["prune_ratio"],
        delta=settings["delta"],
    )
    callback = _callback_class()(trainer, settings["stop_after_steps"])
    trainer.add_callback(callback)
    return trainer, callback


def run_trainer(out_dir: Path, config: dict[str, Any]) -> Record:
    """Train (or resume) once; return the record the tests check."""
    trainer, callback = build_trainer(out_dir, config)
    resume = config.get("resume_from")
    trainer.train(resume_from_checkpoint=resume)
    logs = [entry for entry in trainer.state.log_history if "learning_rate" in entry]
    return {
        "plans": dict(trainer.plans),
        "trained": dict(trainer.trained),
        "losses": dict(trainer.losses),
        "unlabelled": dict(trainer.unlabelled),
        "fillers": dict(trainer.fillers),
        "scores": dict(callback.scores),
        "leftover": dict(callback.leftover),
        "steps": dict(callback.steps),
        "marks": callback.marks,
        "learning_rates": [entry["learning_rate"] for entry in logs],
        "log_steps": [entry["step"] for entry in logs],
        "saved_fraction_logged": [entry.get("infobatch/saved_fraction") for entry in logs],
        "log_history": list(trainer.state.log_history),
        "final_lr": trainer.optimizer.param_groups[0]["lr"],
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "history": [s.as_dict(timing=False) for s in trainer.infobatch.history],
        "saved_fraction": trainer.infobatch.saved_fraction,
        "final_scores": trainer.infobatch.scores.clone(),
        "params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "world": trainer.args.world_size,
        "eval_losses": [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e],
        "rank": trainer.args.process_index,
    }


def resume_points(steps: dict[int, int]) -> dict[str, int]:
    """Global steps of a checkpoint at the end of epoch 1 and of one in the middle of epoch 2."""
    boundary = steps[0] + steps[1]
    return {"boundary": boundary, "middle": boundary + steps[2] // 2}


def run_trainer_and_resume(out_dir: Path, config: dict[str, Any]) -> Record:
    """An uninterrupted run with a checkpoint every step, then runs resumed from two of them."""
    full = run_trainer(out_dir / "full", {**config, "save_steps": 1})
    points = resume_points(full["steps"])
    resumed = {}
    for name, step in points.items():
        checkpoint = out_dir / "full" / "run" / f"checkpoint-{step}"
        resumed[name] = run_trainer(
            out_dir / f"resumed-{name}", {**config, "resume_from": str(checkpoint)}
        )
    return {"full": full, "resumed": resumed, "points": points}
