"""Per-sample losses for objectives beyond per-sample cross-entropy.

InfoBatch scores each sample by its own loss and rescales the kept ones, so it needs one loss
per sample where most recipes reduce to one loss per batch. The functions here take what a
recipe already computes (an elementwise loss map, logits and masks, embeddings) and return one
loss per sample, ready for :meth:`InfoBatch.update <infobatch.InfoBatch.update>`::

    out = segmentation_cross_entropy(logits, masks, ignore_index=255)
    loss = dataset.update(out.loss + dice_loss(logits, masks, ignore_index=255), valid=out.valid)

Functions that can meet a sample with nothing to learn from (every pixel ignored, an empty
mask) return a :class:`PerSampleLoss` whose ``valid`` says so: pass it as ``valid=`` and the
sample gets no score and weight 0. Whether the ``1 / (1 - r)`` rescaling keeps each objective
unbiased is stated per function: it does when a sample's loss does not depend on which other
samples share its batch; it cannot be exact where it does (in-batch negatives, batch-level
statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .integrations.losses import (
    IGNORE_INDEX,
    PerSampleLoss,
    causal_lm_loss,
    sequence_classification_loss,
)

__all__ = [
    "IGNORE_INDEX",
    "PerSampleLoss",
    "causal_lm_loss",
    "dice_loss",
    "info_nce",
    "iou_loss",
    "masked_patch_loss",
    "per_sample_mean",
    "segmentation_cross_entropy",
    "soft_target_cross_entropy",
    "sequence_classification_loss",
    "sum_per_sample",
    "supervised_contrastive",
    "triplet_batch_hard",
]

_REDUCE_HINT = "compute it with reduction='none'"


def _check_batched(name: str, tensor: Tensor, min_dims: int, shape: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a tensor {shape}, got {type(tensor).__name__}")
    if tensor.ndim < min_dims:
        hint = f" ({_REDUCE_HINT}: one loss per element, not per batch)" if name == "values" else ""
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}{hint}")


def per_sample_mean(values: Tensor, mask: Tensor | None = None) -> PerSampleLoss:
    """Average an elementwise loss map ``[B, ...]`` over each sample's elements.

    ``values`` is what a loss gives with ``reduction="none"`` (e.g. ``F.mse_loss(eps_hat, eps,
    reduction="none")`` of a diffusion model, a pixel-wise L1 map). ``mask`` (bool, or float
    weights >= 0; broadcastable to ``values``) selects the elements that count; a sample whose
    mask is empty has loss 0 and ``valid`` false. ``label_count`` counts the elements that
    count (nonzero mask).

    Unbiased: each sample's loss depends on that sample only. The mean of the returned losses
    equals the loss's own ``reduction="mean"`` when every sample has as many elements (always
    without a mask); with masks of different sizes the reference mean weights samples by their
    element count instead (see :func:`segmentation_cross_entropy`).
    """
    _check_batched("values", values, 1, "[batch, ...]")
    if not values.is_floating_point():
        raise TypeError(f"values must be a float tensor, got {values.dtype}")
    flat = values.float().reshape(values.shape[0], -1)
    if mask is None:
        count = torch.full((values.shape[0],), flat.shape[1], dtype=torch.int64, device=flat.device)
        return PerSampleLoss(flat.mean(dim=1), count > 0, count)
    try:
        weights = torch.broadcast_to(mask, values.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the loss map's shape "
            f"{tuple(values.shape)}"
        ) from None
    weights = weights.reshape(values.shape[0], -1)
    if weights.dtype != torch.bool:
        if not weights.is_floating_point():
            weights = weights.bool()
        elif bool((weights < 0).any()):
            raise ValueError("mask weights must be >= 0 (a float mask weights each element)")
    present = weights if weights.dtype == torch.bool else weights > 0
    count = present.sum(dim=1)
    weights = weights.to(flat.dtype)
    total = weights.sum(dim=1)
    # masked elements may hold inf/nan (e.g. padding): they must not reach the sum
    summed = torch.where(present, flat * weights, 0.0).sum(dim=1)
    valid = total > 0
    loss = torch.where(valid, summed / torch.where(valid, total, 1.0), 0.0)
    return PerSampleLoss(loss, valid, count)


def segmentation_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> PerSampleLoss:
    """Per-image cross-entropy of a segmentation map: ``logits [B, C, *]``, ``target [B, *]``.

    Each image's loss averages its pixels whose label is not ``ignore_index`` (weighted by the
    class ``weight`` as ``F.cross_entropy`` does); an image with every pixel ignored has loss 0
    and ``valid`` false; ``label_count`` counts each image's labelled pixels.

    Unbiased for the mean of per-image losses. ``F.cross_entropy``'s own ``"mean"`` averages
    over all labelled pixels of the batch, which weights images by their labelled area and
    divides by a count that depends on the batch; the two agree when every image has as many
    labelled pixels. To keep the pixel weighting, multiply the losses by ``label_count`` over a
    constant (e.g. the dataset's mean labelled pixels per image), not the batch's count.
    """
    _check_batched("logits", logits, 2, "[batch, classes, *]")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target must have shape [batch, *] = {tuple(logits.shape[:1] + logits.shape[2:])} "
            f"(class indices per pixel), got {tuple(target.shape)}"
        )
    pixel = F.cross_entropy(
        logits.float(),
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    labelled = target != ignore_index
    if weight is None:
        return per_sample_mean(pixel, labelled)
    safe = torch.where(labelled, target, 0)
    pixel_weight = torch.where(labelled, weight.float()[safe], 0.0)
    # F.cross_entropy already multiplied each pixel by its class weight: divide by their sum
    denominator = pixel_weight.reshape(pixel.shape[0], -1).sum(dim=1)
    valid = denominator > 0
    summed = pixel.reshape(pixel.shape[0], -1).sum(dim=1)
    loss = torch.where(valid, summed / torch.where(valid, denominator, 1.0), 0.0)
    return PerSampleLoss(loss, valid, labelled.reshape(pixel.shape[0], -1).sum(dim=1))


def _overlap(
    logits: Tensor, target: Tensor, ignore_index: int | None, activation: str | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per image and class: sum of ``p * y``, of ``p`` and of ``y`` over counted pixels."""
    _check_batched("logits", logits, 2, "[batch, classes, *]")
    if activation == "softmax":
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                "with activation='softmax' target must hold class indices [batch, *] = "
                f"{tuple(logits.shape[:1] + logits.shape[2:])}, got {tuple(target.shape)}"
            )
        counted = torch.ones_like(target, dtype=torch.bool)
        if ignore_index is not None:
            counted = target != ignore_index
        probs = logits.float().softmax(dim=1)
        classes = logits.shape[1]
        safe = torch.where(counted, target, 0)
        if bool(((safe < 0) | (safe >= classes)).any()):
            raise ValueError(
                f"target holds labels outside [0, {classes}) that are not ignore_index="
                f"{ignore_index}"
            )
        keep = counted.unsqueeze(1).float()
        truth = F.one_hot(safe, classes).movedim(-1, 1).float() * keep
    elif activation in ("sigmoid", None):
        if target.shape != logits.shape:
            raise ValueError(
                f"with activation={activation!r} target must have the logits' shape "
                f"{tuple(logits.shape)} (a 0/1 map per class), got {tuple(target.shape)}"
            )
        probs = logits.float().sigmoid() if activation == "sigmoid" else logits.float()
        keep = torch.ones_like(probs)
        if ignore_index is not None:
            keep = (target != ignore_index).float()
        truth = torch.where(keep > 0, target.float(), 0.0)
    else:
        raise ValueError(f"activation must be 'softmax', 'sigmoid' or None, got {activation!r}")
    probs = probs * keep
    dims = tuple(range(2, probs.ndim))
    return (probs * truth).sum(dim=dims), probs.sum(dim=dims), truth.sum(dim=dims)


