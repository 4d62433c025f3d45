"""``infobatch.losses``: each per-sample loss against its loss's own reduction or a direct
reference, the batch independence that makes the rescaling unbiased (and its absence for
in-batch negatives), and the errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from infobatch import InfoBatch
from infobatch.losses import (
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


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _seg_batch(seed: int, batch: int = 4, classes: int = 3, size: int = 5) -> tuple[Tensor, Tensor]:
    g = _gen(seed)
    logits = torch.randn(batch, classes, size, size, generator=g)
    target = torch.randint(classes, (batch, size, size), generator=g)
    ignored = torch.rand(batch, size, size, generator=g) < 0.3
    return logits, target.masked_fill(ignored, 255)


# ---------------------------------------------------------------------- elementwise maps
def test_per_sample_mean_matches_the_losses_own_mean() -> None:
    g = _gen(0)
    pred, goal = torch.randn(6, 2, 4, 4, generator=g), torch.randn(6, 2, 4, 4, generator=g)
    out = per_sample_mean(F.mse_loss(pred, goal, reduction="none"))
    for i in range(6):
        torch.testing.assert_close(out.loss[i], F.mse_loss(pred[i], goal[i]))
    torch.testing.assert_close(out.loss.mean(), F.mse_loss(pred, goal))
    assert out.valid.all() and (out.label_count == 32).all()


def test_per_sample_mean_with_masks() -> None:
    g = _gen(1)
    values = torch.rand(5, 8, generator=g)
    mask = torch.rand(5, 8, generator=g) < 0.5
    mask[2] = False
    values[mask.logical_not()] = torch.inf  # masked-out elements never reach the sum
    out = per_sample_mean(values, mask)
    for i in range(5):
        if i == 2:
            assert not out.valid[i] and out.loss[i] == 0 and out.label_count[i] == 0
        else:
            torch.testing.assert_close(out.loss[i], values[i][mask[i]].mean())
            assert out.label_count[i] == int(mask[i].sum())
    weights = torch.rand(5, 8, generator=g)
    finite = torch.rand(5, 8, generator=g)
    weighted = per_sample_mean(finite, weights)
    torch.testing.assert_close(weighted.loss, (finite * weights).sum(1) / weights.sum(1))
    # a mask that broadcasts (one per sample and channel, over the pixels)
    maps = torch.rand(3, 2, 4, generator=g)
    channel = torch.tensor([[True, False], [False, True], [True, True]])[:, :, None]
    out = per_sample_mean(maps, channel)
    torch.testing.assert_close(out.loss[0], maps[0, 0].mean())
    torch.testing.assert_close(out.loss[2], maps[2].mean())


def test_per_sample_mean_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="reduction='none'"):
        per_sample_mean(torch.tensor(1.0))
    with pytest.raises(ValueError, match="does not broadcast"):
        per_sample_mean(torch.rand(3, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=">= 0"):
        per_sample_mean(torch.rand(3, 4), -torch.ones(3, 4))
    with pytest.raises(TypeError, match="float"):
        per_sample_mean(torch.ones(3, 4, dtype=torch.int64))


# ---------------------------------------------------------------------- segmentation
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}, {"weight": [0.5, 1.0, 2.0]}])
def test_segmentation_cross_entropy_against_torch(options: dict) -> None:
    logits, target = _seg_batch(2)
    kwargs = dict(options)
    if "weight" in kwargs:
        kwargs["weight"] = torch.tensor(kwargs["weight"])
    out = segmentation_cross_entropy(logits, target, ignore_index=255, **kwargs)
    for i in range(len(target)):
        reference = F.cross_entropy(
            logits[i : i + 1], target[i : i + 1], ignore_index=255, **kwargs
        )
        torch.testing.assert_close(out.loss[i], reference)
    assert torch.equal(out.label_count, (target != 255).flatten(1).sum(1))
    if "weight" not in kwargs:
        # torch's batch mean weights images by their labelled pixels
        pixel_weighted = (out.loss * out.label_count).sum() / out.label_count.sum()
        reference = F.cross_entropy(logits, target, ignore_index=255, **kwargs)
        torch.testing.assert_close(pixel_weighted, reference)


def test_segmentation_cross_entropy_marks_fully_ignored_images_and_infobatch_skips_them() -> None:
    logits, target = _seg_batch(3, batch=4)
    target[1] = 255
    out = segmentation_cross_entropy(logits, target, ignore_index=255)
    assert out.valid.tolist() == [True, False, True, True] and out.loss[1] == 0
    dataset = InfoBatch(torch.arange(4), num_epochs=2, seed=0)
    order = list(iter(dataset.sampler))
    dataset.update(out.loss, valid=out.valid)
    scores = dataset.scores
    assert math.isnan(float(scores[order[1]]))  # no score: kept next epoch
    assert all(not math.isnan(float(scores[order[i]])) for i in (0, 2, 3))
    with pytest.raises(ValueError, match="class indices per pixel"):
        segmentation_cross_entropy(logits, target[:, 0])


def _dice_reference(probs: Tensor, truth: Tensor, keep: Tensor, smooth: float) -> Tensor:
    out = []
    for i in range(probs.shape[0]):
        per_class = []
        for c in range(probs.shape[1]):
            p, y = probs[i, c][keep[i]], truth[i, c][keep[i]]
            per_class.append((2 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth))
        out.append(1 - torch.stack(per_class).mean())
    return torch.stack(out)


def test_dice_and_iou_per_image_against_a_direct_computation() -> None:
    logits, target = _seg_batch(4)
    keep = target != 255
    probs = logits.softmax(1)
    truth = F.one_hot(target.clamp(max=2), 3).movedim(-1, 1).float()
    got = dice_loss(logits, target, ignore_index=255, smooth=0.5)
    torch.testing.assert_close(got, _dice_reference(probs, truth, keep, 0.5))
    # iou: the same sums, another ratio
    inter = (probs * truth * keep[:, None]).sum((2, 3))
    total = (probs * keep[:, None]).sum((2, 3)) + (truth * keep[:, None]).sum((2, 3))
    iou = 1 - ((inter + 1) / (total - inter + 1)).mean(1)
    torch.testing.assert_close(iou_loss(logits, target, ignore_index=255), iou)
    # foreground classes only
    fg = 1 - ((2 * inter + 1) / (total + 1))[:, 1:].mean(1)
    torch.testing.assert_close(
        dice_loss(logits, target, ignore_index=255, include_background=False), fg
    )
    # ignored pixels count nowhere: changing their logits changes nothing
    moved = logits + 10 * (~keep)[:, None].float() * torch.randn(logits.shape, generator=_gen(5))
    torch.testing.assert_close(dice_loss(moved, target, ignore_index=255, smooth=0.5), got)


def test_dice_sigmoid_and_probabilities() -> None:
    g = _gen(6)
    logits = torch.randn(3, 2, 6, generator=g)
    truth = (torch.rand(3, 2, 6, generator=g) < 0.5).float()
    keep = torch.ones(3, 6, dtype=torch.bool)
    reference = _dice_reference(logits.sigmoid(), truth, keep, 1.0)
    torch.testing.assert_close(dice_loss(logits, truth, activation="sigmoid"), reference)
    torch.testing.assert_close(dice_loss(logits.sigmoid(), truth, activation=None), reference)
    perfect = dice_loss(truth * 2e3 - 1e3, truth, activation="sigmoid", smooth=0.0)
    torch.testing.assert_close(perfect, torch.zeros(3), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="0/1 map"):
        dice_loss(logits, truth[:, 0], activation="sigmoid")
    with pytest.raises(ValueError, match="outside"):
        dice_loss(torch.randn(1, 3, 4), torch.tensor([[0, 1, 3, 1]]))


def test_batch_level_dice_is_not_the_mean_of_per_image_dice() -> None:
    # what the official code's users hit: a Dice over the batch's sums is not per-sample
    logits, target = _seg_batch(7, batch=3)
    per_image = dice_loss(logits, target, ignore_index=255)
    one = dice_loss(logits[:1], target[:1], ignore_index=255)
    torch.testing.assert_close(one, per_image[:1])
    keep = (target != 255)[:, None].float()
    probs = logits.softmax(1) * keep
    truth = F.one_hot(target.clamp(max=2), 3).movedim(-1, 1).float() * keep
    dims = (0, 2, 3)
    batch_level = (
        1 - ((2 * (probs * truth).sum(dims) + 1) / (probs.sum(dims) + truth.sum(dims) + 1)).mean()
    )
    assert abs(float(batch_level) - float(per_image.mean())) > 1e-3


# ---------------------------------------------------------------------- MAE
@pytest.mark.parametrize("norm_pix", [False, True])
def test_masked_patch_loss_against_mae_reference(norm_pix: bool) -> None:
    g = _gen(8)
    batch, patches, values = 4, 16, 12
    pred = torch.randn(batch, patches, values, generator=g)
    target = torch.randn(batch, patches, values, generator=g)
    # MAE masks the same count (75%) in every sample
    mask = torch.zeros(batch, patches)
    for i in range(batch):
        mask[i, torch.randperm(patches, generator=g)[:12]] = 1
    goal = target
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        goal = (target - mean) / (var + 1e-6) ** 0.5
    reference = (((pred - goal) ** 2).mean(-1) * mask).sum() / mask.sum()
    out = masked_patch_loss(pred, target, mask, norm_pix=norm_pix)
    torch.testing.assert_close(out.loss.mean(), reference)
    for i in range(batch):
        alone = (((pred[i] - goal[i]) ** 2).mean(-1) * mask[i]).sum() / mask[i].sum()
        torch.testing.assert_close(out.loss[i], alone)
    assert (out.label_count == 12).all()
    with pytest.raises(ValueError, match="1 = masked"):
        masked_patch_loss(pred, target, mask[:, :3])


# ---------------------------------------------------------------------- contrastive
def test_info_nce_against_a_per_anchor_computation() -> None:
    g = _gen(9)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    got = info_nce(z1, z2, temperature=0.2)
    views = F.normalize(torch.cat([z1, z2]), dim=1)
    per_anchor = []
    for a in range(10):
        positive = (a + 5) % 10
        sims = torch.stack([views[a] @ views[k] / 0.2 for k in range(10) if k != a])
        pos = views[a] @ views[positive] / 0.2
        per_anchor.append(torch.logsumexp(sims, 0) - pos)
    anchors = torch.stack(per_anchor)
    torch.testing.assert_close(got, (anchors[:5] + anchors[5:]) / 2)
    torch.testing.assert_close(got.mean(), anchors.mean())
    with pytest.raises(ValueError, match="at least 2"):
        info_nce(z1[:1], z2[:1])


def test_supervised_contrastive_against_a_per_anchor_computation() -> None:
    g = _gen(10)
    features = torch.randn(6, 2, 4, generator=g)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    got = supervised_contrastive(features, labels, temperature=0.5)
    flat = F.normalize(features, dim=-1)
    views = [(i, v) for i in range(6) for v in range(2)]
    per_sample = torch.zeros(6)
    for i, v in views:
        others = [(j, w) for j, w in views if (j, w) != (i, v)]
        logits = torch.stack([flat[i, v] @ flat[j, w] / 0.5 for j, w in others])
        log_prob = logits - torch.logsumexp(logits, 0)
        pos = [k for k, (j, _) in enumerate(others) if labels[j] == labels[i]]
        per_sample[i] += -log_prob[pos].mean() / 2
    torch.testing.assert_close(got, per_sample)


def test_triplet_batch_hard_against_torch_triplet_loss() -> None:
    g = _gen(11)
    points = torch.randn(7, 3, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    out = triplet_batch_hard(points, labels, margin=0.3)
    for a in range(7):
        if a == 5:  # label 2 has no positive
            assert not out.valid[a] and out.loss[a] == 0
            continue
        dist = (points - points[a]).norm(dim=1)
        pos = max((k for k in range(7) if k != a and labels[k] == labels[a]), key=lambda k: dist[k])
        neg = min((k for k in range(7) if labels[k] != labels[a]), key=lambda k: dist[k])
        reference = F.triplet_margin_loss(points[a], points[pos], points[neg], margin=0.3, eps=0)
        torch.testing.assert_close(out.loss[a], reference, atol=1e-5, rtol=1e-5)
    assert out.label_count.tolist() == [2, 2, 2, 2, 2, 0, 2]


# ---------------------------------------------------------------------- detection-style sums
def test_sum_per_sample_against_a_loop() -> None:
    g = _gen(12)
    values = torch.rand(20, generator=g)
    image = torch.randint(4, (20,), generator=g)
    image[image == 3] = 2  # image 3 has no boxes
    got = sum_per_sample(values, image, 4)
    for i in range(4):
        torch.testing.assert_close(got[i], values[image == i].sum())
    assert got[3] == 0
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        sum_per_sample(values, image, 2)


def test_soft_target_cross_entropy_against_torch_and_a_mixup() -> None:
    """Its mean is torch's cross-entropy with probability targets; with a mixup target (lam on
    the sample's label, 1 - lam on its partner's) it is the lam-weighted sum of both CEs."""
    g = _gen(21)
    logits = torch.randn(6, 5, generator=g)
    soft = torch.softmax(torch.randn(6, 5, generator=g), dim=1)
    per_sample = soft_target_cross_entropy(logits, soft)
    torch.testing.assert_close(per_sample.mean(), F.cross_entropy(logits, soft))
    labels, lam = torch.randint(5, (6,), generator=g), 0.7
    mixed = lam * F.one_hot(labels, 5) + (1 - lam) * F.one_hot(labels.flip(0), 5)
    expected = lam * F.cross_entropy(logits, labels, reduction="none") + (
        1 - lam
    ) * F.cross_entropy(logits, labels.flip(0), reduction="none")
    torch.testing.assert_close(soft_target_cross_entropy(logits, mixed), expected)
    with pytest.raises(ValueError, match="reduction='none'"):
        soft_target_cross_entropy(logits, labels)


# ---------------------------------------------------------------------- batch independence
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), keep=st.lists(st.booleans(), min_size=6, max_size=6))
def test_per_sample_losses_do_not_depend_on_batch_mates(seed: int, keep: list[bool]) -> None:
    """Drop any samples from the batch: the others' losses stay (what makes 1/(1-r) exact)."""
    subset = torch.tensor(keep)
    if not subset.any():
        return
    logits, target = _seg_batch(seed, batch=6)
    g = _gen(seed)
    pred, goal = torch.randn(6, 4, 3, generator=g), torch.randn(6, 4, 3, generator=g)
    mask = torch.rand(6, 4, generator=g) < 0.6
    pairs = [
        (lambda i: segmentation_cross_entropy(logits[i], target[i], ignore_index=255).loss),
        (lambda i: dice_loss(logits[i], target[i], ignore_index=255)),
        (lambda i: masked_patch_loss(pred[i], goal[i], mask[i]).loss),
        (lambda i: per_sample_mean((pred[i] - goal[i]) ** 2, mask[i][..., None]).loss),
    ]
    everything = torch.arange(6)
    for loss_of in pairs:
        torch.testing.assert_close(loss_of(subset), loss_of(everything)[subset])


def test_in_batch_negatives_make_a_samples_loss_depend_on_its_batch() -> None:
    """The documented limit: InfoNCE's per-sample loss changes when batch mates are pruned."""
    g = _gen(13)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    whole = info_nce(z1, z2)
    part = info_nce(z1[:3], z2[:3])
    assert not torch.allclose(part, whole[:3])
