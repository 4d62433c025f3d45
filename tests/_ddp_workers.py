"""Code that runs inside the spawned ranks of the multi-process gloo tests.

``launch(world_size, job, out_dir, config)`` starts ``world_size`` processes with the ``spawn``
start method, initialises a gloo process group over TCP on a free port, runs the job on every
rank and returns what each rank saved. Jobs train a small model under DDP for a few epochs and
record what the tests assert on: plans, shares, batches, losses, score tables, collective calls.
"""

from __future__ import annotations

import hashlib
import pickle
import socket
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from infobatch import (
    EpochPlan,
    InfoBatch,
    InfoBatchError,
    PendingReduce,
    Phase,
    SavingBudget,
    TorchCollectives,
    WeightedSampling,
    class_balanced_weights,
    iterations,
)
from infobatch.policies import POLICIES, make_policy
from tests.helpers import POLICY_ARGUMENTS

NUM_SAMPLES = 203  # odd and not a multiple of 3: kept counts rarely divide the world size
NUM_EPOCHS = 4
DELTA = 0.75  # epochs 0-2 may prune, epoch 3 is a full-data (annealing) epoch
BATCH_SIZE = 8
SEED = 7
LARGE_SAMPLES = 2**24 + 8  # float32 cannot tell 2**24 from 2**24 + 1

Record = dict[str, Any]

#: Training settings per variant. ``collectives``: "default" = found from the process group,
#: "counted" = a counting wrapper of TorchCollectives. ``context``: start method of the
#: DataLoader workers: fork, as under torchrun on Linux (spawned ranks would default to spawn,
#: which costs seconds per worker; pickling for spawn is checked in ``job_train``).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": dict(
        collectives="default", set_epoch=True, drop_last=False, num_workers=0, indices=False
    ),
    "no_set_epoch_workers": dict(
        collectives="counted",
        set_epoch=False,
        drop_last=False,
        num_workers=2,
        context="fork",
        indices=False,
    ),
    "drop_last_workers_indices": dict(
        collectives="counted",
        set_epoch=True,
        drop_last=True,
        num_workers=2,
        context="fork",
        indices=True,
    ),
    "drop_last_no_set_epoch": dict(
        collectives="counted", set_epoch=False, drop_last=True, num_workers=0, indices=False
    ),
    "keep_steps": dict(
        collectives="default",
        set_epoch=False,
        drop_last=False,
        num_workers=0,
        indices=False,
        keep_steps=True,
    ),
}


