"""Matching losses to samples: which plan positions a batch's losses belong to.

With implicit attribution (``update(loss)`` without ``indices=``) the losses of each call are
the next ``len(loss)`` positions of the epoch's plan on this rank. That is only right if every
loss holds exactly one value per sample of its batch, so each call is checked against what the
sampler can know about the batches:

* with ``batch_size=`` given, every batch but an epoch's last has exactly that many samples;
* without it, the loader takes indices a whole batch at a time, so while the plan is not used
  up, the number of indices handed out of a pass is a multiple of the batch size whenever
  ``update()`` runs; a batch's losses must divide it and start on a batch boundary, and all
  batches but the last have the length of the first.

What stays undetectable without ``batch_size=`` or ``indices=``: a loss that is a whole fraction
of the true batch (e.g. always half of it) looks exactly like a smaller batch size; it is found
when the epoch ends with samples that never reached ``update()``. Losses in the wrong order
within a batch are never detectable without ``indices=``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .batching import BatchLayout
from .errors import InfoBatchError

__all__ = ["BatchBoundaries"]


@dataclass
class BatchBoundaries:
    """What is known of the loader's batches, and the check of each implicit update.

    Args:
        batch_size: the loader's batch size per rank, if the user gave it.
        drop_last: whether the loader drops an epoch's last partial batch.
    """

    batch_size: int | None = None
    drop_last: bool = False
    first: int | None = None  # length of the current pass's first batch
    handed_out_gcd: int = 0  # gcd of the positions handed out at each update, plan not used up
    last_seen: int | None = None  # a full batch length seen in any earlier pass
    layout: BatchLayout | None = None  # the epoch's batches, when the sampler cuts them

    def new_pass(self) -> None:
        """Forget the previous pass's batches (the loader may have been rebuilt)."""
        if self.first is not None:
            self.last_seen = self.first
        self.first, self.handed_out_gcd = None, 0

    @property
    def known(self) -> int | None:
        """The batch size if given, else the last one seen (for epochs with no update)."""
        return self.batch_size if self.batch_size is not None else self.last_seen

    def check(
        self, count: int, *, epoch: int, start: int, consumed: int, yielded: int, length: int
    ) -> None:
        """Raise unless ``count`` losses can be the batch at plan position ``consumed``."""
        loaded = yielded - consumed
        if count > loaded:
            raise InfoBatchError(
                f"update() received {count} losses but only {loaded} samples of epoch {epoch} "
                "were loaded and not yet updated; pass one loss per sample of the batch "
                "(reduction='none'), once per batch"
            )
        final = consumed + count == length
        if self.batch_size is not None:
            expected = (
                min(self.batch_size, length - consumed)
                if self.layout is None
                else self.layout.size_at(consumed)
            )
            if count != expected:
                raise ValueError(
                    f"update() received {count} losses, but the batch at position "
                    f"{consumed - start} of epoch {epoch} holds {expected} samples "
                    f"(batch_size={self.batch_size}); pass one loss per sample of the batch "
                    "(reduction='none')"
                )
            return
        if self.first is not None and (count > self.first or (count != self.first and not final)):
            raise ValueError(
                f"loss has {count} elements but earlier batches of epoch {epoch} had "
                f"{self.first}; only the epoch's last batch may be shorter. Pass one loss per "
                "sample, or pass indices= with each batch"
            )
        if not final:
            handed_out = yielded - start
            if yielded < length:
                self.handed_out_gcd = math.gcd(self.handed_out_gcd, handed_out)
            on_boundary = (consumed - start) % count == 0
            if not on_boundary or self.handed_out_gcd % count != 0:
                raise ValueError(
                    f"update() received {count} losses, but the loader has handed out "
                    f"{handed_out} samples of epoch {epoch} in whole batches and "
                    f"{consumed - start} of them were updated, which {count}-sample batches "
                    "cannot produce: the loss must hold exactly one value per sample of the "
                    "batch (reduction='none'). Pass batch_size= to InfoBatch to check every "
                    "batch exactly, or indices= with each batch if batches vary in size"
                )

    def note(self, count: int, final: bool) -> None:
        """Remember the pass's batch length from its first batch that is not its last."""
        if self.first is None and not final:
            self.first = count

    def ends_epoch(self, end: int, length: int) -> bool:
        """Whether the update that reached position ``end`` is the epoch's last."""
        if end == length:
            return True
        size = self.batch_size if self.batch_size is not None else self.first
        return self.drop_last and size is not None and length - end < size

    def pass_is_empty(self, remaining: int) -> bool:
        """A pass of ``remaining`` positions yields no batch (all dropped by ``drop_last``)."""
        size = self.known
        return self.drop_last and size is not None and remaining < size
