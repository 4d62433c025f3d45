"""``examples/contrastive.py`` (SimCLR on MNIST-1D): quick runs keep the harness's contract,
InfoBatch trains fewer sample passes, the scores are the samples' own InfoNCE losses, and runs
are deterministic."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tests.helpers import load_script

pytest.importorskip("mnist1d")

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "contrastive.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """Import ``examples/contrastive.py`` by path (registered: its dataclasses look it up)."""
    return load_script(SCRIPT, "example_contrastive")


@pytest.fixture(scope="module")
def results(example: ModuleType) -> dict[str, dict[str, Any]]:
    torch.set_num_threads(1)
    state = torch.get_rng_state()
    out = {
        "full": example.run("full", 0, quick=True),
        "infobatch": example.run("infobatch", 0, quick=True),
    }
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must not be advanced"
    return out


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's per-sample loss written out: each view's -log(exp(s_pos) / sum_{j != i}
    exp(s_ij)) over cosine similarities / temperature, averaged over the sample's two views."""
    batch = len(z1)
    views = torch.cat([z1, z2]).double()
    views = views / views.norm(dim=1, keepdim=True)
    similarity = torch.exp(views @ views.T / temperature)
    others = similarity.sum(1) - similarity.diagonal()
    partner = torch.arange(2 * batch).roll(batch)
    per_view = -torch.log(similarity[torch.arange(2 * batch), partner] / others)
    return (per_view[:batch] + per_view[batch:]) / 2


def test_contract_and_counts(example: ModuleType, results: dict[str, dict[str, Any]]) -> None:
    assert isinstance(example.METRIC, str) and example.HIGHER_IS_BETTER is True
    assert example.INFOBATCH_SCALE == 1.0
    config = example.QUICK
    full, pruned = results["full"], results["infobatch"]
    for result in (full, pruned):
        assert set(result) == {"metric", "sample_passes", "steps", "seconds", "extra"}
        assert math.isfinite(result["metric"]) and 0 <= result["metric"] <= 100
        assert 0 <= result["extra"]["probe_random_init"] <= 100
        assert result["seconds"] > 0
        json.dumps(result)  # JSON-serialisable
    num_train = full["extra"]["num_train"]
    assert full["sample_passes"] == config.epochs * num_train
    assert full["steps"] == config.epochs * math.ceil(num_train / config.batch_size)
    assert 0 < pruned["sample_passes"] < full["sample_passes"]
    assert pruned["steps"] < full["steps"]
    saved = pruned["extra"]["infobatch_saved_fraction"]
    assert pruned["sample_passes"] == round((1 - saved) * config.epochs * num_train)
    # negatives per anchor: 2B - 2 in a batch of B, averaged over the anchors trained
    sizes = [config.batch_size] * (num_train // config.batch_size) + [num_train % config.batch_size]
    expected = sum(b * (2 * b - 2) for b in sizes if b) / num_train
    assert full["extra"]["mean_negatives_per_anchor"] == pytest.approx(expected)
    assert pruned["extra"]["mean_negatives_per_anchor"] <= 2 * config.batch_size - 2


def test_scores_are_each_samples_info_nce_loss(
    example: ModuleType, results: dict[str, dict[str, Any]]
) -> None:
    """Every sample's score is its NT-Xent loss (both views' anchor terms) in the last batch
    that trained it, matched by the index that travels with the batch."""
    config = example.QUICK
    last: dict[int, float] = {}
    batches: list[int] = []

    def on_batch(indices: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, loss: torch.Tensor):
        recomputed = nt_xent(z1, z2, config.temperature)
        torch.testing.assert_close(loss.double(), recomputed, rtol=1e-4, atol=1e-5)
        last.update(zip(indices.tolist(), recomputed.tolist(), strict=True))
        batches.append(len(indices))

    trained = example.train("infobatch", 0, config, on_batch=on_batch)
    assert trained.dataset is not None
    scores = trained.dataset.sampler.scores
    assert sorted(last) == list(range(len(scores)))  # epoch 0 trains every sample
    indices = torch.tensor(list(last))
    expected = torch.tensor([last[i] for i in indices.tolist()], dtype=torch.float32)
    torch.testing.assert_close(scores[indices], expected, rtol=1e-4, atol=1e-5)
    assert sum(batches) == trained.sample_passes
    # the same seed trains the same run: counts and probe equal run()'s
    result = results["infobatch"]
    assert trained.sample_passes == result["sample_passes"] and trained.steps == result["steps"]
    data = example.load_data()
    probe = example.linear_probe(trained.encoder, data, config.num_train, config.ridge)
    assert probe == result["metric"]


def test_same_seed_same_initial_model(example: ModuleType) -> None:
    first, second, other = (example.build_models(seed)[0] for seed in (3, 3, 4))
    for a, b, c in zip(first.parameters(), second.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_keep_steps_variant_keeps_steps_with_fewer_negatives(
    example: ModuleType, results: dict[str, dict[str, Any]]
) -> None:
    assert "keep_steps" in example.VARIANTS
    result = example.run("infobatch", 0, quick=True, **example.VARIANTS["keep_steps"])
    full = results["full"]
    assert result["steps"] == full["steps"]
    assert result["sample_passes"] < full["sample_passes"]
    negatives = result["extra"]["mean_negatives_per_anchor"]
    assert negatives < full["extra"]["mean_negatives_per_anchor"]


def test_cli_prints_the_result_as_json(
    example: ModuleType, results: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    example.main(["--method", "full", "--seed", "0", "--quick", "--threads", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("full seed 0:")
    printed = json.loads(lines[1])
    expected = results["full"]
    assert printed["metric"] == expected["metric"]  # deterministic: same seed, same result
    assert printed["sample_passes"] == expected["sample_passes"]


def test_unknown_option_is_refused(example: ModuleType) -> None:
    with pytest.raises(TypeError, match="unknown options"):
        example.run("infobatch", 0, quick=True, prune_ration=0.3)
