"""Shared pieces of the integration tests: tiny data, tiny models, a bounded launcher.

Everything is built locally (no download): a character-level "tokenizer", instruction-style
records with the prompt masked out of the labels, GPT-2 models of a few thousand parameters
from a config with random weights.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from torch.utils.data import Dataset

VOCAB = 64
PAD = 0
IGNORE = -100
LAUNCH_TIMEOUT_S = 240  # a multi-process test that takes longer fails instead of hanging CI

Record = dict[str, Any]


def encode(text: str) -> list[int]:
    """Character-level tokenisation into ``[3, VOCAB)`` (0 = pad, 1 = bos, 2 = eos)."""
    return [3 + (ord(c) % (VOCAB - 3)) for c in text]


def make_records(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca-style records; every 9th has an empty output (nothing to learn from)."""
    generator = torch.Generator().manual_seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyz "
    records = []
    for i in range(count):
        lengths = torch.randint(2, 7, (3,), generator=generator).tolist()
        words = [
            "".join(letters[int(j)] for j in torch.randint(27, (n,), generator=generator))
            for n in lengths
        ]
        output = "" if i % 9 == 4 else words[2] * (1 + i % 3)
        records.append({"instruction": words[0], "input": words[1], "output": output})
    return records


class InstructionSet(Dataset[dict[str, Tensor]]):
    """Records tokenised as ``bos prompt output eos``; labels are -100 over the prompt."""

    def __init__(self, records: list[dict[str, str]], max_length: int = 24) -> None:
        self.items = []
        for record in records:
            prompt = [1] + encode(f"{record['instruction']}:{record['input']}=")
            answer = encode(record["output"]) + [2] if record["output"] else []
            ids = (prompt + answer)[:max_length]
            labels = ([IGNORE] * len(prompt) + answer)[:max_length]
            self.items.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.items[index]


def pad_collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Right-pad ``input_ids`` (with PAD) and ``labels`` (with -100); add ``attention_mask``."""
    length = max(len(item["input_ids"]) for item in items)
    ids = torch.full((len(items), length), PAD, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        ids[row, :n] = item["input_ids"]
        labels[row, :n] = item["labels"]
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class ClassificationSet(Dataset[dict[str, Tensor]]):
    """Short token sequences whose class is the parity of their first token."""

    def __init__(self, count: int, seed: int = 1) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(count):
            n = int(torch.randint(3, 9, (1,), generator=generator))
            ids = torch.randint(3, VOCAB, (n,), generator=generator)
            self.items.append({"input_ids": ids, "labels": torch.tensor(int(ids[0]) % 2)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.items[index]


def classification_collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    length = max(len(item["input_ids"]) for item in items)
    ids = torch.full((len(items), length), PAD, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item["input_ids"])] = item["input_ids"]
        mask[row, : len(item["input_ids"])] = 1
    labels = torch.stack([item["labels"] for item in items])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def tiny_gpt2_config(**overrides: Any) -> Any:
    from transformers import GPT2Config

    settings: dict[str, Any] = dict(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(overrides)
    return GPT2Config(**settings)


# ---------------------------------------------------------------------- launching ranks
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(
    rank: int,
    world: int,
    port: int,
    job: Callable[[Path, dict[str, Any]], Record],
    out_dir: str,
    config: dict[str, Any],
) -> None:
    torch.set_num_threads(1)
    # What torchrun sets: Accelerate (and so the Trainer) reads these to find the process group.
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=90),
    )
    try:
        result = job(Path(out_dir), config)
        torch.save(result, Path(out_dir) / f"result_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def launch(
    world: int,
    job: Callable[[Path, dict[str, Any]], Record],
    out_dir: Path,
    config: dict[str, Any] | None = None,
    timeout_s: float = LAUNCH_TIMEOUT_S,
) -> list[Record]:
    """Run ``job(out_dir, config)`` on ``world`` spawned gloo ranks, within ``timeout_s``."""
    context = mp.start_processes(
        _rank_main,
        args=(world, free_port(), job, str(out_dir), config or {}),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            raise TimeoutError(f"{world} ranks did not finish within {timeout_s} s")
    return [
        torch.load(out_dir / f"result_rank{rank}.pt", weights_only=False) for rank in range(world)
    ]


def equal_nan(a: Tensor, b: Tensor) -> bool:
    """Equal tensors, ``nan`` where the other has ``nan`` (never-scored samples)."""
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(
        a.nan_to_num(0.0), b.nan_to_num(0.0)
    )


def assert_resumed_run_equals_full_run(
    full: Record, resumed: Record, point: str, epochs: int, first_epoch: int = 2
) -> None:
    """A run resumed at ``point`` ("boundary" or "middle") trains the rest of the uninterrupted
    run: the same plans, the remaining samples of the resumed epoch, the same learning rates,
    final scores and weights."""
    first = min(resumed["plans"])
    assert first == first_epoch  # the boundary is the previous epoch's end
    for epoch in range(first, epochs):
        assert resumed["plans"][epoch]["hash"] == full["plans"][epoch]["hash"], epoch
        done = len(full["trained"][epoch]) - len(resumed["trained"][epoch])
        assert resumed["trained"][epoch] == full["trained"][epoch][done:]
        assert (done > 0) == (point == "middle" and epoch == first)
    count = len(resumed["learning_rates"])
    assert resumed["learning_rates"] == full["learning_rates"][-count:]
    if "global_step" in full:
        assert resumed["global_step"] == full["global_step"]
    assert equal_nan(resumed["final_scores"], full["final_scores"])
    for name, value in full["params"].items():
        assert torch.equal(resumed["params"][name], value), name
