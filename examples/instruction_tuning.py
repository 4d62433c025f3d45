"""Instruction tuning a causal language model with InfoBatch, through the Hugging Face Trainer.

Alpaca-style JSON records (a list of ``{"instruction", "input", "output"}`` objects, or one
object per line). The prompt (Alpaca template) is masked out of the loss: each sample's score
and loss are the mean over its answer tokens only. Two modes with the same loss and schedule:

* ``--mode infobatch``: InfoBatch pruning (``--prune-ratio``, ``--delta``);
* ``--mode full``: all samples every epoch (the same trainer with ``prune_ratio=0``).

Examples::

    python examples/instruction_tuning.py --data alpaca_data.json --model meta-llama/Llama-3.2-1B \\
        --epochs 3 --batch-size 8 --grad-accum 4 --lr 2e-5 --bf16 --lora 16
    torchrun --nproc_per_node=4 examples/instruction_tuning.py --data alpaca_data.json ...
    python examples/instruction_tuning.py ... --resume            # from the last checkpoint

Records whose answer is cut away entirely by ``--max-length`` are dropped before training
(they have nothing to learn from; InfoBatch would give them weight 0 and no score anyway).
A ``summary.json`` with the training loss, steps, time and saved fraction is written to
``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

PROMPT = (
    "Below is an instruction that describes a task{context}. Write a response that "
    "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
    "{input_block}### Response:\n"
)
IGNORE_INDEX = -100


def read_records(path: Path) -> list[dict[str, str]]:
    """A JSON list of records, or one JSON object per line."""
    text = path.read_text(encoding="utf-8").strip()
    if text.startswith("["):
        records = json.loads(text)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for i, record in enumerate(records):
        if "instruction" not in record or "output" not in record:
            raise ValueError(f"record {i} of {path} has no 'instruction' or 'output' field")
    return records


def prompt_of(record: dict[str, str]) -> str:
    extra = record.get("input", "")
    return PROMPT.format(
        context=", paired with an input that provides further context" if extra else "",
        instruction=record["instruction"],
        input_block=f"### Input:\n{extra}\n\n" if extra else "",
    )


class InstructionDataset(Dataset[dict[str, torch.Tensor]]):
    """Tokenised records: ``input_ids`` = prompt + answer + eos, ``labels`` -100 on the prompt."""

    def __init__(self, records: list[dict[str, str]], tokenizer: Any, max_length: int) -> None:
        self.items: list[dict[str, torch.Tensor]] = []
        self.dropped = 0
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for record in records:
            prompt = tokenizer(prompt_of(record), add_special_tokens=True)["input_ids"]
            answer = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + eos
            ids = (prompt + answer)[:max_length]
            labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
            if all(label == IGNORE_INDEX for label in labels[1:]):
                self.dropped += 1  # the answer was cut away: nothing to learn from
                continue
            self.items.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


class PadCollator:
    """Right-pad to the longest sample of the batch; labels padded with -100."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = item["input_ids"], item["labels"], 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Alpaca-style JSON records")
    parser.add_argument("--model", required=True, help="model name or local path")
    parser.add_argument("--output-dir", type=Path, default=Path("instruction-tuning"))
    parser.add_argument("--mode", choices=["infobatch", "full"], default="infobatch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="per device")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--scheduler", default="cosine", help="lr_scheduler_type")
    parser.add_argument(
        "--warmup", type=float, default=0.03, help="warmup steps, or a fraction of all steps if < 1"
    )
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--delta", type=float, default=0.875)
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank (needs peft); 0 = off")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-steps", type=int, default=0, help="0 = save at epoch ends")
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from infobatch.integrations.hf import InfoBatchTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model)
    if args.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            sys.exit("--lora needs peft: pip install peft")
        model = get_peft_model(
            model, LoraConfig(r=args.lora, lora_alpha=2 * args.lora, task_type="CAUSAL_LM")
        )
    dataset = InstructionDataset(read_records(args.data), tokenizer, args.max_length)
    training_args = TrainingArguments(
        output_dir=str(args.output_dir),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        lr_scheduler_type=args.scheduler,
        warmup_steps=args.warmup,
        bf16=args.bf16,
        seed=args.seed,
        logging_steps=10,
        save_strategy="steps" if args.save_steps else "epoch",
        save_steps=args.save_steps or 500,
        report_to="none",
        use_cpu=args.cpu,
        disable_tqdm=True,
    )
    trainer = InfoBatchTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=PadCollator(tokenizer.pad_token_id),
        prune_ratio=args.prune_ratio if args.mode == "infobatch" else 0.0,
        delta=args.delta,
    )
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=True if args.resume else None)
    summary = {
        "mode": args.mode,
        "samples": len(dataset),
        "dropped_records": dataset.dropped,
        "train_loss": output.training_loss,
        "optimizer_steps": output.global_step,
        "train_seconds": round(time.perf_counter() - start, 2),
        "saved_fraction": trainer.infobatch.saved_fraction,
        "kept_per_epoch": [h.num_kept for h in trainer.infobatch.history],
    }
    if trainer.args.process_index == 0:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