# ---------------------------------------------------------------------- data, model, helpers
class Blobs(Dataset[tuple[Tensor, int, int]]):
    """``size`` points around 4 class centres; item ``i`` is ``(features, label, i)``."""

    def __init__(self, size: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        centres = 1.5 * torch.randn(4, 8, generator=generator)
        self.labels = torch.randint(4, (size,), generator=generator)
        self.features = centres[self.labels] + torch.randn(size, 8, generator=generator)

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        return self.features[index], int(self.labels[index]), index


class LazyIndexed(Dataset[tuple[Tensor, int, int]]):
    """A dataset of any length whose items are computed from the index (nothing stored)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        mixed = (index * 2654435761) % 1_000_003
        features = torch.tensor([mixed / 1_000_003, (index % 977) / 977], dtype=torch.float64)
        return features.float(), index % 4, index


class CountingCollectives:
    """Delegates to :class:`TorchCollectives` and logs every call, to count collectives."""

    def __init__(self) -> None:
        self.inner = TorchCollectives()
        self.calls: list[str] = []

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def start_all_reduce_max(self, tensor: Tensor) -> PendingReduce:
        self.calls.append("all_reduce_max")
        return self.inner.start_all_reduce_max(tensor)

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        self.calls.append("all_gather")
        return self.inner.all_gather(tensor)


def plan_hash(plan: EpochPlan) -> str:
    """Digest of everything that defines an epoch plan (order, status, weight)."""
    digest = hashlib.sha256()
    digest.update(plan.order.cpu().numpy().tobytes())
    digest.update(plan.status.cpu().numpy().tobytes())
    digest.update(repr(plan.weight).encode())
    if plan.sample_weights is not None:
        digest.update(plan.sample_weights.cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Run:
    """One training run on one rank: wrapped dataset, DDP model, optimiser, loader."""

    dataset: InfoBatch[Any]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader[Any]
    counter: CountingCollectives | None
    settings: dict[str, Any]


def make_run(variant: str, **overrides: Any) -> Run:
    """Build the dataset, model, optimiser and loader of ``variant`` on this rank."""
    settings = {**VARIANTS[variant], **overrides}
    counter = CountingCollectives() if settings["collectives"] == "counted" else None
    dataset: InfoBatch[Any] = InfoBatch(
        Blobs(settings.get("num_samples", NUM_SAMPLES)),
        settings.get("num_epochs", NUM_EPOCHS),
        prune_ratio=settings.get("prune_ratio", 0.5),
        delta=DELTA,
        seed=settings.get("seed", SEED),
        drop_last=settings["drop_last"],
        batch_size=BATCH_SIZE if settings.get("keep_steps") else None,
        keep_steps=settings.get("keep_steps", False),
        collectives=counter,
        sampling=settings.get("sampling"),
    )
    torch.manual_seed(0)  # same initial weights on every rank and in every run
    # One parameter tensor: with several, a fresh DDP's first step packs the gradients in
    # another bucket layout than later steps, so with 3 ranks the sums round differently and a
    # resumed run could not be compared with an uninterrupted one bit for bit.
    model = DistributedDataParallel(nn.Linear(8, 4, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batching: dict[str, Any] = (
        {"batch_sampler": dataset.batch_sampler}  # each epoch's batch size from the sampler
        if settings.get("keep_steps")
        else {
            "batch_size": BATCH_SIZE,
            "sampler": dataset.sampler,
            "drop_last": settings["drop_last"],
        }
    )
    loader = DataLoader(
        dataset,
        **batching,
        num_workers=settings["num_workers"],
        multiprocessing_context=settings.get("context"),
    )
    return Run(dataset, model, optimizer, loader, counter, settings)


def train_epochs(
    run: Run, epochs: range, *, stop_after: tuple[int, int] | None = None
) -> list[Record]:
    """Train ``epochs``; return one record per epoch. ``stop_after=(epoch, batches)`` breaks."""
    rank, world = dist.get_rank(), dist.get_world_size()
    sampler = run.dataset.sampler
    records = []
    for epoch in epochs:
        record: Record = {"epoch": epoch, "calls_after_update": []}
        if run.counter is not None:
            record["calls_before"] = len(run.counter.calls)
        if run.settings["set_epoch"]:
            sampler.set_epoch(epoch)
        yielded, losses = [], []
        for features, labels, index in run.loader:
            if not yielded:  # the plan of the epoch under way, as the loader sees it
                plan = sampler.plan
                assert plan is not None
                record.update(
                    plan_epoch=plan.epoch,
                    plan_hash=plan_hash(plan),
                    kept=plan.order.long().clone(),
                    share=plan.share(rank, world).long().clone(),
                    len_loader=len(run.loader),
                )
            loss = F.cross_entropy(run.model(features), labels, reduction="none")
            weighted = run.dataset.update(loss, indices=index if run.settings["indices"] else None)
            run.optimizer.zero_grad()
            weighted.backward()
            run.optimizer.step()
            yielded.append(index.clone())
            losses.append(loss.detach().clone())
            if run.counter is not None:
                record["calls_after_update"].append(len(run.counter.calls))
            if stop_after == (epoch, len(yielded)):
                break
        record.update(
            yielded=torch.cat(yielded),
            losses=torch.cat(losses),
            num_batches=len(yielded),
            scores=run.dataset.scores.clone(),
        )
        records.append(record)
    return records


def model_parameters(run: Run) -> list[Tensor]:
    return [p.detach().clone() for p in run.model.parameters()]


def checkpoint(run: Run, path: Path) -> None:
    """The README's pattern: the state of every rank gathered (on every rank), rank 0 saves,
    every rank waits until the file exists."""
    infobatch = run.dataset.state_dict(all_ranks=True)
    if dist.get_rank() == 0:
        torch.save(
            {
                "model": run.model.module.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "infobatch": infobatch,
            },
            path,
        )
    dist.barrier()


def resume(variant: str, path: Path) -> Run:
    """Fresh run on every rank, restored from rank 0's checkpoint."""
    state = torch.load(path, weights_only=False)
    run = make_run(variant)
    run.model.module.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.dataset.load_state_dict(state["infobatch"])
    return run


# ---------------------------------------------------------------------- jobs
def job_train(out_dir: Path, config: dict[str, Any]) -> Record:
    """Every variant for all epochs."""
    results: Record = {}
    for variant in VARIANTS:
        run = make_run(variant)
        records = train_epochs(run, range(NUM_EPOCHS))
        found = run.dataset.sampler._collectives  # what the sampler picked from the group
        results[variant] = {
            "records": records,
            "calls": list(run.counter.calls) if run.counter else None,
            "collectives_type": type(found).__name__,
            "collectives_device": str(found.device) if found is not None else None,
            "parameters": model_parameters(run),
            "pickled": pickled_copy_works(run.dataset),
        }
    return results


def pickled_copy_works(dataset: InfoBatch[Any]) -> bool:
    """Spawned loader workers get a pickled copy: it must drop the process group, keep scores."""
    copy = pickle.loads(pickle.dumps(dataset))
    return copy.sampler._collectives is None and torch.equal(
        torch.isnan(copy.scores), torch.isnan(dataset.scores)
    )


def job_resume(out_dir: Path, config: dict[str, Any]) -> Record:
    """Checkpoint at an epoch boundary and mid-epoch on rank 0, resume on every rank."""
    boundary = out_dir / "boundary.pt"
    run = make_run("default")
    first = train_epochs(run, range(2))
    checkpoint(run, boundary)
    resumed = resume("default", boundary)
    second = train_epochs(resumed, range(2, NUM_EPOCHS))
    # Negative control: the same settings without the checkpoint's scores.
    control = make_run("default")
    control.dataset.sampler.set_epoch(2)
    assert control.dataset.sampler.plan is not None
    control_hash = plan_hash(control.dataset.sampler.plan)

    middle = out_dir / "middle.pt"
    stop = (2, config["mid_epoch_batches"])
    run = make_run("default")
    before = train_epochs(run, range(3), stop_after=stop)
    checkpoint(run, middle)
    resumed = resume("default", middle)
    after = train_epochs(resumed, range(2, NUM_EPOCHS))
    return {
        "boundary": {
            "records": first + second,
            "parameters": model_parameters(resumed),
            "control_hash": control_hash,
        },
        "middle": {"before": before, "after": after},
    }


def job_disagree(out_dir: Path, config: dict[str, Any]) -> Record:
    """Build InfoBatch with one setting differing between ranks; record what each rank saw."""
    rank = dist.get_rank()
    last = dist.get_world_size() - 1
    cases: dict[str, dict[str, Any]] = {
        "same": {},
        "num_samples": {"num_samples": NUM_SAMPLES + rank},
        "seed": {"seed": SEED + rank},
        "prune_ratio": {"prune_ratio": 0.5 if rank == 0 else 0.25},
        "num_epochs": {"num_epochs": NUM_EPOCHS + (rank == last)},
        "drop_last": {"drop_last": rank == last},
        "sampling_weights": {  # the same number of draws, other weights on the last rank
            "sampling": WeightedSampling(torch.ones(NUM_SAMPLES) + (rank == last), NUM_SAMPLES)
        },
    }
    outcomes: dict[str, str | None] = {}
    for name, overrides in cases.items():
        try:
            make_run("default", **overrides)
            outcomes[name] = None
        except InfoBatchError as error:
            outcomes[name] = str(error)
    # The group still works afterwards: one more collective goes through on every rank.
    alive = torch.tensor([1])
    dist.all_reduce(alive)
    return {"outcomes": outcomes, "alive": int(alive)}


def job_large_index(out_dir: Path, config: dict[str, Any]) -> Record:
    """Score samples beyond 2**24 on different ranks; every rank must hold each one's own loss."""
    rank, world = dist.get_rank(), dist.get_world_size()
    counter = CountingCollectives()
    # delta=0: full-data epochs, so planning 2**24 samples stays cheap; scores are what counts.
    dataset: InfoBatch[Any] = InfoBatch(
        LazyIndexed(LARGE_SAMPLES), num_epochs=2, delta=0.0, seed=SEED, collectives=counter
    )
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Linear(2, 4))
    next(iter(dataset.sampler))  # the epoch starts as a loader would start it
    top = 2**24
    batches = [
        [top + k for k in range(LARGE_SAMPLES - top) if k % world == rank],
        [top - 1 - rank, rank, 2**23 + rank],
    ]
    loader = DataLoader(dataset, batch_sampler=batches)
    seen_indices, seen_losses = [], []
    for features, labels, index in loader:  # a few steps, each batch naming its indices
        loss = F.cross_entropy(model(features), labels, reduction="none")
        dataset.update(loss, indices=index).backward()
        seen_indices.append(index)
        seen_losses.append(loss.detach().clone())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset.sampler.set_epoch(1)  # ends epoch 0 (only a few samples trained) and merges
    scores = dataset.scores
    scored = torch.nonzero(~torch.isnan(scores)).flatten()
    assert dataset.sampler.plan is not None
    return {
        "indices": torch.cat(seen_indices),
        "losses": torch.cat(seen_losses),
        "scored_indices": scored,
        "scored_values": scores[scored].clone(),
        "calls": list(counter.calls),
        "warnings": [str(w.message) for w in caught],
        "next_plan_hash": plan_hash(dataset.sampler.plan),
    }


