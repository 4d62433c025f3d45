"""InfoBatchGRPOTrainer against the real TRL GRPOTrainer: tiny GPT-2, 1 and 2 gloo processes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl")

from infobatch import prompt_scores  # noqa: E402

from ._common import Record, launch  # noqa: E402
from ._trl_workers import DEFAULTS, run_grpo  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:  # module scope: before the module's runs, so every run uses 1
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Record:
    return run_grpo(tmp_path_factory.mktemp("grpo"), {"save_steps": 5})


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    return launch(2, run_grpo, tmp_path_factory.mktemp("grpo2"), {"save_steps": 3})


def _by_pass(run: Record) -> dict[int, list[Record]]:
    passes: dict[int, list[Record]] = {}
    for batch in run["batches"]:
        passes.setdefault(batch["epoch"], []).append(batch)
    return passes


def _check_every_kept_prompt_once(runs: list[Record]) -> None:
    first = runs[0]
    generations = DEFAULTS["generations"]
    history = {stats.epoch: stats for stats in first["history"]}
    assert sorted(history) == list(range(DEFAULTS["epochs"]))
    assert any(stats.num_pruned > 0 for stats in history.values())
    for epoch, batches in _by_pass(first).items():
        order = first["plans"][epoch]
        generated = torch.cat([b["prompts"] for b in batches])
        assert torch.equal(generated, order.to(torch.int64))  # the plan, in order, once each
        assert generated.numel() == history[epoch].num_kept
        # every rank's reward function saw each kept prompt's completions, num_generations
        # of them over all ranks, and never a skipped prompt's
        seen: Counter[int] = Counter()
        for run in runs:
            for batch in _by_pass(run)[epoch]:
                seen.update(batch["pids"])
        assert seen == Counter({int(p): generations for p in generated})
    assert first["rollouts"] == {
        e: history[e].num_kept * generations for e in range(DEFAULTS["epochs"])
    }


def test_every_kept_prompt_is_generated_for_and_trained_on_once_per_pass(run: Record) -> None:
    _check_every_kept_prompt_once([run])


def test_skipped_prompts_are_never_generated_for(run: Record) -> None:
    for epoch, batches in _by_pass(run).items():
        seen = {pid for batch in batches for pid in batch["pids"]}
        plan = run["plans"][epoch]
        skipped = set(range(DEFAULTS["num_prompts"])) - set(plan.tolist())
        assert skipped.isdisjoint(seen)
        if epoch in (1, 2):  # pruned passes skip prompts
            assert skipped


def test_advantages_are_rescaled_exactly(run: Record) -> None:
    scaled_some = False
    for batch in run["batches"]:
        weights = batch["weights"].repeat_interleave(DEFAULTS["generations"])
        expected = batch["raw"] * weights.to(batch["raw"])
        assert torch.equal(batch["scaled"], expected)
        scaled_some |= bool((weights > 1).any() and (batch["raw"] != 0).any())
    assert scaled_some
    stats = {s.epoch: s for s in run["history"]}
    for batch in run["batches"]:
        weight = torch.tensor(stats[batch["epoch"]].weight, dtype=torch.float32)
        assert bool(((batch["weights"] == 1) | (batch["weights"] == weight)).all())


def test_scores_are_the_last_groups_reward_std(run: Record) -> None:
    last: dict[int, torch.Tensor] = {}
    for batch in run["batches"]:
        for prompt, rewards in zip(batch["prompts"].tolist(), batch["rewards"]):
            last[prompt] = rewards
    prompts = sorted(last)
    expected = prompt_scores(torch.stack([last[p] for p in prompts]))
    assert torch.equal(run["scores"][prompts], expected)


def test_pruned_passes_skip_below_mean_prompts_only(run: Record) -> None:
    for stats in run["history"]:
        if stats.epoch in (1, 2):
            assert stats.pruning and stats.num_pruned <= stats.num_well_learned
        else:  # pass 0 has no score yet; pass 3 anneals
            assert stats.num_pruned == 0 and stats.weight == 1.0


def test_learning_rate_schedule_ends_at_its_end(run: Record) -> None:
    lrs = run["lrs"]
    assert run["global_step"] < run["max_steps"]  # pruned passes made fewer steps
    assert len(lrs) == run["global_step"]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_without_pruning_the_schedule_is_plain_grpos(tmp_path: Path) -> None:
    config = {"prune_ratio": 0.0, "epochs": 2, "num_prompts": 12}
    infobatch = run_grpo(tmp_path / "ib", config)
    plain = run_grpo(tmp_path / "plain", {**config, "plain": True})
    assert infobatch["global_step"] == plain["global_step"] == plain["max_steps"]
    assert infobatch["lrs"] == pytest.approx(plain["lrs"], rel=1e-6, abs=1e-12)


def test_logs_count_prompts_rollouts_and_tokens_saved(run: Record) -> None:
    generations = DEFAULTS["generations"]
    skipped = sum(stats.num_pruned for stats in run["history"])
    final = [log for log in run["logs"] if "infobatch/rollouts_saved" in log][-1]
    assert final["infobatch/prompts_skipped"] == skipped
    assert final["infobatch/rollouts_saved"] == skipped * generations
    assert final["infobatch/rollouts"] == sum(run["rollouts"].values())
    assert 0 < final["infobatch/tokens_saved"] <= skipped * generations * 3  # 3: max length
    epoch_logs = [log for log in run["logs"] if "infobatch/num_kept" in log]
    assert [log["infobatch/epoch"] for log in epoch_logs] == list(range(DEFAULTS["epochs"]))


def _resume(tmp_path: Path, config: dict[str, Any], step: int, world: int = 1) -> list[Record]:
    """Stop at ``step`` (saving a checkpoint there), relaunch from it; both runs' records."""
    out = tmp_path / "stopped"
    settings = {**config, "stop_after_steps": step}
    if world == 1:
        run_grpo(out, settings)
        resumed = [run_grpo(out, {**config, "resume_from": str(out / f"checkpoint-{step}")})]
    else:
        launch(world, run_grpo, out, settings)
        resumed = launch(
            world, run_grpo, out, {**config, "resume_from": str(out / f"checkpoint-{step}")}
        )
    return resumed