def _class_mean(score: Tensor, include_background: bool) -> Tensor:
    if not include_background:
        if score.shape[1] < 2:
            raise ValueError("include_background=False needs at least two classes")
        score = score[:, 1:]
    return score.mean(dim=1)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    smooth: float = 1.0,
    activation: str | None = "softmax",
    include_background: bool = True,
) -> Tensor:
    """Soft Dice loss of each image, float32 ``[B]``.

    ``1 - mean over classes of (2 |X n Y| + smooth) / (|X| + |Y| + smooth)`` with the sums over
    each image's pixels (never over the batch). ``activation="softmax"``: ``logits [B, C, *]``
    and class indices ``target [B, *]``; ``"sigmoid"``: independent classes, ``target`` a 0/1
    map of the logits' shape; ``None``: ``logits`` are probabilities already. Pixels labelled
    ``ignore_index`` count in neither sum.

    Unbiased per image. A batch-level Dice (the sums taken over the whole batch before the
    ratio, as some recipes do) is not a sum of per-sample terms: no per-sample weight can
    rescale it, so use this per-image form with InfoBatch.
    """
    inter, probs, truth = _overlap(logits, target, ignore_index, activation)
    dice = (2 * inter + smooth) / (probs + truth + smooth)
    return 1 - _class_mean(dice, include_background)