def job_checkpoint_source(out_dir: Path, config: dict[str, Any]) -> Record:
    """Train 2 epochs, save the InfoBatch state on rank 0, then plan epoch 2."""
    run = make_run("default")
    records = train_epochs(run, range(2))
    if dist.get_rank() == 0:
        torch.save(run.dataset.state_dict(), config["checkpoint"])
    dist.barrier()
    run.dataset.sampler.set_epoch(2)
    assert run.dataset.sampler.plan is not None
    return {"records": records, "next_plan_hash": plan_hash(run.dataset.sampler.plan)}


def job_checkpoint_resume(out_dir: Path, config: dict[str, Any]) -> Record:
    """Load a checkpoint taken with another world size, then train to the end."""
    state = torch.load(config["checkpoint"], weights_only=False)
    run = make_run("default", set_epoch=False)
    run.dataset.load_state_dict(state)
    loaded = {"scores": run.dataset.scores.clone(), "epoch": run.dataset.epoch}
    return {"loaded": loaded, "records": train_epochs(run, range(state["epoch"], NUM_EPOCHS))}


def job_model_parallel(out_dir: Path, config: dict[str, Any]) -> Record:
    """Ranks in pairs that each hold half a model (tensor-parallel style): 2 data replicas.

    Both ranks of a pair must read the same batches, so the sampler gets the data-parallel
    ``num_replicas``/``rank``; the merge runs over all ranks, so the pair's slightly different
    losses (rounding, simulated here) still leave one table everywhere.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    dataset: InfoBatch[Any] = InfoBatch(
        Blobs(NUM_SAMPLES),
        NUM_EPOCHS,
        delta=DELTA,
        seed=SEED,
        num_replicas=world // 2,
        rank=rank // 2,
        collectives=TorchCollectives(),
    )
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, sampler=dataset.sampler)
    records = []
    for epoch in range(NUM_EPOCHS):
        yielded, losses = [], []
        for features, _labels, index in loader:
            loss = features.norm(dim=1) / (1 + epoch) * (1 + 1e-6 * (rank % 2))
            dataset.update(loss)
            yielded.append(index)
            losses.append(loss)
        assert dataset.sampler.plan is not None
        records.append(
            {
                "plan_hash": plan_hash(dataset.sampler.plan),
                "yielded": torch.cat(yielded),
                "losses": torch.cat(losses),
                "scores": dataset.scores.clone(),
            }
        )
    return {"records": records}


class ExactlyNParameters(nn.Module):
    """A linear model padded to ``NUM_SAMPLES`` parameters: its gradient all-reduce has the
    score table's size, so a stray score merge would pair with it and corrupt the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4, bias=False)
        self.pad = nn.Parameter(torch.zeros(NUM_SAMPLES - 32))

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features) + 0.0 * self.pad.sum()


