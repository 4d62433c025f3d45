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
* The schedule follows the fraction of epochs done (:class:`ProgressLR`): sized with
  ``estimated_stepping_batches`` it would be fixed from the first loaded epoch's length.
* The callback's checkpoint state holds every rank's InfoBatch state mid-epoch (the scores
  each rank recorded before the checkpoint are merged only at the epoch's end), so a run
  resumed mid-epoch with the same number of processes continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch.distributed as dist
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..errors import InfoBatchError
from ..sampler import InfoBatchSampler
from ._loader import infobatch_sampler_of
from .progress import EpochProgress, LrLambda, ProgressLR

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
    this run resumed from.
    """

    def __init__(self, loader: DataLoader[Any], callback: InfoBatchCallback) -> None:
        self.loader = loader
        self.sampler = infobatch_sampler_of(loader, "InfoBatchCallback.loader()")
        self.dataset = loader.dataset
        self.callback = callback

    def __len__(self) -> int:
        self.callback._restore_pending()
        remaining = len(self.loader)  # plans the epoch the next iteration trains, if needed
        return self.callback._offset(self.sampler.epoch) + remaining

    def __iter__(self) -> Iterator[Any]:
        self.callback._restore_pending()
        remaining = len(self.loader)
        self.callback.progress.begin(self.sampler.epoch, remaining=remaining)
        return iter(self.loader)


class InfoBatchCallback(Callback):  # type: ignore[misc]
    """Wires an InfoBatch sampler into Lightning: loader, schedule progress, checkpoints.

    See the module docstring for the lines to write. The callback's checkpoint state is the
    InfoBatch state (every rank's, mid-epoch) and the progress through the current epoch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.progress = EpochProgress(1)
        self._sampler: InfoBatchSampler | None = None
        self._resumed: tuple[int, int] | None = None  # (epoch, batches done) of a checkpoint
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
        self._sampler = wrapped.sampler
        epochs = wrapped.sampler.num_epochs
        if epochs is None:
            raise ValueError("InfoBatchCallback trains by epochs: build InfoBatch with num_epochs")
        self.progress.num_epochs = epochs
        return wrapped

    def scheduler(
        self, optimizer: Optimizer, lr_lambda: LrLambda, schedule_steps: int
    ) -> ProgressLR:
        """A :class:`ProgressLR` following this run's fraction of epochs done.

        ``lr_lambda(position)`` is the factor of the initial learning rate at ``position`` of
        a ``schedule_steps``-step schedule (full-data steps, see
        :func:`~infobatch.integrations.progress.full_data_steps`). Use ``"interval": "step"``.
        """
        progress = self.progress
        return ProgressLR(optimizer, lr_lambda, schedule_steps, lambda: progress.fraction)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and trainer.reload_dataloaders_every_n_epochs != 1:
            raise InfoBatchError(
                "InfoBatchCallback needs Trainer(reload_dataloaders_every_n_epochs=1): pruned "
                "epochs have different lengths, and Lightning reads a training loader's length "
                "only when it loads the loader (it would cut longer epochs to a stale count)"
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

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self.progress.advance()  # before the step: the schedule sees this batch as done

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Progress, and every rank's InfoBatch state (gathered mid-epoch, see the module)."""
        sampler = self._sampler
        if sampler is None:
            return {}
        state = sampler.state_dict()
        parts = [state]
        world = sampler.num_replicas
        if state["plan"] is not None and world > 1 and dist.is_initialized():
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, state)
            parts = gathered
        return {"progress": self.progress.state_dict(), "world_size": world, "ranks": parts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the state; it is applied when the training loader is first used."""
        self._pending = state_dict

    def _restore_pending(self) -> None:
        state, sampler = self._pending, self._sampler
        if state is None or sampler is None:
            return
        self._pending = None
        parts = state["ranks"]
        rank = sampler.rank
        mine = parts[rank] if len(parts) > 1 and rank < len(parts) else parts[0]
        sampler.load_state_dict(mine)
        self.progress.load_state_dict(state["progress"])
        progress = self.progress
        if mine["plan"] is not None and 0 < progress.done < progress.total:
            self._resumed = (progress.epoch, progress.done)

    def _offset(self, epoch: int) -> int:
        """Batches of ``epoch`` trained before the mid-epoch checkpoint this run resumed from."""
        resumed = self._resumed
        return resumed[1] if resumed is not None and resumed[0] == epoch else 0