def iou_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    smooth: float = 1.0,
    activation: str | None = "softmax",
    include_background: bool = True,
) -> Tensor:
    """Soft IoU (Jaccard) loss of each image, float32 ``[B]``:
    ``1 - mean over classes of (|X n Y| + smooth) / (|X| + |Y| - |X n Y| + smooth)``.

    Arguments and unbiasedness as :func:`dice_loss`.
    """
    inter, probs, truth = _overlap(logits, target, ignore_index, activation)
    iou = (inter + smooth) / (probs + truth - inter + smooth)
    return 1 - _class_mean(iou, include_background)


def masked_patch_loss(
    pred: Tensor, target: Tensor, mask: Tensor, *, norm_pix: bool = False, eps: float = 1e-6
) -> PerSampleLoss:
    """MAE's reconstruction loss per sample: ``pred`` and ``target [B, L, D]`` (``L`` patches
    of ``D`` values), ``mask [B, L]`` (1 = masked, predicted).

    The squared error averaged over each patch's values, then over the sample's masked
    patches. ``norm_pix=True`` normalises each target patch by its mean and (unbiased)
    variance first, as MAE's ``norm_pix_loss``. A sample with no masked patch has ``valid``
    false.

    Unbiased: the masking is drawn per sample. MAE's own loss (the masked patches' mean over
    the batch) equals the mean of these per-sample losses because MAE masks as many patches in
    every sample.
    """
    _check_batched("pred", pred, 3, "[batch, patches, values]")
    if target.shape != pred.shape:
        raise ValueError(f"target must have pred's shape {tuple(pred.shape)}, got {target.shape}")
    if mask.shape != pred.shape[:2]:
        raise ValueError(
            f"mask must have shape [batch, patches] = {tuple(pred.shape[:2])} (1 = masked), "
            f"got {tuple(mask.shape)}"
        )
    goal = target.float()
    if norm_pix:
        mean = goal.mean(dim=-1, keepdim=True)
        var = goal.var(dim=-1, keepdim=True)
        goal = (goal - mean) / (var + eps).sqrt()
    per_patch = (pred.float() - goal).pow(2).mean(dim=-1)
    return per_sample_mean(per_patch, mask if mask.dtype == torch.bool else mask.float())


def soft_target_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy against soft targets per sample, float32 ``[B]``: ``logits`` and
    ``target [B, C]`` (rows of class probabilities: mixup/cutmix or label smoothing targets).

    The per-sample form of timm's ``SoftTargetCrossEntropy`` (whose mean it equals). After
    mixup or cutmix, row ``i`` mixes sample ``i`` (weight ``lam``) with another sample of the
    batch, so its loss scores sample ``i`` partly by its partner: a noisier score. Not exactly
    unbiased: the partner comes from the batch, and pruning changes who is in it.
    """
    if logits.ndim != 2 or logits.shape != target.shape:
        raise ValueError(
            f"logits and target must both have shape [batch, classes], got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}; for integer labels use "
            "F.cross_entropy(logits, labels, reduction='none')"
        )
    return -(target.float() * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def info_nce(z1: Tensor, z2: Tensor, *, temperature: float = 0.1) -> Tensor:
    """SimCLR's NT-Xent loss per sample, float32 ``[B]``: ``z1``, ``z2 [B, D]`` are the two
    views' embeddings (normalised here).

    Each of the ``2B`` views is an anchor whose positive is its other view and whose negatives
    are the other ``2B - 2`` views of the batch; a sample's loss is the mean of its two
    anchors' cross-entropies, so the batch mean equals SimCLR's loss.

    Not exactly unbiased: a sample's loss depends on the negatives its batch holds, and pruning
    changes which samples share a batch (fewer well-learned ones among them). The rescaling
    restores each kept anchor's share of the objective, not the negatives it was compared with.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both have shape [batch, dim], got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = z1.shape[0]
    if batch < 2:
        raise ValueError("info_nce needs at least 2 samples per batch (the others are negatives)")
    views = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = views @ views.T / temperature
    logits = logits.masked_fill(
        torch.eye(2 * batch, dtype=torch.bool, device=views.device), -torch.inf
    )
    positives = torch.arange(2 * batch, device=views.device).roll(batch)
    per_view = F.cross_entropy(logits, positives, reduction="none")
    return (per_view[:batch] + per_view[batch:]) / 2


