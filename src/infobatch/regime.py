"""Where InfoBatch's defaults are measured to lose accuracy: short, step-limited schedules.

A pruned epoch at a fixed batch size makes fewer optimizer steps (about 30% fewer over a run at
the defaults). When the schedule ends while the model is still improving, those steps are
missing. The figures are from the step-limited task of ``benchmarks/step_limited.py`` (the
regime map in BENCHMARKS.md, made by the command given there). The sampler warns once, at
construction, when a run is in that regime; :class:`ShortScheduleWarning` can be filtered.
"""

from __future__ import annotations

import warnings

__all__ = ["SHORT_SCHEDULE_EPOCHS", "ShortScheduleWarning", "warn_if_short_schedule"]

#: Runs of at most this many epochs are warned about (the map's lossy range).
SHORT_SCHEDULE_EPOCHS = 16

#: Measured on the step-limited task (20 seeds; BENCHMARKS.md, "Step-limited task"): the
#: defaults against full data, and ``keep_steps=True`` against full data, in points, at
#: 4 / 8 / 16 epochs, with the saving.
MEASURED = (
    "at 4, 8 and 16 epochs InfoBatch's defaults lost {ib4}, {ib8} and {ib16} points against "
    "full data (saving 30-35% of the sample passes, with 30-34% fewer optimizer steps); with "
    "keep_steps=True, at the same saving, {ks4}, {ks8} and {ks16}"
)
FIGURES = {
    "ib4": "-0.28",
    "ib8": "-0.14",
    "ib16": "-0.19",
    "ks4": "+0.37",
    "ks8": "+0.28",
    "ks16": "+0.15",
}


class ShortScheduleWarning(UserWarning):
    """The run is short enough that InfoBatch's fewer optimizer steps may cost accuracy."""


def warn_if_short_schedule(
    num_epochs: int, pruned_epochs: int, delta: float, *, keep_steps: bool, prunes: bool
) -> None:
    """Warn (:class:`ShortScheduleWarning`) when an epoch-based run of ``num_epochs`` epochs
    prunes at a fixed batch size in the range the regime map found lossy, or has no annealing
    epoch at all; say what was measured and what to do."""
    if not prunes or keep_steps or num_epochs > SHORT_SCHEDULE_EPOCHS or pruned_epochs <= 1:
        return
    annealing = num_epochs - pruned_epochs
    no_annealing = (
        f" delta={delta} also leaves no full-data epoch at the end (ceil({delta} x "
        f"{num_epochs}) = {pruned_epochs}); delta <= {(num_epochs - 1) / num_epochs:.3f} "
        "gives one."
        if annealing == 0
        else ""
    )
    warnings.warn(
        f"InfoBatch: a run of {num_epochs} epochs is short. Its {pruned_epochs - 1} pruned "
        "epochs make fewer optimizer steps at a fixed batch size, which costs accuracy when "
        "the model is still improving at the end of the schedule: on the benchmark's "
        f"step-limited task {MEASURED.format(**FIGURES)}."
        f"{no_annealing} To keep full data's optimizer steps (smaller batches in pruned "
        "epochs, the same samples saved): InfoBatch(..., batch_size=B, keep_steps=True) and "
        "DataLoader(dataset, batch_sampler=dataset.batch_sampler), in a plain loop, with "
        "Accelerate or with Lightning (the Hugging Face Trainer integration does not take it "
        "yet). If your model has "
        "converged well before the end, this does not apply: filter "
        "infobatch.ShortScheduleWarning.",
        ShortScheduleWarning,
        stacklevel=4,
    )
