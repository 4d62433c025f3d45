"""The three-line wrapper: ``InfoBatch(dataset, num_epochs, prune_ratio, delta)``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar, cast

from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from .batching import EpochBatchSampler
from .context import EpochAwareRule
from .distributed import Collectives
from .rule import PruningRule
from .sampler import IndexLike, InfoBatchSampler
from .sampling import WeightedSampling
from .stats import EpochStats

__all__ = ["InfoBatch"]

T_co = TypeVar("T_co", covariant=True)
B = TypeVar("B")


class InfoBatch(Dataset[T_co], Generic[T_co]):
    """Wrap a map-style dataset for InfoBatch training; items and batches are unchanged.

    Usage (the official three lines)::

        dataset = InfoBatch(train_set, num_epochs=200, prune_ratio=0.5, delta=0.875)
        loader = DataLoader(dataset, batch_size=128, sampler=dataset.sampler, num_workers=4)
        ...
        loss = dataset.update(criterion(model(x), y))  # criterion(reduction='none')
        loss.backward()

    For a schedule limited by its number of optimizer steps (a few epochs), keep full data's
    steps in pruned epochs with smaller batches::

        dataset = InfoBatch(train_set, num_epochs=8, batch_size=128, keep_steps=True)
        loader = DataLoader(dataset, batch_sampler=dataset.batch_sampler, num_workers=4)

    Attributes of the wrapped dataset stay reachable (``dataset.classes``). Arguments are
    those of :class:`InfoBatchSampler`, with ``num_samples = len(dataset)``.
    """

    def __init__(
        self,
        dataset: Dataset[T_co],
        num_epochs: int | None,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        *,
        num_iterations: int | None = None,
        sampling: WeightedSampling | None = None,
        score_momentum: float = 0.0,
        seed: int | None = None,
        drop_last: bool = False,
        batch_size: int | None = None,
        keep_steps: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        rule: PruningRule | EpochAwareRule | None = None,
        collectives: Collectives | None = None,
        class_labels: Tensor | Sequence[int] | None = None,
    ) -> None:
        if isinstance(dataset, IterableDataset):
            raise TypeError(
                f"InfoBatch needs a map-style dataset (indexable, with __len__); "
                f"{type(dataset).__name__} is an IterableDataset, which a sampler cannot index "
                "(iterable datasets are not supported)"
            )
        try:
            size = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"InfoBatch needs a map-style dataset with __len__ and __getitem__; "
                f"{type(dataset).__name__} has no length (iterable datasets are not supported)"
            ) from None
        if size == 0:
            raise ValueError("the dataset is empty; InfoBatch needs at least one sample")
        self.dataset = dataset
        self._sampler = InfoBatchSampler(
            size,
            num_epochs,
            prune_ratio,
            delta,
            num_iterations=num_iterations,
            sampling=sampling,
            score_momentum=score_momentum,
            seed=seed,
            drop_last=drop_last,
            batch_size=batch_size,
            keep_steps=keep_steps,
            num_replicas=num_replicas,
            rank=rank,
            rule=rule,
            collectives=collectives,
            class_labels=class_labels,
        )

    def __getitem__(self, index: int) -> T_co:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[T_co]:
        """A batch's items in one call (the ``DataLoader`` fetches batches this way): the
        wrapped dataset's own ``__getitems__`` when it has one, else one lookup per index
        without a call through this wrapper for each."""
        getitems = getattr(self.dataset, "__getitems__", None)
        if callable(getitems):
            return cast("list[T_co]", getitems(indices))
        dataset = self.dataset
        return [dataset[index] for index in indices]

    def __len__(self) -> int:
        """Size of the wrapped dataset (the loader's length comes from :attr:`sampler`)."""
        return self._sampler.num_samples

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found normally; guard against recursion while unpickling.
        if name.startswith("__") or "dataset" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["dataset"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Reads of the wrapped dataset's attributes pass through (``__getattr__``); a write would
        # land on this wrapper and silently leave the wrapped dataset as it was.
        inner = self.__dict__.get("dataset")
        if (
            inner is not None
            and name not in ("dataset", "_sampler")  # the wrapper's own, set in __init__
            and not hasattr(type(self), name)
            and name not in self.__dict__
            and hasattr(inner, name)
        ):
            raise AttributeError(
                f"setting {name!r} on InfoBatch would not change the dataset it wraps, whose "
                f"{name!r} the items come from: set it there (`infobatch_dataset.dataset.{name} "
                "= ...`, or before wrapping). A loader factory that sets it (timm's "
                "create_loader sets `transform`) also builds its own sampler: build the loader "
                "from DataLoader(dataset, sampler=dataset.sampler) instead (README: timm)"
            )
        super().__setattr__(name, value)

    @property
    def sampler(self) -> InfoBatchSampler:
        """The sampler to give the ``DataLoader`` (always the same object)."""
        return self._sampler

    @property
    def batch_sampler(self) -> EpochBatchSampler:
        """Batches at each epoch's batch size, for ``DataLoader(dataset,
        batch_sampler=dataset.batch_sampler)`` (needed with ``keep_steps=True``)."""
        return self._sampler.batch_sampler

    def update(
        self,
        loss: Tensor,
        *,
        indices: IndexLike | None = None,
        score: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        """Record per-sample losses, return the weighted mean (:meth:`InfoBatchSampler.update`)."""
        return self._sampler.update(loss, indices=indices, score=score, valid=valid)

    def timed(self, batches: Iterable[B]) -> Iterator[B]:
        """Iterate the training loader, timing the wait for batches
        (:meth:`InfoBatchSampler.timed`): ``for x, y in dataset.timed(loader)``."""
        return self._sampler.timed(batches)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration train ``epoch`` (:meth:`InfoBatchSampler.set_epoch`)."""
        self._sampler.set_epoch(epoch)

    def end_epoch(self) -> None:
        """End a partly trained epoch on purpose (:meth:`InfoBatchSampler.end_epoch`)."""
        self._sampler.end_epoch()

    def state_dict(self, *, all_ranks: bool = False) -> dict[str, Any]:
        """Checkpoint state (scores, epoch, position, statistics); under several processes
        ``all_ranks=True`` (on every rank) makes one state that resumes every rank
        (:meth:`InfoBatchSampler.state_dict`)."""
        return self._sampler.state_dict(all_ranks=all_ranks)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self._sampler.load_state_dict(state)

    @property
    def scores(self) -> Tensor:
        """Latest score of every sample (``nan`` = never scored)."""
        return self._sampler.scores

    @property
    def epoch(self) -> int:
        """The epoch being planned or trained."""
        return self._sampler.epoch

    @property
    def history(self) -> list[EpochStats]:
        """Per-epoch statistics."""
        return self._sampler.history

    @property
    def saved_fraction(self) -> float:
        """Fraction of sample passes saved so far versus full data."""
        return self._sampler.saved_fraction

    def get_pruned_count(self) -> int:
        """Samples skipped over all planned epochs (official API)."""
        return self._sampler.num_pruned

    def mean_score(self) -> Tensor:
        """Mean score over scored samples (official API; ``nan`` before any update)."""
        return self._sampler.scores.nanmean()

    def __repr__(self) -> str:
        return f"InfoBatch({self.dataset!r}, {self._sampler!r})"
