"""Learning-rate schedules driven by training progress, for epochs whose length varies.

A framework sizes a step-based schedule once, from the first epoch's length; InfoBatch's pruned
epochs are shorter and their lengths are not known in advance, so such a schedule ends early.
:class:`ProgressLR` evaluates the same schedule at ``progress() * schedule_steps`` after every
optimizer step, where ``progress()`` is the fraction of the run's epochs done, read from the
sampler by :class:`SamplerProgress` (nothing to count, nothing to checkpoint). Without pruning
it reproduces the step-based schedule exactly; with pruning its last step reaches the
schedule's end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable, Union

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from ..dataset import InfoBatch
from ..lifecycle import Phase
from ..sampler import InfoBatchSampler

__all__ = ["ProgressLR", "SamplerProgress", "epochs_of", "full_data_steps"]

LrLambda = Callable[..., float]


def epochs_of(sampler: InfoBatchSampler) -> int:
    """The sampler's ``num_epochs``; the integrations train by epochs, not iterations."""
    if sampler.num_epochs is None:
        raise ValueError(
            "the framework integrations train by epochs: build InfoBatch with num_epochs, "
            "not num_iterations"
        )
    return sampler.num_epochs


class SamplerProgress:
    """Fraction of a run done, read from an InfoBatch sampler's public state.

    ``fraction = (epoch + done / total) / num_epochs`` for the sampler's current epoch, where
    ``done`` and ``total`` count, on this rank, the samples whose losses reached ``update()``
    (``sampler.position``) out of the epoch's planned ones (``sampler.epoch_length``); with
    ``batch_size`` they count the optimizer steps those samples make instead (batches of
    ``batch_size``, ``accumulation`` batches per step, the epoch's last group stepping too).
    An epoch whose last update arrived counts whole. Every rank gets the same value at the same
    step (the ranks' shares have equal lengths).

    The sampler's checkpoint holds its epoch and position, so this object has no state of its
    own: a resumed run continues from the fraction the checkpoint was taken at. Losses count
    when they reach ``update()``, not when a loader prefetches their batch.

    Args:
        sampler (InfoBatchSampler or InfoBatch): the run's sampler (or the dataset holding it).
        batch_size (int, optional): the loader's batch size per rank; counts optimizer steps
            instead of samples. Default: ``None`` (samples).
        accumulation (int, optional): batches per optimizer step, with ``batch_size``.
            Default: ``1``.

    Raises:
        ValueError: the sampler is iteration-based (built with ``num_iterations``).

    Example::

        >>> sampler = InfoBatchSampler(10, num_epochs=2, seed=0)
        >>> progress = SamplerProgress(sampler, batch_size=4)  # 3 batches: 3 steps an epoch
        >>> indices = list(sampler)                              # epoch 0 on this rank
        >>> _ = sampler.update(torch.ones(4))                    # its first batch's losses
        >>> progress.fraction                                    # (0 + 1/3) / 2
        0.16666666666666666
    """

    def __init__(
        self,
        sampler: Union[InfoBatchSampler, InfoBatch[Any]],
        *,
        batch_size: int | None = None,
        accumulation: int = 1,
    ) -> None:
        if isinstance(sampler, InfoBatch):
            sampler = sampler.sampler
        if not isinstance(sampler, InfoBatchSampler):
            raise TypeError(
                f"SamplerProgress needs an InfoBatchSampler or InfoBatch, got "
                f"{type(sampler).__name__}"
            )
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"Invalid batch_size {batch_size}, batch_size should be >= 1")
        if isinstance(accumulation, bool) or accumulation < 1:
            raise ValueError(f"Invalid accumulation {accumulation}, accumulation should be >= 1")
        epochs_of(sampler)  # fails now, with the fix, for an iteration-based sampler
        self.sampler = sampler
        self.batch_size = batch_size
        self.accumulation = accumulation

    def units(self, samples: int) -> int:
        """Units (samples, or optimizer steps with ``batch_size``) of an epoch of ``samples``."""
        if self.batch_size is None:
            return samples
        batches = (
            samples // self.batch_size
            if self.sampler.drop_last
            else math.ceil(samples / self.batch_size)
        )
        return math.ceil(batches / self.accumulation)

    @property
    def done(self) -> int:
        """Units of the current epoch done on this rank."""
        if self.batch_size is None:
            return self.sampler.position
        return math.ceil(self.sampler.position / (self.batch_size * self.accumulation))

    @property
    def fraction(self) -> float:
        """Fraction of the run done, in ``[0, 1]``."""
        sampler = self.sampler
        total = self.units(sampler.epoch_length)
        if sampler.phase is Phase.COMPLETE:
            within = 1.0
        else:
            within = min(self.done, total) / total if total else 0.0
        return min(1.0, max(0.0, (sampler.epoch + within) / epochs_of(sampler)))

    def __call__(self) -> float:
        """:attr:`fraction` (so the object can be passed as ``ProgressLR(progress=...)``)."""
        return self.fraction


