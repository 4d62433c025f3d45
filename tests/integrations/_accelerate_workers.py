"""Plain Accelerate training loops for the integration tests (in-process or on gloo ranks).

A small MLP on Gaussian blobs, trained with ``prepare_loader``, ``accelerator.accumulate``
and a linear schedule driven by ``SamplerProgress``; ``save_state`` after every optimizer
step. ``implicit=True`` calls ``update(losses)`` without ``indices=`` (matched by plan
position). The record holds each epoch's plan (this rank's share), the samples trained and
their losses, the gradient left at each epoch's end, the learning rate of each step and the
final weights.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from infobatch import EpochPlan, InfoBatch
from infobatch.integrations.accelerate import AllRanksState, prepare_loader
from infobatch.integrations.progress import ProgressLR, SamplerProgress

from ._common import Record

DEFAULTS: dict[str, Any] = dict(
    num_samples=50,
    epochs=4,
    delta=0.75,
    batch=4,
    accumulation=3,
    lr=0.05,
    seed=5,
    save=False,
    resume_from=None,
    plain_prepare=False,  # negative control: accelerator.prepare(loader) shards again
    implicit=False,  # update(losses) without indices=
    save_batches_of=None,  # an epoch: save_state after each of its batches (and the gradients)
    resume_grads=False,  # load this rank's accumulated gradients saved with the state
    keep_steps=False,  # InfoBatch(keep_steps=True) and DataLoader(batch_sampler=...)
)


class Blobs(Dataset[dict[str, Any]]):
    def __init__(self, size: int) -> None:
        generator = torch.Generator().manual_seed(3)
        centres = 2 * torch.randn(3, 6, generator=generator)
        self.labels = torch.randint(3, (size,), generator=generator)
        self.features = centres[self.labels] + torch.randn(size, 6, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"x": self.features[index], "y": self.labels[index], "index": index}


def plan_hash(plan: EpochPlan) -> str:
    digest = hashlib.sha256()
    digest.update(plan.order.cpu().numpy().tobytes())
    digest.update(plan.status.cpu().numpy().tobytes())
    return digest.hexdigest()


def run_loop(out_dir: Path, config: dict[str, Any]) -> Record:
    from accelerate import Accelerator

    settings = {**DEFAULTS, **config}
    accumulation = settings["accumulation"]
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    epochs = settings["epochs"]
    keep_steps = settings["keep_steps"]
    dataset: InfoBatch[Any] = InfoBatch(
        Blobs(settings["num_samples"]),
        epochs,
        delta=settings["delta"],
        seed=settings["seed"],
        batch_size=settings["batch"] if keep_steps else None,
        keep_steps=keep_steps,
    )
    raw = (
        DataLoader(dataset, batch_sampler=dataset.batch_sampler)
        if keep_steps
        else DataLoader(dataset, batch_size=settings["batch"], sampler=dataset.sampler)
    )
    loader = (
        accelerator.prepare(raw) if settings["plain_prepare"] else prepare_loader(accelerator, raw)
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=0.9)
    share = math.ceil(settings["num_samples"] / accelerator.num_processes)
    total = epochs * math.ceil(math.ceil(share / settings["batch"]) / accumulation)  # full data
    scheduler = ProgressLR(
        optimizer, lambda pos: max(0.0, 1 - pos / total), total, SamplerProgress(dataset)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.register_for_checkpointing(AllRanksState(dataset))
    rank = accelerator.process_index
    if settings["resume_from"]:
        accelerator.load_state(settings["resume_from"])
        if settings["resume_grads"]:
            # A checkpoint inside an accumulation group: the loop also saved what each rank
            # had accumulated (each rank's own: no gradient sync inside a group).
            grads = torch.load(Path(settings["resume_from"]) / f"grads_rank{rank}.pt")
            for param, grad in zip(model.parameters(), grads):
                param.grad = grad

    record: Record = {
        "plans": {},
        "trained": defaultdict(list),
        "losses": defaultdict(dict),
        "scores": {},
        "leftover": {},
        "steps": defaultdict(int),
        "learning_rates": [],
        "checkpoints": {},
        "marks": [],
    }
    global_step = int(settings.get("start_step", 0))
    for epoch in range(dataset.epoch, epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            if epoch not in record["plans"]:
                plan = dataset.sampler.plan
                assert plan is not None
                record["plans"][epoch] = {
                    "share": plan.share(
                        dataset.sampler.rank, dataset.sampler.num_replicas
                    ).tolist(),
                    "hash": plan_hash(plan),
                    "kept": plan.num_kept,
                }
            with accelerator.accumulate(model):
                losses = F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")
                if settings["implicit"]:
                    loss = dataset.update(losses)
                else:
                    loss = dataset.update(losses, indices=batch["index"])
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    record["learning_rates"].append(optimizer.param_groups[0]["lr"])
                    record["steps"][epoch] += 1
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            record["trained"][epoch].extend(batch["index"].tolist())
            for index, value in zip(batch["index"].tolist(), losses.detach().tolist()):
                record["losses"][epoch][index] = value
            synced = accelerator.sync_gradients
            if synced:
                global_step += 1
                if settings["save"]:
                    path = out_dir / f"step-{global_step}"
                    accelerator.save_state(str(path))
                    record["checkpoints"][global_step] = str(path)
            if settings["save_batches_of"] == epoch:
                path = out_dir / f"batch-{epoch}-{len(record['trained'][epoch])}"
                accelerator.save_state(str(path))
                grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
                torch.save(grads, path / f"grads_rank{rank}.pt")
                record["marks"].append(
                    {
                        "name": str(path),
                        "epoch": epoch,
                        "done": len(record["trained"][epoch]),
                        "epoch_steps": record["steps"][epoch],
                        "global_step": global_step,
                        "synced": synced,
                    }
                )
        grads = [p.grad.abs().max() for p in model.parameters() if p.grad is not None]
        record["leftover"][epoch] = float(torch.stack(grads).max()) if grads else 0.0
        record["scores"][epoch] = dataset.scores.clone()
    record.update(
        trained=dict(record["trained"]),
        losses=dict(record["losses"]),
        steps=dict(record["steps"]),
        history=[s.as_dict(timing=False) for s in dataset.history],
        final_lr=optimizer.param_groups[0]["lr"],
        final_scores=dataset.scores.clone(),
        params={
            k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()
        },
        world=accelerator.num_processes,
        global_step=global_step,
    )
    return record


def resume_points(steps: dict[int, int]) -> dict[str, int]:
    boundary = steps[0] + steps[1]
    return {"boundary": boundary, "middle": boundary + steps[2] // 2}


def run_loop_and_resume(out_dir: Path, config: dict[str, Any]) -> Record:
    """Uninterrupted run saving every step; runs resumed at epoch 1's end and mid-epoch 2.

    Also: the same run with implicit updates (no ``indices=``), uninterrupted and resumed
    mid-epoch, and the negative control (``accelerator.prepare(loader)``).
    """
    full = run_loop(out_dir / "full", {**config, "save": True})
    points = resume_points(full["steps"])
    resumed = {
        name: run_loop(
            out_dir / name,
            {**config, "resume_from": full["checkpoints"][step], "start_step": step},
        )
        for name, step in points.items()
    }
    implicit = {**config, "implicit": True}
    implicit_full = run_loop(out_dir / "implicit", {**implicit, "save": True})
    step = points["middle"]
    implicit_resumed = run_loop(
        out_dir / "implicit-middle",
        {**implicit, "resume_from": implicit_full["checkpoints"][step], "start_step": step},
    )
    control = run_loop(out_dir / "control", {**config, "plain_prepare": True, "epochs": 1})
    return {
        "full": full,
        "resumed": resumed,
        "points": points,
        "implicit": {"full": implicit_full, "middle": implicit_resumed},
        "control": control,
    }


def leftover_tensor(record: Record) -> Tensor:
    return torch.tensor(list(record["leftover"].values()))
