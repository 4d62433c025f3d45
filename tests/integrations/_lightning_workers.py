"""Lightning runs for the integration tests (in-process or on gloo ranks).

A small MLP on Gaussian blobs (``_accelerate_workers.Blobs``) trained by a LightningModule that
builds InfoBatch in ``setup()``, wraps its loader with ``InfoBatchCallback.loader`` and uses the
callback's progress-driven schedule; a checkpoint after every optimizer step. Two loggers: a
``CSVLogger`` (rank 0 writes ``csv/version_0/metrics.csv``) and one that records, on every
rank, the metrics Lightning hands its loggers.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from infobatch import InfoBatch
from infobatch.integrations.lightning import InfoBatchCallback
from infobatch.integrations.progress import full_data_steps

from ._accelerate_workers import Blobs, plan_hash
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
    reload=1,
    steps="full_data",  # or "estimated": the schedule sized with estimated_stepping_batches
    # or "step_count" / "one_cycle_lr": a plain LambdaLR / OneCycleLR stepped per batch
    # (refused); "one_cycle": InfoBatchCallback.one_cycle
    scheduler="progress",
    trainer={},  # further Trainer arguments
    save_in_group_of=None,  # an epoch: also checkpoint after each of its batches that did not step
    resume_grads=False,  # restore this rank's accumulated gradients saved with the checkpoint
    keep_steps=False,  # InfoBatch(keep_steps=True) and DataLoader(batch_sampler=...)
)


def _module_class() -> Any:
    import lightning as L

    class Module(L.LightningModule):  # type: ignore[misc]
        def __init__(self, settings: dict[str, Any]) -> None:
            super().__init__()
            self.settings = settings
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
            self.record: Record = {
                "plans": {},
                "trained": defaultdict(list),
                "losses": defaultdict(dict),
                "scores": {},
                "steps": defaultdict(int),
                "learning_rates": [],
                "marks": [],  # where each checkpoint stands (see _common.pick_marks)
            }

        def setup(self, stage: str) -> None:
            s = self.settings
            self.infobatch = InfoBatch(
                Blobs(s["num_samples"]),
                s["epochs"],
                delta=s["delta"],
                seed=s["seed"],
                batch_size=s["batch"] if s["keep_steps"] else None,
                keep_steps=s["keep_steps"],
            )

        def train_dataloader(self) -> Any:
            loader = (
                DataLoader(self.infobatch, batch_sampler=self.infobatch.batch_sampler)
                if self.settings["keep_steps"]
                else DataLoader(
                    self.infobatch,
                    batch_size=self.settings["batch"],
                    sampler=self.infobatch.sampler,
                )
            )
            return InfoBatchCallback.find(self.trainer).loader(loader)

        def on_train_start(self) -> None:
            if self.settings["resume_grads"]:
                # Resumed inside an accumulation group: each rank's own accumulated gradients
                # (no gradient sync inside a group), which Lightning's checkpoint does not hold.
                path = f"{self.settings['resume_from']}.grads{self.trainer.global_rank}"
                for param, grad in zip(self.parameters(), torch.load(path)):
                    param.grad = grad

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            sampler = self.infobatch.sampler
            epoch = sampler.epoch
            if epoch not in self.record["plans"]:
                plan = sampler.plan
                assert plan is not None
                self.record["plans"][epoch] = {
                    "share": plan.share(sampler.rank, sampler.num_replicas).tolist(),
                    "hash": plan_hash(plan),
                    "kept": plan.num_kept,
                }
            losses = F.cross_entropy(self.net(batch["x"]), batch["y"], reduction="none")
            self.record["trained"][epoch].extend(batch["index"].tolist())
            for index, value in zip(batch["index"].tolist(), losses.detach().tolist()):
                self.record["losses"][epoch][index] = value
            return self.infobatch.update(losses, indices=batch["index"])

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            self.record["steps"][self.infobatch.epoch] += 1
            self.record["learning_rates"].append(optimizer.param_groups[0]["lr"])

        def on_train_epoch_end(self) -> None:
            self.record["scores"][self.infobatch.epoch] = self.infobatch.scores.clone()

        def configure_optimizers(self) -> Any:
            s = self.settings
            optimizer = torch.optim.SGD(self.parameters(), lr=s["lr"], momentum=0.9)
            if s["steps"] == "estimated":
                steps = int(self.trainer.estimated_stepping_batches)
            else:
                steps = full_data_steps(
                    s["num_samples"],
                    s["batch"],
                    s["epochs"],
                    world_size=self.trainer.world_size,
                    accumulation=self.trainer.accumulate_grad_batches,
                )
            self.record["schedule_steps"] = steps
            if s["scheduler"] == "step_count":
                scheduler: Any = torch.optim.lr_scheduler.LambdaLR(
                    optimizer, lambda step: max(0.0, 1 - step / steps)
                )
            elif s["scheduler"] == "one_cycle_lr":
                scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, s["lr"], steps)
            elif s["scheduler"] == "one_cycle":
                scheduler = InfoBatchCallback.find(self.trainer).one_cycle(
                    optimizer, s["lr"], steps
                )
            else:
                scheduler = InfoBatchCallback.find(self.trainer).scheduler(
                    optimizer, lambda pos: max(0.0, 1 - pos / steps), steps
                )
            return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    return Module


def _marks_class() -> Any:
    import lightning as L

    class Marks(L.Callback):  # type: ignore[misc]
        """Records where each checkpoint stands; checkpoints inside accumulation groups.

        ModelCheckpoint(every_n_train_steps=1) saves after every optimizer step only; inside
        a group of ``save_in_group_of``'s epoch this saves with ``trainer.save_checkpoint``
        (on every rank, as ModelCheckpoint does) and each rank's accumulated gradients beside
        it.
        """

        def __init__(self, settings: dict[str, Any], out_dir: Path) -> None:
            self.settings, self.out_dir = settings, out_dir
            self.last_step = 0

        def on_train_batch_end(
            self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            epoch, step = module.infobatch.epoch, trainer.global_step
            synced, self.last_step = step != self.last_step, step
            name = str(self.out_dir / "ckpt" / f"step={step}.ckpt")
            if not synced:
                if self.settings["save_in_group_of"] != epoch:
                    return
                name = str(self.out_dir / "group" / f"epoch={epoch}-batch={batch_idx}.ckpt")
                grads = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
                Path(name).parent.mkdir(exist_ok=True)
                torch.save(grads, f"{name}.grads{trainer.global_rank}")
                trainer.save_checkpoint(name)
            module.record["marks"].append(
                {
                    "name": name,
                    "epoch": epoch,
                    "done": len(module.record["trained"][epoch]),
                    "epoch_steps": module.record["steps"][epoch],
                    "global_step": step,
                    "synced": synced,
                }
            )

    return Marks


def _recording_logger() -> Any:
    from lightning.pytorch.loggers import Logger

    class RecordingLogger(Logger):  # type: ignore[misc]
        """Keeps every ``log_metrics`` call (on every rank, unlike the file loggers)."""

        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[int | None, dict[str, float]]] = []

        @property
        def name(self) -> str:
            return "recording"

        @property
        def version(self) -> int:
            return 0

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            self.calls.append((step, dict(metrics)))

    return RecordingLogger()


def run_lightning(out_dir: Path, config: dict[str, Any]) -> Record:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    settings = {**DEFAULTS, **config}
    # Not os.environ["WORLD_SIZE"]: Lightning's DDP teardown removes it after a fit.
    world = dist.get_world_size() if dist.is_initialized() else 1
    callbacks: list[Any] = [InfoBatchCallback()]
    if settings["save"]:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(out_dir / "ckpt"),
                filename="{step}",
                every_n_train_steps=1,
                save_top_k=-1,
            )
        )
        callbacks.append(_marks_class()(settings, out_dir))
    recording = _recording_logger()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        max_epochs=settings["epochs"],
        accumulate_grad_batches=settings["accumulation"],
        reload_dataloaders_every_n_epochs=settings["reload"],
        callbacks=callbacks,
        logger=[recording, CSVLogger(str(out_dir), name="csv", version=0)],
        enable_checkpointing=settings["save"],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **settings["trainer"],
    )
    module = _module_class()(settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, ckpt_path=settings["resume_from"])
    record = module.record
    optimizer = trainer.optimizers[0]
    return {
        **record,
        "trained": dict(record["trained"]),
        "losses": dict(record["losses"]),
        "steps": dict(record["steps"]),
        "history": [s.as_dict(timing=False) for s in module.infobatch.history],
        "saved_fraction": module.infobatch.saved_fraction,
        "final_lr": optimizer.param_groups[0]["lr"],
        "final_momentum": optimizer.param_groups[0]["momentum"],
        "final_scores": module.infobatch.scores.clone(),
        "params": {k: v.detach().clone() for k, v in module.net.state_dict().items()},
        "global_step": trainer.global_step,
        "world": world,
        "warnings": [str(w.message) for w in caught],
        "logged": [
            {k: v for k, v in metrics.items() if k.startswith("infobatch/") or k == "epoch"}
            for _step, metrics in recording.calls
            if any(k.startswith("infobatch/") for k in metrics)
        ],
        "csv": str(out_dir / "csv" / "version_0" / "metrics.csv"),
    }


def resume_points(steps: dict[int, int]) -> dict[str, int]:
    boundary = steps[0] + steps[1]
    return {"boundary": boundary, "middle": boundary + math.ceil(steps[2] / 2)}


def run_lightning_and_resume(out_dir: Path, config: dict[str, Any]) -> Record:
    full = run_lightning(out_dir / "full", {**config, "save": True})
    points = resume_points(full["steps"])
    resumed = {
        name: run_lightning(
            out_dir / name,
            {**config, "resume_from": str(out_dir / "full" / "ckpt" / f"step={step}.ckpt")},
        )
        for name, step in points.items()
    }
    return {"full": full, "resumed": resumed, "points": points}