def job_evaluate_on_rank_0(out_dir: Path, config: dict[str, Any]) -> Record:
    """Rank 0 alone evaluates on the training loader after each epoch and peeks mid-run."""
    rank = dist.get_rank()
    run = make_run("no_set_epoch_workers", num_workers=0, context=None)
    torch.manual_seed(0)
    run.model = DistributedDataParallel(ExactlyNParameters())
    run.optimizer = torch.optim.SGD(run.model.parameters(), lr=0.05)
    records = []
    for epoch in range(NUM_EPOCHS):
        records += train_epochs(run, range(epoch, epoch + 1))
        if rank == 0:
            evaluated = sum(len(labels) for _features, labels, _index in run.loader)
            records[-1]["evaluated"] = evaluated
            if epoch == 1:
                next(iter(run.loader))  # a peek at the next epoch
    assert run.counter is not None
    return {
        "records": records,
        "calls": list(run.counter.calls),
        "parameters": model_parameters(run),
        "history": [s.epoch for s in run.dataset.history],
    }


def job_leave_early(out_dir: Path, config: dict[str, Any]) -> Record:
    """Rank 1 leaves the last epoch after 2 batches; rank 0 finishes it and checkpoints."""
    rank = dist.get_rank()
    collectives = TorchCollectives(timeout=timedelta(seconds=config["merge_timeout"]))
    dataset: InfoBatch[Any] = InfoBatch(
        Blobs(NUM_SAMPLES), 2, delta=DELTA, seed=SEED, collectives=collectives
    )
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, sampler=dataset.sampler)
    model = nn.Linear(8, 4)  # each rank its own model: only InfoBatch could make ranks wait
    slowest_update = 0.0
    for epoch in range(2):
        for step, (features, labels, _index) in enumerate(loader):
            if epoch == 1 and rank == 1 and step == 2:
                break  # a time budget ran out on this rank
            started = time.monotonic()
            dataset.update(F.cross_entropy(model(features), labels, reduction="none"))
            slowest_update = max(slowest_update, time.monotonic() - started)
    error, waited = None, 0.0
    if rank == 0:
        started = time.monotonic()
        try:
            dataset.state_dict()
        except InfoBatchError as caught:
            error = str(caught)
        waited = time.monotonic() - started
    # The user's own collectives are untouched by InfoBatch's pending merge.
    total = torch.ones(1)
    dist.all_reduce(total)
    return {"error": error, "waited": waited, "slowest_update": slowest_update, "sum": float(total)}


