"""What every InfoBatch ``transformers.Trainer`` shares: epochs, schedule, checkpoints, logs.

:class:`TrainerIntegration` is a mixin placed before the ``Trainer`` class (``class
InfoBatchTrainer(TrainerIntegration, Trainer)``, ``class InfoBatchGRPOTrainer(
TrainerIntegration, GRPOTrainer)``). It overrides the Trainer's documented points only:

* ``create_scheduler``: the ``lr_scheduler_type`` schedule sized for full-data training,
  evaluated after each step at the fraction of the run done (:class:`ProgressLR`), so it ends
  at the last step although pruned epochs are shorter;
* ``save_model`` (called for every checkpoint, on every process): writes
  ``infobatch_state_rank{R}.pt`` into the checkpoint folder; ``train(resume_from_checkpoint=)``
  loads it before training;
* ``log``: adds ``infobatch/saved_fraction`` and, once per completed epoch, its statistics.

The subclass provides :attr:`infobatch` (what is checkpointed: ``state_dict``,
``load_state_dict``, ``epoch``, ``history``, ``saved_fraction`` and its ``sampler``) and
:attr:`infobatch_progress` (``fraction`` of the run done, ``units(planned)``: optimizer steps of
an epoch), then calls :meth:`_infobatch_setup`; its ``get_train_dataloader`` returns
:meth:`_infobatch_epochs` of its loader.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from typing import Any, Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..errors import InfoBatchError
from ..lifecycle import Phase
from ..metrics import epoch_metrics
from .progress import ProgressLR

try:
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the infobatch Trainer integrations need transformers and accelerate; install them "
        'with pip install "infobatch[hf]"'
    ) from error

__all__ = ["STATE_FILE", "EpochLoader", "TrainerIntegration", "check_epoch_arguments"]

#: File written into each checkpoint folder, one per process.
STATE_FILE = "infobatch_state_rank{rank}.pt"
_STATE_VERSION = 2  # 1 also held an own progress counter, now read from the sampler


def check_epoch_arguments(args: Any, owner: str) -> tuple[Any, int]:
    """The Trainer's arguments (a copy with ``ignore_data_skip=True`` if it was not) and the
    number of epochs; clear errors for settings an InfoBatch Trainer cannot honour."""
    if args.max_steps is not None and args.max_steps > 0:
        raise ValueError(
            f"{owner} trains whole epochs whose lengths vary, so it cannot stop at "
            f"max_steps={args.max_steps}; leave max_steps=-1 and set num_train_epochs"
        )
    epochs = args.num_train_epochs
    if float(epochs) != int(epochs) or int(epochs) < 1:
        raise ValueError(
            f"num_train_epochs must be a whole number >= 1 for InfoBatch, got {epochs}"
        )
    if args.auto_find_batch_size:
        raise ValueError(
            f"{owner} does not support auto_find_batch_size: a retry with a smaller batch would "
            "restart an InfoBatch epoch that was partly trained; set per_device_train_batch_size "
            "yourself"
        )
    if not args.ignore_data_skip:
        # The sampler resumes at its own position; the Trainer must not skip batches.
        args = copy.copy(args)
        args.ignore_data_skip = True
    return args, int(epochs)


class EpochLoader:
    """What the Trainer iterates: one InfoBatch epoch per iteration, a constant length.

    The Trainer's epoch counter is not used: after a resume it is derived from the global step
    and the first epoch's length, which pruned epochs make wrong. The InfoBatch epoch to train
    next is the sampler's own, advanced by one after each epoch.
    """

    def __init__(
        self,
        loader: Any,
        infobatch: Any,
        length: int,
        accumulation: int,
        progress: Any,
        next_epoch: int,
        num_epochs: int,
    ) -> None:
        self.loader = loader
        self.infobatch = infobatch
        self.length = length
        self.accumulation = accumulation
        self.progress = progress
        self.next_epoch = next_epoch
        self.num_epochs = num_epochs
        self.dataset = loader.dataset
        #: Called at the start of each epoch, before ``loader`` is iterated (or ``None``).
        self.before_epoch: Callable[[], None] | None = None

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the InfoBatch epoch follows the sampler (see the class docstring)."""

    @property
    def finished(self) -> bool:
        """All the run's epochs were handed out."""
        return self.next_epoch >= self.num_epochs

    def __iter__(self) -> Iterator[Any]:
        if self.finished:
            return
        epoch = self.next_epoch
        sampler = self.infobatch.sampler
        sampler.set_epoch(epoch)
        steps = self.progress.units(sampler.epoch_length)
        if steps > self.length // self.accumulation:
            raise InfoBatchError(
                f"epoch {epoch} has {steps} optimizer steps on this rank but the "
                f"Trainer was sized for {self.length // self.accumulation}; resume with the same "
                "per-device batch size, number of processes and dataset"
            )
        self.next_epoch = epoch + 1
        if self.before_epoch is not None:
            self.before_epoch()
        yield from sampler.timed(self.loader)  # the wait for batches: the epoch's data_seconds


