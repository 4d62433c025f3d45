"""examples/timm_training.py: InfoBatch inside timm's pipeline (its image folder, transforms,
prefetching loader, mixup/cutmix, optimizer and scheduler), on a tiny timm model.

timm needs torchvision; where it is not installed these tests skip (CI runs them in a second
environment that has it: see ``.ci/run``)."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tests.helpers import load_script

timm = pytest.importorskip("timm")

from infobatch import InfoBatch  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "timm_training.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_script(EXAMPLE, "example_timm_training")


def _pipeline(example: ModuleType, seed: int = 0) -> dict[str, Any]:
    """The example's InfoBatch pipeline at the quick setting, with the model's weights frozen
    (lr 0 is not enough: BatchNorm statistics move; eval mode is not timm's training either),
    so each batch's rows can be checked against the samples InfoBatch planned."""
    setting = example.SETTINGS["quick"]
    root = example.image_folder(setting["train"], setting["val"], setting["size"])
    example.seed_everything(seed)
    train_set = timm.data.create_dataset("", root=str(root), split="train", is_training=True)
    dataset = InfoBatch(train_set, 4, seed=seed, batch_size=setting["batch"], drop_last=True)
    loader = example.training_loader(
        train_set, setting["batch"], setting["size"], seed, infobatch=dataset
    )
    model = timm.create_model("test_byobnet", pretrained=False, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    mixup = timm.data.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    labels = torch.tensor([target for _, target in train_set.reader.samples])
    return {
        "dataset": dataset,
        "loader": loader,
        "model": model,
        "optimizer": optimizer,
        "mixup": mixup,
        "labels": labels,
        "batch": setting["batch"],
    }


def test_scores_land_on_their_own_samples_through_the_prefetcher_and_mixup(
    example: ModuleType,
) -> None:
    """Row r of batch k is the sample the plan put at position k*B + r: its soft target puts
    lam on that sample's label and 1 - lam on its mirrored partner's (timm's mixup), and the
    row's loss becomes that sample's score, in a full epoch and in a pruned one."""
    parts = _pipeline(example)
    dataset, labels, batch = parts["dataset"], parts["labels"], parts["batch"]
    smoothing, classes = 0.1, 10
    off, on = smoothing / classes, 1 - smoothing + smoothing / classes
    assert isinstance(parts["loader"], timm.data.loader.PrefetchLoader)
    pruned_epoch_seen = False
    for _ in range(2):
        rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        planned_batches = len(parts["loader"])  # the prefetcher's length is the plan's
        example.train_one_epoch(
            parts["model"],
            parts["loader"],
            parts["optimizer"],
            parts["mixup"],
            dataset,
            on_batch=lambda x, target, loss, rows=rows: rows.append((target, loss)),
        )
        plan = dataset.sampler.plan
        assert plan is not None
        order = plan.order.long()
        assert len(rows) == len(order) // batch == planned_batches
        pruned_epoch_seen |= len(order) < len(labels)
        for k, (target, loss) in enumerate(rows):
            indices = order[k * batch : (k + 1) * batch]
            own, partner = labels[indices], labels[indices.flip(0)]
            differ = own != partner
            assert differ.any()
            first = int(differ.nonzero()[0])
            lam = (float(target[first, own[first]]) - off) / (on - off)
            expected = (
                lam * torch.nn.functional.one_hot(own, classes)
                + (1 - lam) * torch.nn.functional.one_hot(partner, classes)
            ) * (on - off) + off
            torch.testing.assert_close(target, expected.float(), atol=1e-5, rtol=0)
            torch.testing.assert_close(dataset.sampler.scores[indices], loss.float())
        left_out = order[len(rows) * batch :]  # drop_last's remainder: trained on by nobody
        assert len(left_out) < batch
    assert pruned_epoch_seen


def test_infobatch_saves_sample_passes_and_the_lr_schedule_ends(example: ModuleType) -> None:
    full = example.run("full", 0, quick=True)
    infobatch = example.run("infobatch", 0, quick=True)
    setting = example.SETTINGS["quick"]
    steps_per_epoch = setting["train"] // setting["batch"]
    assert full["steps"] == setting["epochs"] * steps_per_epoch
    assert full["sample_passes"] == full["steps"] * setting["batch"]
    assert infobatch["sample_passes"] < full["sample_passes"]
    assert infobatch["extra"]["saved_fraction"] > 0
    for result in (full, infobatch):
        assert 0.0 <= result["metric"] <= 100.0 and math.isfinite(result["seconds"])
        assert result["extra"]["final_lr"] == pytest.approx(0.0, abs=1e-9)
    again = example.run("infobatch", 0, quick=True)
    assert again["metric"] == infobatch["metric"]
    assert again["sample_passes"] == infobatch["sample_passes"]


def test_the_fewer_epochs_control_stops_inside_an_epoch_at_its_budget(example: ModuleType) -> None:
    setting = example.SETTINGS["quick"]
    steps_per_epoch = setting["train"] // setting["batch"]
    control = example.run("full", 0, quick=True, scale=0.6, mixup=False)
    assert control["steps"] == round(0.6 * setting["epochs"] * steps_per_epoch)
    assert control["extra"]["final_lr"] == pytest.approx(0.0, abs=1e-9)


def test_timms_create_loader_cannot_silently_bypass_infobatchs_sampler(
    example: ModuleType,
) -> None:
    """create_loader sets ``transform`` on the dataset it gets and builds its own sampler:
    given an InfoBatch dataset it is refused with what to do instead."""
    setting = example.SETTINGS["quick"]
    root = example.image_folder(setting["train"], setting["val"], setting["size"])
    train_set = timm.data.create_dataset("", root=str(root), split="train", is_training=True)
    with pytest.raises(AttributeError, match="sampler=dataset.sampler"):
        timm.data.create_loader(
            InfoBatch(train_set, 4),
            input_size=(3, 24, 24),
            batch_size=8,
            is_training=True,
            num_workers=0,
            device=torch.device("cpu"),
            persistent_workers=False,
        )
