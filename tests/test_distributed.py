"""Real multi-process tests under ``torch.distributed`` (gloo on CPU, 2, 3 and 4 ranks).

Each world size is launched once per module (spawned processes, see ``_ddp_workers.py``); the
ranks train a small model under DDP with InfoBatch and record what every test below checks.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from infobatch import InfoBatch
from infobatch.distributed import backend_device
from tests._ddp_workers import (
    BATCH_SIZE,
    DELTA,
    LARGE_SAMPLES,
    NUM_EPOCHS,
    NUM_SAMPLES,
    SEED,
    VARIANTS,
    Blobs,
    launch,
    plan_hash,
)

MID_EPOCH_BATCHES = 3  # where the mid-epoch checkpoint is taken (in epoch 2)
COUNTED = [name for name, settings in VARIANTS.items() if settings["collectives"] == "counted"]

Record = dict[str, Any]


# ---------------------------------------------------------------------- launching the ranks
@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Record]]:
    """4 ranks train 2 epochs, rank 0 saves the InfoBatch state; then model-parallel pairs."""
    out = tmp_path_factory.mktemp("world4")
    path = out / "infobatch_4_ranks.pt"
    results = launch(4, ["checkpoint_source", "model_parallel"], out, {"checkpoint": str(path)})
    return path, results


@pytest.fixture(scope="module")
def two_ranks(
    tmp_path_factory: pytest.TempPathFactory, four_ranks: tuple[Path, list[Record]]
) -> list[Record]:
    out = tmp_path_factory.mktemp("world2")
    config = {"checkpoint": str(four_ranks[0]), "mid_epoch_batches": MID_EPOCH_BATCHES}
    jobs = ["train", "resume", "disagree", "large_index", "checkpoint_resume"]
    return launch(2, jobs, out, config)


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    out = tmp_path_factory.mktemp("world3")
    config = {"mid_epoch_batches": MID_EPOCH_BATCHES}
    return launch(3, ["train", "resume", "disagree"], out, config)


@pytest.fixture(params=[2, 3], ids=["world2", "world3"])
def ranks(request: pytest.FixtureRequest) -> list[Record]:
    """Every rank's results, for each world size."""
    name = {2: "two_ranks", 3: "three_ranks"}[request.param]
    results: list[Record] = request.getfixturevalue(name)
    return results


# ---------------------------------------------------------------------- helpers
def epochs_of(ranks: list[Record], variant: str) -> list[list[Record]]:
    """``[epoch][rank]`` records of a training variant."""
    per_rank = [r["train"][variant]["records"] for r in ranks]
    return [list(records) for records in zip(*per_rank)]


def assert_same_table(actual: Tensor, expected: Tensor) -> None:
    """Equal score tables: the same never-scored samples, bit-equal scores elsewhere."""
    assert actual.shape == expected.shape
    assert torch.equal(torch.isnan(actual), torch.isnan(expected))
    scored = ~torch.isnan(expected)
    mismatch = torch.nonzero(actual[scored] != expected[scored]).flatten()
    assert mismatch.numel() == 0, f"{mismatch.numel()} scores differ"


def losses_by_index(records: list[Record]) -> dict[int, float]:
    """Each trained sample's loss; a sample trained on several ranks keeps the largest."""
    best: dict[int, float] = {}
    for record in records:
        for index, loss in zip(record["yielded"].tolist(), record["losses"].tolist()):
            best[index] = max(best.get(index, -math.inf), loss)
    return best


def with_losses(table: Tensor, losses: dict[int, float]) -> Tensor:
    updated = table.clone()
    for index, loss in losses.items():
        updated[index] = loss
    return updated


# ---------------------------------------------------------------------- 1. the plan and shares
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rank_builds_the_same_plan_each_epoch(ranks: list[Record], variant: str) -> None:
    epochs = epochs_of(ranks, variant)
    assert len(epochs) == NUM_EPOCHS
    for epoch, records in enumerate(epochs):
        assert {r["plan_epoch"] for r in records} == {epoch}
        assert len({r["plan_hash"] for r in records}) == 1
    assert len({records[0]["plan_hash"] for records in epochs}) == NUM_EPOCHS  # plans do change


