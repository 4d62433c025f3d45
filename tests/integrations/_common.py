"""Shared pieces of the integration tests: tiny data, tiny models, a bounded launcher.

Everything is built locally (no download): a character-level "tokenizer", instruction-style
records with the prompt masked out of the labels, GPT-2 models of a few thousand parameters
from a config with random weights.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
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


# ---------------------------------------------------------------------- stop and relaunch
# A run checkpointed inside an epoch with 2 processes, stopped (its process group torn down)
# and relaunched as new processes that resume from the checkpoint files on disk. Every
# framework worker records, at each checkpoint it writes, a "mark": where the checkpoint
# stands ({"epoch", "done": samples of that epoch this rank had trained, "epoch_steps":
# optimizer steps of that epoch, "global_step", "name": what the framework resumes from}).
RELAUNCH_EPOCH = 1  # checkpoints inside epoch 1, a pruned epoch followed by a pruned epoch


def _resume_each(out_dir: Path, config: dict[str, Any]) -> Record:
    """On relaunched ranks: resume from each checkpoint in turn, each run built afresh."""
    job = config["job"]
    results = {}
    for name, settings in config["resumes"].items():
        (out_dir / name).mkdir(exist_ok=True)
        results[name] = job(out_dir / name, settings)
    return results


def stop_and_relaunch(
    world: int,
    job: Callable[[Path, dict[str, Any]], Record],
    out_dir: Path,
    config: dict[str, Any],
    resumes: Callable[[list[Record]], dict[str, dict[str, Any]]],
) -> tuple[list[Record], dict[str, list[Record]]]:
    """Run ``job`` uninterrupted on ``world`` ranks (checkpointing as ``config`` says), let the
    processes exit, then relaunch ``world`` new ones that resume from each checkpoint named by
    ``resumes(full_records)`` (name -> job config), one after another.

    Returns the uninterrupted run's records and, per name, the resumed run's records (one per
    rank). One relaunch for all checkpoints keeps the cost of starting processes (importing
    the framework: seconds) to two launches; each resume builds its run from the files alone.
    """
    (out_dir / "full").mkdir(parents=True)
    full = launch(world, job, out_dir / "full", config)
    settings = resumes(full)
    (out_dir / "relaunched").mkdir()
    relaunched = launch(
        world, _resume_each, out_dir / "relaunched", {"job": job, "resumes": settings}
    )
    return full, {name: [rank[name] for rank in relaunched] for name in settings}


def run_and_resume_in_process(
    job: Callable[[Path, dict[str, Any]], Record],
    out_dir: Path,
    config: dict[str, Any],
    resumes: Callable[[list[Record]], dict[str, dict[str, Any]]],
) -> tuple[list[Record], dict[str, list[Record]]]:
    """:func:`stop_and_relaunch` for one process, in this process (a control: with one
    process there is nothing to merge); each resume builds its run from the files alone."""
    (out_dir / "full").mkdir(parents=True)
    full = [job(out_dir / "full", config)]
    results = {}
    for name, settings in resumes(full).items():
        (out_dir / name).mkdir()
        results[name] = [job(out_dir / name, settings)]
    return full, results


def pick_marks(marks: list[Record], epoch: int) -> dict[str, Record]:
    """Checkpoint positions inside ``epoch`` from one rank's marks, by name.

    ``early``: right after the epoch's first optimizer step; ``middle``: the optimizer step
    halfway through; ``before-last``: the step before the epoch's last one (only the last
    accumulation group left); ``last``: the epoch's last batch trained (the epoch complete,
    the next one not planned yet). Where the framework also checkpoints between steps:
    ``in-group``, the first checkpoint inside an accumulation group after the middle step, and
    ``in-last-group``, after the next-to-last batch when it is inside the last group.
    """
    inside = [m for m in marks if m["epoch"] == epoch]
    stepped = [m for m in inside if m["synced"]]
    assert len(stepped) >= 4, f"epoch {epoch} has {len(stepped)} optimizer steps, want >= 4"
    middle = stepped[(len(stepped) - 1) // 2]
    points = {"early": stepped[0], "middle": middle, "before-last": stepped[-2], "last": inside[-1]}
    grouped = [m for m in inside[inside.index(middle) + 1 : -2] if not m["synced"]]
    if grouped:
        points["in-group"] = grouped[0]
    if not inside[-2]["synced"]:
        points["in-last-group"] = inside[-2]
    return points


def _counts(sequences: list[list[int]]) -> Counter[int]:
    total: Counter[int] = Counter()
    for sequence in sequences:
        total.update(sequence)
    return total


def assert_full_run_is_sound(full: list[Record], epochs: int, num_samples: int) -> None:
    """The uninterrupted run: one plan on every rank, each planned sample trained once per
    epoch on exactly one rank (the plan's padding aside), and pruning in the epochs after
    :data:`RELAUNCH_EPOCH`."""
    world = len(full)
    for epoch in range(epochs):
        assert len({run["plans"][epoch]["hash"] for run in full}) == 1, epoch
        kept = full[0]["plans"][epoch]["kept"]
        shares = [run["plans"][epoch]["share"] for run in full]
        trained = _counts([run["trained"][epoch] for run in full])
        assert trained == _counts(shares), epoch
        assert len(trained) == kept and sum(trained.values()) - kept < world, epoch
    kept_by_epoch = {h["epoch"]: h["num_kept"] for h in full[0]["history"]}
    assert all(kept_by_epoch[e] < num_samples for e in range(RELAUNCH_EPOCH, epochs - 1))
    assert kept_by_epoch[epochs - 1] == num_samples  # the annealing epoch


def relaunch_divergence(
    full: list[Record], resumed: list[Record], mark: list[Record], epochs: int
) -> list[str]:
    """How the relaunched run's training differs from the uninterrupted run, per epoch.

    ``mark`` is each rank's mark of the checkpoint resumed from. In each epoch from the
    checkpoint's on, the samples trained before the checkpoint (from the uninterrupted run)
    plus those the relaunched ranks trained are compared with the uninterrupted run's: samples
    trained more often than planned ("twice"), planned and never trained, trained though not
    in the uninterrupted plan, ranks whose plans differ, per-rank orders that differ, and
    optimizer steps.
    """
    first = mark[0]["epoch"]
    problems = []
    for epoch in range(first, epochs):
        trained = []
        for rank, (before, after) in enumerate(zip(full, resumed)):
            done = mark[rank]["done"] if epoch == first else 0
            trained.append(before["trained"][epoch][:done] + after["trained"].get(epoch, []))
        want = _counts([run["trained"][epoch] for run in full])
        got = _counts(trained)
        twice = sum(1 for i, c in got.items() if c > max(1, want[i]))
        never = sum(1 for i in want if got[i] == 0)
        unplanned = sum(1 for i in got if want[i] == 0)
        reordered = [r for r, run in enumerate(full) if trained[r] != run["trained"][epoch]]
        hashes = {run["plans"][epoch]["hash"] for run in resumed if epoch in run["plans"]}
        steps = [
            (mark[r]["epoch_steps"] if epoch == first else 0) + run["steps"].get(epoch, 0)
            for r, run in enumerate(resumed)
        ]
        steps_full = [run["steps"][epoch] for run in full]
        if twice or never or unplanned or reordered or len(hashes) > 1 or steps != steps_full:
            problems.append(
                f"epoch {epoch}: {twice} samples trained twice, {never} planned and never "
                f"trained, {unplanned} trained outside the uninterrupted plan (of "
                f"{len(want)} planned); ranks' plans {'differ' if len(hashes) > 1 else 'agree'}"
                f"; order differs on ranks {reordered}; optimizer steps {steps} vs {steps_full}"
            )
    return problems


def assert_relaunched_run_equals_full_run(
    full: list[Record], resumed: list[Record], mark: list[Record], epochs: int
) -> None:
    """The relaunched ranks train exactly the rest of the uninterrupted run: the same samples
    in the same order per epoch and rank, the same optimizer steps, the same final scores
    and bitwise the same final weights."""
    problems = relaunch_divergence(full, resumed, mark, epochs)
    for rank, (before, after) in enumerate(zip(full, resumed)):
        if after["global_step"] != before["global_step"]:
            problems.append(
                f"rank {rank}: {after['global_step']} optimizer steps in all, the uninterrupted "
                f"run made {before['global_step']}"
            )
        if not equal_nan(after["final_scores"], before["final_scores"]):
            problems.append(f"rank {rank}: the final score tables differ")
        differing = [
            name
            for name, value in before["params"].items()
            if not torch.equal(after["params"][name], value)
        ]
        if differing:
            problems.append(
                f"rank {rank}: final weights differ in {len(differing)} of "
                f"{len(before['params'])} tensors, by up to "
                f"{max_difference(before['params'], after['params']):.3g}"
            )
    assert not problems, "the relaunched run diverged:\n" + "\n".join(problems)
    first = mark[0]["epoch"]
    for rank, (before, after) in enumerate(zip(full, resumed)):
        assert min(after["plans"], default=first + 1) in (first, first + 1)
        for epoch in range(first, epochs):
            done = mark[rank]["done"] if epoch == first else 0
            assert after["trained"].get(epoch, []) == before["trained"][epoch][done:], epoch


def max_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max(float((a[name] - b[name]).abs().max()) for name in a)
