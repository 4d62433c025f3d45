"""Learning-rate schedules driven by training progress, for epochs whose length varies.

A framework sizes a step-based schedule once, from the first epoch's length; InfoBatch's pruned
epochs are shorter and their lengths are not known in advance, so such a schedule ends early.
:class:`ProgressLR` evaluates the same schedule at ``progress() * schedule_steps`` after every
optimizer step, where ``progress()`` is the fraction of the run's epochs done, read from the
sampler by :class:`SamplerProgress` (nothing to count, nothing to checkpoint). Without pruning
it reproduces the step-based schedule exactly; with pruning its last step reaches the
schedule's end. :func:`one_cycle` is ``torch.optim.lr_scheduler.OneCycleLR`` in this form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Callable, ClassVar, NamedTuple, Union

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from ..dataset import InfoBatch
from ..lifecycle import Phase
from ..sampler import InfoBatchSampler

__all__ = [
    "OneCycleProgressLR",
    "ProgressLR",
    "SamplerProgress",
    "epochs_of",
    "full_data_steps",
    "one_cycle",
]

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
            hint = (
                "; for a OneCycleLR use infobatch.integrations.progress.one_cycle(optimizer, "
                "max_lr, total_steps, progress)"
                if isinstance(scheduler, OneCycleLR)
                else ""
            )
            raise TypeError(
                f"ProgressLR can follow a LambdaLR (linear, cosine, constant, polynomial... "
                f"schedules), got {type(scheduler).__name__}{hint}"
            )
        return ProgressLR(scheduler.optimizer, scheduler.lr_lambdas, schedule_steps, progress)

    @property
    def position(self) -> float:
        """Where in the ``schedule_steps``-step schedule the run is now."""
        return self.progress() * self.schedule_steps

    def get_lr(self) -> list[float]:  # type: ignore[override]
        position = self.position
        return [
            float(base) * float(lam(position)) for base, lam in zip(self.base_lrs, self.lr_lambdas)
        ]

    #: Attributes that belong to the code building the scheduler, not to its state.
    NOT_STATE: ClassVar[tuple[str, ...]] = ("optimizer", "lr_lambdas", "progress", "schedule_steps")

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's counters (the lambdas, the progress source and the schedule's length
        belong to the code that builds it, not to the state)."""
        return {key: value for key, value in self.__dict__.items() if key not in self.NOT_STATE}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a resumed run may have another ``schedule_steps``,
        e.g. with another number of processes: the position follows the fraction done)."""
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in self.NOT_STATE})


class _Phase(NamedTuple):
    """One of OneCycleLR's phases: its last step, and the group keys of its start and end
    learning rate and momentum."""

    end_step: float
    lr_from: str
    lr_to: str
    momentum_from: str
    momentum_to: str


def _one_cycle_phases(pct_start: float, total_steps: int, three_phase: bool) -> list[_Phase]:
    """OneCycleLR's phases, with its end steps computed as it computes them."""
    end = float(pct_start * total_steps) - 1
    warm_up = _Phase(end, "initial_lr", "max_lr", "max_momentum", "base_momentum")
    if not three_phase:
        return [
            warm_up,
            _Phase(total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
        ]
    return [
        warm_up,
        _Phase(
            float(2 * pct_start * total_steps) - 2,
            "max_lr",
            "initial_lr",
            "base_momentum",
            "max_momentum",
        ),
        _Phase(total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
    ]


def _per_group(name: str, value: float | Sequence[float], groups: int) -> list[float]:
    values = [value] * groups if isinstance(value, (int, float)) else list(value)
    if len(values) != groups:
        raise ValueError(f"got {len(values)} values of {name} for {groups} parameter groups")
    return [float(v) for v in values]


class OneCycleProgressLR(ProgressLR):
    """``torch.optim.lr_scheduler.OneCycleLR`` driven by the fraction of the run done.

    After each :meth:`~ProgressLR.step` the learning rate (and, with ``cycle_momentum``, the
    momentum or Adam's ``beta1``) is what ``OneCycleLR(optimizer, max_lr, total_steps, ...)``
    gives at step ``progress() * total_steps``, with the same arguments and defaults. Size
    ``total_steps`` for full-data training (:func:`full_data_steps`): without pruning it
    reproduces OneCycleLR step for step; with pruning the epochs are shorter and its last step
    still runs at the final learning rate ``max_lr / div_factor / final_div_factor`` (a plain
    OneCycleLR would stop partway, or raise when an epoch outgrows the count). Positions past
    the last step keep the final rate. Like every :class:`ProgressLR`, extra ``step()`` calls
    (Accelerate's prepared scheduler) change nothing, and it has no ``total_steps``
    attribute, so Accelerate does not take it for a OneCycleLR.

    Args:
        optimizer (Optimizer): the optimizer; its learning rates start at
            ``max_lr / div_factor`` (its current ones are replaced, as OneCycleLR does).
        max_lr (float or sequence of float): the peak learning rate, one or one per group.
        total_steps (int): the schedule's length in optimizer steps.
        progress (callable): the fraction of the run done, e.g. ``SamplerProgress(dataset,
            batch_size=..., accumulation=...)`` or ``lambda: callback.fraction``.
        pct_start, anneal_strategy, cycle_momentum, base_momentum, max_momentum, div_factor,
        final_div_factor, three_phase: as in ``OneCycleLR``.

    Example::

        >>> sampler = InfoBatchSampler(100, num_epochs=10, seed=0)
        >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
        >>> steps = full_data_steps(100, 10, 10)
        >>> scheduler = one_cycle(optimizer, 0.1, steps, SamplerProgress(sampler, batch_size=10))
        >>> round(optimizer.param_groups[0]["lr"], 12)  # 0.1 / 25
        0.004
    """

    NOT_STATE: ClassVar[tuple[str, ...]] = (
        *ProgressLR.NOT_STATE,
        "phases",
        "anneal_strategy",
        "cycle_momentum",
        "use_beta1",
    )

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | Sequence[float],
        total_steps: int,
        progress: Callable[[], float],
        *,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
    ) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"Invalid total_steps {total_steps!r}, total_steps should be >= 1")
        if isinstance(pct_start, bool) or not isinstance(pct_start, (int, float)):
            raise TypeError(f"pct_start must be a float, got {type(pct_start).__name__}")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"Invalid pct_start {pct_start}, pct_start should be in [0, 1]")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        for name, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            if not value > 0:
                raise ValueError(f"Invalid {name} {value}, {name} should be > 0")
        groups = optimizer.param_groups
        for group, peak in zip(groups, _per_group("max_lr", max_lr, len(groups))):
            group["initial_lr"] = peak / div_factor
            group["max_lr"] = peak
            group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        self.use_beta1 = "betas" in optimizer.defaults
        if cycle_momentum:
            if "momentum" not in optimizer.defaults and not self.use_beta1:
                raise ValueError(
                    f"{type(optimizer).__name__} has no momentum or betas to cycle; pass "
                    "cycle_momentum=False"
                )
            highs = _per_group("max_momentum", max_momentum, len(groups))
            lows = _per_group("base_momentum", base_momentum, len(groups))
            for group, high, low in zip(groups, highs, lows):
                group["max_momentum"], group["base_momentum"] = high, low
                self._set_momentum(group, high)
        self.anneal_strategy = anneal_strategy
        self.phases = _one_cycle_phases(float(pct_start), total_steps, bool(three_phase))
        factors = [partial(self._factor, index) for index in range(len(groups))]
        super().__init__(optimizer, factors, total_steps, progress)

    def _set_momentum(self, group: dict[str, Any], momentum: float) -> None:
        if self.use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _at(self, group: dict[str, Any], position: float) -> tuple[float, float | None]:
        """OneCycleLR's (learning rate, momentum) of ``group`` at step ``position``."""
        step = min(max(position, 0.0), float(self.schedule_steps - 1))
        start_step = 0.0
        for index, phase in enumerate(self.phases):
            if step <= phase.end_step or index == len(self.phases) - 1:
                pct = (step - start_step) / (phase.end_step - start_step)
                lr = self._anneal(group[phase.lr_from], group[phase.lr_to], pct)
                if not self.cycle_momentum:
                    return lr, None
                momentum = self._anneal(group[phase.momentum_from], group[phase.momentum_to], pct)
                return lr, momentum
            start_step = phase.end_step
        raise AssertionError("unreachable: the last phase always applies")

    def _factor(self, index: int, position: float) -> float:
        """The learning rate at ``position`` as a factor of the group's initial one."""
        group = self.optimizer.param_groups[index]
        return self._at(group, position)[0] / float(group["initial_lr"])

    def get_lr(self) -> list[float]:  # type: ignore[override]
        position = self.position
        rates = []
        for group in self.optimizer.param_groups:
            lr, momentum = self._at(group, position)
            if momentum is not None:
                self._set_momentum(group, momentum)
            rates.append(lr)
        return rates


#: The public name of :class:`OneCycleProgressLR` (a function-like constructor).
one_cycle = OneCycleProgressLR


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
