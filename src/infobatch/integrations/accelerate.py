"""InfoBatch in a plain Hugging Face Accelerate loop: a loader helper, a checkpoint wrapper and
the statistics on ``accelerator.log``.

``accelerator.prepare(loader)`` shards a loader's batches across processes. The InfoBatch
sampler already gives each rank its own share, so a prepared loader would shard it a second
time (each rank trains about half of its share, and the losses no longer match the plan).
:func:`prepare_loader` gives the loader what ``prepare`` gives it without the second shard:
batches moved to the accelerator's device, and the end of each epoch known to
``accelerator.accumulate`` (so an epoch's last, shorter accumulation group steps the optimizer
and no gradient leaks into the next epoch). Usage::

    from infobatch import InfoBatch
    from infobatch.integrations.accelerate import AllRanksState, log_stats, prepare_loader
    from infobatch.integrations.progress import ProgressLR, SamplerProgress, full_data_steps

    accelerator = Accelerator(gradient_accumulation_steps=4, log_with="tensorboard",
                              project_dir="runs")        # trackers: optional, for log_stats
    accelerator.init_trackers("infobatch")
    dataset = InfoBatch(train_set, num_epochs, seed=0)           # after Accelerator(): rank-aware
    loader = prepare_loader(accelerator, DataLoader(dataset, batch_size=32,
                                                    sampler=dataset.sampler, collate_fn=...))
    steps = full_data_steps(len(dataset), 32, num_epochs,
                            world_size=accelerator.num_processes, accumulation=4)
    scheduler = ProgressLR(optimizer, lambda pos: 1 - pos / steps, steps,
                           SamplerProgress(dataset))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.register_for_checkpointing(AllRanksState(dataset))
    # accelerator.load_state(path) here to resume

    for epoch in range(dataset.epoch, num_epochs):
        loader.set_epoch(epoch)                        # Accelerate does not restore its counter
        for batch in dataset.timed(loader):            # timed: optional, the data wait's time
            with accelerator.accumulate(model):
                losses = per_sample_loss(model(batch["x"]), batch["y"])   # shape [batch]
                loss = dataset.update(losses, indices=batch["index"])
                accelerator.backward(loss)
                optimizer.step(); scheduler.step(); optimizer.zero_grad()
        log_stats(accelerator, dataset)                # the epoch's infobatch/... on the trackers

``indices=`` is optional (without it the losses are matched to the plan by position, which a
prepared loader's one-batch look-ahead does not disturb). A schedule driven by
:class:`~infobatch.integrations.progress.SamplerProgress` reaches its end although pruned
epochs are shorter, resumes with the sampler's checkpointed position, and makes the prepared
scheduler's extra steps harmless (Accelerate steps it once per process unless
``split_batches``): every step re-evaluates the same position.

:func:`log_stats` hands the last epoch's :func:`~infobatch.epoch_metrics` (``infobatch/...``,
the names of :data:`infobatch.METRICS`) to ``accelerator.log`` at the epoch's index as step:
every tracker of ``log_with`` gets them, written by the main process. Iterating
``dataset.timed(loader)`` adds the data wait (``infobatch/time/data``); a prepared loader
still reports the epoch's end to ``accelerator.accumulate`` through it.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from ..dataset import InfoBatch
from ..metrics import StatsSource, epoch_metrics, last_epoch
from ..sampler import InfoBatchSampler
from ._loader import infobatch_sampler_of, load_rank_state, rank_states

try:
    from accelerate.data_loader import prepare_data_loader
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "infobatch.integrations.accelerate needs accelerate; install it with "
        'pip install "infobatch[hf]"'
    ) from error

__all__ = ["AllRanksState", "log_stats", "prepare_loader"]


def prepare_loader(accelerator: Any, loader: DataLoader[Any]) -> DataLoader[Any]:
    """Prepare a ``DataLoader`` over an InfoBatch sampler without sharding it again.

    Returns Accelerate's ``DataLoaderShard`` for one process: batches on
    ``accelerator.device`` (if device placement is on), the epoch's end reported to
    ``accelerator.accumulate``, and ``set_epoch`` forwarded to the sampler. Call
    ``loader.set_epoch(epoch)`` before each epoch: Accelerate counts iterations from 0 and
    does not restore that count on ``load_state``.

    Args:
        accelerator (accelerate.Accelerator): the run's accelerator.
        loader (DataLoader): built with ``sampler=<InfoBatch>.sampler`` (any batch size,
            collate function and workers; ``drop_last`` as given to InfoBatch), or with
            ``batch_sampler=<InfoBatch>.batch_sampler`` (``keep_steps=True``: every epoch
            makes full data's number of batches, so a schedule counting steps ends exactly).

    Raises:
        TypeError: the loader's sampler is not an InfoBatch sampler.
        ValueError: the sampler was built for another number of processes or rank, or with
            another ``drop_last`` than the loader.
    """
    sampler = infobatch_sampler_of(loader, "prepare_loader()", keep_steps=True)
    world, rank = accelerator.num_processes, accelerator.process_index
    if (sampler.num_replicas, sampler.rank) != (world, rank):
        raise ValueError(
            f"the InfoBatch sampler was built for rank {sampler.rank} of "
            f"{sampler.num_replicas} but this process is rank {rank} of {world}; build InfoBatch "
            "after creating the Accelerator (it reads the process group), or pass "
            "num_replicas=accelerator.num_processes, rank=accelerator.process_index"
        )
    if sampler.drop_last != loader.drop_last:
        raise ValueError(
            f"the DataLoader has drop_last={loader.drop_last} but InfoBatch has "
            f"drop_last={sampler.drop_last}; give both the same value"
        )
    prepared: DataLoader[Any] = prepare_data_loader(
        loader,
        device=accelerator.device,
        num_processes=1,  # the sampler has sharded already: one "process" here, no wrapper
        process_index=0,
        put_on_device=accelerator.device_placement,
        rng_types=None,
        dispatch_batches=False,
        non_blocking=accelerator.non_blocking,
    )
    return prepared


def log_stats(accelerator: Any, dataset: StatsSource, step: int | None = None) -> dict[str, float]:
    """``accelerator.log`` the last epoch's statistics (:func:`~infobatch.epoch_metrics`).

    Call it on every process after an epoch's loop (Accelerate's trackers write on the main
    process only; the times logged are the main process's). ``nan`` values are left out.

    Args:
        accelerator (accelerate.Accelerator): the run's accelerator, with trackers
            (``Accelerator(log_with=...)`` and ``accelerator.init_trackers(name)``).
        dataset (InfoBatch, InfoBatchSampler, history or EpochStats): whose last epoch to log.
        step (int, optional): the trackers' step. Default: the epoch's index.

    Returns:
        The metrics logged (``{name: value}``).
    """
    if not callable(getattr(accelerator, "log", None)):
        raise TypeError(
            f"log_stats() needs an accelerate.Accelerator (its log method), got "
            f"{type(accelerator).__name__}; for a SummaryWriter use infobatch.log_epoch"
        )
    stats = last_epoch(dataset)
    metrics = epoch_metrics(stats)
    accelerator.log(metrics, step=stats.epoch if step is None else step)
    return metrics


class AllRanksState:
    """Checkpoint InfoBatch with ``accelerator.register_for_checkpointing``, every rank's part.

    ``save_state`` writes only the main process's copy of a registered object. Mid-epoch,
    each rank's InfoBatch state holds scores the others do not have yet (they are merged at
    the epoch's end), so this wrapper's :meth:`state_dict` (called on every rank by
    ``save_state``) is ``state_dict(all_ranks=True)``: one state with every rank's unmerged
    scores (three small ``all_gather`` calls on infobatch's own process group).
    :meth:`load_state_dict` gives each rank its own part, so a run resumed mid-epoch with the
    same number of processes continues exactly; at a boundary any number of processes can
    resume.

    Args:
        dataset (InfoBatch or InfoBatchSampler): whose sampler state to checkpoint.
    """

    def __init__(self, dataset: InfoBatch[Any] | InfoBatchSampler) -> None:
        self.sampler = dataset.sampler if isinstance(dataset, InfoBatch) else dataset

    def state_dict(self) -> dict[str, Any]:
        """``{"world_size": W, "ranks": [state of rank 0, ...]}`` (one entry at a boundary)."""
        return rank_states(self.sampler)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load this rank's part (the only one at an epoch boundary)."""
        load_rank_state(self.sampler, state)