def _assert_same_end(full: Record, resumed: Record) -> None:
    assert resumed["global_step"] == full["global_step"]
    for name, value in full["weights"].items():
        assert torch.equal(resumed["weights"][name], value), name
    assert resumed["lrs"] == full["lrs"][-len(resumed["lrs"]) :]
    tail = [b["prompts"].tolist() for b in full["batches"][-len(resumed["batches"]) :]]
    assert [b["prompts"].tolist() for b in resumed["batches"]] == tail
    assert torch.equal(torch.isnan(resumed["scores"]), torch.isnan(full["scores"]))
    assert torch.equal(resumed["scores"].nan_to_num(), full["scores"].nan_to_num())
    assert [s.num_kept for s in resumed["history"]] == [s.num_kept for s in full["history"]]


@pytest.mark.parametrize("step", [12, 15], ids=["pass-boundary", "mid-pass"])
def test_resume_reproduces_the_uninterrupted_run(run: Record, tmp_path: Path, step: int) -> None:
    boundaries = {b["step"] for b in run["batches"] if b["epoch"] == 1}
    assert (min(boundaries) == step) == (step == 12)  # pass 1 starts at step 12
    (resumed,) = _resume(tmp_path, {}, step)
    _assert_same_end(run, resumed)


def test_resume_inside_a_generation_block_reproduces_the_run(tmp_path: Path) -> None:
    config = {"iterations": 2, "epochs": 3, "num_prompts": 12, "delta": 0.67}
    full = run_grpo(tmp_path / "full", config)
    steps = [b["step"] for b in full["batches"]]
    inside = next(s + 1 for s in steps if s > 6)  # one optimizer step into a block
    assert inside not in steps
    (resumed,) = _resume(tmp_path, config, inside)
    _assert_same_end(full, resumed)


def test_two_ranks_agree_and_generate_each_kept_prompt_once(two_ranks: list[Record]) -> None:
    first, second = two_ranks
    assert {first["rank"], second["rank"]} == {0, 1}
    for epoch, order in first["plans"].items():
        assert torch.equal(order, second["plans"][epoch])
    assert torch.equal(first["scores"].nan_to_num(-1), second["scores"].nan_to_num(-1))
    _check_every_kept_prompt_once(two_ranks)
    for run in two_ranks:  # each rank rescaled its own rows exactly
        rank, rows = run["rank"], DEFAULTS["per_device"]
        for batch in run["batches"]:
            weights = batch["weights"].repeat_interleave(DEFAULTS["generations"])
            mine = weights[rank * rows : (rank + 1) * rows]
            assert torch.equal(batch["scaled"], batch["raw"] * mine.to(batch["raw"]))
    assert first["lrs"][-1] == pytest.approx(0.0, abs=1e-12)


def test_two_ranks_relaunched_mid_pass_reproduce_the_run(
    two_ranks: list[Record], tmp_path: Path
) -> None:
    step = 9  # inside pass 1 (pass 0 is 6 steps of 2 prompts x 2 generations on 2 ranks)
    resumed = _resume(tmp_path, {}, step, world=2)
    by_rank = {r["rank"]: r for r in two_ranks}
    for run in resumed:
        _assert_same_end(by_rank[run["rank"]], run)


def test_refuses_settings_it_cannot_honour(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whole number"):
        run_grpo(tmp_path, {"epochs": 1.5})
    with pytest.raises(ValueError, match="multiple of gradient_accumulation_steps"):
        run_grpo(tmp_path, {"accumulation": 2, "steps_per_generation": 1})


def test_refuses_an_old_trl(monkeypatch: pytest.MonkeyPatch) -> None:
    import infobatch.integrations.trl as module

    monkeypatch.setattr(module, "version", lambda name: "0.19.0")
    with pytest.raises(ImportError, match=r"trl>=1\.16"):
        module._check_trl_version()
