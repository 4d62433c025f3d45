"""InfoBatch for the Hugging Face ``Trainer``: :class:`InfoBatchTrainer`.

Usage (the lines a user changes)::

    from infobatch.integrations.hf import InfoBatchTrainer

    trainer = InfoBatchTrainer(               # was: Trainer(
        model=model, args=args,               # args.num_train_epochs: an integer
        train_dataset=train_set,              # any map-style dataset of dicts
        data_collator=collator,
        prune_ratio=0.5, delta=0.875,         # InfoBatch settings
    )
    trainer.train()                           # resume_from_checkpoint=... works as usual

What the subclass does, through the Trainer's documented override points only (no patching):

* ``get_train_dataloader``: one ``DataLoader`` per process over the InfoBatch sampler, which
  already gives each rank its share, so it is **not** passed to ``accelerator.prepare`` (that
  would shard it a second time). Each batch carries its samples' dataset indices
  (:data:`INDEX_KEY`), so scores never depend on loader order, workers or prefetching.
* Each Trainer epoch is one InfoBatch epoch. The loader reports the full-data length (rounded
  up to whole accumulation groups) so the Trainer sizes its loop for the longest epoch; a
  pruned epoch ends early and the Trainer's remaining steps of that epoch do nothing.
* ``get_batch_samples``: the epoch's last accumulation group, when it has fewer micro-batches
  than ``gradient_accumulation_steps``, is completed with one-row filler micro-batches of
  weight 0 (at most ``gradient_accumulation_steps - 1`` per epoch), so the Trainer steps the
  optimizer at every epoch's end and no gradient leaks into the next epoch.
* ``compute_loss``: per-sample losses (causal LM, sequence classification, or your function),
  recorded as scores; the returned loss is ``sum(w_i * loss_i)`` over the micro-batch divided
  by the number of samples with a label in the whole accumulation group
  (``loss_is_scaled_for_ga = True``). A sample without any label gets weight 0 and no score.
* ``create_scheduler``: the schedule chosen by ``lr_scheduler_type`` (any ``LambdaLR``
  schedule: linear, cosine, constant, with warmup...) is sized for full-data training and
  evaluated after each step at the fraction of epochs done (:class:`ProgressLR`), counted in
  optimizer steps from the sampler's position (:class:`SamplerProgress`), so it reaches its end
  at the last step although pruned epochs are shorter.
* ``save_model`` (called for every checkpoint, on every process): writes
  ``infobatch_state_rank{R}.pt`` into the checkpoint folder; ``train(resume_from_checkpoint=)``
  loads it before training, and the resumed run continues the same epoch plans, at an epoch
  boundary or mid-epoch. ``ignore_data_skip`` is set on the Trainer's copy of the arguments:
  the sampler resumes at its own position, the Trainer must not skip batches.
* ``log``: adds ``infobatch/saved_fraction`` (sample passes saved so far) to every log, and
  each completed epoch's statistics once (:func:`~infobatch.epoch_metrics`: the names of
  :data:`infobatch.METRICS`, kept, pruned, threshold, weight, time accounting...; ``nan``
  values left out) at the Trainer's end of that epoch: merged into the Trainer's own
  epoch-end log with ``logging_strategy="epoch"``, as a log of their own with ``"steps"``
  (whatever ``logging_steps``, so no epoch is missed), not at all with ``"no"``. They reach
  ``state.log_history`` and every ``report_to`` integration. The loader times the wait for
  batches (``infobatch/time/data``); the times are each process's own, the reporting
  integrations write the main process's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..dataset import InfoBatch
from ._trainer import STATE_FILE, EpochLoader, TrainerIntegration, check_epoch_arguments
from .losses import IGNORE_INDEX, PerSampleLoss, causal_lm_loss, sequence_classification_loss
from .progress import SamplerProgress

try:
    from transformers import Trainer
    from transformers.trainer_utils import seed_worker
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "infobatch.integrations.hf needs transformers and accelerate; install them with "
        'pip install "infobatch[hf]"'
    ) from error

__all__ = ["INDEX_KEY", "STATE_FILE", "InfoBatchTrainer", "PerSampleLossFn"]

logger = logging.getLogger("infobatch")

#: Batch key carrying the dataset index of each row (added by the loader, removed before the
#: model's forward).
INDEX_KEY = "infobatch_index"
_GROUP_KEY = "infobatch_group"

#: ``per_sample_loss(outputs, targets) -> PerSampleLoss or Tensor``: ``outputs`` is the model's
#: output, ``targets`` the batch entries removed before the forward (``labels`` and, when
#: present, ``shift_labels``). A plain tensor means every sample is valid.
PerSampleLossFn = Callable[[Any, dict[str, Any]], Union[PerSampleLoss, Tensor]]
_TARGET_KEYS = ("labels", "shift_labels")


@dataclass(frozen=True)
class _Group:
    """Attached to each micro-batch by ``get_batch_samples``: how to scale its loss."""

    real: int  # leading rows that are samples of the plan (the rest are weight-0 fillers)
    labelled: int  # samples with a label in the whole accumulation group (the divisor)
    indices: Tensor  # the real rows' dataset indices, on the CPU (checked without a sync)
    all_labelled: bool  # every real row has a label (update() then needs no valid mask)


class _Indexed(Dataset[tuple[int, Any]]):
    """Item ``i`` is ``(i, dataset[i])``: the index travels with the sample."""

    def __init__(self, dataset: InfoBatch[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class _IndexCollator:
    """Collate the items with the user's collator, then add their indices under INDEX_KEY."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[int, Any]]) -> Any:
        batch = self.collate([item for _, item in items])
        if not isinstance(batch, MutableMapping):
            raise TypeError(
                f"InfoBatchTrainer needs batches that are dicts of tensors (the Trainer's "
                f"convention), got {type(batch).__name__} from the data collator"
            )
        batch[INDEX_KEY] = torch.tensor([index for index, _ in items], dtype=torch.int64)
        return batch


