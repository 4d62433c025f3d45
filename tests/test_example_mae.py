"""``examples/mae.py``: MAE pre-training with InfoBatch, its quick version and its loss."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "mae.py"
MNIST = ROOT.parent / "shared" / "data" / "mnist"


mae = load_script(SCRIPT, "example_mae")  # a script, not a package
needs_mnist = pytest.mark.skipif(
    not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason=f"MNIST IDX files not in {MNIST}"
)


@pytest.fixture(scope="module")
def quick_runs() -> dict[str, dict[str, Any]]:
    """Quick full-data and InfoBatch runs of seed 0 on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng_before = torch.get_rng_state()
        runs = {method: mae.run(method, 0, quick=True) for method in ("full", "infobatch")}
        runs["keep_steps"] = mae.run("infobatch", 0, quick=True, keep_steps=True)
        assert torch.equal(torch.get_rng_state(), rng_before), "the global RNG was advanced"
    finally:
        torch.set_num_threads(threads)
    return runs


def test_contract_constants() -> None:
    assert mae.METRIC == "linear-probe accuracy (%)"
    assert mae.HIGHER_IS_BETTER is True
    assert mae.INFOBATCH_SCALE == 1.0
    assert mae.VARIANTS["momentum"] == {"score_momentum": 0.9}
    assert set(mae.VARIANTS) <= {"momentum", "keep_steps"}


def test_masking_hides_three_quarters_of_every_sample() -> None:
    keep, restore, mask = mae.random_masking(64, torch.Generator().manual_seed(3))
    assert mask.dtype == torch.bool and mask.shape == (64, 16)
    assert torch.equal(mask.sum(dim=1), torch.full((64,), 12))
    # the visible patches are exactly the unmasked ones, and restore undoes the shuffle
    visible = torch.zeros(64, 16, dtype=torch.bool).scatter(1, keep, True)
    assert torch.equal(visible, ~mask)
    assert torch.equal(restore.sort(dim=1).values, torch.arange(16).expand(64, 16))
    # drawn from the generator only: the same seed draws the same masks, another seed others
    again = mae.random_masking(64, torch.Generator().manual_seed(3))[2]
    other = mae.random_masking(64, torch.Generator().manual_seed(4))[2]
    assert torch.equal(again, mask) and not torch.equal(other, mask)


def test_the_loss_covers_masked_patches_only() -> None:
    generator = torch.Generator().manual_seed(0)
    patches = torch.randn(8, 16, 49, generator=generator)
    pred = torch.randn(8, 16, 49, generator=generator)
    mask = mae.random_masking(8, generator)[2]
    loss = mae.reconstruction_loss(pred, patches, mask)
    assert loss.shape == (8,) and bool((loss > 0).all())
    changed_visible = torch.where(mask.unsqueeze(-1), pred, pred + 5.0)
    assert torch.allclose(mae.reconstruction_loss(changed_visible, patches, mask), loss)
    changed_masked = torch.where(mask.unsqueeze(-1), pred + 5.0, pred)
    assert bool((mae.reconstruction_loss(changed_masked, patches, mask) > loss).all())
    # norm_pix: the target is each patch minus its mean over sqrt(variance + eps), so
    # shifting a target patch changes nothing and predicting the normalised pixels gives 0
    assert torch.allclose(mae.reconstruction_loss(pred, patches + 3.0, mask), loss, atol=1e-4)
    goal = (patches - patches.mean(-1, keepdim=True)) / (
        patches.var(-1, keepdim=True) + mae.NORM_PIX_EPS
    ).sqrt()
    assert float(mae.reconstruction_loss(goal, patches, mask).abs().max()) < 1e-6


@needs_mnist
def test_infobatch_trains_fewer_sample_passes_than_full_data(
    quick_runs: dict[str, dict[str, Any]],
) -> None:
    full, pruned = quick_runs["full"], quick_runs["infobatch"]
    epochs, num_train = full["extra"]["epochs"], full["extra"]["num_train"]
    assert full["sample_passes"] == epochs * num_train
    assert full["steps"] == epochs * math.ceil(num_train / mae.QUICK.batch_size)
    assert pruned["sample_passes"] == sum(pruned["extra"]["kept_per_epoch"])
    assert pruned["sample_passes"] < full["sample_passes"]
    saved = 1 - pruned["sample_passes"] / full["sample_passes"]
    assert pruned["extra"]["saved_fraction"] == pytest.approx(saved)
    assert pruned["steps"] < full["steps"]
    # epoch 0 (nothing scored yet) and the annealing epochs (from ceil(0.875 * epochs)) train
    # on all data, the epochs between prune
    kept = pruned["extra"]["kept_per_epoch"]
    annealing = math.ceil(0.875 * epochs)
    assert len(kept) == epochs and annealing < epochs
    assert kept[0] == num_train and all(count == num_train for count in kept[annealing:])
    assert all(count < num_train for count in kept[1:annealing])
    shares = pruned["extra"]["pruned_share_per_digit"]
    assert len(shares) == 10 and sum(shares) > 0 and all(0 <= share < 1 for share in shares)
    # keep_steps: as many optimizer steps as full data, fewer sample passes
    same_steps = quick_runs["keep_steps"]
    assert same_steps["steps"] == full["steps"]
    assert same_steps["sample_passes"] < full["sample_passes"]


@needs_mnist
def test_the_reconstruction_loss_falls_and_the_probe_is_in_range(
    quick_runs: dict[str, dict[str, Any]],
) -> None:
    # (a probe gain over the untrained encoder needs the default run: +6 to +8 points there;
    # in the quick run it is within the probe's noise, -3 to +4 points over 5 seeds)
    for result in quick_runs.values():
        assert 10.0 < result["metric"] <= 100.0 and math.isfinite(result["metric"])
        assert 10.0 < result["extra"]["probe_at_init"] <= 100.0
        assert result["seconds"] > 0
        losses = result["extra"]["loss_per_epoch"]
        assert all(math.isfinite(value) for value in losses)
        assert losses[-1] < 0.8 * losses[0]
    # same seed, same initial model for both methods (the paired comparison)
    init = {result["extra"]["probe_at_init"] for result in quick_runs.values()}
    assert len(init) == 1


@needs_mnist
def test_the_cli_repeats_the_run_bit_for_bit(
    quick_runs: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    mae.main(["--method", "infobatch", "--seed", "0", "--quick", "--threads", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("mae infobatch seed 0:")
    result = json.loads(lines[1])
    expected = quick_runs["infobatch"]
    for key in ("metric", "sample_passes", "steps"):
        assert result[key] == expected[key]
    assert result["extra"]["loss_per_epoch"] == expected["extra"]["loss_per_epoch"]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="method"):
        mae.run("random", 0, quick=True)
    with pytest.raises(TypeError, match="unexpected options"):
        mae.run("full", 0, quick=True, score_momentum=0.9)
    with pytest.raises(TypeError, match="unexpected options"):
        mae.run("infobatch", 0, quick=True, momentum=0.9)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
