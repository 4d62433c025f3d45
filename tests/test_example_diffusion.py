"""``examples/diffusion.py``: DDPM on sklearn's digits trains fewer sample passes with InfoBatch,
its scores land on their samples (they follow each sample's own last timestep), momentum
smooths them, the Frechet distance is sane, and a seed reproduces its result."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tests.helpers import load_script

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "diffusion.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The example's setting (and what makes its timings and results comparable)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def diffusion() -> ModuleType:
    return load_script(EXAMPLE, "example_diffusion")


@pytest.fixture(scope="module")
def runs(diffusion: ModuleType) -> dict[str, dict[str, Any]]:
    """Quick runs of both methods at one seed (paired: same data, same initial model)."""
    return {method: diffusion.run(method, 0, quick=True) for method in ("full", "infobatch")}


def test_contract(diffusion: ModuleType) -> None:
    assert isinstance(diffusion.METRIC, str) and diffusion.METRIC
    assert diffusion.HIGHER_IS_BETTER is False
    assert diffusion.INFOBATCH_SCALE == 1.0
    assert diffusion.VARIANTS == {
        "momentum_0.5": {"score_momentum": 0.5},
        "momentum_0.9": {"score_momentum": 0.9},
        "timestep_normalised": {"timestep_normalised": True},
    }
    with pytest.raises(TypeError, match="unknown options"):
        diffusion.run("infobatch", 0, quick=True, prune_ratio=0.3)


def test_sample_passes_and_steps(diffusion: ModuleType, runs: dict[str, dict[str, Any]]) -> None:
    size = len(diffusion.digits()[0])
    epochs = diffusion.QUICK_EPOCHS
    full, infobatch = runs["full"], runs["infobatch"]
    assert full["sample_passes"] == epochs * size
    assert full["steps"] == epochs * math.ceil(size / diffusion.BATCH_SIZE)
    assert full["extra"]["saved_fraction"] == 0.0
    assert infobatch["sample_passes"] < full["sample_passes"]
    assert infobatch["steps"] < full["steps"]
    saved = 1 - infobatch["sample_passes"] / full["sample_passes"]
    assert infobatch["extra"]["saved_fraction"] == pytest.approx(saved)
    for result in runs.values():
        assert result["seconds"] > 0


def test_metric_is_a_sane_frechet_distance(
    diffusion: ModuleType, runs: dict[str, dict[str, Any]]
) -> None:
    train_x, _, held_x, _ = diffusion.digits()
    assert train_x.min() >= -1 and train_x.max() <= 1
    held = diffusion.features(held_x)
    assert diffusion.frechet_distance(held, held) == pytest.approx(0.0, abs=1e-6)
    reference = diffusion.reference_distances()
    # real training digits are far closer to the held-out ones than noise is
    assert 0 < reference["fd_real"] < reference["fd_noise"] / 10
    for result in runs.values():
        extra = result["extra"]
        assert math.isfinite(result["metric"])
        assert result["metric"] == pytest.approx(sum(extra["metric_per_draw"]) / 2)
        # even a few epochs of training beat noise, and no model beats real digits by far
        assert reference["fd_real"] / 2 < result["metric"] < reference["fd_noise"]
        assert 0 <= extra["class_entropy"] <= math.log(10) + 1e-9
    assert runs["full"]["extra"]["classifier_accuracy"] > 0.9


def test_same_seed_same_result(diffusion: ModuleType, runs: dict[str, dict[str, Any]]) -> None:
    again = diffusion.run("infobatch", 0, quick=True)
    first = runs["infobatch"]
    assert again["metric"] == first["metric"]
    assert again["sample_passes"] == first["sample_passes"]
    assert again["extra"]["score_timestep_spearman"] == first["extra"]["score_timestep_spearman"]


def test_scores_follow_each_samples_timestep_and_momentum_smooths_them(
    diffusion: ModuleType, runs: dict[str, dict[str, Any]]
) -> None:
    plain = runs["infobatch"]["extra"]
    # a sample's score is its own last loss, which its own last timestep mostly decides: if
    # scores landed on the wrong samples this rank correlation would be near 0
    assert plain["score_timestep_spearman"] < -0.5
    # InfoBatch prunes mostly the samples that last drew a large (easy) timestep
    assert plain["pruned_large_t_fraction"] > 0.6
    _, smoothed = diffusion.train("infobatch", 0, diffusion.QUICK_EPOCHS, score_momentum=0.9)
    assert smoothed["extra"]["score_epoch_change"] < plain["score_epoch_change"] / 2
    # an average over several draws follows the last draw less
    assert smoothed["extra"]["score_timestep_spearman"] > plain["score_timestep_spearman"]
    assert smoothed["sample_passes"] < runs["full"]["sample_passes"]
    assert smoothed["dataset"].sampler.score_momentum == 0.9


def test_timestep_normalised_scores_follow_the_image_not_the_timestep(
    diffusion: ModuleType, runs: dict[str, dict[str, Any]]
) -> None:
    """Dividing each loss by its timestep's running mean loss removes most of the timestep's
    share of the score; what is trained (the loss, its rescaling, the pruning) is unchanged."""
    plain = runs["infobatch"]["extra"]
    _, normalised = diffusion.train(
        "infobatch", 0, diffusion.QUICK_EPOCHS, timestep_normalised=True
    )
    extra = normalised["extra"]
    assert abs(extra["score_timestep_spearman"]) < abs(plain["score_timestep_spearman"])
    assert 0 < normalised["sample_passes"] < runs["full"]["sample_passes"]


def test_the_fewer_epochs_control_stops_inside_an_epoch(diffusion: ModuleType) -> None:
    control = diffusion.run("full", 0, quick=True, scale=0.5)
    per_epoch = -(-len(diffusion.digits()[0]) // diffusion.BATCH_SIZE)
    assert control["steps"] == round(0.5 * diffusion.QUICK_EPOCHS * per_epoch)