def test_set_epoch_and_loader_workers_do_not_change_the_plans(ranks: list[Record]) -> None:
    def hashes(variant: str) -> list[str]:
        return [records[0]["plan_hash"] for records in epochs_of(ranks, variant)]

    assert hashes("default") == hashes("no_set_epoch_workers")
    assert hashes("drop_last_workers_indices") == hashes("drop_last_no_set_epoch")
    assert hashes("default")[1:] != hashes("drop_last_no_set_epoch")[1:]  # trained other samples


@pytest.mark.parametrize("variant", VARIANTS)
def test_shares_are_disjoint_and_cover_the_kept_set(ranks: list[Record], variant: str) -> None:
    world = len(ranks)
    uneven = 0
    for records in epochs_of(ranks, variant):
        kept = records[0]["kept"]
        per_rank = math.ceil(kept.numel() / world)
        padding = per_rank * world - kept.numel()
        uneven += padding > 0
        shares = [r["share"] for r in records]
        assert all(share.numel() == per_rank for share in shares)
        counts = Counter(torch.cat(shares).tolist())
        assert set(counts) == set(kept.tolist())
        # disjoint except the < world padding samples that make the shares equally long
        assert sum(n - 1 for n in counts.values()) == padding < world
        assert max(counts.values()) <= 2
        for record in records:  # what the loader yielded is the rank's share
            yielded = record["yielded"]
            assert torch.equal(yielded, record["share"][: yielded.numel()])
    assert uneven > 0  # some epoch's kept count does not divide the world size


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rank_yields_the_same_number_of_batches(ranks: list[Record], variant: str) -> None:
    world, drop_last = len(ranks), VARIANTS[variant]["drop_last"]
    full_batches = math.ceil(math.ceil(NUM_SAMPLES / world) / BATCH_SIZE)
    for records in epochs_of(ranks, variant):
        per_rank = math.ceil(records[0]["kept"].numel() / world)
        expected = per_rank // BATCH_SIZE if drop_last else math.ceil(per_rank / BATCH_SIZE)
        if VARIANTS[variant].get("keep_steps") and per_rank * world < NUM_SAMPLES:
            expected = full_batches  # a pruned epoch in full data's number of smaller batches
        assert [r["num_batches"] for r in records] == [expected] * world
        assert [r["len_loader"] for r in records] == [expected] * world  # len(loader) is exact


# ---------------------------------------------------------------------- 2. scores and collectives
@pytest.mark.parametrize("variant", VARIANTS)
def test_score_tables_are_equal_on_all_ranks_and_hold_every_ranks_losses(
    ranks: list[Record], variant: str
) -> None:
    table = torch.full((NUM_SAMPLES,), float("nan"))
    for records in epochs_of(ranks, variant):
        table = with_losses(table, losses_by_index(records))
        for record in records:
            assert_same_table(record["scores"], table)


@pytest.mark.parametrize("variant", COUNTED)
def test_one_collective_per_epoch_and_none_per_step(ranks: list[Record], variant: str) -> None:
    for rank_results in ranks:
        results = rank_results["train"][variant]
        assert results["calls"] == ["all_gather"] + ["all_reduce_max"] * NUM_EPOCHS
        for record in results["records"]:
            before, after = record["calls_before"], record["calls_after_update"]
            # no collective in set_epoch or in any step but the epoch's last update (the merge)
            assert after == [before] * (len(after) - 1) + [before + 1]


def test_default_collectives_come_from_the_gloo_group_on_cpu(ranks: list[Record]) -> None:
    for rank_results in ranks:
        default = rank_results["train"]["default"]
        assert default["collectives_type"] == "TorchCollectives"
        assert default["collectives_device"] == "cpu"


