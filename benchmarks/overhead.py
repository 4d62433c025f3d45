"""InfoBatch's overhead per sample pass, in each integration (issue 15, item 1).

For each integration the same loop runs with and without InfoBatch at equal sample passes:
InfoBatch with ``prune_ratio=0`` keeps every sample with weight 1, so both sides make the same
forward/backward passes and optimizer steps with the same learning rates, from the same
initialisation (pair ``i`` seeds both sides with ``i``).

- ``plain``: :class:`infobatch.experiment.Training` (the loop of ``train()``: SGD, one-cycle
  schedule), a shuffled ``DataLoader`` and ``loss.mean()`` against the README's three lines,
  on MNIST (the ``mnist`` CNN) or MNIST-1D when the MNIST folder is missing;
- ``trainer``: ``transformers.Trainer`` (the model's own mean loss) against
  ``InfoBatchTrainer`` on a tiny Llama built from a config (random weights, no download);
- ``accelerate``: an ``Accelerator`` loop, ``accelerator.prepare(loader)`` and
  ``loss.mean()`` against ``prepare_loader``, ``dataset.update`` and a ``ProgressLR`` schedule;
- ``lightning``: a ``LightningModule`` without InfoBatch against one with
  ``InfoBatchCallback`` (its loader, schedule and epoch statistics).

Interleaving: the two runs of a pair run at once in two threads that take turns every few
batches (``--interleave lockstep``, the default: both sides see the same machine load, each
side's clocks count its own turns only, CPU time per thread), or one after the other
(``--interleave runs``); the side that starts alternates between pairs. ``--calibrate`` runs
the baseline on both sides (A/A): the method's own spread.

Printed per integration: the median over pairs of the time ratio per sample pass (InfoBatch /
baseline; wall-clock and CPU time, with min-max), the InfoBatch side's time accounting
(planning, ``update()``, waiting for batches, from ``EpochStats``) in ms per batch, and targeted
micro-measurements of what the integration adds (the loader wrapper and collate alone,
per-sample loss against the built-in one on the same logits, the schedule's step, logging,
filler micro-batches). One JSON line with everything at the end (``--output`` writes it)::

    python benchmarks/overhead.py --integration all --pairs 11 --threads 1 \
        --output benchmarks/results/overhead.json                            # about 5 min
    python benchmarks/overhead.py --integration all --quick --pairs 1       # seconds each
    python benchmarks/overhead.py --integration trainer --pairs 1 --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import hashlib
import json
import logging
import math
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from infobatch import InfoBatch
from infobatch.experiment import (
    Splits,
    TrainConfig,
    Training,
    build_model,
    load_mnist,
    load_mnist1d,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
INTEGRATIONS = ("plain", "trainer", "accelerate", "lightning")
MODES = ("baseline", "infobatch")
Run = dict[str, Any]  # one measured run (see RunClock.result)
Micro = dict[str, dict[str, Any]]


# ------------------------------------------------------------------------------------ clocks
#: ``() -> (wall seconds, CPU seconds)`` of one side of a pair, from any fixed origin.
SideClock = Callable[[], "tuple[float, float]"]
Tick = Callable[[], None]


def process_clock() -> tuple[float, float]:
    """The process's wall-clock and CPU time (a side that runs alone)."""
    return time.perf_counter(), time.process_time()


def no_tick() -> None:
    """A side that runs alone hands nothing over."""


class GcClock:
    """Seconds spent in Python's garbage collector, per thread (a collection is charged to
    the thread whose allocation triggered it, whatever garbage it frees)."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}
        self.started: dict[int, float] = {}
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        thread, now = threading.get_ident(), time.perf_counter()
        if phase == "start":
            self.started[thread] = now
        elif thread in self.started:
            elapsed = now - self.started.pop(thread)
            self.seconds[thread] = self.seconds.get(thread, 0.0) + elapsed

    def now(self) -> float:
        """This thread's collector seconds so far."""
        return self.seconds.get(threading.get_ident(), 0.0)


GC_CLOCK = GcClock()


class RunClock:
    """Wall-clock and CPU time of one run and of its training loop, on a side's clock."""

    def __init__(self, clock: SideClock = process_clock) -> None:
        self.clock = clock
        self.start = (0.0, 0.0)
        self.seconds = self.cpu_seconds = math.nan
        self.loop_start = (math.nan, math.nan)
        self.loop_seconds = self.loop_cpu_seconds = math.nan
        self.gc_start = self.gc_seconds = 0.0

    def __enter__(self) -> RunClock:
        gc.collect()
        self.start = self.clock()
        self.gc_start = GC_CLOCK.now()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu = self.clock()
        self.seconds, self.cpu_seconds = wall - self.start[0], cpu - self.start[1]
        self.gc_seconds = GC_CLOCK.now() - self.gc_start

    def loop_started(self) -> None:
        """The framework's training loop starts (after its set-up)."""
        self.loop_start = self.clock()

    def loop_ended(self) -> None:
        """The framework's training loop ends (before its tear-down)."""
        wall, cpu = self.clock()
        self.loop_seconds = wall - self.loop_start[0]
        self.loop_cpu_seconds = cpu - self.loop_start[1]

    def result(self, **values: Any) -> Run:
        """The run's times (the loop's default to the whole call's) with ``values``."""
        loop = not math.isnan(self.loop_seconds)
        return {
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "loop_seconds": self.loop_seconds if loop else self.seconds,
            "loop_cpu_seconds": self.loop_cpu_seconds if loop else self.cpu_seconds,
            "gc_s": self.gc_seconds,
            **values,
        }


