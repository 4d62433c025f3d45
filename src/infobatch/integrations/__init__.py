"""Integrations with training frameworks; each imports its framework only when imported.

* :mod:`infobatch.integrations.hf`: ``InfoBatchTrainer``, a Hugging Face ``Trainer``
  (``pip install "infobatch[hf]"``).
* :mod:`infobatch.integrations.accelerate`: a loader helper, a checkpoint wrapper and
  ``log_stats`` (the statistics on ``accelerator.log``) for plain Accelerate loops
  (``pip install "infobatch[hf]"``).
* :mod:`infobatch.integrations.lightning`: a Lightning callback
  (``pip install "infobatch[lightning]"``).
* :mod:`infobatch.integrations.losses` and :mod:`infobatch.integrations.progress` need only
  torch: per-sample losses (causal LM, sequence classification) and learning-rate schedules
  driven by the fraction of epochs done (read from the sampler), OneCycle included
  (:func:`~infobatch.integrations.progress.one_cycle`).
"""

from .losses import IGNORE_INDEX, PerSampleLoss, causal_lm_loss, sequence_classification_loss
from .progress import OneCycleProgressLR, ProgressLR, SamplerProgress, full_data_steps, one_cycle

__all__ = [
    "IGNORE_INDEX",
    "OneCycleProgressLR",
    "PerSampleLoss",
    "ProgressLR",
    "SamplerProgress",
    "causal_lm_loss",
    "full_data_steps",
    "one_cycle",
    "sequence_classification_loss",
]