def test_nccl_backend_communicates_from_the_current_cuda_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No GPU in CI: the device decision alone, with the current CUDA device patched."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert backend_device("nccl") == torch.device("cuda", 1)
    assert backend_device("gloo") == torch.device("cpu")


def test_pickled_copies_for_spawned_workers_drop_the_process_group(ranks: list[Record]) -> None:
    assert all(r["train"][variant]["pickled"] for r in ranks for variant in VARIANTS)


def test_samples_beyond_2_24_get_exactly_their_own_losses_on_every_rank(
    two_ranks: list[Record],
) -> None:
    results = [r["large_index"] for r in two_ranks]
    own: dict[int, float] = {}
    for result in results:
        own.update(zip(result["indices"].tolist(), result["losses"].tolist()))
    assert len(own) == sum(r["indices"].numel() for r in results)  # each trained on one rank
    top = 2**24
    assert set(range(top, LARGE_SAMPLES)) <= set(own)
    # float32 cannot tell these indices apart, and their losses differ
    assert int(torch.tensor(top + 1, dtype=torch.float32)) == top
    assert len({own[i] for i in range(top, LARGE_SAMPLES)}) == LARGE_SAMPLES - top
    expected = sorted(own)
    for result in results:
        assert result["scored_indices"].tolist() == expected
        assert result["scored_values"].tolist() == [own[i] for i in expected]
        assert result["calls"] == ["all_gather", "all_reduce_max"]
        assert result["next_plan_hash"] == results[0]["next_plan_hash"]


# ---------------------------------------------------------------------- 4. checkpoint / resume
def test_resume_at_an_epoch_boundary_equals_the_uninterrupted_run(ranks: list[Record]) -> None:
    for rank_results in ranks:
        straight = rank_results["train"]["default"]
        resumed = rank_results["resume"]["boundary"]
        assert len(resumed["records"]) == NUM_EPOCHS
        for a, b in zip(straight["records"], resumed["records"]):
            assert a["plan_hash"] == b["plan_hash"]
            assert torch.equal(a["yielded"], b["yielded"])
            assert torch.equal(a["losses"], b["losses"])
            assert_same_table(b["scores"], a["scores"])
        for a_param, b_param in zip(straight["parameters"], resumed["parameters"]):
            assert torch.equal(a_param, b_param)
        # negative control: without the checkpoint's scores epoch 2 is planned differently
        assert resumed["control_hash"] != straight["records"][2]["plan_hash"]


def test_mid_epoch_resume_continues_the_epoch_and_keeps_every_ranks_unmerged_scores(
    ranks: list[Record],
) -> None:
    straight = [r["train"]["default"]["records"] for r in ranks]
    before = [r["resume"]["middle"]["before"][2] for r in ranks]  # epoch 2 up to the checkpoint
    after = [r["resume"]["middle"]["after"] for r in ranks]  # the rest of epoch 2, then epoch 3
    for full, first, rest in zip(straight, before, after):
        assert first["num_batches"] == MID_EPOCH_BATCHES
        assert rest[0]["plan_hash"] == full[2]["plan_hash"]
        assert rest[0]["len_loader"] == full[2]["len_loader"] - MID_EPOCH_BATCHES
        assert torch.equal(torch.cat([first["yielded"], rest[0]["yielded"]]), full[2]["yielded"])
        assert torch.equal(torch.cat([first["losses"], rest[0]["losses"]]), full[2]["losses"])
        # every rank's scores from before the checkpoint were merged at the epoch's end, so
        # the next epoch is planned, trained and scored as in the uninterrupted run
        assert_same_table(rest[0]["scores"], full[2]["scores"])
        assert rest[1]["plan_hash"] == full[3]["plan_hash"]
        assert torch.equal(rest[1]["yielded"], full[3]["yielded"])
        assert_same_table(rest[1]["scores"], full[3]["scores"])


