"""InfoBatch for TRL's ``GRPOTrainer``: unbiased prompt pruning, :class:`InfoBatchGRPOTrainer`.

Usage (the lines a user changes)::

    from infobatch.integrations.trl import InfoBatchGRPOTrainer

    trainer = InfoBatchGRPOTrainer(           # was: GRPOTrainer(
        model=model, args=GRPOConfig(..., num_train_epochs=8),
        reward_funcs=reward, train_dataset=prompts,
        prune_ratio=0.5, delta=0.875,         # InfoBatch settings
    )
    trainer.train()                           # resume_from_checkpoint=... works as usual

Each pass over the prompts (a Trainer epoch) is planned by :class:`~infobatch.PromptPruning`:
prompts whose last rollout group scored below the mean (the group's reward standard
deviation, by default) are skipped with probability ``prune_ratio`` and never generated for;
the kept ones among them get their advantages multiplied by the rule's weight (about
``1 / (1 - prune_ratio)``). What the subclass does, through documented override points only:

* ``_get_train_sampler`` / ``get_train_dataloader``: the sampler yields TRL's layout (each
  kept prompt ``num_generations`` times in a row, each generation batch repeated
  ``num_iterations * steps_per_generation`` times) over the pass's kept prompts; Accelerate
  shards it across processes as it shards TRL's own sampler, so all completions of a prompt
  are scored together wherever they were generated. Every pass's kept count fills whole
  generation batches (:class:`~infobatch.BatchAlignedPruning`); a pass without pruning whose
  prompt count is not a multiple of the generation batch leaves out the last partial batch,
  as TRL's sampler does.
* ``_generate_and_score_completions`` (training only): checks that the gathered generation
  batch holds whole groups of the sampler's next prompts, multiplies each completion's
  advantage by its prompt's weight, and keeps the gathered group rewards; after the last
  update that uses those completions (``training_step``) they become the prompts' scores.
* The schedule, checkpoints and logs are those of every InfoBatch Trainer
  (:mod:`infobatch.integrations._trainer`): the learning rate follows the fraction of the run
  done, in optimizer steps, and ends at the last step; each process writes
  ``infobatch_state_rank{R}.pt`` into every checkpoint, which also holds, mid-block, TRL's
  buffered completions, so a resumed run generates nothing twice and continues exactly.
  Logs add ``infobatch/saved_fraction``, ``infobatch/prompts_skipped``,
  ``infobatch/rollouts``, ``infobatch/rollouts_saved`` and ``infobatch/tokens_saved``
  (estimated: skipped rollouts times the pass's mean completion length), and each pass's
  statistics (counted in prompts) at its end.

The rescaling is exact for the clipped policy term of every loss type (a positive factor
leaves the ``min`` of the clipped objective unchanged); how each loss's normalisation and the
KL term interact with it is in ``docs/integrations.md``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, Sampler

from ..errors import InfoBatchError
from ..lifecycle import Phase
from ..prompts import PromptPruning, PromptScore
from ._trainer import EpochLoader, TrainerIntegration, check_epoch_arguments

#: The oldest TRL release this integration is tested with.
MIN_TRL_VERSION = "1.16"


def _check_trl_version() -> None:
    from packaging.version import Version

    try:
        found = version("trl")
    except PackageNotFoundError as error:  # pragma: no cover - exercised only without TRL
        raise ImportError(
            'infobatch.integrations.trl needs TRL; install it with pip install "infobatch[trl]"'
        ) from error
    if Version(found) < Version(MIN_TRL_VERSION):
        raise ImportError(
            f"infobatch.integrations.trl needs trl>={MIN_TRL_VERSION} (its GRPOTrainer's "
            f"sampler and reward layout), found trl {found}; upgrade with "
            f'pip install "trl>={MIN_TRL_VERSION}"'
        )


_check_trl_version()

try:
    from trl import GRPOTrainer
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'infobatch.integrations.trl needs TRL; install it with pip install "infobatch[trl]"'
    ) from error

__all__ = ["INDEX_KEY", "MIN_TRL_VERSION", "InfoBatchGRPOTrainer"]

#: Row key carrying each prompt's dataset index (removed before TRL sees the rows).
INDEX_KEY = "infobatch_index"


class _IndexedPrompts(Dataset[dict[str, Any]]):
    """Row ``i`` is the dataset's row ``i`` (a dict) with its index under :data:`INDEX_KEY`."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[index]
        if not isinstance(row, dict):
            raise TypeError(
                f"InfoBatchGRPOTrainer needs dataset rows that are dicts (with a 'prompt'), "
                f"got {type(row).__name__}"
            )
        return {**row, INDEX_KEY: index}


