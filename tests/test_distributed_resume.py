"""A run stopped anywhere and relaunched under 2 gloo processes equals the uninterrupted run.

Real stop and relaunch: the first launch trains to each checkpoint position and exits, a second
launch (new processes, new process group) resumes every checkpoint from its files and trains to
the end. Positions: early, middle, before and after the last batch of an epoch, inside a
gradient-accumulation group; states saved per rank and as one ``all_ranks=True`` state. A hang
fails the launch after the process group's 90 s timeout.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests._ddp_workers import NUM_EPOCHS, NUM_SAMPLES, STOP_EPOCH, STOPS, launch

Record = dict[str, Any]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Record]]:
    out = tmp_path_factory.mktemp("stop_relaunch")
    first = launch(2, ["uninterrupted", "stop", "wrong_checkpoints"], out)
    second = launch(2, ["relaunch"], out)
    return {"first": first, "second": second}


def joined(before: dict[int, list[int]], after: dict[int, list[int]]) -> dict[int, list[int]]:
    epochs = sorted(set(before) | set(after))
    return {e: before.get(e, []) + after.get(e, []) for e in epochs}


@pytest.mark.parametrize("position", list(STOPS))
def test_a_relaunched_run_trains_the_same_samples_in_order_with_the_same_weights(
    runs: dict[str, list[Record]], position: str
) -> None:
    accumulation = STOPS[position]["accumulation"]
    per_epoch_union: dict[int, list[int]] = {}
    for first, second in zip(runs["first"], runs["second"]):
        straight = first["uninterrupted"][accumulation]
        stopped, resumed = first["stop"][position], second["relaunch"][position]
        assert set(stopped["trained"]) == set(range(STOP_EPOCH + 1))  # it did stop in the epoch
        assert joined(stopped["trained"], resumed["trained"]) == straight["trained"]
        assert resumed["counters"] == straight["counters"]  # optimizer steps
        for a, b in zip(straight["parameters"], resumed["parameters"]):
            assert torch.equal(a, b)
        assert torch.equal(straight["scores"].isnan(), resumed["scores"].isnan())
        finite = ~straight["scores"].isnan()
        assert torch.equal(straight["scores"][finite], resumed["scores"][finite])
        assert repr(resumed["history"]) == repr(straight["history"])  # nan thresholds too
        for epoch, indices in resumed["trained"].items():
            per_epoch_union.setdefault(epoch, []).extend(indices)
    # every epoch after the stop: the kept samples trained once, on one rank (padding aside)
    for epoch in range(STOP_EPOCH + 1, NUM_EPOCHS):
        kept = per_epoch_union[epoch]
        assert len(set(kept)) >= len(kept) - 1 and set(kept) <= set(range(NUM_SAMPLES))


def test_a_relaunched_epoch_is_pruned_so_the_next_plan_is_exercised(
    runs: dict[str, list[Record]],
) -> None:
    history = runs["second"][0]["relaunch"]["middle"]["history"]
    assert history[STOP_EPOCH + 1]["pruning"] and history[STOP_EPOCH + 1]["num_pruned"] > 0


def test_wrong_checkpoints_raise_on_the_ranks_instead_of_diverging(
    runs: dict[str, list[Record]],
) -> None:
    rank_0, rank_1 = (r["wrong_checkpoints"] for r in runs["first"])
    assert rank_0["rank_0_state"] is None  # rank 0 may load its own state
    assert "cannot resume rank 1 exactly" in rank_1["rank_0_state"]
    assert "state_dict(all_ranks=True)" in rank_1["rank_0_state"]
    for result in (rank_0, rank_1):
        message = result["different_tables"]
        assert message is not None and "InfoBatch's ranks planned epoch 2 differently" in message
        assert "they differ in: threshold, score table" in message
