"""InfoBatch at the prompt level, for RL post-training with group rollouts (GRPO and kin).

Each prompt is scored by its last rollout group: by default the standard deviation of the
group's rewards (:func:`prompt_scores`). A group whose rewards are all equal (every completion
solved, or every one failed) scores 0 and teaches nothing: its advantages are all 0. Each pass
over the prompts, prompts scoring below the mean are skipped with probability ``r`` and never
generated for; the kept ones among them get their advantages multiplied by ``1 / (1 - r)``, so
the expected policy gradient of the pass equals the full pass's at the same policy. Never
scored prompts are always kept; passes from ``delta`` of the run on keep every prompt.

A hand-written loop (any GRPO/PPO-style trainer with a group of completions per prompt)::

    pruning = PromptPruning(len(prompts), num_passes=8, batch_size=32, seed=0)
    while not pruning.finished:
        for batch in pruning.batches():                # prompt indices, this pass's kept ones
            rewards = rollout(policy, batch)           # [len(batch), G], G completions each
            weights = pruning.update(batch, rewards)   # [len(batch)]: 1 or 1 / (1 - r)
            advantages = group_advantages(rewards) * weights[:, None]
            step(policy, advantages)

Under several processes, give every process the same ``PromptPruning`` (same seed) and call
:meth:`PromptPruning.update` on each with the whole batch's gathered rewards: every process
then holds the same scores and plans, with no collective of infobatch's own.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
from torch import Tensor

from .lifecycle import Phase
from .regime import ShortScheduleWarning
from .rng import random_mask, random_permutation
from .rule import KEPT, PRUNED, UPWEIGHTED, MeanThreshold, Selection, SoftPruning
from .sampler import InfoBatchSampler
from .stats import EpochStats
from .validation import check_flag, check_positive_int

__all__ = [
    "PROMPT_SCORES",
    "BatchAlignedPruning",
    "PromptPruning",
    "PromptScore",
    "prompt_scores",
]

#: ``score(rewards) -> Tensor``: rewards ``[P, G]`` (``nan`` = a completion without reward)
#: to one score per prompt ``[P]`` (``nan`` = no score).
PromptScore = Callable[[Tensor], Tensor]
#: The built-in prompt scores, by name.
PROMPT_SCORES = ("reward_std", "success_variance")


def prompt_scores(rewards: Tensor, kind: str = "reward_std") -> Tensor:
    """One score per prompt from its group's rewards ``[P, G]`` (float32 ``[P]``).

    * ``"reward_std"`` (the default): the population standard deviation of the group's
      rewards, ignoring ``nan`` ones. It is the scale of the group's advantages before
      normalisation, so it measures what the group can still teach for any reward (binary,
      graded, learned); 0 for a group whose rewards are all equal. For 0/1 rewards it is
      ``sqrt(p (1 - p))`` of the success rate ``p``.
    * ``"success_variance"``: ``p (1 - p)`` of the success rate, for rewards in ``{0, 1}``
      (raises otherwise). It ranks prompts as ``"reward_std"`` does, but its mean threshold
      sits lower (it is the square), so fewer prompts fall below it.

    A prompt with fewer than one reward that is not ``nan`` gets ``nan`` (no score).
    """
    if not isinstance(rewards, Tensor) or rewards.ndim != 2 or not rewards.is_floating_point():
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(
            f"rewards must be a float tensor of shape [num_prompts, num_generations] (one row "
            f"per prompt, one column per completion), got {shape}"
        )
    values = rewards.detach().float()
    present = ~torch.isnan(values)
    count = present.sum(dim=1)
    filled = torch.where(present, values, 0.0)
    mean = filled.sum(dim=1) / count.clamp(min=1)
    if kind == "reward_std":
        squares = torch.where(present, (values - mean[:, None]) ** 2, 0.0)
        score = (squares.sum(dim=1) / count.clamp(min=1)).sqrt()
    elif kind == "success_variance":
        binary = (values == 0) | (values == 1) | ~present
        if not bool(binary.all()):
            raise ValueError(
                "score='success_variance' needs rewards in {0, 1} (exact match); these rewards "
                "take other values: use score='reward_std'"
            )
        score = mean * (1 - mean)
    else:
        raise ValueError(f"score must be one of {PROMPT_SCORES} or a function, got {kind!r}")
    return torch.where(count > 0, score, float("nan"))


@dataclass(frozen=True)
class BatchAlignedPruning:
    """The InfoBatch rule with a kept count that fills whole rollout batches.

    A trainer whose rollout batches have a fixed number of prompts (TRL's ``GRPOTrainer``)
    cannot train a smaller last batch. This rule skips exactly ``m`` of the ``W`` prompts
    below the mean score, ``m`` chosen so that the kept count ``N - m`` is a multiple of
    ``batch_size``, with ``E[m] = prune_ratio * W`` (the two nearest such counts, drawn at
    random). The ``m`` skipped ones are a uniformly random subset of the ``W``, so each is
    kept with probability ``(W - m) / W``, and the kept ones get weight ``W / (W - m)``: given
    ``m``, the expected weighted sum over the pass equals the full pass's, exactly. When no
    such count exists (fewer prompts below the mean than ``N mod batch_size``), it falls back
    to :class:`SoftPruning`'s coin flips, and the trainer leaves out the last partial batch
    (as TRL's sampler leaves it out of a full pass).

    Args:
        prune_ratio (float): the expected fraction of below-mean prompts skipped, in ``[0, 1)``.
        batch_size (int): prompts per rollout batch, at least 1.
    """

    prune_ratio: float = 0.5
    batch_size: int = 1

    def __post_init__(self) -> None:
        SoftPruning(self.prune_ratio)  # the same checks and messages
        check_positive_int("batch_size", self.batch_size)

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """Skip ``m`` below-mean prompts chosen uniformly (see the class docstring)."""
        below = MeanThreshold.of(scores)
        well = torch.lt(scores, below.threshold)  # nan: never below
        num_well = int(torch.count_nonzero(well))
        num_scored = int(below.num_scored)
        skip = self._skip_count(scores.numel(), num_well, generator)
        if skip is None:
            return SoftPruning(self.prune_ratio).select_below(scores, generator, below)
        threshold = float(below.mean) if num_scored else float("nan")
        status = torch.full((scores.numel(),), KEPT, dtype=torch.int8, device=scores.device)
        status.masked_fill_(well, UPWEIGHTED)
        if skip:
            candidates = torch.nonzero(well).view(-1)
            chosen = random_permutation(num_well, generator, scores.device, torch.int64)[:skip]
            status.index_fill_(0, candidates.index_select(0, chosen), PRUNED)
        weight = num_well / (num_well - skip) if num_well else 1.0
        return Selection(status, weight, threshold, num_scored, num_well)

    def _skip_count(self, total: int, num_well: int, generator: torch.Generator) -> int | None:
        """``m`` with ``(total - m) % batch_size == 0``, ``0 <= m < num_well`` (or ``m = 0``
        when nothing is below the mean), drawn so ``E[m] = prune_ratio * num_well``."""
        size = self.batch_size
        remainder = total % size
        top = num_well - 1 if num_well else 0
        if remainder > top:
            return None
        target = self.prune_ratio * num_well
        low = remainder + size * max(0, math.floor((target - remainder) / size))
        low = min(low, remainder + size * ((top - remainder) // size))
        high = low + size
        if target <= low or high > top:
            return low
        # E[m] = target: high with probability (target - low) / size, drawn from the generator
        take_high = bool(random_mask(1, (target - low) / size, generator, torch.device("cpu")))
        return high if take_high else low


ScoreLike = Union[str, PromptScore]


class PromptPruning:
    """InfoBatch's rule over prompts: which prompts a pass generates for, and their weights.

    Args:
        num_prompts (int): prompts in the dataset, at least 1.
        num_passes (int): passes over the prompts in the run, at least 1 (sets annealing:
            passes at or past ``delta * num_passes`` keep every prompt).
        prune_ratio (float, optional): ``r``, the probability of skipping a below-mean prompt.
            Default: ``0.5``.
        delta (float, optional): fraction of passes that are pruned. Default: ``0.875``.
        batch_size (int, optional): prompts per rollout batch, for :meth:`batches`.
            Default: ``1``.
        whole_batches (bool, optional): every batch holds exactly ``batch_size`` prompts (for
            trainers with fixed rollout batches): pruned passes use
            :class:`BatchAlignedPruning`, and a pass's last partial batch, if any remains, is
            left out (counted in :attr:`left_out`). Default: ``False`` (the last batch may be
            smaller).
        score (str or callable, optional): ``"reward_std"``, ``"success_variance"`` (see
            :func:`prompt_scores`) or your ``score(rewards) -> [P]``. Default: ``"reward_std"``.
        seed (int, optional): seed of the skipping and shuffling draws. Default:
            ``torch.initial_seed()``.
        rule (PruningRule, optional): replaces the default rule (e.g. a random baseline).
            The rule decides every pass, the first included: the default rules keep prompts
            that have no score yet, a random baseline such as
            :class:`~infobatch.policies.DynamicRandom` may skip them.

    The passes are the epochs of an :class:`~infobatch.InfoBatchSampler` (:attr:`sampler`),
    whose statistics (:attr:`history`, :attr:`saved_fraction`) count prompts.
    """

    def __init__(
        self,
        num_prompts: int,
        num_passes: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        *,
        batch_size: int = 1,
        whole_batches: bool = False,
        score: ScoreLike = "reward_std",
        seed: int | None = None,
        rule: Any = None,
    ) -> None:
        check_positive_int("batch_size", batch_size)
        self.batch_size = batch_size
        self.whole_batches = check_flag("whole_batches", whole_batches)
        if isinstance(score, str) and score not in PROMPT_SCORES:
            raise ValueError(f"score must be one of {PROMPT_SCORES} or a function, got {score!r}")
        self.score = score
        if rule is None and whole_batches and prune_ratio > 0:
            rule = BatchAlignedPruning(prune_ratio, batch_size)
        with warnings.catch_warnings():
            # its advice (keep_steps) is for supervised epochs; RL passes have no such option
            warnings.simplefilter("ignore", ShortScheduleWarning)
            self.sampler = InfoBatchSampler(
                num_prompts,
                num_passes,
                prune_ratio,
                delta,
                seed=seed,
                num_replicas=1,
                rank=0,
                rule=rule,
            )
        self._left_out: dict[int, int] = {}
        self._rollouts: dict[int, int] = {}  # pass -> completions generated

    # ------------------------------------------------------------------ state
    @property
    def num_prompts(self) -> int:
        """Prompts in the dataset."""
        return self.sampler.num_samples

    @property
    def num_passes(self) -> int:
        """Passes of the run."""
        assert self.sampler.num_epochs is not None
        return self.sampler.num_epochs

    @property
    def epoch(self) -> int:
        """The pass being planned or trained (0-based); once a pass is complete, the next
        one's number (:attr:`num_passes` when the run is :attr:`finished`)."""
        sampler = self.sampler
        return sampler.epoch + (1 if sampler.phase is Phase.COMPLETE else 0)

    @property
    def finished(self) -> bool:
        """Every pass of the run was trained."""
        sampler = self.sampler
        return sampler.epoch >= self.num_passes or (
            sampler.epoch == self.num_passes - 1 and sampler.phase is Phase.COMPLETE
        )

    @property
    def history(self) -> list[EpochStats]:
        """Per-pass statistics, counted in prompts (``num_kept`` includes :attr:`left_out`)."""
        return self.sampler.history

    @property
    def saved_fraction(self) -> float:
        """Prompt rollouts saved so far against full passes."""
        return self.sampler.saved_fraction

    @property
    def left_out(self) -> dict[int, int]:
        """Per pass, kept prompts left out as a last partial batch (``whole_batches``)."""
        return dict(self._left_out)

    @property
    def rollouts(self) -> dict[int, int]:
        """Per pass, completions whose rewards reached :meth:`update`."""
        return dict(self._rollouts)

    def weights_of(self, indices: Tensor | Sequence[int]) -> Tensor:
        """float32 advantage multipliers of ``indices`` in the current pass (1 or the rule's
        weight), on the CPU."""
        plan = self.sampler.plan
        if plan is None:
            raise RuntimeError("no pass is planned yet: iterate batches() first")
        index = torch.as_tensor(indices, dtype=torch.int64).to(plan.status.device)
        return plan.weights_of(index).cpu()

    # ------------------------------------------------------------------ the loop
    def planned_batches(self) -> int:
        """Rollout batches of the current pass (planning it if needed)."""
        len(self.sampler)  # plans the pass if it is not planned yet
        kept = self.sampler.epoch_length
        return kept // self.batch_size if self.whole_batches else -(-kept // self.batch_size)

    def planned_prompts(self) -> int:
        """Prompts the current pass generates for (planning it if needed): the kept ones, less
        a last partial batch that ``whole_batches`` leaves out."""
        count = self.planned_batches() * self.batch_size
        return count if self.whole_batches else self.sampler.epoch_length

    def batches(self) -> Iterator[Tensor]:
        """The current pass's prompt indices (int64) in batches of ``batch_size``; after a
        completed pass, the next pass's. Yields nothing once the run is :attr:`finished`.

        A resumed pass continues after its last :meth:`update`. Call :meth:`update` once per
        batch, in order, before the next batch is used for training decisions.
        """
        if self.finished:
            return
        pending: list[int] = []
        for index in self.sampler:
            pending.append(index)
            if len(pending) == self.batch_size:
                yield torch.tensor(pending, dtype=torch.int64)
                pending = []
        if pending and not self.whole_batches:
            yield torch.tensor(pending, dtype=torch.int64)

    def update(
        self,
        indices: Tensor | Sequence[int],
        rewards: Tensor | None = None,
        *,
        scores: Tensor | None = None,
    ) -> Tensor:
        """Record a batch's rollout rewards ``[P, G]`` (or its ``scores`` ``[P]``) as the
        prompts' scores; return their advantage multipliers (float32 ``[P]``, CPU).

        ``indices`` are the batch's prompt indices as :meth:`batches` yielded them. A prompt
        whose score is ``nan`` (every reward ``nan``) keeps its previous score. With
        ``whole_batches``, the update that completes the last whole batch ends the pass.
        """
        index = torch.as_tensor(indices, dtype=torch.int64)
        if index.ndim != 1:
            raise ValueError(f"indices must be one prompt index per row, got {tuple(index.shape)}")
        if (rewards is None) == (scores is None):
            raise ValueError("give exactly one of rewards ([P, G] per completion) and scores ([P])")
        if rewards is not None:
            if rewards.ndim != 2 or rewards.shape[0] != index.numel():
                raise ValueError(
                    f"rewards must have shape [{index.numel()}, num_generations] (one row per "
                    f"prompt of the batch), got {tuple(rewards.shape)}"
                )
            fn = self.score
            values = prompt_scores(rewards, fn) if isinstance(fn, str) else fn(rewards.detach())
            generated = int(rewards.shape[1]) * index.numel()
        else:
            assert scores is not None
            values, generated = scores.detach(), 0
        values = torch.as_tensor(values, dtype=torch.float32).cpu()
        if values.shape != index.shape:
            raise ValueError(
                f"the scores have shape {tuple(values.shape)}; there must be one per prompt, "
                f"{tuple(index.shape)}"
            )
        weights = self.weights_of(index)
        valid = ~torch.isnan(values)
        sampler = self.sampler
        sampler.update(
            torch.nan_to_num(values), indices=index, valid=None if bool(valid.all()) else valid
        )
        epoch = sampler.epoch
        self._rollouts[epoch] = self._rollouts.get(epoch, 0) + generated
        if self.whole_batches:
            remaining = sampler.epoch_length - sampler.position
            if 0 < remaining < self.batch_size:
                self._left_out[epoch] = remaining
                sampler.end_epoch()
        return weights

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, at a pass boundary or inside a pass."""
        return {
            "sampler": self.sampler.state_dict(),
            "left_out": dict(self._left_out),
            "rollouts": dict(self._rollouts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (same settings)."""
        self.sampler.load_state_dict(state["sampler"])
        self._left_out = {int(k): int(v) for k, v in state["left_out"].items()}
        self._rollouts = {int(k): int(v) for k, v in state["rollouts"].items()}