class _GenerationSampler(Sampler[int]):
    """TRL's ``RepeatSampler`` layout over each pass's kept prompts (the same on every rank).

    For each batch of ``B`` kept prompts: each prompt ``num_generations`` times in a row, the
    whole block ``repeat`` times (``num_iterations * steps_per_generation``). After a resume
    inside a block, the first block is shortened by the copies already trained.
    """

    def __init__(self, pruning: PromptPruning, num_generations: int, repeat: int) -> None:
        self.pruning = pruning
        self.num_generations = num_generations
        self.repeat = repeat
        self.skip_copies = 0  # set on a resume inside a block

    def __len__(self) -> int:
        """The full pass's length (the longest): the Trainer sizes its epochs with it."""
        pruning = self.pruning
        blocks = pruning.num_prompts // pruning.batch_size
        return blocks * pruning.batch_size * self.num_generations * self.repeat

    def __iter__(self) -> Iterator[int]:
        skip, self.skip_copies = self.skip_copies, 0
        for prompts in self.pruning.batches():
            rows = prompts.repeat_interleave(self.num_generations).tolist()
            for _ in range(self.repeat - skip):
                yield from rows
            skip = 0


class _GenerationProgress:
    """Fraction of the run done, in optimizer steps, from the pruning state and TRL's step.

    A pass of ``K`` kept prompts has ``K // B`` blocks of ``block_steps`` optimizer steps; a
    block's prompts count as done once its last step is taken (their scores are recorded then).
    """

    def __init__(self, trainer: InfoBatchGRPOTrainer, block_steps: int) -> None:
        self.trainer = trainer
        self.pruning: PromptPruning = trainer.infobatch
        self.sampler = self.pruning.sampler
        self.block_steps = block_steps

    def units(self, prompts: int) -> int:
        """Optimizer steps of a pass that keeps ``prompts``."""
        return (prompts // self.pruning.batch_size) * self.block_steps

    @property
    def fraction(self) -> float:
        """Fraction of the run done, in ``[0, 1]``."""
        sampler, trainer = self.sampler, self.trainer
        total = self.units(sampler.epoch_length)
        if sampler.phase is Phase.COMPLETE:
            within = 1.0
        elif total == 0:
            within = 0.0
        else:
            blocks = sampler.position // self.pruning.batch_size
            into = trainer._step % trainer._infobatch_generate_every
            steps = blocks * self.block_steps + into // trainer.args.gradient_accumulation_steps
            within = min(steps, total) / total
        return min(1.0, max(0.0, (sampler.epoch + within) / self.pruning.num_passes))

    def __call__(self) -> float:
        return self.fraction


class InfoBatchGRPOTrainer(TrainerIntegration, GRPOTrainer):  # type: ignore[misc]
    """A TRL ``GRPOTrainer`` that skips well-learned prompts (see the module docstring).

    Takes the ``GRPOTrainer``'s arguments, plus:

    Args:
        prune_ratio (float, optional): probability ``r`` of skipping a below-mean prompt in a
            pass. Default: ``0.5``.
        delta (float, optional): fraction of passes that are pruned. Default: ``0.875``.
        seed (int, optional): InfoBatch's seed. Default: ``args.data_seed``, else ``args.seed``.
        score (str or callable, optional): the prompt score, ``"reward_std"`` (default),
            ``"success_variance"`` or ``fn(rewards [P, G]) -> [P]`` (see
            :func:`~infobatch.prompt_scores`); rewards are the reward functions' weighted sum.

    ``args.num_train_epochs`` is the number of passes over the prompts (a whole number; pruning
    saves from the second pass on). The :class:`~infobatch.PromptPruning` is :attr:`infobatch`.
    """

    args: Any
    infobatch: PromptPruning
    train_dataset: Any
    _step: int
    _buffered_inputs: Any
    num_generations: int
    num_iterations: int

    def __init__(
        self,
        *args: Any,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        seed: int | None = None,
        score: Union[str, PromptScore] = "reward_std",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.args, epochs = check_epoch_arguments(self.args, type(self).__name__)
        targs = self.args
        dataset = self.train_dataset
        if isinstance(dataset, IterableDataset) or not isinstance(dataset, Sized):
            raise ValueError(
                "InfoBatchGRPOTrainer needs a map-style train_dataset with a length (a "
                "datasets.Dataset or a torch Dataset of dicts): prompts are skipped by index"
            )
        if not self.shuffle_dataset:
            raise ValueError(
                "InfoBatchGRPOTrainer shuffles each pass's kept prompts; shuffle_dataset=False "
                "is not supported"
            )
        accumulation = targs.gradient_accumulation_steps
        self._infobatch_generate_every = targs.steps_per_generation * self.num_iterations
        if self._infobatch_generate_every % accumulation:
            raise ValueError(
                f"InfoBatchGRPOTrainer needs steps_per_generation * num_iterations "
                f"({targs.steps_per_generation} * {self.num_iterations}) to be a multiple of "
                f"gradient_accumulation_steps ({accumulation}), so every generation batch makes "
                "whole optimizer steps and passes end on a step"
            )
        prompts_per_batch = targs.generation_batch_size // self.num_generations
        if prompts_per_batch > len(dataset):
            raise ValueError(
                f"a generation batch holds {prompts_per_batch} prompts but the train_dataset has "
                f"only {len(dataset)}; lower generation_batch_size"
            )
        if seed is None:
            seed = targs.data_seed if targs.data_seed is not None else targs.seed
        self.infobatch = PromptPruning(
            len(dataset),
            epochs,
            prune_ratio,
            delta,
            batch_size=prompts_per_batch,
            whole_batches=True,
            score=score,
            seed=seed,
        )
        self.train_dataset = _IndexedPrompts(dataset)
        self._infobatch_sampler = _GenerationSampler(
            self.infobatch, self.num_generations, self._infobatch_generate_every
        )
        #: Fraction of the run done, in optimizer steps (drives the schedule and ``state.epoch``).
        self.infobatch_progress = _GenerationProgress(
            self, self._infobatch_generate_every // accumulation
        )
        self._infobatch_rewards: Tensor | None = None  # the gathered rewards of the last batch
        self._infobatch_block: tuple[Tensor, Tensor] | None = None  # prompts, rewards [P, G]
        self._infobatch_tokens: dict[int, list[int]] = {}  # pass -> [tokens, completions]
        self._infobatch_setup(epochs)

    # ------------------------------------------------------------------ data
    def _get_train_sampler(self, dataset: Any = None) -> Sampler[int]:
        """The pass's kept prompts in TRL's generation layout (see the module docstring)."""
        return self._infobatch_sampler

    def get_train_dataloader(self) -> EpochLoader:  # type: ignore[override]
        """TRL's prepared loader over the InfoBatch sampler, one pass per iteration."""
        loader = super().get_train_dataloader()
        pruning = self.infobatch
        length = (pruning.num_prompts // pruning.batch_size) * self._infobatch_generate_every
        return self._infobatch_epochs(loader, length, self.args.gradient_accumulation_steps)

    # ------------------------------------------------------------------ rewards and advantages
    def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Tensor:
        """TRL's rewards (gathered over processes); kept for the prompts' scores."""
        rewards: Tensor = super()._calculate_rewards(*args, **kwargs)
        self._infobatch_rewards = rewards
        return rewards

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's generation and scoring; in training, advantages times the prompts' weights."""
        training = self.model.training and all(INDEX_KEY in row for row in inputs)
        local = torch.tensor([row.get(INDEX_KEY, -1) for row in inputs], dtype=torch.int64)
        rows = [{k: v for k, v in row.items() if k != INDEX_KEY} for row in inputs]
        self._infobatch_rewards = None
        output: dict[str, Any] = super()._generate_and_score_completions(rows)
        if not training:
            return output
        mask = output.get("completion_mask")
        tokens = int(mask.sum()) if isinstance(mask, Tensor) else 0
        prompts, rewards, total_tokens = self._gathered_groups(local, tokens)
        weights = self.infobatch.weights_of(prompts)
        rank, size = self.accelerator.process_index, len(rows)
        per_row = weights.repeat_interleave(self.num_generations)
        row_weights = per_row[rank * size : (rank + 1) * size]
        advantages = output["advantages"]
        shape = (-1,) + (1,) * (advantages.ndim - 1)
        output["advantages"] = advantages * row_weights.to(advantages).view(shape)
        self._infobatch_block = (prompts, rewards)
        counts = self._infobatch_tokens.setdefault(self.infobatch.epoch, [0, 0])
        counts[0] += total_tokens
        counts[1] += int(rewards.numel())
        return output

    def _gathered_groups(self, local: Tensor, tokens: int) -> tuple[Tensor, Tensor, int]:
        """The generation batch's prompts (one per group), rewards ``[P, G]`` and completion
        tokens, by one gather; the prompts are checked to be whole groups of the sampler's next
        prompts."""
        mine = torch.cat([local, torch.tensor([tokens], dtype=torch.int64)])
        every = self.accelerator.gather(mine.to(self.accelerator.device)).cpu()
        every = every.view(self.accelerator.num_processes, -1)
        gathered, total_tokens = every[:, :-1].reshape(-1), int(every[:, -1].sum())
        per_func = self._infobatch_rewards
        if per_func is None:
            raise InfoBatchError(
                "GRPOTrainer scored the completions without _calculate_rewards; this TRL "
                "version's flow is not supported by InfoBatchGRPOTrainer"
            )
        weights = self.reward_weights.to(per_func.device)
        rewards = (per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = float("nan")  # no reward at all: no score
        size = self.num_generations
        groups = gathered.view(-1, size)
        if not bool((groups == groups[:, :1]).all()):
            raise InfoBatchError(
                "a generation batch does not hold whole groups of one prompt each (TRL's "
                "layout: num_generations copies of a prompt in a row); InfoBatch cannot score "
                "the prompts"
            )
        prompts = groups[:, 0].contiguous()
        sampler = self.infobatch.sampler
        plan = sampler.plan
        start = sampler.position
        expected = None if plan is None else plan.order[start : start + prompts.numel()].cpu()
        if expected is None or not torch.equal(prompts, expected.to(torch.int64)):
            raise InfoBatchError(
                f"the generation batch holds prompts {prompts.tolist()[:8]}... but the sampler's "
                f"next ones are {None if expected is None else expected.tolist()[:8]}...; the "
                "train dataloader must be the one get_train_dataloader() builds"
            )
        return prompts, rewards.view(-1, size).float().cpu(), total_tokens

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Tensor:
        """TRL's step; after the last update with a generation batch, its prompts' scores."""
        loss: Tensor = super().training_step(model, inputs, num_items_in_batch)
        if self._infobatch_block is not None and self._step % self._infobatch_generate_every == 0:
            prompts, rewards = self._infobatch_block
            self._infobatch_block = None
            self.infobatch.update(prompts, rewards)
        return loss

    # ------------------------------------------------------------------ checkpoints
    def _infobatch_extra_state(self) -> dict[str, Any]:
        into = self._step % self._infobatch_generate_every
        mid_block = into != 0 and self._infobatch_block is not None
        return {
            "trl_step_in_block": into if mid_block else 0,
            "block": self._infobatch_block if mid_block else None,
            "buffered_inputs": self._buffered_inputs if mid_block else None,
            "tokens": {k: list(v) for k, v in self._infobatch_tokens.items()},
        }

    def _infobatch_load_extra_state(self, state: dict[str, Any], checkpoint: str) -> None:
        self._infobatch_tokens = {int(k): list(v) for k, v in state.get("tokens", {}).items()}
        into = int(state.get("trl_step_in_block", 0))
        self._step = into
        self._infobatch_sampler.skip_copies = into
        self._infobatch_block = state.get("block")
        buffered = state.get("buffered_inputs")
        if buffered is not None:
            device = self.accelerator.device
            buffered = [
                {k: v.to(device) if isinstance(v, Tensor) else v for k, v in part.items()}
                for part in buffered
            ]
        self._buffered_inputs = buffered

    def _infobatch_resumes_inside_epoch(self) -> bool:
        return self._step > 0 or super()._infobatch_resumes_inside_epoch()

    # ------------------------------------------------------------------ logs
    def _infobatch_log_extra(self, logs: dict[str, float]) -> None:
        history = self.infobatch.history
        generations = self.num_generations
        skipped = sum(stats.num_pruned for stats in history)
        tokens_saved = 0.0
        for stats in history:
            tokens, completions = self._infobatch_tokens.get(stats.epoch, (0, 0))
            if completions:
                tokens_saved += stats.num_pruned * generations * tokens / completions
        logs["infobatch/prompts_skipped"] = float(skipped)
        logs["infobatch/rollouts"] = float(sum(self.infobatch.rollouts.values()))
        logs["infobatch/rollouts_saved"] = float(skipped * generations)
        logs["infobatch/tokens_saved"] = tokens_saved