def job_seeds(out_dir: Path, config: dict[str, Any]) -> Record:
    """Ranks seeded differently (seed + rank) without seed=; then a seed of 2**63 everywhere."""
    rank = dist.get_rank()
    torch.manual_seed(100 + rank)
    implicit: InfoBatch[Any] = InfoBatch(Blobs(NUM_SAMPLES), NUM_EPOCHS)
    large: InfoBatch[Any] = InfoBatch(Blobs(NUM_SAMPLES), NUM_EPOCHS, seed=2**63)
    hashes = []
    for dataset in (implicit, large):
        dataset.sampler.set_epoch(0)
        assert dataset.sampler.plan is not None
        hashes.append(plan_hash(dataset.sampler.plan))
    return {"seeds": [implicit.sampler.seed, large.sampler.seed], "hashes": hashes}


def _epochs_of(dataset: InfoBatch[Any], loader: DataLoader[Any], epochs: int) -> Any:
    """The batches of ``epochs`` epochs, with ``set_epoch`` at the top of each."""
    for epoch in range(epochs):
        dataset.sampler.set_epoch(epoch)
        yield from loader


def job_control(out_dir: Path, config: dict[str, Any]) -> Record:
    """Iteration-based training and a saving budget, each trained to the end on every rank."""
    results: Record = {}
    for mode in ("iterations", "budget", "sampling"):
        if mode == "iterations":
            dataset: InfoBatch[Any] = InfoBatch(
                Blobs(NUM_SAMPLES), None, delta=DELTA, num_iterations=40, seed=SEED
            )
        elif mode == "sampling":
            blobs = Blobs(NUM_SAMPLES)
            sampling = WeightedSampling(class_balanced_weights(blobs.labels), num_draws=150)
            dataset = InfoBatch(blobs, 8, delta=DELTA, sampling=sampling, seed=SEED)
        else:
            dataset = InfoBatch(
                Blobs(NUM_SAMPLES), 8, delta=DELTA, rule=SavingBudget(0.3), seed=SEED
            )
        loader = DataLoader(dataset, batch_size=BATCH_SIZE, sampler=dataset.sampler)
        model = nn.Linear(8, 4)
        batches = iterations(loader, 40) if mode == "iterations" else _epochs_of(dataset, loader, 8)
        hashes: list[str] = []
        for features, labels, _index in batches:
            assert dataset.sampler.plan is not None
            if len(hashes) <= dataset.sampler.epoch:
                hashes.append(plan_hash(dataset.sampler.plan))
            dataset.update(F.cross_entropy(model(features), labels, reduction="none"))
        results[mode] = {
            "hashes": hashes,
            "iterations": dataset.sampler.iterations_done,
            "saved": dataset.saved_fraction,
            "scores": dataset.scores.clone(),
        }
    return results


