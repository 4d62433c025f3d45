"""``examples/segmentation.py``: iteration-based segmentation with InfoBatch (quick version).

The runs train exactly the iterations asked for, InfoBatch on fewer sample passes than full
data; ignored pixels carry no loss and no gradient, an unannotated image gets no score; the
poly schedule ends at the last iteration; mIoU lies in [0, 100]; same seed, same result."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "segmentation.py"


seg = load_script(SCRIPT, "example_segmentation")  # a script, not a package
QUICK = seg.QUICK


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def full() -> Any:
    return seg.train("full", 0, QUICK)


@pytest.fixture(scope="module")
def infobatch() -> Any:
    return seg.train("infobatch", 0, QUICK)


def test_the_harness_contract() -> None:
    assert isinstance(seg.METRIC, str) and seg.HIGHER_IS_BETTER is True
    assert seg.INFOBATCH_SCALE == 0.7  # iteration-based: InfoBatch trains 0.7x the iterations
    assert all(isinstance(options, dict) for options in seg.VARIANTS.values())
    with pytest.raises(ValueError, match="full"):
        seg.run("full", 0, quick=True, prune_ratio=0.3)
    with pytest.raises(ValueError, match="method"):
        seg.run("random", 0, quick=True)


def test_full_data_trains_every_iteration_on_a_full_batch(full: Any) -> None:
    result = full.result
    assert set(result) == {"metric", "sample_passes", "steps", "seconds", "extra"}
    assert result["steps"] == QUICK.iterations
    assert result["sample_passes"] == QUICK.iterations * QUICK.batch_size
    assert result["seconds"] > 0
    json.dumps(result)  # JSON-serialisable


def test_infobatch_trains_exactly_the_iterations_asked_for_on_fewer_passes(
    full: Any, infobatch: Any
) -> None:
    result, dataset = infobatch.result, infobatch.dataset
    assert result["steps"] == QUICK.iterations == dataset.sampler.iterations_done
    kept = [h.num_kept for h in dataset.history]
    # every pass but the last is trained whole; the last is broken off at the count
    before = sum(math.ceil(k / QUICK.batch_size) for k in kept[:-1])
    last = min(kept[-1], (QUICK.iterations - before) * QUICK.batch_size)
    assert result["sample_passes"] == sum(kept[:-1]) + last
    assert result["sample_passes"] < full.result["sample_passes"]
    assert result["extra"]["saved_fraction"] > 0
    # passes run back to back; one starting after ceil(delta * N) iterations uses all data
    boundary, start = math.ceil(0.875 * QUICK.iterations), 0
    for number, h in enumerate(dataset.history):
        assert h.pruning == (number > 0 and start < boundary)
        start += math.ceil(h.num_kept / QUICK.batch_size)
    assert any(h.pruning for h in dataset.history)
    json.dumps(result)


def test_the_poly_schedule_ends_at_the_last_iteration(full: Any, infobatch: Any) -> None:
    for trained in (full, infobatch):
        assert trained.result["extra"]["final_lr"] == pytest.approx(QUICK.min_lr)


def test_ignored_pixels_carry_no_loss_and_no_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, len(seg.CLASSES), (3, 8, 8), generator=generator)
    masks[0, :, :3] = seg.IGNORE_INDEX  # part of an image
    masks[1] = seg.IGNORE_INDEX  # a whole image
    logits = torch.randn(3, len(seg.CLASSES), 8, 8, generator=generator, requires_grad=True)
    out = seg.per_image_loss(logits, masks)
    assert out.valid.tolist() == [True, False, True]
    assert out.loss[1] == 0 and bool((out.loss[[0, 2]] > 0).all())
    out.loss.sum().backward()
    assert logits.grad is not None
    ignored = (masks == seg.IGNORE_INDEX).unsqueeze(1).expand_as(logits)
    assert bool((logits.grad[ignored] == 0).all())
    assert bool((logits.grad[~ignored] != 0).any())
    changed = torch.where(ignored, logits.detach() + 5.0, logits.detach())
    assert torch.equal(seg.per_image_loss(changed, masks).loss, out.loss.detach())


def test_an_unannotated_training_image_gets_no_score(infobatch: Any) -> None:
    _, masks = infobatch.train_set.tensors
    unannotated = (masks == seg.IGNORE_INDEX).flatten(1).all(dim=1)
    assert int(unannotated.sum()) == QUICK.num_train // 64 >= 1
    scores = infobatch.dataset.scores
    assert torch.equal(scores.isnan(), unannotated)  # every other image was scored
    extra = infobatch.result["extra"]
    assert extra["unscored_images"] == extra["unannotated_images"] == int(unannotated.sum())


def test_the_metric_is_a_miou_in_range(full: Any, infobatch: Any) -> None:
    for trained in (full, infobatch):
        metric = trained.result["metric"]
        assert math.isfinite(metric) and 0 <= metric <= 100
        per_class = trained.result["extra"]["iou_per_class"]
        assert list(per_class) == list(seg.CLASSES)
        present = [v for v in per_class.values() if not math.isnan(v)]
        assert metric == pytest.approx(sum(present) / len(present), abs=1e-2)
    perfect = torch.diag(torch.tensor([50, 7, 0, 3, 1]))  # class 2 never present: left out
    ious = seg.iou_per_class(perfect)
    assert math.isnan(ious[2]) and float(ious.nanmean()) == 100.0
    swapped = torch.tensor([[0, 4], [4, 0]])
    assert seg.iou_per_class(swapped).tolist() == [0.0, 0.0]


def test_same_seed_same_data_model_and_result(infobatch: Any) -> None:
    state = torch.get_rng_state()
    again = seg.train("infobatch", 0, QUICK)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    assert again.result["metric"] == infobatch.result["metric"]
    assert again.result["extra"]["kept_per_pass"] == infobatch.result["extra"]["kept_per_pass"]
    assert torch.equal(again.dataset.scores.nan_to_num(-1), infobatch.dataset.scores.nan_to_num(-1))
    first, second = seg.build_model(0, QUICK), seg.build_model(0, QUICK)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    scenes = [seg.make_scenes(8, QUICK.size, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(scenes[0][0], scenes[1][0]) and torch.equal(scenes[0][1], scenes[1][1])
    assert not torch.equal(scenes[0][0], scenes[2][0])


def test_the_command_line_prints_a_json_result_at_a_scale(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seg.main(["--quick", "--method", "infobatch", "--scale", "0.5", "--score-momentum", "0.8"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert seg.METRIC in lines[0]
    result = json.loads(lines[-1])
    assert result["steps"] == QUICK.iterations // 2  # scale multiplies the iterations
    assert result["extra"]["final_lr"] == pytest.approx(QUICK.min_lr)