def test_checkpoint_from_four_ranks_resumes_on_two_ranks_and_on_one(
    four_ranks: tuple[Path, list[Record]], two_ranks: list[Record]
) -> None:
    path, four_ranks = four_ranks
    source = [r["checkpoint_source"] for r in four_ranks]
    state = torch.load(path, weights_only=False)
    assert (state["epoch"], state["num_replicas"], state["plan"]) == (2, 4, None)
    for rank_results in source:
        assert_same_table(state["scores"], rank_results["records"][1]["scores"])
    next_plan = source[0]["next_plan_hash"]
    assert {r["next_plan_hash"] for r in source} == {next_plan}

    resumed = [r["checkpoint_resume"] for r in two_ranks]
    for result in resumed:
        assert result["loaded"]["epoch"] == 2
        assert_same_table(result["loaded"]["scores"], state["scores"])
        assert [r["epoch"] for r in result["records"]] == [2, 3]
        assert result["records"][0]["plan_hash"] == next_plan
    table = state["scores"]
    for records in zip(*(result["records"] for result in resumed)):
        table = with_losses(table, losses_by_index(list(records)))
        for record in records:
            assert_same_table(record["scores"], table)
        assert set(torch.cat([r["share"] for r in records]).tolist()) == set(
            records[0]["kept"].tolist()
        )

    # One process, no process group: same scores, epoch and plan, and training goes on.
    dataset: InfoBatch[Any] = InfoBatch(Blobs(NUM_SAMPLES), NUM_EPOCHS, delta=DELTA, seed=SEED)
    dataset.load_state_dict(state)
    assert dataset.epoch == 2 and dataset.sampler.num_replicas == 1
    assert_same_table(dataset.scores, state["scores"])
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, sampler=dataset.sampler)
    assert len(loader) == math.ceil(len(dataset.sampler) / BATCH_SIZE)  # plans epoch 2
    assert dataset.sampler.plan is not None and plan_hash(dataset.sampler.plan) == next_plan
    assert len(dataset.sampler) == dataset.sampler.plan.num_kept  # one rank trains all kept
    model = nn.Linear(8, 4)
    for _ in range(2, NUM_EPOCHS):
        for features, labels, _index in loader:
            dataset.update(F.cross_entropy(model(features), labels, reduction="none")).backward()
    assert dataset.epoch == NUM_EPOCHS - 1 and not torch.isnan(dataset.scores).any()


# ---------------------------------------------------------------------- 5. disagreeing ranks
def test_ranks_that_disagree_get_the_same_clear_error(ranks: list[Record]) -> None:
    shown = {
        "num_samples": f"rank 0={NUM_SAMPLES}, rank 1={NUM_SAMPLES + 1}",
        "seed": f"rank 0={SEED}, rank 1={SEED + 1}",
        "prune_ratio": "rank 0=0.5, rank 1=0.25",
        "num_epochs": f"rank {len(ranks) - 1}={NUM_EPOCHS + 1}",
        "drop_last": f"rank {len(ranks) - 1}=1",
        "sampling_weights": "rank 0=",
    }
    messages = [r["disagree"]["outcomes"] for r in ranks]
    for outcomes in messages:
        assert outcomes["same"] is None
        for setting, values in shown.items():
            message = outcomes[setting]
            assert message is not None and f"{setting}: " in message and values in message
        assert outcomes == messages[0]  # the same error on every rank
    assert [r["disagree"]["alive"] for r in ranks] == [len(ranks)] * len(ranks)  # no hang


# ---------------------------------------------------------------------- model-parallel groups
def test_model_parallel_pairs_share_batches_and_one_score_table(
    four_ranks: tuple[Path, list[Record]],
) -> None:
    """Ranks 0-1 and 2-3 are two data replicas (num_replicas=2); the merge spans all 4."""
    per_rank = [r["model_parallel"]["records"] for r in four_ranks[1]]
    for records in zip(*per_rank):
        assert len({r["plan_hash"] for r in records}) == 1
        assert torch.equal(records[0]["yielded"], records[1]["yielded"])  # a pair reads alike
        assert torch.equal(records[2]["yielded"], records[3]["yielded"])
        assert not torch.equal(records[0]["losses"], records[1]["losses"])  # rounding differs
        replica_shares = [set(records[0]["yielded"].tolist()), set(records[2]["yielded"].tolist())]
        assert len(replica_shares[0] & replica_shares[1]) < 2  # disjoint but for padding
        for record in records:
            assert_same_table(record["scores"], records[0]["scores"])