class ProgressLR(LRScheduler):
    """A step-based schedule evaluated at ``progress() * schedule_steps`` after each step.

    ``lr_lambdas`` are the multiplicative factors of a :class:`~torch.optim.lr_scheduler.LambdaLR`
    written for ``schedule_steps`` steps (e.g. the Hugging Face schedules: linear, cosine, with
    warmup), one per parameter group or one for all; they are called with a float position.
    ``progress`` returns the fraction of the run done; each :meth:`step` re-evaluates it, so
    the schedule follows the epochs done, not a step count fixed in advance.

    Args:
        optimizer (Optimizer): the optimizer whose learning rates to set.
        lr_lambdas (callable or sequence of callables): factor of the initial learning rate at
            a (float) position in ``[0, schedule_steps]``.
        schedule_steps (int): the length the lambdas were written for (e.g. full-data steps).
        progress (callable): returns the fraction of the run done, in ``[0, 1]``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambdas: Union[LrLambda, Sequence[LrLambda]],
        schedule_steps: int,
        progress: Callable[[], float],
    ) -> None:
        if schedule_steps < 1:
            raise ValueError(
                f"Invalid schedule_steps {schedule_steps}, schedule_steps should be >= 1"
            )
        groups = len(optimizer.param_groups)
        if callable(lr_lambdas):
            self.lr_lambdas: list[LrLambda] = [lr_lambdas] * groups
        else:
            self.lr_lambdas = list(lr_lambdas)
            if len(self.lr_lambdas) != groups:
                raise ValueError(
                    f"got {len(self.lr_lambdas)} lr_lambdas for {groups} parameter groups; give "
                    "one per group or a single one"
                )
        # Not named ``total_steps``: Accelerate's prepared scheduler treats a scheduler with
        # that attribute as a OneCycleLR and stops stepping it after that many calls.
        self.schedule_steps = schedule_steps
        self.progress = progress
        super().__init__(optimizer)

    @classmethod
    def from_lambda_lr(
        cls, scheduler: LambdaLR, schedule_steps: int, progress: Callable[[], float]
    ) -> ProgressLR:
        """Follow the lambdas of an existing ``LambdaLR`` (e.g. from ``get_scheduler``)."""
        if not isinstance(scheduler, LambdaLR):
            raise TypeError(
                f"ProgressLR can follow a LambdaLR (linear, cosine, constant, polynomial... "
                f"schedules), got {type(scheduler).__name__}"
            )
        return cls(scheduler.optimizer, scheduler.lr_lambdas, schedule_steps, progress)

    @property
    def position(self) -> float:
        """Where in the ``schedule_steps``-step schedule the run is now."""
        return self.progress() * self.schedule_steps

    def get_lr(self) -> list[float]:  # type: ignore[override]
        position = self.position
        return [
            float(base) * float(lam(position)) for base, lam in zip(self.base_lrs, self.lr_lambdas)
        ]

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's counters (the lambdas, the progress source and the schedule's length
        belong to the code that builds it, not to the state)."""
        return {key: value for key, value in self.__dict__.items() if key not in _NOT_STATE}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a resumed run may have another ``schedule_steps``,
        e.g. with another number of processes: the position follows the fraction done)."""
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in _NOT_STATE})


_NOT_STATE = ("optimizer", "lr_lambdas", "progress", "schedule_steps")


def full_data_steps(
    num_samples: int,
    batch_size: int,
    num_epochs: int,
    *,
    world_size: int = 1,
    accumulation: int = 1,
    drop_last: bool = False,
) -> int:
    """Optimizer steps of full-data training: the length to write a schedule for.

    Each rank gets ``ceil(num_samples / world_size)`` samples per epoch (InfoBatch pads the
    shares as ``DistributedSampler`` does), in ``batch_size`` batches (the last one dropped if
    partial and ``drop_last``), stepped every ``accumulation`` batches (and at the epoch's end).

    Example::

        >>> full_data_steps(1000, 32, 10, world_size=2, accumulation=4)
        40
    """
    share = math.ceil(num_samples / world_size)
    batches = share // batch_size if drop_last else math.ceil(share / batch_size)
    return num_epochs * math.ceil(batches / accumulation)
