"""Per-sample losses for the framework integrations (torch only, no framework import).

InfoBatch scores and weights samples, so an integration needs one loss per sample where a
framework computes one loss per batch. The functions here return that loss together with a
``valid`` mask: a sample without any label to learn from (every label ``-100``, e.g. an
instruction whose answer was truncated away) has no loss, must get no score and weight 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "PerSampleLoss",
    "causal_lm_loss",
    "sequence_classification_loss",
]

#: Label value that marks a position as "not a target" (the Hugging Face convention).
IGNORE_INDEX = -100


class PerSampleLoss(NamedTuple):
    """One loss per sample and whether the sample had anything to learn from.

    Attributes:
        loss (Tensor): float32, shape ``[batch]``; ``0`` where ``valid`` is false.
        valid (Tensor): bool, shape ``[batch]``: the sample has at least one label.
        label_count (Tensor): int64, shape ``[batch]``: labels (tokens) the loss averages over.
    """

    loss: Tensor
    valid: Tensor
    label_count: Tensor


def causal_lm_loss(
    logits: Tensor,
    labels: Tensor | None = None,
    *,
    shift_labels: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> PerSampleLoss:
    """Per-sample causal language-modelling loss, matching the model's own loss per sample.

    Token ``t`` predicts label ``t + 1``; each sample's loss is the mean cross-entropy over its
    positions whose label is not ``ignore_index`` (prompt and padding tokens never count). On a
    batch of one sample this equals Hugging Face's ``ForCausalLMLoss`` (the loss a
    ``...ForCausalLM`` model returns given ``labels``); on a batch of several it is that loss of
    each sample alone, not the token-weighted batch mean.

    Args:
        logits (Tensor): shape ``[batch, seq, vocab]``, any float dtype (computed in float32).
        labels (Tensor, optional): shape ``[batch, seq]``, unshifted, ``ignore_index`` where a
            position is not a target.
        shift_labels (Tensor, optional): labels already shifted (``shift_labels[:, t]`` is the
            target of ``logits[:, t]``), as padding-free collators provide; used as is.
        ignore_index (int, optional): label value to ignore. Default: ``-100``.

    Returns:
        PerSampleLoss: ``loss`` (float32, 0 for samples without labels), ``valid``,
        ``label_count``.

    Example::

        >>> logits = torch.zeros(2, 3, 5)
        >>> labels = torch.tensor([[-100, 1, 2], [-100, -100, -100]])
        >>> out = causal_lm_loss(logits, labels)
        >>> out.loss, out.valid, out.label_count
        (tensor([1.6094, 0.0000]), tensor([ True, False]), tensor([2, 0]))
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape [batch, seq, vocab], got {tuple(logits.shape)}")
    if shift_labels is not None:
        targets = shift_labels
    elif labels is not None:
        # Shift the labels, not the logits (as the models' own loss does): the logits stay
        # contiguous, so no copy of them is made; the last position gets no target.
        targets = F.pad(labels[:, 1:], (0, 1), value=ignore_index)
    else:
        raise ValueError("give labels or shift_labels")
    if targets.shape != logits.shape[:2]:
        given = tuple((labels if shift_labels is None else shift_labels).shape)  # type: ignore[union-attr]
        raise ValueError(
            f"labels of shape {given} do not match logits of shape {tuple(logits.shape)}; "
            "give labels of shape [batch, seq]"
        )
    batch, seq, vocab = logits.shape
    targets = targets.to(logits.device)
    # Flat [tokens, vocab] rows: the fast cross-entropy kernel (a [batch, vocab, seq] input
    # takes a kernel several times slower); 0 at ignored positions.
    token_loss = F.cross_entropy(
        logits.float().reshape(batch * seq, vocab),
        targets.reshape(batch * seq),
        ignore_index=ignore_index,
        reduction="none",
    ).view(batch, seq)
    count = (targets != ignore_index).sum(dim=1)
    valid = count > 0
    loss = token_loss.sum(dim=1) / count.clamp(min=1)
    return PerSampleLoss(loss, valid, count)


def sequence_classification_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    problem_type: str | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> PerSampleLoss:
    """Per-sample loss of a sequence classifier, as Hugging Face's models compute it per batch.

    ``problem_type`` is the model config's: ``"regression"`` (squared error, averaged over
    outputs), ``"single_label_classification"`` (cross-entropy; a label ``ignore_index`` makes
    the sample invalid) or ``"multi_label_classification"`` (binary cross-entropy with logits,
    averaged over labels). ``None`` infers it as the models do: one output is regression,
    integer labels are single-label, anything else multi-label.

    Args:
        logits (Tensor): shape ``[batch, num_labels]``.
        labels (Tensor): shape ``[batch]`` (class ids or regression targets) or
            ``[batch, num_labels]`` (multi-label targets or multi-output regression).
        problem_type (str, optional): see above. Default: inferred.
        ignore_index (int, optional): class id that marks a sample without a label.

    Returns:
        PerSampleLoss: ``loss`` (float32), ``valid``, ``label_count`` (1 per valid sample).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [batch, num_labels], got {tuple(logits.shape)}")
    num_labels = logits.shape[1]
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    labels = labels.to(logits.device)
    scores = logits.float()
    batch = logits.shape[0]
    if problem_type == "regression":
        loss = (scores - labels.float().reshape(batch, -1)).pow(2).mean(dim=1)
        valid = torch.ones(batch, dtype=torch.bool, device=logits.device)
    elif problem_type == "single_label_classification":
        targets = labels.reshape(batch).long()
        loss = F.cross_entropy(scores, targets, ignore_index=ignore_index, reduction="none")
        valid = targets != ignore_index
    elif problem_type == "multi_label_classification":
        loss = F.binary_cross_entropy_with_logits(
            scores, labels.float().reshape(batch, -1), reduction="none"
        ).mean(dim=1)
        valid = torch.ones(batch, dtype=torch.bool, device=logits.device)
    else:
        raise ValueError(
            f"unknown problem_type {problem_type!r}; expected 'regression', "
            "'single_label_classification' or 'multi_label_classification'"
        )
    return PerSampleLoss(loss, valid, valid.long())
