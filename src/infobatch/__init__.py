"""infobatch: unbiased dynamic data pruning (InfoBatch, ICLR 2024) for PyTorch."""

from .batching import BatchLayout, EpochBatchSampler
from .budget import SavingBudget
from .context import EpochAwareRule, EpochContext
from .dataset import InfoBatch
from .distributed import Collectives, PendingReduce, TorchCollectives
from .errors import InfoBatchError
from .iterations import iterations
from .lifecycle import EpochLifecycle, Phase
from .losses import (
    PerSampleLoss,
    dice_loss,
    info_nce,
    iou_loss,
    masked_patch_loss,
    per_sample_mean,
    segmentation_cross_entropy,
    soft_target_cross_entropy,
    sum_per_sample,
    supervised_contrastive,
    triplet_batch_hard,
)
from .metrics import METRICS, epoch_metrics, log_epoch, log_history
from .plan import EpochPlan, build_plan
from .plot import plot_history
from .prompts import PROMPT_SCORES, BatchAlignedPruning, PromptPruning, prompt_scores
from .regime import ShortScheduleWarning
from .rng import epoch_generator
from .rule import KEPT, PRUNED, UPWEIGHTED, KeepAll, PruningRule, Selection, SoftPruning
from .sampler import STATE_VERSION, InfoBatchSampler
from .sampling import WeightedSampling, class_balanced_weights
from .schedule import AnnealingSchedule, IterationSchedule
from .scores import ScoreTable
from .stats import EpochStats
from .timing import EpochClock, EpochTiming, timed_batches

__version__ = "0.2.0"

__all__ = [
    "AnnealingSchedule",
    "BatchAlignedPruning",
    "BatchLayout",
    "Collectives",
    "EpochAwareRule",
    "EpochBatchSampler",
    "EpochContext",
    "EpochLifecycle",
    "EpochPlan",
    "EpochClock",
    "EpochStats",
    "EpochTiming",
    "InfoBatch",
    "InfoBatchError",
    "InfoBatchSampler",
    "IterationSchedule",
    "KEPT",
    "KeepAll",
    "METRICS",
    "PRUNED",
    "PROMPT_SCORES",
    "PromptPruning",
    "PendingReduce",
    "PerSampleLoss",
    "Phase",
    "PruningRule",
    "STATE_VERSION",
    "SavingBudget",
    "ScoreTable",
    "ShortScheduleWarning",
    "Selection",
    "SoftPruning",
    "TorchCollectives",
    "WeightedSampling",
    "UPWEIGHTED",
    "build_plan",
    "class_balanced_weights",
    "dice_loss",
    "epoch_generator",
    "epoch_metrics",
    "info_nce",
    "iou_loss",
    "iterations",
    "log_epoch",
    "log_history",
    "masked_patch_loss",
    "per_sample_mean",
    "plot_history",
    "prompt_scores",
    "segmentation_cross_entropy",
    "soft_target_cross_entropy",
    "sum_per_sample",
    "supervised_contrastive",
    "timed_batches",
    "triplet_batch_hard",
    "__version__",
]