def supervised_contrastive(features: Tensor, labels: Tensor, *, temperature: float = 0.1) -> Tensor:
    """The supervised contrastive loss (SupCon, ``L_out``) per sample, float32 ``[B]``:
    ``features [B, V, D]`` (``V >= 2`` views, normalised here), ``labels [B]``.

    Each of the ``B V`` views is an anchor; its positives are the other views with its label
    (its own other views included); its loss is minus the mean log-probability of its positives
    under a softmax over all other views. A sample's loss is the mean over its views.

    Not exactly unbiased, as :func:`info_nce`: positives and negatives come from the batch.
    """
    if features.ndim != 3 or features.shape[1] < 2:
        raise ValueError(
            f"features must have shape [batch, views >= 2, dim], got {tuple(features.shape)}"
        )
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must have shape [{features.shape[0]}], got {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, views = features.shape[:2]
    flat = F.normalize(features.float(), dim=-1).transpose(0, 1).reshape(batch * views, -1)
    owner = labels.repeat(views)
    logits = flat @ flat.T / temperature
    itself = torch.eye(batch * views, dtype=torch.bool, device=flat.device)
    log_prob = logits.masked_fill(itself, -torch.inf).log_softmax(dim=1)
    positive = (owner[:, None] == owner[None, :]) & ~itself
    per_view = -torch.where(positive, log_prob, 0.0).sum(dim=1) / positive.sum(dim=1)
    return per_view.view(views, batch).mean(dim=0)


def triplet_batch_hard(embeddings: Tensor, labels: Tensor, *, margin: float = 0.2) -> PerSampleLoss:
    """The batch-hard triplet loss per anchor: ``embeddings [B, D]``, ``labels [B]``.

    For each anchor, its farthest same-label sample and its nearest other-label sample in the
    batch (Euclidean), ``max(0, d(a, p) - d(a, n) + margin)``. An anchor without a positive or
    without a negative in the batch has ``valid`` false; ``label_count`` counts its positives.

    Not exactly unbiased, as :func:`info_nce`: the mined triplets come from the batch.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must have shape [batch, dim], got {tuple(embeddings.shape)}")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"labels must have shape [{embeddings.shape[0]}], got {tuple(labels.shape)}"
        )
    points = embeddings.float()
    distance = torch.cdist(points, points)
    same = labels[:, None] == labels[None, :]
    itself = torch.eye(len(labels), dtype=torch.bool, device=points.device)
    positive = same & ~itself
    hardest_positive = torch.where(positive, distance, -torch.inf).amax(dim=1)
    hardest_negative = torch.where(same, torch.inf, distance).amin(dim=1)
    valid = positive.any(dim=1) & (~same).any(dim=1)
    loss = (hardest_positive - hardest_negative + margin).clamp(min=0)
    return PerSampleLoss(torch.where(valid, loss, 0.0), valid, positive.sum(dim=1))


def sum_per_sample(values: Tensor, sample_index: Tensor, num_samples: int) -> Tensor:
    """Sum per-element losses ``[K]`` (boxes, anchors, points) into their samples ``[B]``.

    ``sample_index [K]`` names each element's sample (e.g. the image of each matched box in a
    detection loss computed with ``reduction="none"``); samples without elements get 0.

    Unbiased when the per-image sums are divided by a constant (e.g. a fixed number of sampled
    boxes per image); a normaliser that counts the batch's boxes depends on the batch.
    """
    if values.ndim != 1 or sample_index.shape != values.shape:
        raise ValueError(
            f"values and sample_index must both have shape [elements], got "
            f"{tuple(values.shape)} and {tuple(sample_index.shape)}"
        )
    if values.numel() and (int(sample_index.min()) < 0 or int(sample_index.max()) >= num_samples):
        raise ValueError(f"sample_index must lie in [0, {num_samples})")
    out = torch.zeros(num_samples, dtype=torch.float32, device=values.device)
    return out.index_add(0, sample_index.long(), values.float())