def job_policies(out_dir: Path, config: dict[str, Any]) -> Record:
    """Every registered policy for 6 epochs: what every rank must agree on, per policy."""
    results: Record = {}
    for name in POLICIES:
        rule = make_policy(name, **POLICY_ARGUMENTS[name])
        dataset: InfoBatch[Any] = InfoBatch(
            Blobs(NUM_SAMPLES), 6, delta=POLICIES[name].delta or 0.75, rule=rule, seed=SEED
        )
        loader = DataLoader(dataset, batch_size=BATCH_SIZE, sampler=dataset.sampler)
        torch.manual_seed(dist.get_rank())  # ranks differ in their models: only merged scores agree
        model = nn.Linear(8, 4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        hashes, mid_epoch = [], {}
        for epoch in range(6):
            dataset.sampler.set_epoch(epoch)
            for step, (features, labels, _index) in enumerate(loader):
                loss = dataset.update(F.cross_entropy(model(features), labels, reduction="none"))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if epoch == 2 and step == 3:  # the iterations of the scores, mid-epoch
                    mid_epoch = {
                        "own": dataset.state_dict()["score_iterations"],
                        "all_ranks": dataset.state_dict(all_ranks=True)["score_iterations"],
                    }
            assert dataset.sampler.plan is not None
            hashes.append(plan_hash(dataset.sampler.plan))
        results[name] = {
            "hashes": hashes,
            "scores": dataset.scores.clone(),
            "saved": dataset.saved_fraction,
            "rule_state": dataset.state_dict()["rule"],
            "iterations": dataset.state_dict()["score_iterations"],
            "mid_epoch_iterations": mid_epoch,
        }
    return results


# ---------------------------------------------------------------------- stop and relaunch
#: Where the stop-and-relaunch runs checkpoint in epoch ``STOP_EPOCH``: batches trained there
#: (a negative count is from the epoch's end: -1 before its last batch, 0 after it), how the
#: state is saved ("own": each rank its own file, "all": one ``all_ranks=True`` state saved by
#: rank 0), and the gradient accumulation of the run (3 batches with 2 per step: inside a group).
STOP_EPOCH = 1
STOPS: dict[str, dict[str, Any]] = {
    "early": dict(batches=1, save="own", accumulation=1),
    "middle": dict(batches=5, save="all", accumulation=1),
    "last_batch": dict(batches=-1, save="own", accumulation=1),
    "epoch_end": dict(batches=0, save="all", accumulation=1),
    "in_accumulation": dict(batches=3, save="own", accumulation=2),
    "in_accumulation_all": dict(batches=5, save="all", accumulation=2),
}


def train_with_accumulation(
    run: Run,
    epochs: range,
    accumulation: int,
    *,
    stop: dict[str, Any] | None = None,
    path: Path | None = None,
    counters: dict[str, int] | None = None,
) -> Record:
    """The README's loop with ``accumulation`` batches per optimizer step (the epoch's last
    group steps too). With ``stop``, checkpoint there and return, as a stopped process would."""
    counters = counters or {"micro": 0, "steps": 0}
    trained: dict[int, list[int]] = {}
    for epoch in epochs:
        run.dataset.set_epoch(epoch)
        length = len(run.loader)
        done = run.dataset.sampler.position // BATCH_SIZE  # batches already trained (resumed)
        stop_at = None
        if stop is not None and epoch == STOP_EPOCH:
            stop_at = stop["batches"] if stop["batches"] > 0 else done + length + stop["batches"]
        for features, labels, index in run.loader:
            loss = F.cross_entropy(run.model(features), labels, reduction="none")
            (run.dataset.update(loss) / accumulation).backward()
            counters["micro"] += 1
            if counters["micro"] == accumulation or run.dataset.sampler.phase is Phase.COMPLETE:
                run.optimizer.step()
                run.optimizer.zero_grad()
                counters["micro"], counters["steps"] = 0, counters["steps"] + 1
            trained.setdefault(epoch, []).extend(index.tolist())
            done += 1
            if stop_at is not None and done == stop_at:
                assert path is not None
                save_stopped(run, path, stop["save"], counters)
                return {"trained": trained, "counters": dict(counters)}
    return {
        "trained": trained,
        "counters": dict(counters),
        "parameters": model_parameters(run),
        "scores": run.dataset.scores.clone(),
        "history": [s.as_dict(timing=False) for s in run.dataset.history],
    }


def save_stopped(run: Run, path: Path, save: str, counters: dict[str, int]) -> None:
    """Save model, optimizer, gradients (inside an accumulation group) and InfoBatch."""
    rank = dist.get_rank()
    grads = [None if p.grad is None else p.grad.clone() for p in run.model.parameters()]
    common = {
        "model": run.model.module.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "grads": grads,
        "counters": dict(counters),
    }
    if save == "own":
        torch.save(run.dataset.state_dict(), path.with_suffix(f".rank{rank}.pt"))
        if rank == 0:
            torch.save(common, path)
    else:
        state = run.dataset.state_dict(all_ranks=True)
        if rank == 0:
            torch.save({**common, "infobatch": state}, path)
    dist.barrier()


def relaunch(path: Path, save: str) -> tuple[Run, dict[str, int]]:
    """A fresh process's run restored from a stopped run's files."""
    saved = torch.load(path, weights_only=False)
    run = make_run("default")
    run.model.module.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    for parameter, grad in zip(run.model.parameters(), saved["grads"]):
        parameter.grad = grad
    if save == "own":
        state = torch.load(path.with_suffix(f".rank{dist.get_rank()}.pt"), weights_only=False)
    else:
        state = saved["infobatch"]
    run.dataset.load_state_dict(state)
    return run, dict(saved["counters"])


def job_uninterrupted(out_dir: Path, config: dict[str, Any]) -> Record:
    """The runs the stopped and relaunched ones are compared with, per accumulation."""
    return {
        accumulation: train_with_accumulation(make_run("default"), range(NUM_EPOCHS), accumulation)
        for accumulation in sorted({stop["accumulation"] for stop in STOPS.values()})
    }


def job_stop(out_dir: Path, config: dict[str, Any]) -> Record:
    """Train to each stop position, checkpoint there and stop (the process then exits)."""
    return {
        name: train_with_accumulation(
            make_run("default"),
            range(NUM_EPOCHS),
            stop["accumulation"],
            stop=stop,
            path=out_dir / f"{name}.pt",
        )
        for name, stop in STOPS.items()
    }


def job_relaunch(out_dir: Path, config: dict[str, Any]) -> Record:
    """In new processes: resume each stopped run from its files and train to the end."""
    results: Record = {}
    for name, stop in STOPS.items():
        run, counters = relaunch(out_dir / f"{name}.pt", stop["save"])
        results[name] = train_with_accumulation(
            run, range(run.dataset.epoch, NUM_EPOCHS), stop["accumulation"], counters=counters
        )
    return results


def job_wrong_checkpoints(out_dir: Path, config: dict[str, Any]) -> Record:
    """Two ways to resume wrongly; each must raise on the ranks, never train on silently."""
    rank = dist.get_rank()
    results: Record = {}
    # 1. Rank 0's own mid-epoch state loaded on every rank.
    run = make_run("default")
    stop = STOPS["middle"] | {"save": "own"}
    train_with_accumulation(run, range(NUM_EPOCHS), 1, stop=stop, path=out_dir / "own.pt")
    try:
        make_run("default").dataset.load_state_dict(
            torch.load(out_dir / "own.rank0.pt", weights_only=False)
        )
        results["rank_0_state"] = None
    except InfoBatchError as error:
        results["rank_0_state"] = str(error)
    # 2. Ranks resuming from different boundary checkpoints: rank 1's table is altered.
    run = make_run("default")
    train_epochs(run, range(2))
    state = run.dataset.state_dict()
    if rank == 1:  # the same samples below the mean, so the same batches: no hang in DDP
        state["scores"] = state["scores"] * 1.5
    resumed = make_run("default")
    resumed.dataset.load_state_dict(state)
    try:
        train_epochs(resumed, range(2, NUM_EPOCHS))
        results["different_tables"] = None
    except InfoBatchError as error:
        results["different_tables"] = str(error)
    return results


JOBS: dict[str, Callable[[Path, dict[str, Any]], Record]] = {
    "model_parallel": job_model_parallel,
    "train": job_train,
    "resume": job_resume,
    "disagree": job_disagree,
    "large_index": job_large_index,
    "checkpoint_source": job_checkpoint_source,
    "checkpoint_resume": job_checkpoint_resume,
    "evaluate_on_rank_0": job_evaluate_on_rank_0,
    "leave_early": job_leave_early,
    "seeds": job_seeds,
    "control": job_control,
    "policies": job_policies,
    "uninterrupted": job_uninterrupted,
    "stop": job_stop,
    "relaunch": job_relaunch,
    "wrong_checkpoints": job_wrong_checkpoints,
}


# ---------------------------------------------------------------------- launching
def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0 and ask)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(
    rank: int, world_size: int, port: int, jobs: list[str], out_dir: str, config: dict[str, Any]
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=90),  # a hang fails the test instead of stalling CI
    )
    try:
        results = {job: JOBS[job](Path(out_dir), config) for job in jobs}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def launch(
    world_size: int, jobs: list[str], out_dir: Path, config: dict[str, Any] | None = None
) -> list[Record]:
    """Run ``jobs`` on ``world_size`` spawned gloo ranks; return each rank's results."""
    mp.start_processes(
        _rank_main,
        args=(world_size, free_port(), jobs, str(out_dir), config or {}),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
    return [
        torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)
    ]
