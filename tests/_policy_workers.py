"""Code that runs inside the spawned gloo ranks of ``tests/test_policies_distributed.py``.

``launch(world_size, out_dir)`` starts the ranks with the ``spawn`` start method on a free TCP
port, bounded by a process-group timeout; every rank trains a small linear model through
``InfoBatch`` with each registered policy and saves, per policy, a digest of every epoch's
plan, the merged score table and the rule's own state.
"""

from __future__ import annotations

import hashlib
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from infobatch import EpochPlan, InfoBatch
from infobatch.policies import POLICIES, make_policy

NUM_SAMPLES = 203  # odd: kept counts rarely divide the world size
NUM_EPOCHS = 6
BATCH_SIZE = 8
SEED = 5
TIMEOUT = timedelta(seconds=60)  # a hang fails the test instead of stalling it

#: Arguments that make each registered policy prune on this small run.
ARGUMENTS: dict[str, dict[str, Any]] = {
    "infobatch": {"prune_ratio": 0.5},
    "no_rescale": {"prune_ratio": 0.5},
    "no_anneal": {"prune_ratio": 0.5},
    "saving_budget": {"target": 0.2},
    "dynamic_random": {"prune_ratio": 0.3},
    "static_random": {"keep_fraction": 0.7},
    "epsilon_greedy": {"prune_ratio": 0.3, "epsilon": 0.2},
    "ucb": {"prune_ratio": 0.3},
    "seta": {"prune_ratio": 0.1, "num_groups": 5, "window_scale": 0.9},
    "low_loss": {"prune_ratio": 0.8, "threshold_scale": 0.5},
}


class Points(Dataset[tuple[Tensor, int, int]]):
    """``size`` points around 3 class centres; item ``i`` is ``(features, label, i)``."""

    def __init__(self, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        centres = 1.5 * torch.randn(3, 6, generator=generator)
        self.labels = torch.randint(3, (size,), generator=generator)
        self.features = centres[self.labels] + torch.randn(size, 6, generator=generator)

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        return self.features[index], int(self.labels[index]), index


def plan_hash(plan: EpochPlan) -> str:
    """Digest of what defines an epoch plan (order, status, weight)."""
    digest = hashlib.sha256()
    digest.update(plan.order.cpu().numpy().tobytes())
    digest.update(plan.status.cpu().numpy().tobytes())
    digest.update(repr(plan.weight).encode())
    return digest.hexdigest()


def train_policy(name: str) -> dict[str, Any]:
    """Train ``NUM_EPOCHS`` epochs with policy ``name``; what every rank must agree on."""
    delta = POLICIES[name].delta or 0.75
    rule = make_policy(name, **ARGUMENTS[name])
    dataset: InfoBatch[Any] = InfoBatch(
        Points(NUM_SAMPLES), NUM_EPOCHS, delta=delta, rule=rule, seed=SEED
    )
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, sampler=dataset.sampler)
    torch.manual_seed(dist.get_rank())  # ranks differ in their models: only merged scores agree
    model = nn.Linear(6, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hashes = []
    for epoch in range(NUM_EPOCHS):
        dataset.sampler.set_epoch(epoch)
        for features, labels, _index in loader:
            loss = dataset.update(F.cross_entropy(model(features), labels, reduction="none"))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        assert dataset.sampler.plan is not None
        hashes.append(plan_hash(dataset.sampler.plan))
    state = dataset.state_dict()
    return {
        "hashes": hashes,
        "scores": dataset.scores.clone(),
        "saved": dataset.saved_fraction,
        "rule_state": state["rule"],
    }


def _rank_main(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=TIMEOUT,
    )
    try:
        results = {name: train_policy(name) for name in POLICIES}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(world_size: int, out_dir: Path) -> list[dict[str, Any]]:
    """Run every policy on ``world_size`` spawned gloo ranks; each rank's results."""
    mp.start_processes(
        _rank_main,
        args=(world_size, free_port(), str(out_dir)),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
    return [
        torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)
    ]