class _EpochCallback(TrainerCallback):  # type: ignore[misc]
    """Keeps the Trainer's epoch in step with InfoBatch's and stops after the last epoch."""

    def __init__(self, trainer: TrainerIntegration) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        state.epoch = trainer.infobatch_progress.fraction * trainer._infobatch_num_epochs

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._infobatch_epoch_ended()
        loader = self.trainer._infobatch_loader
        if loader is not None and loader.finished:
            control.should_training_stop = True


class TrainerIntegration:
    """Mixin of the InfoBatch Trainers (see the module docstring)."""

    infobatch: Any
    infobatch_progress: Any
    args: Any
    lr_scheduler: Any
    _infobatch_loader: EpochLoader | None

    def _infobatch_setup(self, num_epochs: int) -> None:
        """Call at the end of ``__init__``, once :attr:`infobatch` and the progress exist."""
        self._infobatch_num_epochs = num_epochs
        self._infobatch_loader = None
        self._infobatch_next_epoch = self.infobatch.epoch
        self._infobatch_logged_epoch: int | None = None  # the last epoch whose stats were logged
        self._infobatch_pending: dict[str, float] | None = None  # for the next log
        self._infobatch_rng_from: tuple[str, str] | None = None  # (checkpoint, when) to load
        self.add_callback(_EpochCallback(self))  # type: ignore[attr-defined]

    def _infobatch_epochs(self, loader: Any, length: int, accumulation: int) -> EpochLoader:
        """The loader the Trainer iterates: ``loader`` once per InfoBatch epoch."""
        self._infobatch_loader = EpochLoader(
            loader,
            self.infobatch,
            length,
            accumulation,
            self.infobatch_progress,
            self._infobatch_next_epoch,
            self._infobatch_num_epochs,
        )
        self._infobatch_loader.before_epoch = lambda: self._infobatch_restore_rng("epoch")
        return self._infobatch_loader

    def _infobatch_restore_rng(self, when: str) -> None:
        """After a resume, load the checkpoint's random state where the uninterrupted run
        went on from it: before the epoch's loader is iterated (a checkpoint at an epoch
        boundary: the uninterrupted run iterated it after saving) or before the first step
        (inside an epoch: the resumed run iterates a new loader, which draws a seed). The
        Trainer loads it only when it skips batches itself, never with ``ignore_data_skip``."""
        pending = self._infobatch_rng_from
        if pending is not None and pending[1] == when:
            self._infobatch_rng_from = None
            self._load_rng_state(pending[0])  # type: ignore[attr-defined]

    def _infobatch_resumes_inside_epoch(self) -> bool:
        """Whether the loaded state is inside an epoch (some of its updates arrived)."""
        sampler = self.infobatch.sampler
        return bool(0 < sampler.position < sampler.epoch_length)

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        """The Trainer's step, after a resume inside an epoch its random state first."""
        self._infobatch_restore_rng("step")
        return super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]

    # ------------------------------------------------------------------ schedule
    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> ProgressLR:
        """The ``lr_scheduler_type`` schedule, driven by the fraction of the run done."""
        existing = self.lr_scheduler
        scheduler = super().create_scheduler(num_training_steps, optimizer)  # type: ignore[misc]
        if isinstance(scheduler, ProgressLR):
            return scheduler
        name = type(self).__name__
        if existing is not None and scheduler is existing:
            raise ValueError(
                f"{name} cannot use the scheduler you passed ({type(scheduler).__name__}): it "
                "counts steps, and pruned epochs have fewer steps, so it would end early. "
                "Choose it with lr_scheduler_type, or pass "
                "infobatch.integrations.progress.ProgressLR"
            )
        if not isinstance(scheduler, LambdaLR):
            raise ValueError(
                f"lr_scheduler_type={self.args.lr_scheduler_type!r} is not supported by {name} "
                "(it needs a LambdaLR schedule: linear, cosine, constant, polynomial, with or "
                "without warmup...)"
            )
        progress = self.infobatch_progress
        follower = ProgressLR.from_lambda_lr(
            scheduler, num_training_steps, lambda: progress.fraction
        )
        self.lr_scheduler = follower
        return follower

    # ------------------------------------------------------------------ checkpoints
    def _infobatch_extra_state(self) -> dict[str, Any]:
        """More of this process's state for its checkpoint file (none by default)."""
        return {}

    def _infobatch_load_extra_state(self, state: dict[str, Any], checkpoint: str) -> None:
        """Load what :meth:`_infobatch_extra_state` saved in the checkpoint folder
        ``checkpoint`` (called after :attr:`infobatch` is loaded)."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model as the Trainer does, and this process's InfoBatch state next to it."""
        super().save_model(output_dir, _internal_call=_internal_call)  # type: ignore[misc]
        folder = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(folder, exist_ok=True)
        state = {
            "version": _STATE_VERSION,
            "world_size": self.args.world_size,
            "rank": self.args.process_index,
            "infobatch": self.infobatch.state_dict(),
            **self._infobatch_extra_state(),
        }
        torch.save(state, os.path.join(folder, STATE_FILE.format(rank=self.args.process_index)))

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``Trainer.train``; a checkpoint's InfoBatch state is loaded first."""
        if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"No valid checkpoint found in output directory ({self.args.output_dir})"
                )
        if isinstance(resume_from_checkpoint, str):
            self.load_infobatch_state(resume_from_checkpoint)
        return super().train(  # type: ignore[misc]
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )

    def load_infobatch_state(self, checkpoint: str) -> None:
        """Load the InfoBatch state saved in the checkpoint folder ``checkpoint``.

        Each process loads its own file when the number of processes is unchanged (a mid-epoch
        checkpoint resumes exactly), else rank 0's (only valid at an epoch boundary).
        """
        rank, world = self.args.process_index, self.args.world_size
        own = os.path.join(checkpoint, STATE_FILE.format(rank=rank))
        first = os.path.join(checkpoint, STATE_FILE.format(rank=0))
        path = own if os.path.isfile(own) else first
        if not os.path.isfile(path):
            raise InfoBatchError(
                f"checkpoint {checkpoint} has no InfoBatch state ({STATE_FILE.format(rank=0)}); "
                f"it was not written by {type(self).__name__}, so the pruning state cannot be "
                "resumed"
            )
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("version") not in (1, _STATE_VERSION):
            raise ValueError(
                f"unsupported {type(self).__name__} state version {state.get('version')!r} in "
                f"{path}"
            )
        if state["world_size"] != world and path == own:
            path = first
            state = torch.load(first, map_location="cpu", weights_only=False)
        self.infobatch.load_state_dict(state["infobatch"])
        self._infobatch_load_extra_state(state, checkpoint)
        inside = self._infobatch_resumes_inside_epoch()
        self._infobatch_rng_from = (checkpoint, "step" if inside else "epoch")
        self._infobatch_next_epoch = self.infobatch.epoch

    # ------------------------------------------------------------------ logs
    def _infobatch_log_extra(self, logs: dict[str, float]) -> None:
        """Add more ``infobatch/...`` figures to a log (none by default)."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's logs, plus ``infobatch/saved_fraction`` and, once per completed
        epoch, that epoch's statistics (:func:`~infobatch.epoch_metrics`)."""
        if self._infobatch_pending is not None:
            logs.update(self._infobatch_pending)
            self._infobatch_pending = None
        if self.infobatch.history:
            logs["infobatch/saved_fraction"] = self.infobatch.saved_fraction
            self._infobatch_log_extra(logs)
        super().log(logs, start_time)  # type: ignore[misc]

    def _infobatch_epoch_ended(self) -> None:
        """At the Trainer's epoch end: log the InfoBatch epoch just completed (once)."""
        sampler = self.infobatch.sampler
        epoch = sampler.epoch
        if sampler.phase is not Phase.COMPLETE or epoch == self._infobatch_logged_epoch:
            return
        stats = next((s for s in sampler.history if s.epoch == epoch), None)
        if stats is None:
            return
        self._infobatch_logged_epoch = epoch
        strategy = str(getattr(self.args.logging_strategy, "value", self.args.logging_strategy))
        if strategy == "no":
            return
        self._infobatch_pending = epoch_metrics(stats)
        if strategy != "epoch":  # "epoch": the Trainer's own log follows at once and takes them
            self.log({})