def _rows(batch: Mapping[str, Any]) -> int:
    return int(batch[INDEX_KEY].shape[0])


def _slice(batch: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Rows ``start:stop`` of a collated batch (per-row tensors and lists are sliced)."""
    rows = _rows(batch)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        per_row = (isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == rows) or (
            isinstance(value, (list, tuple)) and len(value) == rows
        )
        if per_row:
            out[key] = value[start:stop]
        else:
            out[key] = value
    return out


def _fill_group(batches: list[Any], parts: int) -> list[tuple[Any, int]]:
    """``(batch, real_rows)`` pairs: the batches, then one-row fillers up to ``parts``.

    A filler is a copy of one row of the last batch with ``real_rows = 0``: it runs forward and
    backward with weight 0 and no score, only so the group has the Trainer's number of
    micro-batches. Real batches are never split, so every ``update()`` gets a whole batch.
    """
    pieces = [(b, _rows(b)) for b in batches]
    filler = _slice(batches[-1], 0, 1)
    return pieces + [(filler, 0)] * (parts - len(pieces))


class InfoBatchTrainer(TrainerIntegration, Trainer):  # type: ignore[misc]
    """A ``transformers.Trainer`` that trains with InfoBatch pruning (see the module docstring).

    Takes the ``Trainer``'s arguments, plus:

    Args:
        prune_ratio (float, optional): InfoBatch's ``r``. Default: ``0.5``.
        delta (float, optional): fraction of epochs that are pruned. Default: ``0.875``.
        seed (int, optional): InfoBatch's seed. Default: ``args.data_seed``, else ``args.seed``.
        per_sample_loss (str or callable, optional): ``"auto"`` (causal LM or sequence
            classification, from the model's class), ``"causal_lm"``,
            ``"sequence_classification"``, or a :data:`PerSampleLossFn`. Default: ``"auto"``.

    ``train_dataset`` may be an :class:`~infobatch.InfoBatch` you built (its ``num_epochs``
    must equal ``args.num_train_epochs``), else it is wrapped with the settings above, for
    ``args.world_size`` processes. The InfoBatch object is :attr:`infobatch`.
    """

    loss_is_scaled_for_ga = True
    args: Any
    lr_scheduler: Any

    def __init__(
        self,
        *args: Any,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        seed: int | None = None,
        per_sample_loss: Union[str, PerSampleLossFn] = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.args, epochs = check_epoch_arguments(self.args, type(self).__name__)
        targs = self.args
        if self.compute_loss_func is not None:
            raise ValueError(
                "InfoBatchTrainer computes per-sample losses itself; pass your loss as "
                "per_sample_loss=fn(outputs, targets) returning one loss per sample instead of "
                "compute_loss_func"
            )
        if targs.label_smoothing_factor:
            raise ValueError(
                "label_smoothing_factor is not supported by InfoBatchTrainer yet; pass a "
                "per_sample_loss that applies label smoothing per sample"
            )
        if isinstance(per_sample_loss, str) and per_sample_loss not in (
            "auto",
            "causal_lm",
            "sequence_classification",
        ):
            raise ValueError(
                f"per_sample_loss must be 'auto', 'causal_lm', 'sequence_classification' or a "
                f"function, got {per_sample_loss!r}"
            )
        self.per_sample_loss = per_sample_loss
        self.infobatch: InfoBatch[Any] = self._wrap(
            self.train_dataset, epochs, prune_ratio, delta, seed
        )
        #: Fraction of the run done, in optimizer steps (drives the schedule and ``state.epoch``).
        self.infobatch_progress = SamplerProgress(
            self.infobatch,
            batch_size=self._train_batch_size,
            accumulation=targs.gradient_accumulation_steps,
        )
        self._infobatch_task: str | None = None
        self._infobatch_setup(epochs)

    def _wrap(
        self, dataset: Any, epochs: int, prune_ratio: float, delta: float, seed: int | None
    ) -> InfoBatch[Any]:
        if dataset is None:
            raise ValueError("InfoBatchTrainer needs a train_dataset")
        targs = self.args
        if isinstance(dataset, InfoBatch):
            if dataset.sampler.num_epochs != epochs:
                raise ValueError(
                    f"the InfoBatch train_dataset was built with num_epochs="
                    f"{dataset.sampler.num_epochs} but args.num_train_epochs={epochs}; use the "
                    "same number"
                )
            if dataset.sampler.num_replicas != targs.world_size:
                raise ValueError(
                    f"the InfoBatch train_dataset is sharded for {dataset.sampler.num_replicas} "
                    f"processes but the Trainer runs {targs.world_size}"
                )
            batch_size = dataset.sampler.batch_size
            if batch_size is not None and batch_size != self._train_batch_size:
                raise ValueError(
                    f"the InfoBatch train_dataset has batch_size={batch_size} but the Trainer's "
                    f"per-process batch size is {self._train_batch_size}; use the same value "
                    "(or leave InfoBatch's batch_size unset)"
                )
            if dataset.sampler.keep_steps:
                raise ValueError(
                    "InfoBatchTrainer does not take an InfoBatch with keep_steps=True yet (its "
                    "smaller batches are tested in plain loops, Accelerate and Lightning only); "
                    "build the train_dataset without keep_steps"
                )
            if dataset.sampler.drop_last != targs.dataloader_drop_last:
                raise ValueError(
                    f"the InfoBatch train_dataset has drop_last={dataset.sampler.drop_last} but "
                    f"args.dataloader_drop_last={targs.dataloader_drop_last}; use the same value"
                )
            return dataset
        if seed is None:
            seed = targs.data_seed if targs.data_seed is not None else targs.seed
        return InfoBatch(
            dataset,
            epochs,
            prune_ratio,
            delta,
            seed=seed,
            drop_last=targs.dataloader_drop_last,
            batch_size=self._train_batch_size,  # exact epoch ends with drop_last
            num_replicas=targs.world_size,
            rank=targs.process_index,
        )

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self) -> EpochLoader:  # type: ignore[override]
        """One InfoBatch epoch per iteration, this process's share only (not re-sharded)."""
        targs = self.args
        workers = targs.dataloader_num_workers
        collate = _IndexCollator(
            self._get_collator_with_removed_columns(self.data_collator, description="training")
        )
        extra: dict[str, Any] = {}
        if workers > 0:
            extra = {
                "prefetch_factor": targs.dataloader_prefetch_factor,
                "persistent_workers": targs.dataloader_persistent_workers,
                "multiprocessing_context": targs.dataloader_multiprocessing_context,
            }
        loader: DataLoader[Any] = DataLoader(
            _Indexed(self.infobatch),
            batch_size=self._train_batch_size,
            sampler=self.infobatch.sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=targs.dataloader_pin_memory,
            drop_last=targs.dataloader_drop_last,
            worker_init_fn=partial(seed_worker, num_workers=workers, rank=targs.process_index),
            **extra,
        )
        accumulation = targs.gradient_accumulation_steps
        size = len(self.infobatch)
        share = math.ceil(size / targs.world_size)  # the most any epoch gives one rank
        full_batches = (
            share // self._train_batch_size
            if targs.dataloader_drop_last
            else (math.ceil(share / self._train_batch_size))
        )
        length = accumulation * max(1, math.ceil(full_batches / accumulation))
        return self._infobatch_epochs(loader, length, accumulation)

    def get_batch_samples(
        self, epoch_iterator: Iterator[Any], num_batches: int, device: torch.device
    ) -> tuple[list[Any], None]:
        """Fetch one accumulation group; an epoch's short last group is filled to full size."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches:
            return [], None
        pieces = _fill_group(batches, num_batches)
        counts = [self._labelled_rows(b, real) for b, real in pieces]
        labelled = sum(counts)
        group = []
        for (batch, real), count in zip(pieces, counts):
            batch = dict(batch)
            batch[_GROUP_KEY] = _Group(
                real=real,
                labelled=labelled,
                indices=batch[INDEX_KEY][:real],
                all_labelled=count == real,
            )
            group.append(batch)
        return group, None

    def _labelled_rows(self, batch: Mapping[str, Any], real: int) -> int:
        """Samples among the first ``real`` rows that have a label (CPU tensors: no sync)."""
        if real == 0:
            return 0
        task = self._task()
        if task == "causal_lm":
            if "shift_labels" in batch:
                return int((batch["shift_labels"][:real] != IGNORE_INDEX).any(dim=1).sum())
            if "labels" in batch:
                return int((batch["labels"][:real, 1:] != IGNORE_INDEX).any(dim=1).sum())
        if task == "sequence_classification" and "labels" in batch:
            labels = batch["labels"][:real]
            if not labels.is_floating_point() and labels.ndim == 1:
                return int((labels != IGNORE_INDEX).sum())
        return real

    # ------------------------------------------------------------------ loss
    def _task(self) -> str:
        if not isinstance(self.per_sample_loss, str):
            return "custom"
        if self.per_sample_loss != "auto":
            return self.per_sample_loss
        if self._infobatch_task is None:
            from transformers.models.auto.modeling_auto import (
                MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
            )

            model = self.accelerator.unwrap_model(self.model)
            if hasattr(model, "get_base_model"):  # a peft model
                model = model.get_base_model()
            name = model._get_name()
            if name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
                self._infobatch_task = "causal_lm"
            elif name in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values():
                self._infobatch_task = "sequence_classification"
            else:
                raise ValueError(
                    f"InfoBatchTrainer cannot tell which per-sample loss {name} needs; pass "
                    "per_sample_loss='causal_lm', 'sequence_classification' or a function"
                )
        return self._infobatch_task

    def _per_sample(self, outputs: Any, targets: dict[str, Any]) -> PerSampleLoss:
        fn = self.per_sample_loss
        if not isinstance(fn, str):
            result = fn(outputs, targets)
            if isinstance(result, PerSampleLoss):
                return result
            ones = torch.ones_like(result, dtype=torch.bool)
            return PerSampleLoss(result, ones, ones.long())
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        if self._task() == "causal_lm":
            return causal_lm_loss(
                logits, targets.get("labels"), shift_labels=targets.get("shift_labels")
            )
        model = self.accelerator.unwrap_model(self.model)
        problem_type = getattr(getattr(model, "config", None), "problem_type", None)
        return sequence_classification_loss(logits, targets["labels"], problem_type=problem_type)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """Weighted per-sample loss for training batches; the Trainer's own loss otherwise."""
        if INDEX_KEY not in inputs or _GROUP_KEY not in inputs:
            inputs = {k: v for k, v in inputs.items() if k not in (INDEX_KEY, _GROUP_KEY)}
            return super().compute_loss(  # type: ignore[no-any-return]
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        inputs = dict(inputs)
        inputs.pop(INDEX_KEY)  # the CPU copy in the group is used
        group: _Group = inputs.pop(_GROUP_KEY)
        targets = {key: inputs.pop(key) for key in _TARGET_KEYS if key in inputs}
        if "labels" not in targets and "shift_labels" not in targets:
            raise ValueError(
                "InfoBatchTrainer needs labels in each training batch to compute per-sample "
                f"losses; the batch has keys {sorted(inputs)}"
            )
        outputs = model(**inputs)
        per = self._per_sample(outputs, targets)
        real = group.real
        total = per.loss.new_zeros(())
        if real > 0:
            # A row without labels: no score, weight 0 (update() masks its loss out). The
            # CPU indices let update() see they are the plan's next positions (no sync).
            mean = self.infobatch.update(
                per.loss[:real],
                indices=group.indices,
                valid=None if group.all_labelled else per.valid[:real],
            )
            total = mean * (real / max(group.labelled, 1))
        if real < per.loss.shape[0]:  # fillers: in the graph (DDP needs every rank's grads)
            total = total + 0.0 * per.loss[real:].sum()
        return (total, outputs) if return_outputs else total