# ---------------------------------------------------------------------- 6. everyday loop patterns
MERGE_TIMEOUT = 4  # seconds a rank waits for a missing rank's part of the score merge


@pytest.fixture(scope="module")
def patterns(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    out = tmp_path_factory.mktemp("patterns")
    jobs = ["evaluate_on_rank_0", "leave_early", "seeds"]
    return launch(2, jobs, out, {"merge_timeout": MERGE_TIMEOUT})


def test_rank_0_evaluating_on_the_training_loader_alone_changes_nothing(
    patterns: list[Record],
) -> None:
    runs = [r["evaluate_on_rank_0"] for r in patterns]
    assert [r["evaluated"] > 0 for r in runs[0]["records"]] == [True] * NUM_EPOCHS
    for run in runs:
        assert [r["plan_epoch"] for r in run["records"]] == list(range(NUM_EPOCHS))
        assert run["history"] == list(range(NUM_EPOCHS))
        # no collective but the construction check and one merge per epoch, on both ranks
        assert run["calls"] == ["all_gather"] + ["all_reduce_max"] * NUM_EPOCHS
    for a, b in zip(runs[0]["records"], runs[1]["records"]):
        assert a["plan_hash"] == b["plan_hash"]
        assert_same_table(a["scores"], b["scores"])
    for a_param, b_param in zip(runs[0]["parameters"], runs[1]["parameters"]):
        assert torch.isfinite(a_param).all() and torch.equal(a_param, b_param)


def test_a_rank_leaving_the_last_epoch_early_blocks_no_update_and_fails_clearly(
    patterns: list[Record],
) -> None:
    first, second = (r["leave_early"] for r in patterns)
    assert first["slowest_update"] < 1.0 and second["slowest_update"] < 1.0  # no update waits
    assert first["error"] is not None and second["error"] is None
    assert "InfoBatch's score merge for epoch 1 did not complete on rank 0" in first["error"]
    assert "call end_epoch() (or set_epoch(next_epoch)) on every rank" in first["error"]
    assert MERGE_TIMEOUT - 1 < first["waited"] < MERGE_TIMEOUT + 20  # failed, did not hang
    assert first["sum"] == second["sum"] == 2.0  # the user's collective paired correctly


def test_ranks_seeded_differently_take_rank_0s_seed_and_large_seeds_work(
    patterns: list[Record],
) -> None:
    results = [r["seeds"] for r in patterns]
    assert [r["seeds"] for r in results] == [[100, 2**63]] * 2
    assert results[0]["hashes"] == results[1]["hashes"]


# ---------------------------------------------------------------------- 7. budget, iterations
@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    return launch(2, ["control"], tmp_path_factory.mktemp("control"))


def test_iteration_mode_the_budget_and_weighted_draws_agree_across_ranks(
    control: list[Record],
) -> None:
    iters = [r["control"]["iterations"] for r in control]
    assert [r["iterations"] for r in iters] == [40, 40]  # exactly the asked iterations
    budget = [r["control"]["budget"] for r in control]
    sampling = [r["control"]["sampling"] for r in control]
    assert_same_table(sampling[0]["scores"], sampling[1]["scores"])
    for runs in (iters, budget, sampling):
        assert runs[0]["hashes"] == runs[1]["hashes"] and len(runs[0]["hashes"]) > 3
    # every budgeted epoch ran to its end, so the tables are merged (the iteration run's last
    # pass was cut at the count: its scores stay on the rank that recorded them)
    assert_same_table(budget[0]["scores"], budget[1]["scores"])
    assert abs(budget[0]["saved"] - 0.3) <= 0.02 and budget[0]["saved"] == budget[1]["saved"]
