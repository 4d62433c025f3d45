"""GRPO runs for the TRL integration tests, in-process or on spawned gloo ranks.

``run_grpo(out_dir, config)`` trains a tiny GPT-2 with ``InfoBatchGRPOTrainer`` on letter
prompts and returns what the tests assert on: each generation batch (the pass, the prompts
gathered over ranks, the advantages before and after the rescaling, the weights), the prompts
each rank's reward function saw, every pass's plan, the learning rate of every step, the
score table and the final weights. The reward is a fixed function of the prompt and the
completion: a third of the prompts are "solved" (every completion gets 1, zero variance), the
others get 1 when the completion's first token is even, so their groups mostly vary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._common import Record, tiny_gpt2_config

DEFAULTS: dict[str, Any] = dict(
    num_prompts=24,
    epochs=4,
    per_device=4,  # completions per device and step
    generations=2,
    accumulation=1,
    iterations=1,  # TRL's num_iterations
    steps_per_generation=None,
    prune_ratio=0.5,
    delta=0.75,
    seed=5,
    lr=5e-3,
    beta=0.0,
    loss_type="grpo",
    save_steps=None,
    resume_from=None,
    stop_after_steps=None,
    lr_scheduler_type="linear",
    plain=False,  # plain GRPOTrainer instead of InfoBatch's
)

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def make_tokenizer() -> Any:
    """A character-level fast tokenizer built locally (no download), left padding."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    for char in _LETTERS + " =+":
        vocab[char] = len(vocab)
    model = models.WordLevel(vocab=vocab, unk_token="<pad>")
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    fast.padding_side = "left"
    return fast


def make_prompts(count: int) -> list[dict[str, Any]]:
    """Prompts of 2-4 letters; ``pid`` travels to the reward function as a column."""
    generator = torch.Generator().manual_seed(3)
    rows = []
    for pid in range(count):
        length = int(torch.randint(2, 5, (1,), generator=generator))
        letters = torch.randint(26, (length,), generator=generator).tolist()
        rows.append({"prompt": "".join(_LETTERS[i] for i in letters) + "=", "pid": pid})
    return rows


class _RewardLog:
    """The reward function; it records the prompts it scored (this rank's completions)."""

    __name__ = "letter_reward"

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        pids = kwargs["pid"]
        self.seen.extend(int(p) for p in pids)
        rewards = []
        for pid, completion in zip(pids, completions):
            if pid % 3 == 0:
                rewards.append(1.0)
            else:
                first = completion[:1]
                rewards.append(float(bool(first) and _LETTERS.find(first) % 2 == 0))
        return rewards


def run_grpo(out_dir: Path, config: dict[str, Any]) -> Record:
    from datasets import Dataset
    from transformers import GPT2LMHeadModel, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from infobatch.integrations.trl import InfoBatchGRPOTrainer

    cfg = {**DEFAULTS, **config}
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    model = GPT2LMHeadModel(
        tiny_gpt2_config(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=2)
    )
    dataset = Dataset.from_list(make_prompts(cfg["num_prompts"]))
    args = GRPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=cfg["per_device"],
        gradient_accumulation_steps=cfg["accumulation"],
        num_generations=cfg["generations"],
        num_iterations=cfg["iterations"],
        steps_per_generation=cfg["steps_per_generation"],
        max_completion_length=3,
        num_train_epochs=cfg["epochs"],
        learning_rate=cfg["lr"],
        lr_scheduler_type=cfg["lr_scheduler_type"],
        beta=cfg["beta"],
        loss_type=cfg["loss_type"],
        seed=cfg["seed"],
        logging_steps=1,
        save_strategy="steps" if cfg["save_steps"] else "no",
        save_steps=cfg["save_steps"] or 500,
        save_only_model=False,
        report_to=[],
        use_cpu=True,
        use_vllm=False,
        disable_tqdm=True,
        temperature=1.0,
        bf16=False,
    )
    reward = _RewardLog()
    batches: list[Record] = []
    lrs: list[float] = []
    plans: dict[int, Tensor] = {}

    class Recording(GRPOTrainer):  # type: ignore[misc]
        """Sits under InfoBatch in the MRO: records TRL's own (unscaled) advantages."""

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> Any:
            output = super()._generate_and_score_completions(inputs)
            if self.model.training:
                batches.append({"pids": [row["pid"] for row in inputs]})
                batches[-1]["raw"] = output["advantages"].detach().clone()
            return output

    class Steps(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            lrs.append(float(trainer.lr_scheduler.get_last_lr()[0]))
            stop = cfg["stop_after_steps"]
            if stop is not None and state.global_step >= stop:
                control.should_training_stop = True
                control.should_save = True

    common: dict[str, Any] = dict(
        model=model,
        args=args,
        reward_funcs=reward,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Steps()],
    )
    if cfg["plain"]:
        trainer = Recording(**common)
    else:

        class Trainer(InfoBatchGRPOTrainer, Recording):  # type: ignore[misc]
            def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> Any:
                sampler = self.infobatch.sampler
                output = super()._generate_and_score_completions(inputs)
                if self.model.training:
                    plan = sampler.plan
                    assert plan is not None
                    plans[plan.epoch] = plan.order.clone()
                    prompts, rewards = self._infobatch_block
                    batches[-1].update(
                        epoch=plan.epoch,
                        prompts=prompts.clone(),
                        rewards=rewards.clone(),
                        weights=self.infobatch.weights_of(prompts),
                        scaled=output["advantages"].detach().clone(),
                        step=self.state.global_step,
                    )
                return output

        trainer = Trainer(**common, prune_ratio=cfg["prune_ratio"], delta=cfg["delta"])
    trainer.train(resume_from_checkpoint=cfg["resume_from"])
    record: Record = {
        "batches": batches,
        "seen": reward.seen,
        "lrs": lrs,
        "plans": plans,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "weights": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "logs": list(trainer.state.log_history),
        "rank": trainer.accelerator.process_index,
    }
    if not cfg["plain"]:
        pruning = trainer.infobatch
        record["scores"] = pruning.sampler.scores.clone()
        record["history"] = list(pruning.history)
        record["rollouts"] = pruning.rollouts
        record["left_out"] = pruning.left_out
    return record
