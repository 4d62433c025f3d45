"""Offline GRPO benchmark: prompt-level InfoBatch (``infobatch.PromptPruning``) against plain GRPO.

A tiny causal LM (GPT-2 architecture built from a config, random weights, ~150k parameters,
a character-level vocabulary of digits, ``+``, ``=``, space, EOS and PAD) learns additions
``a + b`` of two operands with the same number of digits, 1 to 4 (the difficulty level).
Prompts are right-aligned to a fixed width (``"  12+  34="``); the answer is written least
significant digit first (``"64"`` for 46) and ends with EOS; the reward is exact match (0/1).

For each seed: the model is first supervised on random (prompt, answer) pairs until it
solves a target fraction of the training prompts (greedy), so rewards vary: easy prompts are
solved, hard ones are not, and later in training many groups are all-solved or all-failed.
That checkpoint is cached (memory and disk) and every method of the seed starts from it. Then
GRPO, a hand-written loop: per batch of ``B`` prompts, ``G`` completions each
(``model.generate``, sampling at temperature 1), group-normalised advantages
``(r - mean) / (std + 1e-4)`` multiplied by the prompt's weight from
:meth:`PromptPruning.update`, loss ``-mean(A * sum(token logprobs) / length)``, one Adam step
per batch, no KL, several passes over the fixed training prompts. The methods differ only in
the ``PromptPruning`` rule (``METHODS``): plain GRPO (``prune_ratio=0``), InfoBatch at its
defaults and at a higher ratio, InfoBatch with the success-variance score, dynamic random at
InfoBatch's per-pass kept counts (weight 1), and a GRESO-style rule that skips zero-variance
prompts with a probability and does not reweight (biased).

The methods of a seed run interleaved, one pass each in turn (A B C, C B A, ...), so they see
the same machine load; each keeps its own RNG state (generation draws from the global RNG,
saved and restored around each of its passes), so a run does not depend on the others; all
methods of a seed start their sampling from the same seed.
Metric: greedy exact-match accuracy on held-out prompts, after every pass. Results (per run,
with the settings and the command) go to a resumable JSON file: a rerun with more seeds
trains only what is missing::

    python benchmarks/grpo.py --seeds 0 1 2 3 4 5 --output benchmarks/results/grpo.json
    python benchmarks/grpo.py --quick --output /tmp/grpo.json    # smoke run, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fcntl
import hashlib
import json
import math
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from infobatch import KEPT, PRUNED, PromptPruning, Selection
from infobatch.context import EpochContext
from infobatch.policies import DynamicRandom
from infobatch.rng import random_mask
from infobatch.rule import count_scored

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_VERSION = 1
TASK = "grpo_addition"
BASELINE = "grpo"

# ------------------------------------------------------------------------------ tokenizer
PAD, EOS = 0, 1
CHARS = "0123456789+= "
VOCAB_SIZE = 16  # PAD, EOS, the 13 characters, one spare
MAX_DIGITS = 4


class CharTokenizer:
    """Character-level tokens: ``PAD`` 0, ``EOS`` 1, then one id per character of ``CHARS``."""

    def __init__(self) -> None:
        self.ids = {c: i + 2 for i, c in enumerate(CHARS)}
        self.chars = {i: c for c, i in self.ids.items()}

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (no EOS)."""
        return [self.ids[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` up to the first EOS (PAD skipped)."""
        out = []
        for i in ids:
            if i == EOS:
                break
            if i != PAD:
                out.append(self.chars.get(int(i), "?"))
        return "".join(out)


TOKENIZER = CharTokenizer()
PROMPT_LENGTH = 2 * MAX_DIGITS + 2  # "aaaa+bbbb="
MAX_ANSWER = MAX_DIGITS + 2  # up to 5 digits and EOS


@dataclass(frozen=True)
class Problem:
    """``a + b``, both operands with ``level`` digits."""

    a: int
    b: int
    level: int

    @property
    def prompt(self) -> str:
        """Right-aligned to a fixed width, so every prompt has ``PROMPT_LENGTH`` tokens."""
        return f"{self.a:>{MAX_DIGITS}d}+{self.b:>{MAX_DIGITS}d}="

    @property
    def answer(self) -> str:
        """The sum, least significant digit first."""
        return str(self.a + self.b)[::-1]


def draw_problem(level: int, rng: random.Random) -> Problem:
    """A random problem of ``level`` digits (level 1: 0-9, else no leading zero)."""
    low = 0 if level == 1 else 10 ** (level - 1)
    return Problem(rng.randint(low, 10**level - 1), rng.randint(low, 10**level - 1), level)


def make_prompt_sets(
    task_seed: int, train_per_level: int, test_per_level: int
) -> tuple[list[Problem], list[Problem]]:
    """The fixed training prompts and the held-out test prompts (disjoint), per level.

    Level 1 has only 100 distinct problems: its test set is what the training set leaves.
    """
    rng = random.Random(task_seed)
    train: list[Problem] = []
    test: list[Problem] = []
    for level in range(1, MAX_DIGITS + 1):
        space = 100 if level == 1 else (9 * 10 ** (level - 1)) ** 2
        seen: set[tuple[int, int]] = set()
        chosen: list[Problem] = []
        wanted = min(train_per_level + test_per_level, space)
        while len(chosen) < wanted:
            p = draw_problem(level, rng)
            if (p.a, p.b) not in seen:
                seen.add((p.a, p.b))
                chosen.append(p)
        train += chosen[:train_per_level]
        test += chosen[train_per_level:]
    return train, test


def encode_prompts(problems: Sequence[Problem]) -> Tensor:
    """int64 ``[P, PROMPT_LENGTH]``."""
    return torch.tensor([TOKENIZER.encode(p.prompt) for p in problems], dtype=torch.int64)


def encode_targets(problems: Sequence[Problem]) -> Tensor:
    """int64 ``[P, MAX_ANSWER]``: the answer, EOS, then PAD (what a correct completion is)."""
    rows = []
    for p in problems:
        ids = TOKENIZER.encode(p.answer) + [EOS]
        rows.append(ids + [PAD] * (MAX_ANSWER - len(ids)))
    return torch.tensor(rows, dtype=torch.int64)


# ------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class GRPOConfig:
    """Everything that identifies a run besides its method and seed."""

    task_seed: int = 1234
    train_per_level: int = 64
    test_per_level: int = 128
    n_embd: int = 64
    n_layer: int = 3
    n_head: int = 4
    n_inner: int = 256
    sft_lr: float = 1e-3
    sft_batch: int = 64
    sft_warmup: int = 50
    sft_max_steps: int = 3000
    sft_check_every: int = 25
    sft_target: float = 0.4  # stop once greedy accuracy on the training prompts reaches this
    num_passes: int = 8
    batch_size: int = 16  # prompts per rollout batch
    group_size: int = 8  # completions per prompt
    lr: float = 3e-5
    temperature: float = 1.0
    delta: float = 0.875

    def sft_key(self) -> str:
        """Hash of what the supervised checkpoint depends on (its cache key)."""
        fields = [
            "task_seed",
            "train_per_level",
            "test_per_level",
            "n_embd",
            "n_layer",
            "n_head",
            "n_inner",
            "sft_lr",
            "sft_batch",
            "sft_warmup",
            "sft_max_steps",
            "sft_check_every",
            "sft_target",
        ]
        text = json.dumps({f: getattr(self, f) for f in fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


QUICK = GRPOConfig(
    train_per_level=8,
    test_per_level=8,
    sft_max_steps=150,
    sft_check_every=50,
    num_passes=2,
    batch_size=8,
    group_size=4,
)


@dataclass(frozen=True)
class Method:
    """One way of choosing the prompts of each pass (a run is a method and a seed).

    Attributes:
        name: key of the runs.
        what: one line for the report.
        prune_ratio: ``PromptPruning``'s ``prune_ratio`` (its own rule), or the skip
            probability of the ``zero_variance`` rule.
        score: ``PromptPruning``'s ``score``.
        rule: ``None`` (InfoBatch's rule, or none at ratio 0), ``"matched_random"`` (dynamic
            random at the per-pass kept counts of the seed's ``infobatch`` run) or
            ``"zero_variance"`` (GRESO-style: skip zero-variance prompts, weight 1).
    """

    name: str
    what: str
    prune_ratio: float = 0.0
    score: str = "reward_std"
    rule: str | None = None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(BASELINE, "plain GRPO: every prompt every pass"),
        Method("infobatch", "InfoBatch-GRPO, r=0.5, delta=0.875 (score: reward std)", 0.5),
        Method("infobatch_r0.7", "InfoBatch-GRPO, r=0.7, delta=0.875", 0.7),
        Method(
            "infobatch_success_var",
            "InfoBatch-GRPO, r=0.5, score p(1-p) (success variance)",
            0.5,
            score="success_variance",
        ),
        Method(
            "dynamic_random",
            "random prompts at InfoBatch's (r=0.5) per-pass kept counts, weight 1",
            rule="matched_random",
        ),
        Method(
            "greso",
            "GRESO-style: skip zero-variance prompts with p=0.5, weight 1 (biased)",
            0.5,
            rule="zero_variance",
        ),
    )
}


# ------------------------------------------------------------------------------ rules
class ZeroVarianceSkip:
    """GRESO-style selection: a prompt whose last group had zero reward variance (score 0)
    is skipped with probability ``p``; every other prompt (never-scored ones too) is kept.
    All kept prompts have weight 1: no reweighting, so the pass under-represents the
    prompts that were all-solved or all-failed (a biased estimate of the full pass)."""

    def __init__(self, p: float) -> None:
        if not 0 <= p < 1:
            raise ValueError(f"the skip probability must be in [0, 1), got {p}")
        self.p = p

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """Skip each zero-score prompt with probability ``p`` (one coin per prompt)."""
        zero = torch.eq(scores, 0).cpu()  # nan: not zero, kept
        coins = random_mask(scores.numel(), self.p, generator, torch.device("cpu"))
        status = torch.full((scores.numel(),), KEPT, dtype=torch.int8)
        status.masked_fill_(zero & coins, PRUNED)
        return Selection(status.to(scores.device), 1.0, 0.0, count_scored(scores), int(zero.sum()))

    def __repr__(self) -> str:
        return f"ZeroVarianceSkip(p={self.p})"


class MatchedRandom:
    """``DynamicRandom(kept_counts=counts)`` with ``counts`` read when a pass is planned: the
    seed's InfoBatch run appends its kept count of each pass before this run plans it (the
    two run interleaved)."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """The pass's kept count of the reference run, drawn uniformly at random."""
        if len(self.counts) <= context.epoch:
            raise RuntimeError(f"the reference run has not planned pass {context.epoch} yet")
        rule = DynamicRandom(kept_counts=list(self.counts))
        return rule.select_for_epoch(scores, generator, context)

    def __repr__(self) -> str:
        return f"MatchedRandom(kept_counts={self.counts})"


# ------------------------------------------------------------------------------ model
def build_model(config: GRPOConfig, seed: int) -> nn.Module:
    """A GPT-2 of the config's size, random weights from ``seed``, no dropout."""
    import transformers  # noqa: PLC0415  (a slow import, not needed by the report)

    transformers.logging.set_verbosity_error()

    model_config = transformers.GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=PROMPT_LENGTH + MAX_ANSWER,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.n_inner,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        loss_type="ForCausalLM",
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(model_config)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    return model


def parameter_count(config: GRPOConfig) -> int:
    """Weights of :func:`build_model`'s GPT-2 (the LM head is tied to the token embedding)."""
    e, i = config.n_embd, config.n_inner
    layer = 2 * e + (3 * e * e + 3 * e) + (e * e + e) + 2 * e + (e * i + i) + (i * e + e)
    return VOCAB_SIZE * e + (PROMPT_LENGTH + MAX_ANSWER) * e + config.n_layer * layer + 2 * e


@torch.inference_mode()
def generate(
    model: nn.Module, prompts: Tensor, *, sample: bool, temperature: float = 1.0
) -> Tensor:
    """Completions ``[P, MAX_ANSWER]`` (EOS then PAD after the end); sampling draws from the
    global RNG. PAD is never generated."""
    was_training = model.training
    model.eval()
    kwargs: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if sample
        else {"do_sample": False}
    )
    out = model.generate(  # type: ignore[operator]
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=MAX_ANSWER,
        pad_token_id=PAD,
        eos_token_id=EOS,
        suppress_tokens=[PAD],
        **kwargs,
    )
    model.train(was_training)
    completions = out[:, prompts.shape[1] :]
    if completions.shape[1] < MAX_ANSWER:  # every sequence ended early
        pad = completions.new_full((len(completions), MAX_ANSWER - completions.shape[1]), PAD)
        completions = torch.cat([completions, pad], dim=1)
    return completions


def completion_mask(completions: Tensor) -> Tensor:
    """bool ``[P, T]``: the generated tokens, up to and including the first EOS."""
    is_eos = completions == EOS
    after = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) > 0
    return ~after & (completions != PAD)


def rewards_of(completions: Tensor, targets: Tensor) -> Tensor:
    """float32 ``[P]``: 1 where the completion is exactly the answer and EOS."""
    return (completions == targets).all(dim=1).float()


def accuracy(model: nn.Module, prompts: Tensor, targets: Tensor, levels: Tensor) -> dict[str, Any]:
    """Greedy exact-match accuracy, overall and per level."""
    correct = rewards_of(generate(model, prompts, sample=False), targets)
    per_level = {
        str(level): float(correct[levels == level].mean()) for level in sorted(set(levels.tolist()))
    }
    return {"accuracy": float(correct.mean()), "per_level": per_level}


# ------------------------------------------------------------------------------ task
@dataclass
class Task:
    """The prompt sets as tensors."""

    train: list[Problem]
    test: list[Problem]

    def __post_init__(self) -> None:
        self.train_prompts = encode_prompts(self.train)
        self.train_targets = encode_targets(self.train)
        self.train_levels = torch.tensor([p.level for p in self.train])
        self.test_prompts = encode_prompts(self.test)
        self.test_targets = encode_targets(self.test)
        self.test_levels = torch.tensor([p.level for p in self.test])
        self.test_pairs = {(p.a, p.b) for p in self.test}

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Held-out greedy accuracy."""
        return accuracy(model, self.test_prompts, self.test_targets, self.test_levels)

    def train_accuracy(self, model: nn.Module) -> float:
        """Greedy accuracy on the GRPO training prompts."""
        return accuracy(model, self.train_prompts, self.train_targets, self.train_levels)[
            "accuracy"
        ]


def make_task(config: GRPOConfig) -> Task:
    """The fixed prompt sets of ``config``."""
    return Task(*make_prompt_sets(config.task_seed, config.train_per_level, config.test_per_level))


# ------------------------------------------------------------------------------ SFT
def sft_batch(task: Task, size: int, rng: random.Random) -> tuple[Tensor, Tensor]:
    """Random (prompt, answer) sequences of uniform level, never a test prompt: ids and
    labels (-100 on the prompt and after EOS)."""
    rows, labels = [], []
    while len(rows) < size:
        p = draw_problem(rng.randint(1, MAX_DIGITS), rng)
        if (p.a, p.b) in task.test_pairs:
            continue
        prompt, answer = TOKENIZER.encode(p.prompt), TOKENIZER.encode(p.answer) + [EOS]
        pad = MAX_ANSWER - len(answer)
        rows.append(prompt + answer + [PAD] * pad)
        labels.append([-100] * len(prompt) + answer + [-100] * pad)
    return torch.tensor(rows), torch.tensor(labels)


def supervise(config: GRPOConfig, task: Task, seed: int, log: Any = print) -> dict[str, Any]:
    """Train a fresh model on (prompt, answer) pairs until its greedy accuracy on the training
    prompts reaches ``sft_target`` (checked every ``sft_check_every`` steps) or
    ``sft_max_steps``; its state and what it took."""
    model = build_model(config, seed)
    model.train()
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft_lr, betas=(0.9, 0.98))
    warmup = max(config.sft_warmup, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    started = time.perf_counter()
    step, train_acc = 0, 0.0
    while step < config.sft_max_steps:
        ids, labels = sft_batch(task, config.sft_batch, rng)
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        if step % config.sft_check_every == 0:
            train_acc = task.train_accuracy(model)
            if train_acc >= config.sft_target:
                break
    train_acc = task.train_accuracy(model)
    seconds = time.perf_counter() - started
    log(f"  SFT seed {seed}: {step} steps, train-prompt accuracy {train_acc:.3f}, {seconds:.1f}s")
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "steps": step,
        "train_accuracy": train_acc,
        "seconds": seconds,
    }


class SFTCache:
    """Supervised checkpoints per (settings, seed), in memory and in ``folder``."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.memory: dict[tuple[str, int], dict[str, Any]] = {}

    def get(self, config: GRPOConfig, task: Task, seed: int) -> dict[str, Any]:
        """The seed's checkpoint, trained if neither memory nor disk has it."""
        key = (config.sft_key(), seed)
        if key in self.memory:
            return self.memory[key]
        path = self.folder / f"sft-{key[0]}-seed{seed}.pt" if self.folder else None
        if path is not None and path.is_file():
            found: dict[str, Any] = torch.load(path, weights_only=True)
            found["cached"] = True
        else:
            found = supervise(config, task, seed)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                torch.save(found, partial)
                os.replace(partial, path)
            found = {**found, "cached": False}
        self.memory[key] = found
        return found


# ------------------------------------------------------------------------------ GRPO
def group_advantages(rewards: Tensor) -> Tensor:
    """``(r - mean) / (std + 1e-4)`` within each group (population std), ``[P, G]``."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + 1e-4)


def sequence_logprobs(model: nn.Module, prompts: Tensor, completions: Tensor) -> Tensor:
    """``[P]``: sum of the completion's token log-probabilities / its length (with grad)."""
    mask = completion_mask(completions)
    ids = torch.cat([prompts, completions.masked_fill(~mask, PAD)], dim=1)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[
        :, prompts.shape[1] - 1 : -1
    ]
    logp = torch.log_softmax(logits.float(), dim=-1)
    token = logp.gather(2, completions.clamp(min=0).unsqueeze(2)).squeeze(2)
    token = token.masked_fill(~mask, 0.0)
    return token.sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class GRPORun:
    """One method's GRPO run for one seed, trained a pass at a time."""

    def __init__(
        self,
        method: Method,
        seed: int,
        config: GRPOConfig,
        task: Task,
        base: dict[str, Any],
        rule: Any,
        initial: dict[str, Any],
    ) -> None:
        self.method, self.seed, self.config, self.task = method, seed, config, task
        self.model = build_model(config, seed)
        self.model.load_state_dict(base["state"])
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        ratio = method.prune_ratio if method.rule is None else 0.0
        self.pruning = PromptPruning(
            len(task.train),
            num_passes=config.num_passes,
            prune_ratio=ratio,
            delta=config.delta,
            batch_size=config.batch_size,
            score=method.score,
            seed=seed,
            rule=rule,
        )
        generator_state = torch.get_rng_state()
        torch.manual_seed(seed)  # every method of a seed samples from the same seed
        self.rng_state = torch.get_rng_state()
        torch.set_rng_state(generator_state)
        self.passes: list[dict[str, Any]] = []
        self.initial = initial
        self.steps = 0

    @property
    def done(self) -> bool:
        """Every pass trained."""
        return self.pruning.finished

    def run_pass(self) -> dict[str, Any]:
        """Train one pass; evaluate on the held-out prompts (not timed)."""
        config, task, model = self.config, self.task, self.model
        outer_state = torch.get_rng_state()
        torch.set_rng_state(self.rng_state)
        epoch = self.pruning.epoch  # the pass this call trains
        completions_done = tokens = batches = 0
        rewards_sum = 0.0
        all_solved = all_failed = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        for batch in self.pruning.batches():
            prompts = task.train_prompts[batch].repeat_interleave(config.group_size, dim=0)
            targets = task.train_targets[batch].repeat_interleave(config.group_size, dim=0)
            completions = generate(model, prompts, sample=True, temperature=config.temperature)
            rewards = rewards_of(completions, targets).view(len(batch), config.group_size)
            weights = self.pruning.update(batch, rewards)
            advantages = group_advantages(rewards) * weights[:, None]
            logprobs = sequence_logprobs(model, prompts, completions)
            loss = -(advantages.reshape(-1) * logprobs).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.steps += 1
            batches += 1
            completions_done += len(completions)
            tokens += int(completion_mask(completions).sum())
            rewards_sum += float(rewards.sum())
            solved = rewards.mean(dim=1)
            all_solved += int((solved == 1).sum())
            all_failed += int((solved == 0).sum())
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        self.rng_state = torch.get_rng_state()
        torch.set_rng_state(outer_state)
        stats = self.pruning.history[epoch]
        evaluation = task.evaluate(model)
        prompts_done = completions_done // config.group_size
        record = {
            "pass": epoch,
            "kept": stats.num_kept,
            "pruned": stats.num_pruned,
            "well_learned": stats.num_well_learned,
            "threshold": stats.threshold if math.isfinite(stats.threshold) else None,
            "weight": stats.weight,
            "batches": batches,
            "completions": completions_done,
            "tokens": tokens,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "mean_reward": rewards_sum / max(completions_done, 1),
            "all_solved": all_solved / max(prompts_done, 1),
            "all_failed": all_failed / max(prompts_done, 1),
            "test_accuracy": evaluation["accuracy"],
            "test_accuracy_per_level": evaluation["per_level"],
        }
        self.passes.append(record)
        return record

    def result(self) -> dict[str, Any]:
        """What the run measured (its pass records summed)."""
        passes = self.passes
        rollouts = self.pruning.rollouts
        completions = sum(p["completions"] for p in passes)
        assert completions == sum(rollouts.values()), (completions, rollouts)
        last = passes[-1]
        return {
            "method": self.method.name,
            "seed": self.seed,
            "test_accuracy": last["test_accuracy"],
            "test_accuracy_per_level": last["test_accuracy_per_level"],
            "initial_test_accuracy": self.initial["accuracy"],
            "initial_test_accuracy_per_level": self.initial["per_level"],
            "completions": completions,
            "full_completions": self.config.num_passes
            * len(self.task.train)
            * self.config.group_size,
            "tokens": sum(p["tokens"] for p in passes),
            "grpo_seconds": sum(p["seconds"] for p in passes),
            "grpo_cpu_seconds": sum(p["cpu_seconds"] for p in passes),
            "optimizer_steps": self.steps,
            "saved_fraction": self.pruning.saved_fraction,
            "kept_per_pass": [p["kept"] for p in passes],
            "passes": passes,
            "rule": repr(self.pruning.sampler.rule),
        }


def make_rule(
    method: Method, reference: dict[str, Any] | None, live_counts: list[int] | None
) -> Any:
    """The ``PromptPruning`` rule of ``method`` (``None``: its own)."""
    if method.rule is None:
        return None
    if method.rule == "zero_variance":
        return ZeroVarianceSkip(method.prune_ratio)
    if method.rule == "matched_random":
        if reference is not None:
            return DynamicRandom(kept_counts=[int(k) for k in reference["kept_per_pass"]])
        if live_counts is None:
            raise SystemExit("dynamic_random needs the seed's infobatch run (add it to --methods)")
        return MatchedRandom(live_counts)
    raise ValueError(f"unknown rule {method.rule!r}")


def train_seed(
    config: GRPOConfig,
    task: Task,
    seed: int,
    methods: list[str],
    store: Store,
    cache: SFTCache,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Train ``methods`` for ``seed`` interleaved a pass at a time; their results."""
    base = cache.get(config, task, seed)
    probe = build_model(config, seed)
    probe.load_state_dict(base["state"])
    initial = task.evaluate(probe)
    log(
        f"  seed {seed}: supervised model, held-out accuracy {initial['accuracy']:.3f} "
        f"(per level {initial['per_level']})"
    )
    reference = store.find("infobatch", seed)
    live_counts: list[int] | None = None
    if reference is None and "infobatch" in methods:
        live_counts = []
    runs: dict[str, GRPORun] = {}
    for name in methods:
        method = METHODS[name]
        rule = make_rule(method, reference, live_counts)
        runs[name] = GRPORun(method, seed, config, task, base, rule, initial)
    order = list(runs)
    round_ = 0
    while not all(run.done for run in runs.values()):
        if live_counts is not None and not runs["infobatch"].done:
            ib = runs["infobatch"].pruning
            ib.planned_batches()  # plans its pass: the matched run reads its kept count
            live_counts.append(int(ib.sampler.epoch_length))
        for name in order if round_ % 2 == 0 else order[::-1]:
            run = runs[name]
            if run.done:
                continue
            record = run.run_pass()
            log(
                f"    seed {seed} pass {record['pass']} {name:22s} kept {record['kept']:4d} "
                f"acc {100 * record['test_accuracy']:5.1f}%  reward {record['mean_reward']:.3f}  "
                f"zero-var {100 * (record['all_solved'] + record['all_failed']):4.1f}%  "
                f"{record['seconds']:5.2f}s"
            )
        round_ += 1
    results = []
    for name, run in runs.items():
        result = run.result()
        if METHODS[name].rule == "matched_random":
            counts = (reference or {}).get("kept_per_pass") or runs["infobatch"].result()[
                "kept_per_pass"
            ]
            if result["kept_per_pass"] != counts:
                raise RuntimeError(
                    f"dynamic_random did not keep InfoBatch's counts: "
                    f"{result['kept_per_pass']} vs {counts}"
                )
        result["sft"] = {k: v for k, v in base.items() if k != "state"}
        result["interleaved_with"] = [n for n in runs if n != name]
        results.append(result)
    return results


# ------------------------------------------------------------------------------ store
class Store:
    """The JSON file of finished runs, rewritten atomically (under a lock) after each seed."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.settings = settings
        self.runs: list[dict[str, Any]] = self._read()

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        data = json.loads(self.path.read_text())
        if data.get("version") != RESULTS_VERSION:
            raise SystemExit(f"{self.path} has another results version; move it away")
        return list(data["runs"])

    @staticmethod
    def _key(run: dict[str, Any]) -> str:
        return json.dumps([run["method"], run["seed"], run["settings"]], sort_keys=True)

    def find(self, method: str, seed: int) -> dict[str, Any] | None:
        """The finished run with these keys and the current settings, if any."""
        for run in self.runs:
            if (run["method"], run["seed"], run["settings"]) == (method, seed, self.settings):
                return run
        return None

    def current(self) -> list[dict[str, Any]]:
        """The runs with the current settings."""
        return [run for run in self.runs if run["settings"] == self.settings]

    def add(self, runs: list[dict[str, Any]], extra: dict[str, Any]) -> None:
        """Append ``runs`` and rewrite the file with ``extra`` (command, summary...)."""
        self.runs += runs
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f"{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            known = {self._key(r) for r in self.runs}
            self.runs += [r for r in self._read() if self._key(r) not in known]
            partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            body = {"version": RESULTS_VERSION, "task": TASK, **extra, "runs": self.runs}
            partial.write_text(json.dumps(body, indent=1))
            os.replace(partial, self.path)


# ------------------------------------------------------------------------------ summary
def _mean_se(values: Sequence[float]) -> tuple[float, float | None] | None:
    if not values:
        return None
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return mean, se


def _curve(run: dict[str, Any], key: str) -> tuple[list[float], list[float]]:
    """Cumulative ``key`` (tokens, seconds) at the start and after each pass, and the
    held-out accuracy there (the start is the supervised model)."""
    xs, ys, total = [0.0], [run["initial_test_accuracy"]], 0.0
    for p in run["passes"]:
        total += p[key]
        xs.append(total)
        ys.append(p["test_accuracy"])
    return xs, ys


def accuracy_at(run: dict[str, Any], budget: float, key: str = "tokens") -> float | None:
    """Held-out accuracy of ``run`` when it had spent ``budget`` (tokens or seconds), linear
    between the evaluations after each pass; ``None`` past the run's end."""
    xs, ys = _curve(run, key)
    if budget > xs[-1] * (1 + 1e-9):
        return None
    for i in range(1, len(xs)):
        if budget <= xs[i]:
            span = xs[i] - xs[i - 1]
            t = (budget - xs[i - 1]) / span if span > 0 else 1.0
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]


BUDGETS = (0.25, 0.5, 0.75, 1.0)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method, paired by seed with plain GRPO: accuracy, differences (points), savings,
    accuracy at plain GRPO's token budgets and plain GRPO's accuracy at the method's tokens."""
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        by.setdefault(run["method"], {})[run["seed"]] = run
    base = by.get(BASELINE, {})
    rows = []
    for name in [m for m in METHODS if m in by] + [m for m in by if m not in METHODS]:
        got = by[name]
        seeds = sorted(got)
        paired = [s for s in seeds if s in base]
        acc = [100 * got[s]["test_accuracy"] for s in seeds]
        row: dict[str, Any] = {
            "method": name,
            "what": METHODS[name].what if name in METHODS else name,
            "seeds": seeds,
            "accuracy": _mean_se(acc),
            "initial_accuracy": _mean_se([100 * got[s]["initial_test_accuracy"] for s in seeds]),
            "completions": statistics.fmean(got[s]["completions"] for s in seeds),
            "tokens": statistics.fmean(got[s]["tokens"] for s in seeds),
            "grpo_seconds": _mean_se([got[s]["grpo_seconds"] for s in seeds]),
            "optimizer_steps": statistics.fmean(got[s]["optimizer_steps"] for s in seeds),
            "saved_fraction": statistics.fmean(got[s]["saved_fraction"] for s in seeds),
            "per_level": {
                level: _mean_se([100 * got[s]["test_accuracy_per_level"][level] for s in seeds])
                for level in got[seeds[0]]["test_accuracy_per_level"]
            },
            "accuracy_per_pass": [
                statistics.fmean(100 * got[s]["passes"][i]["test_accuracy"] for s in seeds)
                for i in range(min(len(got[s]["passes"]) for s in seeds))
            ],
            "kept_per_pass": [
                statistics.fmean(got[s]["kept_per_pass"][i] for s in seeds)
                for i in range(min(len(got[s]["kept_per_pass"]) for s in seeds))
            ],
            "zero_variance_per_pass": [
                statistics.fmean(
                    100 * (got[s]["passes"][i]["all_solved"] + got[s]["passes"][i]["all_failed"])
                    for s in seeds
                )
                for i in range(min(len(got[s]["passes"]) for s in seeds))
            ],
        }
        if paired:

            def diffs(
                fn: Any, pairs: list[int] = paired, runs: Any = got, b: Any = base
            ) -> list[float]:
                return [fn(runs[s], b[s]) for s in pairs]

            row["minus_grpo"] = _mean_se(
                diffs(lambda r, g: 100 * (r["test_accuracy"] - g["test_accuracy"]))
            )
            row["rollout_saving"] = _mean_se(
                diffs(lambda r, g: 100 * (1 - r["completions"] / g["completions"]))
            )
            row["token_saving"] = _mean_se(
                diffs(lambda r, g: 100 * (1 - r["tokens"] / g["tokens"]))
            )
            row["wall_clock_saving"] = _mean_se(
                diffs(lambda r, g: 100 * (1 - r["grpo_seconds"] / g["grpo_seconds"]))
            )
            at_tokens = [(got[s], accuracy_at(base[s], got[s]["tokens"], "tokens")) for s in paired]
            row["minus_grpo_at_equal_tokens"] = _mean_se(
                [100 * (r["test_accuracy"] - a) for r, a in at_tokens if a is not None]
            )
            at_seconds = [
                (got[s], accuracy_at(base[s], got[s]["grpo_seconds"], "seconds")) for s in paired
            ]
            valid = [100 * (r["test_accuracy"] - a) for r, a in at_seconds if a is not None]
            row["minus_grpo_at_equal_seconds"] = _mean_se(valid) if valid else None
            budgets = {}
            for fraction in BUDGETS:
                values = [accuracy_at(got[s], fraction * base[s]["tokens"]) for s in paired]
                budgets[str(fraction)] = (
                    _mean_se([100 * v for v in values if v is not None])
                    if all(v is not None for v in values)
                    else None
                )
            row["accuracy_at_token_budget"] = budgets
        rows.append(row)
    return {"rows": rows}


def _pm(value: Sequence[float | None] | None, digits: int = 2, sign: bool = True) -> str:
    if value is None:
        return "-"
    mean, se = value[0], value[1]
    assert mean is not None
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text + (f" ± {se:.{digits}f}" if se is not None else "")


def format_table(summary: dict[str, Any]) -> str:
    """The main comparison as a markdown table."""
    lines = [
        "| method | seeds | held-out acc % | - plain GRPO (points) | rollouts (completions) "
        "| rollouts saved % | generated tokens | tokens saved % | GRPO wall-clock s "
        "| wall-clock saved % | - plain GRPO at equal tokens | optimizer steps |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in summary["rows"]:
        base = row["method"] == BASELINE
        lines.append(
            f"| {row['method']}: {row['what']} | {len(row['seeds'])} "
            f"| {_pm(row['accuracy'], sign=False)} "
            f"| {'-' if base else _pm(row.get('minus_grpo'))} "
            f"| {row['completions']:,.0f} "
            f"| {'-' if base else _pm(row.get('rollout_saving'), 1, sign=False)} "
            f"| {row['tokens']:,.0f} "
            f"| {'-' if base else _pm(row.get('token_saving'), 1, sign=False)} "
            f"| {_pm(row['grpo_seconds'], 1, sign=False)} "
            f"| {'-' if base else _pm(row.get('wall_clock_saving'), 1)} "
            f"| {'-' if base else _pm(row.get('minus_grpo_at_equal_tokens'))} "
            f"| {row['optimizer_steps']:.0f} |"
        )
    return "\n".join(lines)


def format_budgets(summary: dict[str, Any]) -> str:
    """Held-out accuracy at fractions of plain GRPO's generated tokens (same seed)."""
    lines = [
        "| method | " + " | ".join(f"{100 * f:.0f}% of GRPO's tokens" for f in BUDGETS) + " |",
        "| --- |" + " ---: |" * len(BUDGETS),
    ]
    for row in summary["rows"]:
        budgets = row.get("accuracy_at_token_budget")
        if budgets is None:
            continue
        cells = [_pm(budgets[str(f)], 1, sign=False) for f in BUDGETS]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_curves(summary: dict[str, Any]) -> str:
    """Mean held-out accuracy after each pass, kept prompts per pass, and the share of
    zero-variance groups among the prompts rolled out."""
    rows = summary["rows"]
    if not rows:
        return ""
    passes = max(len(r["accuracy_per_pass"]) for r in rows)
    header = " | ".join(f"pass {i}" for i in range(passes))
    lines = [
        f"| method | quantity | start | {header} |",
        "| --- | --- | ---: |" + " ---: |" * passes,
    ]
    for row in rows:
        start = f"{row['initial_accuracy'][0]:.1f}"
        cells = [f"{v:.1f}" for v in row["accuracy_per_pass"]]
        lines.append(f"| {row['method']} | held-out acc % | {start} | " + " | ".join(cells) + " |")
        cells = [f"{v:.0f}" for v in row["kept_per_pass"]]
        lines.append(f"| {row['method']} | prompts rolled out | | " + " | ".join(cells) + " |")
        cells = [f"{v:.0f}" for v in row["zero_variance_per_pass"]]
        lines.append(f"| {row['method']} | zero-variance groups % | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_levels(summary: dict[str, Any]) -> str:
    """Held-out accuracy per difficulty level (digits), at the start and at the end."""
    rows = summary["rows"]
    if not rows:
        return ""
    levels = list(rows[0]["per_level"])
    lines = [
        "| method | " + " | ".join(f"{lv} digit{'s' if lv != '1' else ''}" for lv in levels) + " |",
        "| --- |" + " ---: |" * len(levels),
    ]
    for row in rows:
        cells = [_pm(row["per_level"][lv], 1, sign=False) for lv in levels]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def initial_levels(runs: list[dict[str, Any]]) -> dict[str, tuple[float, float | None]]:
    """The supervised models' held-out accuracy per level (one per seed), mean ± SE."""
    first: dict[int, dict[str, Any]] = {}
    for run in runs:
        first.setdefault(run["seed"], run)
    if not first:
        return {}
    levels = list(next(iter(first.values()))["initial_test_accuracy_per_level"])
    return {
        lv: _mean_se([100 * r["initial_test_accuracy_per_level"][lv] for r in first.values()])
        for lv in levels
    }


# ------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="methods"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 8 prompts per level, 2 passes, 1 seed (unless --seeds is given)",
    )
    for field in dataclasses.fields(GRPOConfig):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(field.default), default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--cache-dir",
        default=str(Path(tempfile.gettempdir()) / "infobatch-grpo-sft"),
        help="folder of the supervised checkpoints ('' to keep them in memory only)",
    )
    parser.add_argument(
        "--output",
        default=str(REPO_ROOT / "benchmarks" / "results" / "grpo.json"),
        help="JSON file of runs and summary (runs already there are reused)",
    )
    args = parser.parse_args(argv)
    args.explicit_seeds = "--seeds" in (argv if argv is not None else sys.argv[1:])
    return args


def config_of(args: argparse.Namespace) -> GRPOConfig:
    """The settings: the defaults (or ``QUICK``) with the hidden per-field flags applied."""
    config = QUICK if args.quick else GRPOConfig()
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(GRPOConfig)
        if getattr(args, f.name) is not None
    }
    return dataclasses.replace(config, **changes)


def main(argv: list[str] | None = None) -> int:
    """Train every missing run, then print the tables and write the JSON."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = config_of(args)
    seeds = args.seeds if (args.explicit_seeds or not args.quick) else [0]
    settings = asdict(config)
    store = Store(Path(args.output), settings)
    cache = SFTCache(Path(args.cache_dir) if args.cache_dir else None)
    methods = [m for m in METHODS if m in args.methods]
    command = "python benchmarks/grpo.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    started = time.perf_counter()
    task = make_task(config)
    print(
        f"{TASK}: {len(task.train)} training prompts, {len(task.test)} held-out; "
        f"methods {methods}; seeds {seeds}",
        flush=True,
    )
    environment = {
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for seed in seeds:
        missing = [m for m in methods if store.find(m, seed) is None]
        if not missing:
            continue
        seed_started = time.perf_counter()
        results = train_seed(config, task, seed, missing, store, cache)
        stamp = {
            "settings": settings,
            "command": command,
            "environment": {
                **environment,
                "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            },
            "seed_seconds": time.perf_counter() - seed_started,
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        store.add([{**r, **stamp} for r in results], {"settings": settings, "command": command})
        for r in results:
            print(
                f"seed {seed} {r['method']:22s} acc {100 * r['test_accuracy']:6.2f}% "
                f"(start {100 * r['initial_test_accuracy']:5.2f}%)  "
                f"rollouts {r['completions']:6d}  tokens {r['tokens']:7d}  "
                f"saved {100 * r['saved_fraction']:5.1f}%  {r['grpo_seconds']:6.1f}s",
                flush=True,
            )
    summary = summarise(store.current())
    store.add(
        [],
        {
            "settings": settings,
            "command": command,
            "total_seconds": time.perf_counter() - started,
            "summary": summary,
        },
    )
    print()
    print(format_table(summary))
    print()
    print(format_budgets(summary))
    print()
    print(format_curves(summary))
    print(f"wrote {args.output} ({time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
