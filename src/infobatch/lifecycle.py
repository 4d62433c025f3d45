"""The epoch lifecycle: which epoch is planned, being trained or finished, and where its pass is.

A small state machine with no tensors in it. The sampler asks it what an iteration, a
``set_epoch`` or a ``len`` means now, and tells it what happened (a plan was made, indices were
handed out, losses arrived). Every rule about epochs lives here::

    UNPLANNED --plan--> READY --first update--> TRAINING --last update--> COMPLETE
                          ^  |                      |                        |
                          |  +-- iterate: the same  +-- iterate / set_epoch  +-- iterate / len /
                          |      plan again             (other epoch): the       set_epoch (other
                          |      (nothing counted)      next plan                epoch): next plan
                          +-- set_epoch(this epoch) on TRAINING or COMPLETE: the same plan again

* An iteration that receives no update (an evaluation pass over the training loader, a peek
  with ``next(iter(loader))``, a second loader) neither starts nor ends an epoch: the next
  iteration yields the same plan again.
* An epoch starts at its first update and is complete at its last expected one (at once, for
  an epoch that keeps no sample). An iteration begun after that, or after an epoch broken off
  early, trains the next epoch.
* An iteration begun while a pass is training the epoch (it has received updates and its
  iterator is still open: an evaluation pass over the training loader, a peek, a second loader
  during the epoch) is a *side pass*: it yields the epoch's indices and changes nothing; the
  running pass keeps training its epoch.
* A checkpoint taken in a partly trained epoch resumes the rest of it, whether its loop is
  still running or was broken off (a preemption: stop, save, exit). To cut an epoch short on
  purpose (a step cap), ``end_epoch()`` after the break completes it: the next iteration and a
  checkpoint then go to the next epoch, without a warning about the missing updates.
* ``set_epoch(e)`` followed by a loop trains epoch ``e``, always (``DistributedSampler``'s
  contract): for the epoch already planned and untouched it does nothing, for the epoch that
  was (partly) trained it restarts the same plan, for another epoch it plans that one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import InfoBatchError

__all__ = ["Phase", "EpochLifecycle"]


class Phase(enum.Enum):
    """Where the current epoch stands."""

    UNPLANNED = "unplanned"  # no plan: fresh, or an epoch-boundary checkpoint was loaded
    READY = "ready"  # planned; no update in the current pass yet
    TRAINING = "training"  # at least one update arrived, not all
    COMPLETE = "complete"  # every expected update arrived


@dataclass
class EpochLifecycle:
    """State of the current epoch and of the pass (one iteration) that is training it.

    Positions count this rank's planned indices: ``start <= consumed <= yielded <= length``.

    Attributes:
        epoch: the current epoch (0-based).
        phase: see :class:`Phase`.
        length: indices planned for this rank in the current epoch.
        resume_at: where a pass starts while ``READY`` (a mid-epoch checkpoint's position).
        start: where the current pass started.
        yielded: positions handed to the loader by the current pass.
        consumed: positions whose losses reached ``update()``.
        passes: iterations started so far; a newer one retires the older iterators.
        pass_open: an iteration of the current plan has started.
        abandoned: the current pass's iterator was closed before its end (``break``).
    """

    epoch: int = 0
    phase: Phase = Phase.UNPLANNED
    length: int = 0
    resume_at: int = 0
    start: int = 0
    yielded: int = 0
    consumed: int = 0
    passes: int = 0
    pass_open: bool = False
    abandoned: bool = False

    # ------------------------------------------------------------------ questions
    def epoch_to_plan_for_iteration(self) -> int | None:
        """The epoch an iteration must plan first, or ``None`` if the current plan serves."""
        if self.phase is Phase.UNPLANNED:
            return self.epoch
        if self.phase is Phase.READY:
            return None
        return self.epoch + 1

    def side_pass(self) -> bool:
        """An iteration begun now is a side pass: a pass is open and training the epoch."""
        return self.phase is Phase.TRAINING and not self.abandoned

    def epoch_to_plan_for_len(self) -> int | None:
        """Like :meth:`epoch_to_plan_for_iteration`, but a pass under way keeps its length."""
        if self.phase is Phase.TRAINING and not self.abandoned:
            return None
        return self.epoch_to_plan_for_iteration()

    def remaining(self) -> int:
        """Positions the next iteration yields, or the current pass yields in all."""
        if self.phase is Phase.TRAINING:
            return self.length - self.start
        return self.length - self.resume_at

    def set_epoch_action(self, epoch: int) -> str:
        """What ``set_epoch(epoch)`` does: ``"nothing"``, ``"restart"`` or ``"plan"``."""
        if epoch != self.epoch or self.phase is Phase.UNPLANNED:
            return "plan"
        return "nothing" if self.phase is Phase.READY else "restart"

    def check_update(self, *, planned: bool, side_pass_open: bool) -> None:
        """Raise, with the fix, unless losses may arrive for the current pass now."""
        if not planned or not self.pass_open:
            raise InfoBatchError(
                "update() was called before the loader yielded any batch of this epoch; "
                "iterate a DataLoader built with sampler=<InfoBatch>.sampler, then pass each "
                "batch's per-sample losses to update()"
            )
        if self.phase is Phase.COMPLETE:
            raise InfoBatchError(
                f"update() was called after all {self.length} planned samples of epoch "
                f"{self.epoch} were updated; call update() once per batch. If your "
                "DataLoader keeps the last partial batch, build InfoBatch with drop_last=False"
            )
        if side_pass_open and self.yielded == self.length:
            raise InfoBatchError(
                "update() received losses while a second iteration over the loader is open, "
                f"after epoch {self.epoch}'s pass handed out all its samples with "
                f"{self.length - self.consumed} still waiting for update(): infobatch cannot "
                "tell whether these losses are that epoch's last batches or a new loop's. If "
                "the earlier loop is over, some of its batches never reached update(): if you "
                "broke it off on purpose, call end_epoch() (or set_epoch(next_epoch)) before "
                "the next loop; else call update() once per batch, and if your DataLoader "
                "uses drop_last=True, pass drop_last=True to InfoBatch as well"
            )

    # ------------------------------------------------------------------ events
    def planned(self, epoch: int, length: int, position: int = 0) -> None:
        """A plan for ``epoch``, ``length`` positions on this rank; passes start at ``position``."""
        self.epoch, self.length, self.phase = epoch, length, Phase.READY
        self.resume_at = self.start = self.yielded = self.consumed = position
        self.pass_open = self.abandoned = False

    def unplanned(self, epoch: int) -> None:
        """No plan; the next iteration plans ``epoch`` (an epoch-boundary checkpoint)."""
        self.planned(epoch, 0)
        self.phase = Phase.UNPLANNED

    def restart(self) -> None:
        """Train the current plan again from its start (``set_epoch`` of this epoch)."""
        self.planned(self.epoch, self.length)

    def end_early(self) -> bool:
        """Complete a partly trained epoch now (a step cap); returns whether it was one.

        A pass still open is retired: its iterator yields nothing more.
        """
        if self.phase is not Phase.TRAINING:
            return False
        self.passes += 1
        self.pass_open = False
        self.phase = Phase.COMPLETE
        return True

    def open_pass(self) -> int:
        """An iteration of the ``READY`` plan starts; returns its pass number."""
        if self.phase is not Phase.READY:
            raise RuntimeError(f"a pass can only open on a READY plan, not {self.phase}")
        self.passes += 1
        self.pass_open, self.abandoned = True, False
        self.start = self.yielded = self.consumed = self.resume_at
        return self.passes

    def closed(self, pass_number: int) -> None:
        """The iterator of ``pass_number`` was closed before yielding all its positions."""
        if pass_number == self.passes:
            self.abandoned = True

    def receive(self, count: int) -> bool:
        """``count`` losses arrived; returns whether they are the epoch's first."""
        first = self.phase is Phase.READY
        if first:
            self.phase = Phase.TRAINING
        self.consumed += count
        return first

    def complete(self) -> None:
        """Every expected update of the epoch arrived (or none was expected)."""
        self.phase = Phase.COMPLETE
