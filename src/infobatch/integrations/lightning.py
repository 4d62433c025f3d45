"""InfoBatch with PyTorch Lightning: :class:`InfoBatchCallback` and its training loader.

Usage (the lines a user changes)::

    from infobatch import InfoBatch
    from infobatch.integrations.lightning import InfoBatchCallback
    from infobatch.integrations.progress import full_data_steps

    class Module(L.LightningModule):
        def setup(self, stage):                      # the process group exists here
            self.infobatch = InfoBatch(train_set, num_epochs=self.trainer.max_epochs, seed=0)

        def train_dataloader(self):
            loader = DataLoader(self.infobatch, batch_size=32, sampler=self.infobatch.sampler)
            return InfoBatchCallback.find(self.trainer).loader(loader)   # not a DataLoader

        def training_step(self, batch, batch_idx):
            losses = F.cross_entropy(self(batch["x"]), batch["y"], reduction="none")
            return self.infobatch.update(losses, indices=batch["index"])

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3)
            steps = full_data_steps(len(self.infobatch), 32, self.trainer.max_epochs,
                                    world_size=self.trainer.world_size,
                                    accumulation=self.trainer.accumulate_grad_batches)
            scheduler = InfoBatchCallback.find(self.trainer).scheduler(
                optimizer, lambda pos: 1 - pos / steps, steps)
            return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    trainer = L.Trainer(max_epochs=10, callbacks=[InfoBatchCallback()],
                        reload_dataloaders_every_n_epochs=1)

Why each piece (Lightning 2.6, measured):

* The loader returned by :meth:`InfoBatchCallback.loader` is not a ``DataLoader``, so
  Lightning never swaps its sampler for a ``DistributedSampler`` (which would shard the
  InfoBatch sampler a second time and reshuffle it), whatever ``use_distributed_sampler``.
* ``reload_dataloaders_every_n_epochs=1``: Lightning reads a training loader's length only
  when it loads it and caps later epochs at that count; pruned epochs have different lengths,
  so the loader is re-read every epoch (the callback checks this setting).
* The loader's length counts the batches a mid-epoch checkpoint had already trained, so the
  resumed epoch runs exactly its remaining batches (Lightning counts from the restored batch
  index) and the epoch's last batch is known in advance (the last accumulation group steps).
* Step schedules follow the fraction of epochs done (:class:`ProgressLR` over
  :class:`SamplerProgress`): a step-count schedule would be sized once, from the first
  loaded epoch's length, and end early. ``steps`` may also be
  ``self.trainer.estimated_stepping_batches`` (full-data steps on a fresh run; a resumed
  run re-sizes it from the resumed epoch, which changes nothing for schedules written in
  ``pos / steps``, such as the one above, and shifts step-count warmups).
* The callback's checkpoint state holds every rank's unmerged scores (those each rank
  recorded before a mid-epoch checkpoint are merged only at the epoch's end), so a run
  resumed mid-epoch with the same number of processes continues exactly, this epoch and the
  next ones. The loader
  implements Lightning's ``state_dict``/``load_state_dict`` protocol (its state: the epoch
  and position the sampler resumes at, checked on load), so Lightning knows it resumes
  mid-epoch and does not warn that the dataloader "is not resumable".
* Settings that cut epochs short are refused with the fix: ``limit_train_batches``,
  ``overfit_batches``, ``fast_dev_run``, ``max_steps``, a step-interval scheduler other than
  :class:`ProgressLR` (for OneCycle, :func:`~infobatch.integrations.progress.one_cycle`).
* At each training epoch's end the callback logs that epoch's statistics through the module's
  loggers (``pl_module.log_dict``, epoch level): every name of :data:`infobatch.METRICS`
  (kept, pruned, scored, well-learned, threshold, weight, pruning, saved so far, and the
  epoch's time accounting under ``infobatch/time/...``, see
  :func:`~infobatch.epoch_metrics`; ``nan`` values, such as a full-data epoch's threshold, are
  left out), as float64, so they equal ``sampler.history`` exactly. The loader times the
  loop's wait for batches (``infobatch/time/data``). Except the times (this rank's), they are
  identical on every rank, so nothing is reduced across ranks and Lightning's "use
  sync_dist=True" warning does not apply (see :meth:`InfoBatchCallback.on_train_epoch_end`);
  the loggers write rank 0's. ``InfoBatchCallback(log_stats=False)`` turns it off.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..errors import InfoBatchError
from ..lifecycle import Phase
from ..metrics import METRICS, epoch_metrics
from ..sampler import InfoBatchSampler
from ._loader import infobatch_sampler_of, load_rank_state, rank_states
from .progress import LrLambda, OneCycleProgressLR, ProgressLR, SamplerProgress, one_cycle

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "infobatch.integrations.lightning needs lightning; install it with "
        'pip install "infobatch[lightning]"'
    ) from error

__all__ = ["InfoBatchCallback", "InfoBatchLoader"]


class InfoBatchLoader:
    """The training loader Lightning iterates: a ``DataLoader`` over an InfoBatch sampler.

    Not a ``DataLoader`` itself, so Lightning leaves its sampler alone; ``sampler`` is the
    InfoBatch sampler (Lightning calls its ``set_epoch`` before each epoch). Its length is the
    current epoch's number of batches, including those trained before a mid-epoch checkpoint
    this run resumed from. Iterating it times the wait for each batch
    (:meth:`InfoBatchSampler.timed`: the epoch's ``data_seconds``).
    """

    def __init__(self, loader: DataLoader[Any], callback: InfoBatchCallback) -> None:
        self.sampler = infobatch_sampler_of(loader, "InfoBatchCallback.loader()", keep_steps=True)
        if self.sampler.keep_steps:
            if loader.batch_sampler is not self.sampler.batch_sampler:
                raise TypeError(
                    "with keep_steps=True, build the DataLoader with "
                    "batch_sampler=<InfoBatch>.batch_sampler (it sets each epoch's batches)"
                )
        elif loader.batch_size is None:
            raise TypeError(
                "InfoBatchCallback.loader() needs a DataLoader with batch_size= (not a "
                "batch_sampler; with keep_steps=True, batch_sampler=<InfoBatch>.batch_sampler): "
                "the batches of a resumed epoch are counted in batch_size units"
            )
        self.batch_size: int = loader.batch_size or 0
        self.loader = loader
        self.dataset = loader.dataset
        self.callback = callback

    def __len__(self) -> int:
        self.callback._restore_pending()
        remaining = len(self.loader)  # plans the epoch the next iteration trains, if needed
        if self.sampler.keep_steps:  # the whole epoch's batches, those trained before too
            return self.sampler.batch_layout.num_batches
        # Positions before this pass: those a mid-epoch checkpoint had trained (whole batches).
        before = self.sampler.epoch_length - len(self.sampler)
        return before // self.batch_size + remaining

    def __iter__(self) -> Iterator[Any]:
        self.callback._restore_pending()
        return self.sampler.timed(self.loader)

    def state_dict(self) -> dict[str, int]:
        """Where the sampler resumes: ``{"epoch": e, "position": p}``.

        The InfoBatch state itself is in the callback's checkpoint state (every rank's part);
        this small record lets Lightning treat the loader as resumable and is checked on load.
        """
        sampler = self.sampler
        if sampler.phase is Phase.COMPLETE:
            return {"epoch": sampler.epoch + 1, "position": 0}
        return {"epoch": sampler.epoch, "position": sampler.position}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Check that the callback restored the sampler where the checkpoint left it."""
        self.callback._restore_pending()
        expected = {"epoch": int(state_dict["epoch"]), "position": int(state_dict["position"])}
        found = self.state_dict()
        if found != expected:
            raise InfoBatchError(
                f"the checkpoint's training loader resumes at epoch {expected['epoch']}, "
                f"position {expected['position']}, but the InfoBatch sampler stands at epoch "
                f"{found['epoch']}, position {found['position']}: its state was not restored. "
                "Resume with an InfoBatchCallback in Trainer(callbacks=...) and build the "
                "InfoBatch dataset in setup() with the same settings"
            )


