"""Learning-rate schedules driven by training progress, for epochs whose length varies.

A framework sizes a step-based schedule once, from the first epoch's length; InfoBatch's pruned
epochs are shorter and their lengths are not known in advance, so such a schedule ends early.
:class:`ProgressLR` evaluates the same schedule at ``progress() * schedule_steps`` after every
optimizer step, where ``progress()`` is the fraction of the run's epochs done
(:class:`EpochProgress`). Without pruning it reproduces the step-based schedule exactly; with
pruning its last step reaches the schedule's end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable, Union

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

__all__ = ["EpochProgress", "ProgressLR", "full_data_steps"]

LrLambda = Callable[..., float]


class EpochProgress:
    """Fraction of a run done, counted in epochs and in units (batches, steps) within an epoch.

    ``fraction = (epoch + done / total) / num_epochs``, where ``total`` is the current epoch's
    number of units (which varies from epoch to epoch). An epoch's last unit brings the
    fraction to ``(epoch + 1) / num_epochs`` exactly, whatever the epoch's length.

    Args:
        num_epochs (int): epochs in the run, at least 1.

    Example::

        >>> p = EpochProgress(num_epochs=2)
        >>> p.start_epoch(0, total=4); p.advance(2); p.fraction
        0.25
        >>> p.start_epoch(1, total=3); p.advance(3); p.fraction
        1.0
    """

    def __init__(self, num_epochs: int) -> None:
        if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
            raise ValueError(f"Invalid num_epochs {num_epochs!r}, num_epochs should be >= 1")
        self.num_epochs = num_epochs
        self.epoch = 0
        self.done = 0
        self.total = 0

    def start_epoch(self, epoch: int, total: int, done: int = 0) -> None:
        """Epoch ``epoch`` has ``total`` units, of which ``done`` are already done (resume)."""
        if not 0 <= done <= total:
            raise ValueError(f"Invalid done {done}, done should be in the interval [0, {total}]")
        self.epoch, self.total, self.done = epoch, total, done

    def begin(self, epoch: int, remaining: int) -> None:
        """An iteration of ``epoch`` with ``remaining`` units starts.

        If this is the epoch recorded here with units done (a mid-epoch checkpoint was loaded
        into this object), those count too; otherwise the epoch starts from nothing.
        """
        done = self.done if epoch == self.epoch and self.done < self.total else 0
        self.start_epoch(epoch, total=done + remaining, done=done)

    def advance(self, units: int = 1) -> None:
        """``units`` more units of the current epoch are done (capped at the epoch's total)."""
        self.done = min(self.done + units, self.total)

    @property
    def fraction(self) -> float:
        """Fraction of the run done, in ``[0, 1]``."""
        within = self.done / self.total if self.total else 0.0
        return min(1.0, max(0.0, (self.epoch + within) / self.num_epochs))

    def state_dict(self) -> dict[str, int]:
        """Epoch and units done (the total is re-derived when the epoch starts again)."""
        return {"epoch": self.epoch, "done": self.done, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict` output."""
        self.epoch = int(state["epoch"])
        self.done = int(state["done"])
        self.total = int(state["total"])


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