class Lockstep:
    """Runs a pair's two sides at once in two threads, one at a time, handing over every
    ``every`` ticks (batches or optimizer steps, at points where no framework state is shared
    mid-step), so both sides see the same machine load. Each side's clock counts only its own
    turns: wall-clock from ``perf_counter``, CPU time from ``thread_time``; the hand-overs are
    on neither."""

    def __init__(self, every: int, first: str) -> None:
        self.every = every
        self.turn = first
        self.condition = threading.Condition()
        self.done: set[str] = set()
        self.ticks = dict.fromkeys(MODES, 0)
        self.spent = {mode: [0.0, 0.0] for mode in MODES}  # closed turns: wall, CPU
        self.opened = {mode: (0.0, 0.0) for mode in MODES}
        self.switches = 0

    def clock(self, mode: str) -> SideClock:
        """``mode``'s clock (read from its own thread, during its turn)."""

        def now() -> tuple[float, float]:
            wall, cpu = self.opened[mode]
            spent = self.spent[mode]
            return spent[0] + time.perf_counter() - wall, spent[1] + time.thread_time() - cpu

        return now

    def ticker(self, mode: str) -> Tick:
        """What ``mode``'s loop calls once per batch or optimizer step."""

        def tick() -> None:
            self.ticks[mode] += 1
            if self.ticks[mode] % self.every == 0:
                self._hand_over(mode)

        return tick

    def _other(self, mode: str) -> str:
        return MODES[1] if mode == MODES[0] else MODES[0]

    def _open(self, mode: str) -> None:
        self.opened[mode] = (time.perf_counter(), time.thread_time())

    def _close(self, mode: str) -> None:
        wall, cpu = self.opened[mode]
        self.spent[mode][0] += time.perf_counter() - wall
        self.spent[mode][1] += time.thread_time() - cpu

    def _hand_over(self, mode: str) -> None:
        self._close(mode)
        other = self._other(mode)
        with self.condition:
            if other not in self.done:
                self.turn = other
                self.switches += 1
                self.condition.notify_all()
                self.condition.wait_for(lambda: self.turn == mode)
        self._open(mode)

    def _body(self, mode: str, work: Callable[[], Run], out: dict[str, Any]) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.turn == mode)
        self._open(mode)
        try:
            out[mode] = work()
        except BaseException as error:  # re-raised in the main thread
            out[f"{mode}_error"] = error
        finally:
            self._close(mode)
            with self.condition:
                self.done.add(mode)
                self.turn = self._other(mode)
                self.condition.notify_all()

    def run(self, work: dict[str, Callable[[], Run]]) -> dict[str, Run]:
        """Run both sides (``{mode: work}``) to their end; their results."""
        out: dict[str, Any] = {}
        threads = [
            threading.Thread(target=self._body, args=(mode, job, out), name=f"overhead-{mode}")
            for mode, job in work.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for mode in MODES:
            if f"{mode}_error" in out:
                raise out[f"{mode}_error"]
        return {mode: out[mode] for mode in MODES}


def timed_loop(batches: Iterable[Any], waits: list[float]) -> Iterator[Any]:
    """Yield ``batches``' items, appending each ``next()``'s wall time to ``waits`` (the
    baseline's counterpart of ``dataset.timed(loader)``, so both sides time their loop)."""
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        waits.append(time.perf_counter() - started)
        yield batch


def infobatch_accounting(dataset: InfoBatch[Any]) -> dict[str, float]:
    """Seconds of the InfoBatch side's time accounting summed over its epochs."""
    history = dataset.history
    return {
        "planning_s": sum(s.planning_seconds for s in history),
        "update_s": sum(s.update_seconds for s in history),
        "data_s": sum(s.data_seconds for s in history),  # nan when the loop was not timed
        "epoch_s": sum(s.epoch_seconds for s in history),
        "kept": sum(s.num_kept for s in history),
    }


def compare(
    baseline: Callable[[], Any],
    infobatch: Callable[[], Any],
    *,
    repeats: int,
    units: int,
    unit: str,
) -> dict[str, Any]:
    """Time two blocks of work interleaved ``repeats`` times (order alternating); each block
    does ``units`` units of ``unit``. Medians in ms per unit, wall-clock and CPU time."""
    times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    blocks = {"baseline": baseline, "infobatch": infobatch}
    for repeat in range(repeats):
        for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
            started, cpu_started = time.perf_counter(), time.process_time()
            blocks[mode]()
            times[mode].append((time.perf_counter() - started, time.process_time() - cpu_started))
    result: dict[str, Any] = {"unit": unit}
    for mode in MODES:
        result[f"{mode}_ms"] = 1e3 * statistics.median(t[0] for t in times[mode]) / units
        result[f"{mode}_cpu_ms"] = 1e3 * statistics.median(t[1] for t in times[mode]) / units
    result["difference_ms"] = result["infobatch_ms"] - result["baseline_ms"]
    result["difference_cpu_ms"] = result["infobatch_cpu_ms"] - result["baseline_cpu_ms"]
    return result


def loss_micro(
    baseline: Callable[[Tensor], Tensor],
    infobatch: Callable[[Tensor], Tensor],
    logits: Tensor,
    *,
    repeats: int,
    calls: int,
) -> dict[str, Any]:
    """Forward and backward of two losses of the same (detached) logits, ms per batch."""
    leaf = logits.detach().requires_grad_(True)

    def block(fn: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                fn(leaf).backward()  # type: ignore[no-untyped-call]
                leaf.grad = None

        return run

    return compare(
        block(baseline), block(infobatch), repeats=repeats, units=calls, unit="ms per batch"
    )


def loader_and_loss_micro(
    plain: Iterable[Any],
    pruned: Callable[[], Iterable[Any]],
    units: int,
    logits: Tensor,
    targets: Tensor,
    repeats: int,
) -> Micro:
    """The loader alone (``plain`` against the InfoBatch side's ``pruned()`` batches, no
    ``update()``: it changes nothing) and the per-sample cross-entropy against the mean one."""
    return {
        "loader": compare(
            lambda: sum(1 for _ in plain),
            lambda: sum(1 for _ in pruned()),
            repeats=repeats,
            units=units,
            unit="ms per batch",
        ),
        "per_sample_loss": loss_micro(
            lambda z: F.cross_entropy(z, targets),
            lambda z: per_sample_ce(z, targets),
            logits,
            repeats=repeats,
            calls=50,
        ),
    }


def per_sample_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """What the InfoBatch side computes: per-sample cross-entropy, weighted (weights 1) and
    averaged as ``update()`` does (one dot product; its bookkeeping is timed in ``update_s``)."""
    losses = F.cross_entropy(logits, targets, reduction="none")
    return torch.dot(losses, torch.full_like(losses, 1.0 / losses.shape[0]))


def update_paths(num_samples: int, batch_size: int, repeats: int) -> dict[str, Any]:
    """``update()`` per batch in plan order (``update(loss)``) against the explicit form
    ``update(loss, indices=, valid=)`` the Trainer integration calls, over one epoch of losses
    that require grad (medians of ``repeats``, interleaved; ms per update)."""
    times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for repeat in range(repeats):
        for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
            samples = TensorDataset(torch.arange(num_samples))
            dataset = InfoBatch(samples, 1, 0.0, seed=0, batch_size=batch_size)
            loader = DataLoader(dataset, batch_size=batch_size, sampler=dataset.sampler)
            wall = cpu = 0.0
            calls = 0
            for (indices,) in loader:
                loss = torch.rand(len(indices), requires_grad=True) * 1.0
                valid = torch.ones(len(indices), dtype=torch.bool)
                started, cpu_started = time.perf_counter(), time.process_time()
                if mode == "baseline":
                    dataset.update(loss)
                else:
                    dataset.update(loss, indices=indices, valid=valid)
                wall += time.perf_counter() - started
                cpu += time.process_time() - cpu_started
                calls += 1
            times[mode].append((wall / calls, cpu / calls))
    result: dict[str, Any] = {
        "unit": "ms per update() call",
        "note": "baseline column: update(loss) in plan order; InfoBatch column: "
        "update(loss, indices=, valid=) as InfoBatchTrainer calls it (out of the loop: "
        "warm caches, so cheaper than in a training step)",
    }
    for mode in MODES:
        result[f"{mode}_ms"] = 1e3 * statistics.median(t[0] for t in times[mode])
        result[f"{mode}_cpu_ms"] = 1e3 * statistics.median(t[1] for t in times[mode])
    result["difference_ms"] = result["infobatch_ms"] - result["baseline_ms"]
    result["difference_cpu_ms"] = result["infobatch_cpu_ms"] - result["baseline_cpu_ms"]
    return result


def source_digest() -> dict[str, str]:
    """What was measured: the git commit and a digest of ``src/infobatch`` as it is now
    (other edits may be uncommitted)."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "src" / "infobatch").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode())
        digest.update(path.read_bytes())
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "unknown"
    return {"git_head": head, "src_sha256": digest.hexdigest()[:16]}


# -------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Sizes:
    """What one integration trains (each side the same)."""

    num_train: int
    batch_size: int
    epochs: int
    accumulation: int = 1
    seq_len: int = 0  # trainer only
    micro_repeats: int = 7
    switch_every: int = 8  # lockstep: ticks (batches; trainer: optimizer steps) per turn


def load_images(mnist_dir: str, num_train: int) -> Splits:
    """``num_train`` MNIST training images, or MNIST-1D samples when the folder is missing."""
    try:
        return load_mnist(mnist_dir).subset(num_train=num_train, num_test=10)
    except FileNotFoundError:
        total = 10 * math.ceil(num_train / 10)
        return load_mnist1d(num_train=total, num_test=10).subset(num_train=num_train)


class PatternSequences(Dataset[dict[str, Tensor]]):
    """Token sequences ``(a + b t) mod vocab``: a causal LM learns them; every token a label."""

    def __init__(self, count: int, length: int, vocab: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        start = torch.randint(vocab, (count, 1), generator=generator)
        step = torch.randint(1, 17, (count, 1), generator=generator)
        self.ids = (start + step * torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ids = self.ids[index]
        return {"input_ids": ids, "labels": ids}


# ------------------------------------------------------------------------------------- plain
class PlainBench:
    """:class:`infobatch.experiment.Training` (the loop of ``train()``): a plain
    ``DataLoader`` against the three lines."""

    name = "plain"

    def __init__(self, sizes: Sizes, mnist_dir: str) -> None:
        self.sizes = sizes
        self.splits = load_images(mnist_dir, sizes.num_train)

    def describe(self) -> str:
        s = self.sizes
        return (
            f"infobatch.experiment.train on {self.splits.name} ({s.num_train} samples, the "
            f"{self.splits.name} CNN), batch {s.batch_size}, {s.epochs} epochs"
        )

    def run(
        self, mode: str, seed: int, clock: SideClock = process_clock, tick: Tick = no_tick
    ) -> Run:
        s = self.sizes
        run = Training(
            self.splits,
            TrainConfig(epochs=s.epochs, batch_size=s.batch_size),
            seed=seed,
            infobatch=mode == "infobatch",
            prune_ratio=0.0,
        )
        forwards = [0]

        def count(module: nn.Module, args: Any) -> None:
            forwards[0] += 1
            tick()

        run.model.register_forward_pre_hook(count)
        with RunClock(clock) as timer:
            while not run.done:
                run.run_epoch()
        accounting = run.time_accounting
        return timer.result(
            sample_passes=sum(log.num_kept for log in run.logs),
            batches=forwards[0],
            steps=forwards[0],
            final_lr=run.optimizer.param_groups[0]["lr"],
            planning_s=accounting["planning"] if mode == "infobatch" else 0.0,
            update_s=accounting["update"] if mode == "infobatch" else 0.0,
            data_s=accounting["data"],
        )

    def micro(self) -> Micro:
        s, splits = self.sizes, self.splits
        train_set = TensorDataset(splits.x_train, splits.y_train)
        plain = DataLoader(
            train_set,
            batch_size=s.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )
        dataset = InfoBatch(train_set, s.epochs, 0.0, seed=0, batch_size=s.batch_size)
        pruned = DataLoader(dataset, batch_size=s.batch_size, sampler=dataset.sampler)
        batches = len(plain)
        model = build_model(splits.name, 0)
        x, y = splits.x_train[: s.batch_size], splits.y_train[: s.batch_size]
        return loader_and_loss_micro(
            plain, lambda: dataset.timed(pruned), batches, model(x), y, s.micro_repeats
        )


# ----------------------------------------------------------------------------------- trainer
class TrainerBench:
    """``transformers.Trainer`` against ``InfoBatchTrainer`` on a tiny Llama (CPU)."""

    name = "trainer"
    vocab = 256

    def __init__(self, sizes: Sizes) -> None:
        import transformers

        transformers.logging.set_verbosity_error()
        self.sizes = sizes
        self.dataset = PatternSequences(sizes.num_train, sizes.seq_len, self.vocab)
        self.folder = tempfile.TemporaryDirectory(prefix="infobatch-overhead-")
        self.last: dict[str, Any] = {}  # the last run's trainer per mode (for the micro)

    def describe(self) -> str:
        s = self.sizes
        return (
            f"Trainer vs InfoBatchTrainer, Llama (hidden 64, 2 layers, vocab {self.vocab}) from "
            f"a config, {s.num_train} sequences of {s.seq_len} tokens, batch {s.batch_size}, "
            f"accumulation {s.accumulation}, {s.epochs} epochs, AdamW, linear schedule"
        )

    def model(self, seed: int) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=self.sizes.seq_len,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model: nn.Module = LlamaForCausalLM(config)
        return model

    def trainer(
        self, mode: str, seed: int, clock: RunClock | None = None, tick: Tick = no_tick
    ) -> Any:
        """A Trainer of ``mode`` (built outside the timed call), its rows counted."""
        from transformers import (
            PrinterCallback,
            Trainer,
            TrainerCallback,
            TrainingArguments,
            default_data_collator,
        )

        from infobatch.integrations.hf import InfoBatchTrainer

        s = self.sizes
        args = TrainingArguments(
            output_dir=self.folder.name,
            num_train_epochs=s.epochs,
            per_device_train_batch_size=s.batch_size,
            gradient_accumulation_steps=s.accumulation,
            learning_rate=1e-3,
            lr_scheduler_type="linear",
            logging_strategy="steps",
            logging_steps=10,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            disable_tqdm=True,
            seed=seed,
        )
        model = self.model(seed)
        rows = [0, 0]  # rows through forward, forward calls

        def count(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            rows[0] += int(kwargs["input_ids"].shape[0])
            rows[1] += 1

        model.register_forward_pre_hook(count, with_kwargs=True)
        common = dict(
            model=model,
            args=args,
            train_dataset=self.dataset,
            data_collator=default_data_collator,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = (
                InfoBatchTrainer(**common, prune_ratio=0.0, seed=seed)
                if mode == "infobatch"
                else Trainer(**common)
            )
        trainer.remove_callback(PrinterCallback)
        if clock is not None:
            timer = clock

            class Clock(TrainerCallback):  # type: ignore[misc]
                def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
                    timer.loop_started()

                def on_train_end(self, *args: Any, **kwargs: Any) -> None:
                    timer.loop_ended()

                def on_step_end(self, *args: Any, **kwargs: Any) -> None:
                    tick()  # between optimizer steps: no accumulation group open

            trainer.add_callback(Clock())
        trainer._overhead_rows = rows
        return trainer

    def run(
        self, mode: str, seed: int, clock: SideClock = process_clock, tick: Tick = no_tick
    ) -> Run:
        timer = RunClock(clock)
        trainer = self.trainer(mode, seed, timer, tick)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with timer:
                trainer.train()
        self.last[mode] = trainer
        rows, forwards = trainer._overhead_rows
        accounting: dict[str, float] = (
            infobatch_accounting(trainer.infobatch)
            if mode == "infobatch"
            else {"planning_s": 0.0, "update_s": 0.0, "data_s": math.nan}
        )
        kept = accounting.pop("kept", rows)
        return timer.result(
            sample_passes=rows,
            batches=forwards,
            steps=trainer.state.global_step,
            final_lr=trainer.optimizer.param_groups[0]["lr"],
            fillers=int(rows - kept),
            logs=len(trainer.state.log_history),
            **accounting,
        )

    def micro(self) -> Micro:
        s = self.sizes
        repeats = s.micro_repeats
        if not self.last:
            for mode in MODES:
                self.run(mode, 0)
        base, ib = self.last["baseline"], self.last["infobatch"]
        model = base.model
        batch = default_collate_rows(self.dataset, s.batch_size)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits
        labels = batch["labels"]
        from infobatch.integrations.losses import causal_lm_loss

        def builtin(z: Tensor) -> Tensor:
            return model.loss_function(logits=z, labels=labels, vocab_size=self.vocab)  # type: ignore[no-any-return]

        def per_sample(z: Tensor) -> Tensor:
            losses = causal_lm_loss(z, labels).loss
            return torch.dot(losses, torch.full_like(losses, 1.0 / losses.shape[0]))

        device = torch.device("cpu")

        def groups(trainer: Any) -> Callable[[], int]:
            """Iterate one epoch of the trainer's loader in accumulation groups."""

            def run() -> int:
                loader = trainer.get_train_dataloader()
                iterator = iter(loader)
                count = 0
                while True:
                    group, _ = trainer.get_batch_samples(iterator, s.accumulation, device)
                    if not group:
                        return count
                    count += len(group)

            return run

        fresh = {mode: self.trainer(mode, 0) for mode in MODES}
        batches = groups(fresh["baseline"])()
        micro: Micro = {
            "per_sample_loss": loss_micro(builtin, per_sample, logits, repeats=repeats, calls=20),
            "loader_and_collate": compare(
                groups(fresh["baseline"]),
                groups(fresh["infobatch"]),
                repeats=repeats,
                units=batches,
                unit="ms per batch",
            ),
        }
        logs = {"loss": 1.0, "grad_norm": 1.0, "learning_rate": 1e-3}
        micro["log"] = compare(
            lambda: [base.log(dict(logs)) for _ in range(50)],
            lambda: [ib.log(dict(logs)) for _ in range(50)],
            repeats=repeats,
            units=50,
            unit="ms per log() call",
        )
        micro["scheduler_step"] = compare(
            lambda: [base.lr_scheduler.step() for _ in range(200)],
            lambda: [ib.lr_scheduler.step() for _ in range(200)],
            repeats=repeats,
            units=200,
            unit="ms per optimizer step",
        )
        ib_callbacks = [
            c for c in ib.callback_handler.callbacks if type(c).__name__ == "_EpochCallback"
        ]
        state, control = ib.state, ib.control
        micro["step_end_callback"] = compare(
            lambda: None,
            lambda: [ib_callbacks[0].on_step_end(ib.args, state, control) for _ in range(200)],
            repeats=repeats,
            units=200,
            unit="ms per optimizer step",
        )
        one_row = {k: v[:1] for k, v in batch.items()}

        def filler() -> None:
            for _ in range(5):
                model(**one_row).loss.backward()
            model.zero_grad(set_to_none=True)

        micro["filler_micro_batch"] = compare(
            lambda: None, filler, repeats=repeats, units=5, unit="ms per filler micro-batch"
        )
        micro["update_explicit_vs_plan_order"] = update_paths(s.num_train, s.batch_size, repeats)
        return micro


def default_collate_rows(dataset: PatternSequences, rows: int) -> dict[str, Tensor]:
    """The first ``rows`` items of ``dataset`` as one batch."""
    from transformers import default_data_collator

    batch: dict[str, Tensor] = default_data_collator([dataset[i] for i in range(rows)])
    return batch


# -------------------------------------------------------------------------------- accelerate
class AccelerateBench:
    """An ``Accelerator`` loop: ``prepare(loader)`` and ``loss.mean()`` against
    ``prepare_loader``, ``dataset.update`` and ``ProgressLR``."""

    name = "accelerate"

    def __init__(self, sizes: Sizes, mnist_dir: str) -> None:
        self.sizes = sizes
        self.splits = load_images(mnist_dir, sizes.num_train)
        self.train_set = TensorDataset(self.splits.x_train, self.splits.y_train)

    def describe(self) -> str:
        s = self.sizes
        return (
            f"Accelerator(cpu=True) loop on {self.splits.name} ({s.num_train} samples, CNN), "
            f"batch {s.batch_size}, {s.epochs} epochs, SGD, linear schedule per step"
        )

    @property
    def total_steps(self) -> int:
        s = self.sizes
        return s.epochs * math.ceil(s.num_train / s.batch_size)

    def parts(self, mode: str, seed: int) -> tuple[Any, Any, InfoBatch[Any] | None]:
        """The accelerator, the prepared loader and the InfoBatch dataset (or ``None``)."""
        from accelerate import Accelerator

        from infobatch.integrations.accelerate import prepare_loader

        s = self.sizes
        accelerator = Accelerator(cpu=True)
        if mode == "infobatch":
            dataset = InfoBatch(self.train_set, s.epochs, 0.0, seed=seed, batch_size=s.batch_size)
            raw = DataLoader(dataset, batch_size=s.batch_size, sampler=dataset.sampler)
            return accelerator, prepare_loader(accelerator, raw), dataset
        raw = DataLoader(
            self.train_set,
            batch_size=s.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        return accelerator, accelerator.prepare(raw), None

    def run(
        self, mode: str, seed: int, clock: SideClock = process_clock, tick: Tick = no_tick
    ) -> Run:
        from infobatch.integrations.accelerate import log_stats
        from infobatch.integrations.progress import ProgressLR, SamplerProgress

        s = self.sizes
        accelerator, loader, dataset = self.parts(mode, seed)
        model = build_model(self.splits.name, seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        total = self.total_steps

        def factor(position: float) -> float:
            return max(0.0, 1.0 - position / total)

        scheduler: Any
        if dataset is not None:
            progress = SamplerProgress(dataset, batch_size=s.batch_size)
            scheduler = ProgressLR(optimizer, factor, total, progress)
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        passes = batches = steps = 0
        waits: list[float] = []
        with RunClock(clock) as timer:
            for epoch in range(s.epochs):
                loader.set_epoch(epoch)
                source = dataset.timed(loader) if dataset is not None else timed_loop(loader, waits)
                for x, y in source:
                    with accelerator.accumulate(model):
                        logits = model(x)
                        if dataset is not None:
                            loss = dataset.update(F.cross_entropy(logits, y, reduction="none"))
                        else:
                            loss = F.cross_entropy(logits, y)
                        accelerator.backward(loss)
                        steps += int(accelerator.sync_gradients)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad()
                    passes += int(y.shape[0])
                    batches += 1
                    tick()
                if dataset is not None:
                    log_stats(accelerator, dataset)
        accounting: dict[str, float] = (
            infobatch_accounting(dataset)
            if dataset is not None
            else {"planning_s": 0.0, "update_s": 0.0, "data_s": sum(waits)}
        )
        accounting.pop("kept", None)
        return timer.result(
            sample_passes=passes,
            batches=batches,
            steps=steps,
            final_lr=optimizer.param_groups[0]["lr"],
            **accounting,
        )

    def micro(self) -> Micro:
        from infobatch.integrations.accelerate import log_stats
        from infobatch.integrations.progress import ProgressLR, SamplerProgress

        s = self.sizes
        repeats = s.micro_repeats
        accelerator, plain, _ = self.parts("baseline", 0)
        _, pruned, dataset = self.parts("infobatch", 0)
        assert dataset is not None
        batches = len(plain)
        model = build_model(self.splits.name, 0)
        x, y = self.splits.x_train[: s.batch_size], self.splits.y_train[: s.batch_size]
        micro = loader_and_loss_micro(
            plain, lambda: dataset.timed(pruned), batches, model(x), y, repeats
        )
        total = self.total_steps
        optimizers = [torch.optim.SGD(build_model(self.splits.name, 0).parameters(), lr=0.05)]
        optimizers.append(torch.optim.SGD(build_model(self.splits.name, 0).parameters(), lr=0.05))
        lambda_lr = accelerator.prepare(
            torch.optim.lr_scheduler.LambdaLR(optimizers[0], lambda p: 1.0 - p / (10 * total))
        )
        progress_lr = accelerator.prepare(
            ProgressLR(
                optimizers[1],
                lambda p: 1.0 - p / (10 * total),
                total,
                SamplerProgress(dataset, batch_size=s.batch_size),
            )
        )
        micro["scheduler_step"] = compare(
            lambda: [lambda_lr.step() for _ in range(200)],
            lambda: [progress_lr.step() for _ in range(200)],
            repeats=repeats,
            units=200,
            unit="ms per optimizer step",
        )
        run_set = self._trained_epoch()
        micro["log_stats"] = compare(
            lambda: None,
            lambda: log_stats(accelerator, run_set),
            repeats=repeats,
            units=1,
            unit="ms per epoch",
        )
        return micro

    def _trained_epoch(self) -> InfoBatch[Any]:
        """A dataset with one trained epoch (for timing ``log_stats``)."""
        s = self.sizes
        dataset = InfoBatch(self.train_set, 1, 0.0, seed=0, batch_size=s.batch_size)
        for _x, y in DataLoader(dataset, batch_size=s.batch_size, sampler=dataset.sampler):
            dataset.update(torch.ones(y.shape[0]))
        return dataset


# --------------------------------------------------------------------------------- lightning
def _lightning_classes() -> tuple[type, type, type]:
    """The LightningModule and the two callbacks (Lightning is imported only when needed)."""
    import lightning as L

    from infobatch.integrations.lightning import InfoBatchCallback

    class Module(L.LightningModule):  # type: ignore[misc]
        """The CNN; with InfoBatch, the lines of ``lightning.py``'s module docstring."""

        def __init__(self, bench: LightningBench, mode: str, seed: int) -> None:
            super().__init__()
            self.bench, self.mode, self.seed = bench, mode, seed
            self.net = build_model(bench.splits.name, seed)
            self.order = torch.Generator().manual_seed(seed)  # one stream over the reloads
            self.infobatch: InfoBatch[Any] | None = None
            self.passes = self.calls = 0

        def setup(self, stage: str) -> None:
            s = self.bench.sizes
            if self.mode == "infobatch":
                self.infobatch = InfoBatch(
                    self.bench.train_set, s.epochs, 0.0, seed=self.seed, batch_size=s.batch_size
                )

        def train_dataloader(self) -> Any:
            size = self.bench.sizes.batch_size
            if self.infobatch is not None:
                loader = DataLoader(self.infobatch, batch_size=size, sampler=self.infobatch.sampler)
                return InfoBatchCallback.find(self.trainer).loader(loader)
            return DataLoader(
                self.bench.train_set, batch_size=size, shuffle=True, generator=self.order
            )

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            x, y = batch
            self.passes += int(y.shape[0])
            self.calls += 1
            logits = self.net(x)
            if self.infobatch is not None:
                return self.infobatch.update(F.cross_entropy(logits, y, reduction="none"))
            return F.cross_entropy(logits, y)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, nesterov=True)
            total = self.bench.total_steps

            def factor(position: float) -> float:
                return max(0.0, 1.0 - position / total)

            scheduler: Any = (
                InfoBatchCallback.find(self.trainer).scheduler(optimizer, factor, total)
                if self.mode == "infobatch"
                else torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            )
            return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    class Clock(L.Callback):  # type: ignore[misc]
        """Starts and stops the run's loop clock; ticks after each batch."""

        def __init__(self, clock: RunClock, tick: Tick) -> None:
            self.clock, self.tick = clock, tick

        def on_train_batch_end(self, *args: Any) -> None:
            self.tick()

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.clock.loop_started()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.clock.loop_ended()

    class TimedCallback(InfoBatchCallback):  # type: ignore[misc]
        """InfoBatchCallback, its epoch-end logging (``log_dict``) timed."""

        def __init__(self) -> None:
            super().__init__()
            self.log_seconds: list[float] = []

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            started = time.perf_counter()
            super().on_train_epoch_end(trainer, pl_module)
            self.log_seconds.append(time.perf_counter() - started)

    return Module, Clock, TimedCallback


class LightningBench:
    """A LightningModule without InfoBatch against one with ``InfoBatchCallback``."""

    name = "lightning"

    def __init__(self, sizes: Sizes, mnist_dir: str) -> None:
        self.classes = _lightning_classes()
        for name in ("lightning.pytorch", "lightning.fabric"):  # after the import, which sets them
            logging.getLogger(name).setLevel(logging.ERROR)
        self.sizes = sizes
        self.splits = load_images(mnist_dir, sizes.num_train)
        self.train_set = TensorDataset(self.splits.x_train, self.splits.y_train)
        self.last: dict[str, Any] = {}
        self.log_seconds: list[float] = []

    def describe(self) -> str:
        s = self.sizes
        return (
            f"Lightning Trainer (cpu, reload_dataloaders_every_n_epochs=1) on {self.splits.name} "
            f"({s.num_train} samples, CNN), batch {s.batch_size}, {s.epochs} epochs, SGD, "
            "linear schedule per step"
        )

    @property
    def total_steps(self) -> int:
        s = self.sizes
        return s.epochs * math.ceil(s.num_train / s.batch_size)

    def run(
        self, mode: str, seed: int, clock: SideClock = process_clock, tick: Tick = no_tick
    ) -> Run:
        import lightning as L

        module_class, clock_class, callback_class = self.classes
        timer = RunClock(clock)
        callbacks = [clock_class(timer, tick)]
        timed = callback_class() if mode == "infobatch" else None
        if timed is not None:
            callbacks.append(timed)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=self.sizes.epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            reload_dataloaders_every_n_epochs=1,
            num_sanity_val_steps=0,
            callbacks=callbacks,
        )
        module = module_class(self, mode, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with timer:
                trainer.fit(module)
        self.last[mode] = (trainer, module)
        accounting: dict[str, float] = (
            infobatch_accounting(module.infobatch)
            if module.infobatch is not None
            else {"planning_s": 0.0, "update_s": 0.0, "data_s": math.nan}
        )
        accounting.pop("kept", None)
        if timed is not None:
            self.log_seconds.extend(timed.log_seconds)
            accounting["log_s"] = sum(timed.log_seconds)
        return timer.result(
            sample_passes=module.passes,
            batches=module.calls,
            steps=trainer.global_step,
            final_lr=trainer.optimizers[0].param_groups[0]["lr"],
            **accounting,
        )

    def micro(self) -> Micro:
        from lightning.pytorch.trainer.call import _call_callback_hooks

        from infobatch.integrations.lightning import InfoBatchCallback

        s = self.sizes
        repeats = s.micro_repeats
        if not self.last:
            for mode in MODES:
                self.run(mode, 0)
        plain = DataLoader(
            self.train_set,
            batch_size=s.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )
        dataset = InfoBatch(self.train_set, s.epochs, 0.0, seed=0, batch_size=s.batch_size)
        callback = InfoBatchCallback()
        wrapped = callback.loader(
            DataLoader(dataset, batch_size=s.batch_size, sampler=dataset.sampler)
        )
        model = build_model(self.splits.name, 0)
        x, y = self.splits.x_train[: s.batch_size], self.splits.y_train[: s.batch_size]
        micro = loader_and_loss_micro(plain, lambda: wrapped, len(plain), model(x), y, repeats)
        base_trainer = self.last["baseline"][0]
        ib_trainer = self.last["infobatch"][0]
        micro["scheduler_step"] = compare(
            lambda: [base_trainer.lr_scheduler_configs[0].scheduler.step() for _ in range(200)],
            lambda: [ib_trainer.lr_scheduler_configs[0].scheduler.step() for _ in range(200)],
            repeats=repeats,
            units=200,
            unit="ms per optimizer step",
        )
        # Lightning calls each callback's per-batch hooks: one more callback, one more call each.
        optimizer = ib_trainer.optimizers[0]
        loss = torch.zeros(())
        hooks: list[tuple[str, tuple[Any, ...]]] = [
            ("on_train_batch_start", ((x, y), 0)),
            ("on_before_backward", (loss,)),
            ("on_after_backward", ()),
            ("on_before_optimizer_step", (optimizer,)),
            ("on_before_zero_grad", (optimizer,)),
            ("on_train_batch_end", (loss, (x, y), 0)),
        ]
        everything = list(ib_trainer.callbacks)
        without = [c for c in everything if not isinstance(c, InfoBatchCallback)]

        def dispatch(callbacks: list[Any]) -> Callable[[], None]:
            def run() -> None:
                ib_trainer.callbacks = callbacks
                for _ in range(100):
                    for name, args in hooks:
                        _call_callback_hooks(ib_trainer, name, *args)
                ib_trainer.callbacks = everything

            return run

        micro["callback_hooks"] = compare(
            dispatch(without), dispatch(everything), repeats=repeats, units=100, unit="ms per batch"
        )
        logged = self.log_seconds or [0.0]
        micro["epoch_end_log_dict"] = {
            "unit": "ms per epoch",
            "baseline_ms": 0.0,
            "infobatch_ms": 1e3 * statistics.median(logged),
            "difference_ms": 1e3 * statistics.median(logged),
        }
        return micro


# ---------------------------------------------------------------------------------- summary
def summarise(pairs: list[dict[str, Run]]) -> dict[str, Any]:
    """Ratios per sample pass (median, min-max over pairs), ms per batch, the checks."""

    def ratio(key: str) -> dict[str, Any]:
        values = [
            (p["infobatch"][key] / p["infobatch"]["sample_passes"])
            / (p["baseline"][key] / p["baseline"]["sample_passes"])
            for p in pairs
        ]
        return {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "pairs": values,
        }

    batches = int(pairs[0]["infobatch"]["batches"])

    def per_batch(mode: str, key: str) -> float:
        return 1e3 * float(statistics.median(p[mode][key] for p in pairs)) / batches

    def difference(key: str) -> float:
        values = [float(p["infobatch"][key] - p["baseline"][key]) for p in pairs]
        return 1e3 * statistics.median(values) / batches

    def same(key: str) -> bool:
        return all(p["infobatch"][key] == p["baseline"][key] for p in pairs)

    lr_equal = all(
        math.isclose(p["infobatch"]["final_lr"], p["baseline"]["final_lr"], abs_tol=1e-12)
        or (math.isnan(p["infobatch"]["final_lr"]) and math.isnan(p["baseline"]["final_lr"]))
        for p in pairs
    )
    ms = {
        "baseline_ms": per_batch("baseline", "loop_seconds"),
        "infobatch_ms": per_batch("infobatch", "loop_seconds"),
        "baseline_cpu_ms": per_batch("baseline", "loop_cpu_seconds"),
        "infobatch_cpu_ms": per_batch("infobatch", "loop_cpu_seconds"),
        "difference_ms": difference("loop_seconds"),
        "difference_cpu_ms": difference("loop_cpu_seconds"),
        "planning_ms": per_batch("infobatch", "planning_s"),
        "update_ms": per_batch("infobatch", "update_s"),
        "data_ms": per_batch("infobatch", "data_s"),
        "baseline_data_ms": per_batch("baseline", "data_s"),
        "gc_ms": per_batch("infobatch", "gc_s"),
        "baseline_gc_ms": per_batch("baseline", "gc_s"),
    }
    if all("log_s" in p["infobatch"] for p in pairs):
        ms["log_ms"] = per_batch("infobatch", "log_s")
    return {
        "ratio": {
            "wall": ratio("loop_seconds"),
            "cpu": ratio("loop_cpu_seconds"),
            "whole_call_wall": ratio("seconds"),
            "whole_call_cpu": ratio("cpu_seconds"),
        },
        "ms_per_batch": ms,
        "checks": {
            "equal_sample_passes": same("sample_passes"),
            "equal_batches": same("batches"),
            "equal_steps": same("steps"),
            "equal_final_lr": lr_equal,
            "sample_passes": pairs[0]["infobatch"]["sample_passes"],
            "batches": batches,
            "steps": pairs[0]["infobatch"]["steps"],
        },
    }


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def print_table(name: str, description: str, result: dict[str, Any]) -> None:
    """One integration's table."""
    summary, pairs = result["summary"], result["pairs"]
    ratio, ms, checks = summary["ratio"], summary["ms_per_batch"], summary["checks"]

    def median(mode: str, key: str) -> float:
        return float(statistics.median(p[mode][key] for p in pairs))

    def row(label: str, key: str, ratio_key: str) -> str:
        r = ratio[ratio_key]
        return (
            f"  {label:<26}{median('baseline', key):>10.3f}{median('infobatch', key):>11.3f}"
            f"   {r['median']:.3f} [{r['min']:.3f}-{r['max']:.3f}]"
        )

    print(f"\n== {name}: {description}; {len(pairs)} pairs")
    print(f"  {'':<26}{'baseline':>10}{'InfoBatch':>11}   ratio per sample pass, median [min-max]")
    print(row("training loop, wall s", "loop_seconds", "wall"))
    print(row("training loop, CPU s", "loop_cpu_seconds", "cpu"))
    if name in ("trainer", "lightning"):
        print(row("whole call, wall s", "seconds", "whole_call_wall"))
        print(row("whole call, CPU s", "cpu_seconds", "whole_call_cpu"))
    print(
        f"  {'ms per batch (wall)':<26}{ms['baseline_ms']:>10.3f}{ms['infobatch_ms']:>11.3f}"
        f"   difference {ms['difference_ms']:+.3f} ms (CPU {ms['difference_cpu_ms']:+.3f})"
    )
    equal = all(checks[k] for k in ("equal_sample_passes", "equal_batches", "equal_steps"))
    print(
        f"  sample passes {checks['sample_passes']}, batches {checks['batches']}, optimizer "
        f"steps {checks['steps']}: {'equal' if equal else 'NOT EQUAL'} on both sides; final "
        f"learning rate {'equal' if checks['equal_final_lr'] else 'DIFFERS'}"
    )
    extra = f", epoch-end logging {_fmt(ms['log_ms'])}" if "log_ms" in ms else ""
    print(
        f"  InfoBatch side, ms per batch: planning {_fmt(ms['planning_ms'])}, update() "
        f"{_fmt(ms['update_ms'])}, waiting for batches {_fmt(ms['data_ms'])} (baseline "
        f"{_fmt(ms['baseline_data_ms'])}){extra}; garbage collector {_fmt(ms['gc_ms'])} "
        f"(baseline {_fmt(ms['baseline_gc_ms'])})"
    )
    print("  micro-measurements (baseline / InfoBatch / difference, wall; CPU difference):")
    for key, value in result["micro"].items():
        cpu = value.get("difference_cpu_ms")
        print(
            f"    {key:<30}{_fmt(value['baseline_ms'], 4)} / {_fmt(value['infobatch_ms'], 4)} / "
            f"{value['difference_ms']:+.4f} {value['unit']}"
            + (f" (CPU {cpu:+.4f})" if cpu is not None else "")
        )
        if "note" in value:
            print(f"      ({value['note']})")


def print_profile(name: str, profile: dict[str, Any]) -> None:
    """The profile's top rows: infobatch's functions, and the largest differences."""
    print(f"\n== {name}: cProfile, InfoBatch side, infobatch functions (ms per batch)")
    print(f"  {'cumulative':>10} {'own':>8} {'calls':>7}  function")
    for row in profile["infobatch"][:15]:
        print(
            f"  {row['cumulative_ms_per_batch']:>10.4f} {row['own_ms_per_batch']:>8.4f} "
            f"{row['calls_per_batch']:>7.1f}  {row['function']}"
        )
    print(f"== {name}: cProfile, own time InfoBatch - baseline (ms per batch)")
    for row in profile["differences"][:15]:
        print(
            f"  {row['difference_ms_per_batch']:>+9.4f} ({row['baseline_ms_per_batch']:.4f} -> "
            f"{row['infobatch_ms_per_batch']:.4f})  {row['function']}"
        )


def clean(value: Any) -> Any:
    """``value`` with ``nan`` and infinities as ``None`` (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- profile
def profile_pair(bench: Any, folder: Path) -> dict[str, list[dict[str, Any]]]:
    """One lockstep pair, each side under its own cProfile (a profiler follows its thread;
    saved to ``folder`` as ``<integration>-<side>.prof``), so both profiles see the same load.
    Per side: the infobatch functions with the most cumulative time, in ms per batch
    (cProfile inflates Python calls several-fold; compare the two sides, not absolutes)."""
    folder.mkdir(parents=True, exist_ok=True)
    profilers = {mode: cProfile.Profile() for mode in MODES}

    def work(mode: str, clock: SideClock, tick: Tick) -> Run:
        profilers[mode].enable()
        try:
            run: Run = bench.run(mode, 0, clock, tick)
            return run
        finally:
            profilers[mode].disable()

    turns = Lockstep(bench.sizes.switch_every, first=MODES[0])
    runs = turns.run({m: partial(work, m, turns.clock(m), turns.ticker(m)) for m in MODES})
    package = str(Path(sys.modules["infobatch"].__file__ or "").parent)
    result = {}
    for mode in MODES:
        profilers[mode].dump_stats(str(folder / f"{bench.name}-{mode}.prof"))
        stats = pstats.Stats(profilers[mode])
        batches = runs[mode]["batches"]
        rows = []
        for (filename, line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
            _calls, ncalls, tottime, cumtime, _callers = entry
            if filename.startswith(package):
                rows.append(
                    {
                        "function": f"{Path(filename).relative_to(Path(package).parent)}:{line}"
                        f"({function})",
                        "calls_per_batch": ncalls / batches,
                        "cumulative_ms_per_batch": 1e3 * cumtime / batches,
                        "own_ms_per_batch": 1e3 * tottime / batches,
                    }
                )
        rows.sort(key=lambda r: -r["cumulative_ms_per_batch"])
        result[mode] = rows[:25]
    return result


def profile_differences(folder: Path, name: str, batches: int) -> list[dict[str, Any]]:
    """Functions whose own time grew most from the baseline's profile to InfoBatch's (ms per
    batch): where the difference goes, inside infobatch or in the framework."""
    own: dict[str, dict[str, float]] = {}
    for mode in MODES:
        stats = pstats.Stats(str(folder / f"{name}-{mode}.prof"))
        for (filename, line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
            key = f"{filename}:{line}({function})"
            own.setdefault(key, dict.fromkeys(MODES, 0.0))[mode] = entry[2]
    rows: list[dict[str, Any]] = [
        {
            "function": key,
            "baseline_ms_per_batch": 1e3 * times["baseline"] / batches,
            "infobatch_ms_per_batch": 1e3 * times["infobatch"] / batches,
            "difference_ms_per_batch": 1e3 * (times["infobatch"] - times["baseline"]) / batches,
        }
        for key, times in own.items()
    ]
    rows.sort(key=lambda r: -r["difference_ms_per_batch"])
    return rows[:25]


# ------------------------------------------------------------------------------------- main
SIZES = {
    "plain": Sizes(num_train=20_480, batch_size=128, epochs=2),
    "trainer": Sizes(
        num_train=2_048, batch_size=32, epochs=2, accumulation=2, seq_len=32, switch_every=1
    ),
    "accelerate": Sizes(num_train=20_480, batch_size=128, epochs=2),
    "lightning": Sizes(num_train=20_480, batch_size=128, epochs=2),
}
QUICK_SIZES = {
    "plain": Sizes(num_train=1_024, batch_size=128, epochs=1, micro_repeats=2),
    "trainer": Sizes(
        num_train=64,
        batch_size=8,
        epochs=1,
        accumulation=2,
        seq_len=16,
        micro_repeats=2,
        switch_every=1,
    ),
    "accelerate": Sizes(num_train=1_024, batch_size=128, epochs=1, micro_repeats=2),
    "lightning": Sizes(num_train=1_024, batch_size=128, epochs=1, micro_repeats=2),
}


def build_bench(name: str, sizes: Sizes, mnist_dir: str) -> Any:
    """The benchmark of integration ``name``."""
    if name == "plain":
        return PlainBench(sizes, mnist_dir)
    if name == "trainer":
        return TrainerBench(sizes)
    if name == "accelerate":
        return AccelerateBench(sizes, mnist_dir)
    return LightningBench(sizes, mnist_dir)


def measure(
    bench: Any, pairs: int, lockstep: bool, calibrate: bool = False
) -> list[dict[str, Run]]:
    """A warm-up run of each side, then ``pairs`` pairs (both sides of pair ``i`` use seed
    ``i``: the same initialisation; the side that starts alternates). With ``lockstep`` the
    two runs of a pair take turns every ``sizes.switch_every`` ticks (:class:`Lockstep`),
    else they run one after the other. ``calibrate``: both sides run the baseline (an A/A
    comparison: the method's own spread and bias)."""
    side = dict(zip(MODES, (MODES[0], MODES[0]))) if calibrate else dict(zip(MODES, MODES))
    for mode in MODES:
        bench.run(side[mode], 0)
    results = []
    for pair in range(pairs):
        order = MODES if pair % 2 == 0 else MODES[::-1]
        if lockstep:
            turns = Lockstep(bench.sizes.switch_every, first=order[0])
            runs = turns.run(
                {
                    mode: partial(
                        bench.run, side[mode], pair, turns.clock(mode), turns.ticker(mode)
                    )
                    for mode in order
                }
            )
            for run in runs.values():
                run["hand_overs"] = turns.switches
        else:
            runs = {mode: bench.run(side[mode], pair) for mode in order}
        results.append(runs)
        base, ib = runs["baseline"], runs["infobatch"]
        print(
            f"  {bench.name} pair {pair}: baseline {base['loop_seconds']:.2f}s "
            f"(CPU {base['loop_cpu_seconds']:.2f}), InfoBatch {ib['loop_seconds']:.2f}s "
            f"(CPU {ib['loop_cpu_seconds']:.2f})",
            flush=True,
        )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--integration", choices=(*INTEGRATIONS, "all"), default="all")
    parser.add_argument("--pairs", type=int, default=7, help="interleaved (baseline, InfoBatch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a tiny run of each (smoke test)")
    parser.add_argument("--mnist-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument(
        "--num-train", type=int, help="image samples (plain, accelerate, lightning)"
    )
    parser.add_argument("--epochs", type=int, help="epochs of every integration")
    parser.add_argument("--output", type=Path, help="write the JSON here")
    parser.add_argument("--profile", type=Path, help="also profile one run of each side here")
    parser.add_argument(
        "--interleave",
        choices=("lockstep", "runs"),
        default="lockstep",
        help="lockstep: a pair's two runs take turns every few batches (default); runs: one "
        "after the other",
    )
    parser.add_argument("--switch-every", type=int, help="lockstep: ticks per turn")
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="A/A: both sides run the baseline (the method's spread; no InfoBatch figures)",
    )
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure the chosen integrations; print a table each and one JSON line."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = INTEGRATIONS if args.integration == "all" else (args.integration,)
    results: dict[str, Any] = {}
    for name in names:
        sizes = (QUICK_SIZES if args.quick else SIZES)[name]
        overrides: dict[str, int] = {}
        if args.num_train is not None and name != "trainer":
            overrides["num_train"] = args.num_train
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        if args.switch_every is not None:
            overrides["switch_every"] = args.switch_every
        sizes = Sizes(**{**asdict(sizes), **overrides})
        bench = build_bench(name, sizes, args.mnist_dir)
        started = time.perf_counter()
        pairs = measure(bench, args.pairs, args.interleave == "lockstep", args.calibrate)
        result: dict[str, Any] = {
            "description": bench.describe(),
            "sizes": asdict(sizes),
            "summary": summarise(pairs),
            "pairs": pairs,
        }
        with warnings.catch_warnings():  # e.g. a scheduler stepped without its optimizer
            warnings.simplefilter("ignore")
            result["micro"] = {} if args.calibrate else bench.micro()
        if args.profile is not None:
            profile: dict[str, Any] = dict(profile_pair(bench, args.profile))
            batches = result["summary"]["checks"]["batches"]
            profile["differences"] = profile_differences(args.profile, name, batches)
            result["profile"] = profile
            print_profile(name, profile)
        result["seconds"] = time.perf_counter() - started
        results[name] = result
        print_table(name, bench.describe(), result)
        with contextlib.suppress(AttributeError):
            bench.folder.cleanup()
    output = clean(
        {
            "torch": torch.__version__,
            "source": source_digest(),
            "threads": args.threads,
            "pairs": args.pairs,
            "interleave": args.interleave,
            "calibrate": args.calibrate,
            "quick": args.quick,
            "integrations": results,
        }
    )
    line = json.dumps(output)
    print(line)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(output, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