class InfoBatchCallback(Callback):  # type: ignore[misc]
    """Wires an InfoBatch sampler into Lightning: loader, schedule progress, checkpoints, logs.

    See the module docstring for the lines to write. The callback's checkpoint state is the
    InfoBatch state (every rank's, mid-epoch).

    Args:
        log_stats (bool, optional): log each training epoch's statistics (``infobatch/...``)
            through the module's loggers at its end. Default: ``True``.
    """

    #: Names of the logged statistics, as ``{metric name: EpochStats attribute}``
    #: (:data:`infobatch.METRICS`; an epoch's ``nan`` values are left out).
    LOGGED: ClassVar[Mapping[str, str]] = METRICS

    def __init__(self, *, log_stats: bool = True) -> None:
        super().__init__()
        if not isinstance(log_stats, bool):
            raise TypeError(f"log_stats must be a bool, got {type(log_stats).__name__}")
        self.log_stats = log_stats
        self._sampler: InfoBatchSampler | None = None
        self._progress: SamplerProgress | None = None
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def find(trainer: Any) -> InfoBatchCallback:
        """The trainer's InfoBatchCallback (to call from a LightningModule's hooks)."""
        found = [c for c in trainer.callbacks if isinstance(c, InfoBatchCallback)]
        if len(found) != 1:
            raise InfoBatchError(
                f"expected one InfoBatchCallback in Trainer(callbacks=...), found {len(found)}"
            )
        return found[0]

    # ------------------------------------------------------------------ user helpers
    def loader(self, loader: DataLoader[Any]) -> InfoBatchLoader:
        """Wrap the ``DataLoader`` built over ``<InfoBatch>.sampler`` in ``train_dataloader``."""
        wrapped = InfoBatchLoader(loader, self)
        if self._sampler is not None and self._sampler is not wrapped.sampler:
            raise InfoBatchError(
                "train_dataloader() returned a loader over another InfoBatch sampler than "
                "before; build the InfoBatch dataset once (in setup()) and reuse it"
            )
        self._progress = SamplerProgress(wrapped.sampler)  # needs num_epochs (not iterations)
        self._sampler = wrapped.sampler
        return wrapped

    @property
    def fraction(self) -> float:
        """Fraction of the run's epochs done (0 until the training loader is built)."""
        return self._progress.fraction if self._progress is not None else 0.0

    def scheduler(
        self, optimizer: Optimizer, lr_lambda: LrLambda, schedule_steps: int
    ) -> ProgressLR:
        """A :class:`ProgressLR` following this run's fraction of epochs done.

        ``lr_lambda(position)`` is the factor of the initial learning rate at ``position`` of
        a ``schedule_steps``-step schedule (full-data steps, see
        :func:`~infobatch.integrations.progress.full_data_steps`). Use ``"interval": "step"``.
        """
        return ProgressLR(optimizer, lr_lambda, schedule_steps, lambda: self.fraction)

    def one_cycle(
        self, optimizer: Optimizer, max_lr: float, total_steps: int, **options: Any
    ) -> OneCycleProgressLR:
        """``OneCycleLR(optimizer, max_lr, total_steps, **options)`` following this run's
        fraction of epochs done (:func:`~infobatch.integrations.progress.one_cycle`).

        Size ``total_steps`` for full data (``full_data_steps`` or
        ``self.trainer.estimated_stepping_batches``). Use ``"interval": "step"``.
        """
        return one_cycle(optimizer, max_lr, total_steps, lambda: self.fraction, **options)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise InfoBatchError(
                "InfoBatchCallback needs Trainer(reload_dataloaders_every_n_epochs=1): pruned "
                "epochs have different lengths, and Lightning reads a training loader's length "
                "only when it loads the loader (it would cut longer epochs to a stale count)"
            )
        cut = _epoch_cutting_setting(trainer)
        if cut is not None:
            raise InfoBatchError(
                f"InfoBatchCallback cannot train with Trainer({cut}): it stops epochs before "
                "their end, so InfoBatch's epochs would be broken off (their last samples never "
                "scored, the schedule never at its end). Leave it unset; to train on fewer "
                "samples, wrap a torch.utils.data.Subset of your dataset in InfoBatch, and for "
                "fewer steps, set max_epochs (and the InfoBatch num_epochs) lower"
            )

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        for config in getattr(trainer, "lr_scheduler_configs", []):
            if config.interval == "step" and not isinstance(config.scheduler, ProgressLR):
                raise InfoBatchError(
                    f"the {type(config.scheduler).__name__} scheduler steps every batch and "
                    "counts steps, but pruned epochs have fewer steps, so it would stop short of "
                    "its end; build it with InfoBatchCallback.find(self.trainer).scheduler("
                    "optimizer, lr_lambda, steps) (a ProgressLR; for a OneCycleLR, "
                    "InfoBatchCallback.find(self.trainer).one_cycle(optimizer, max_lr, steps, "
                    "...) with OneCycleLR's other arguments), or step it per epoch"
                )

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, InfoBatchLoader):
            raise InfoBatchError(
                "the training loader is not wrapped: return "
                "InfoBatchCallback.find(self.trainer).loader(DataLoader(..., "
                "sampler=<InfoBatch>.sampler)) from train_dataloader(); Lightning would "
                "otherwise swap the sampler under DDP and cut epochs to a stale length"
            )

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Log the epoch's statistics (:func:`~infobatch.epoch_metrics`, see the module
        docstring); Lightning calls this after the epoch's last batch, so its time accounting
        is complete.

        Every rank logs the same values (the plan is global), except the times (each rank's
        own). ``sync_dist=True`` with ``rank_zero_only=True`` tells Lightning not to reduce
        them and not to warn: Lightning (2.6, ``logger_connector/result.py``) warns at epoch
        level when a tensor is logged without ``sync_dist`` under a process group, and a
        ``rank_zero_only`` value's sync is a no-op, so no collective runs. Each rank keeps its
        value in ``trainer.callback_metrics``; loggers write on rank 0 as usual.
        """
        sampler = self._sampler
        if not self.log_stats or sampler is None or getattr(trainer, "barebones", False):
            return
        stats = next((s for s in sampler.history if s.epoch == sampler.epoch), None)
        if stats is None:  # the epoch trained nothing (not started)
            return
        values = {
            name: torch.tensor(value, dtype=torch.float64)
            for name, value in epoch_metrics(stats).items()
        }
        pl_module.log_dict(
            values,
            on_step=False,
            on_epoch=True,
            batch_size=1,
            sync_dist=True,
            rank_zero_only=True,
        )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """One InfoBatch state for every rank (``state_dict(all_ranks=True)``; Lightning calls
        this on every rank)."""
        if self._sampler is None:
            return {}
        return rank_states(self._sampler)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the state; it is applied when the training loader is first used."""
        self._pending = state_dict

    def _restore_pending(self) -> None:
        state, sampler = self._pending, self._sampler
        if state is None or sampler is None:
            return
        self._pending = None
        load_rank_state(sampler, state)


def _epoch_cutting_setting(trainer: Any) -> str | None:
    """The Trainer setting that stops training epochs before their end, if any."""
    if getattr(trainer, "fast_dev_run", False):
        return f"fast_dev_run={trainer.fast_dev_run}"
    if getattr(trainer, "overfit_batches", 0):
        return f"overfit_batches={trainer.overfit_batches}"
    limit = getattr(trainer, "limit_train_batches", 1.0)
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):
        return f"limit_train_batches={limit}"
    max_steps = getattr(trainer, "max_steps", -1)
    if max_steps is not None and max_steps != -1:
        return f"max_steps={max_steps}"
    return None
