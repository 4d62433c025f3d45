"""InfoBatch's overhead per sample pass in the plain three-line loop (issue 15, item 1).

Runs, interleaved in one process (A, B, A, B, ...), one epoch of the same loop

- ``plain``: a shuffled ``DataLoader`` and ``loss.mean()``;
- ``infobatch``: the README's three lines with ``prune_ratio=0`` (every sample, weight 1, so
  both make the same sample passes and optimizer steps),

on the same model and data, and prints the median over pairs of the time ratio per sample
pass (wall-clock and process CPU time) and where InfoBatch's time goes: planning the epoch
(``len(loader)``), and the ``update()`` calls. One JSON line of results at the end::

    python benchmarks/overhead.py --mnist-dir ../shared/data/mnist --pairs 7 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from infobatch import InfoBatch, ShortScheduleWarning
from infobatch.experiment import build_model, load_mnist

REPO_ROOT = Path(__file__).resolve().parent.parent


def one_epoch(mode: str, data: TensorDataset, batch_size: int, seed: int) -> dict[str, float]:
    """Train one epoch of ``mode``; its wall-clock and CPU seconds and InfoBatch's parts."""
    model = build_model("mnist", seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss(reduction="none")
    generator = torch.Generator().manual_seed(seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    planning = in_update = 0.0
    dataset: InfoBatch[tuple[Tensor, ...]] | None = None
    if mode == "infobatch":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShortScheduleWarning)
            dataset = InfoBatch(data, 1, prune_ratio=0.0, seed=seed)
        loader: DataLoader[tuple[Tensor, ...]] = DataLoader(
            dataset, batch_size=batch_size, sampler=dataset.sampler, generator=generator
        )
        before = time.perf_counter()
        len(loader)  # plans the epoch
        planning = time.perf_counter() - before
    else:
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)
    for x, y in loader:
        per_sample = criterion(model(x), y)
        if dataset is not None:
            before = time.perf_counter()
            loss = dataset.update(per_sample)
            in_update += time.perf_counter() - before
        else:
            loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "planning_seconds": planning,
        "update_seconds": in_update,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mnist-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--num-train", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=7, help="interleaved (plain, infobatch)")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure the pairs and print the medians and one JSON line."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = load_mnist(args.mnist_dir).subset(num_train=args.num_train)
    data = TensorDataset(splits.x_train, splits.y_train)
    one_epoch("plain", data, args.batch_size, 0)  # warm-up: allocator, kernels
    pairs: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        order = ("plain", "infobatch") if pair % 2 == 0 else ("infobatch", "plain")
        runs = {mode: one_epoch(mode, data, args.batch_size, pair) for mode in order}
        pairs.append(runs)
        print(
            f"pair {pair}: plain {runs['plain']['seconds']:.2f}s, "
            f"infobatch {runs['infobatch']['seconds']:.2f}s "
            f"(planning {1e3 * runs['infobatch']['planning_seconds']:.1f} ms, "
            f"update {1e3 * runs['infobatch']['update_seconds']:.0f} ms)",
            flush=True,
        )
    wall = [p["infobatch"]["seconds"] / p["plain"]["seconds"] for p in pairs]
    cpu = [p["infobatch"]["cpu_seconds"] / p["plain"]["cpu_seconds"] for p in pairs]
    batches = -(-args.num_train // args.batch_size)
    result = {
        "num_train": args.num_train,
        "batch_size": args.batch_size,
        "pairs": args.pairs,
        "threads": args.threads,
        "torch": torch.__version__,
        "wall_ratio_median": statistics.median(wall),
        "wall_ratio_min_max": [min(wall), max(wall)],
        "cpu_ratio_median": statistics.median(cpu),
        "cpu_ratio_min_max": [min(cpu), max(cpu)],
        "planning_ms_median": 1e3
        * statistics.median(p["infobatch"]["planning_seconds"] for p in pairs),
        "update_ms_per_batch_median": 1e3
        * statistics.median(p["infobatch"]["update_seconds"] for p in pairs)
        / batches,
        "plain_ms_per_batch_median": 1e3
        * statistics.median(p["plain"]["seconds"] for p in pairs)
        / batches,
    }
    print(
        f"time per sample pass, InfoBatch (prune_ratio=0) / plain loop: wall "
        f"{result['wall_ratio_median']:.3f}x (range {min(wall):.3f}-{max(wall):.3f}), CPU "
        f"{result['cpu_ratio_median']:.3f}x; update() {result['update_ms_per_batch_median']:.3f} "
        f"ms a batch of {result['plain_ms_per_batch_median']:.2f} ms; planning "
        f"{result['planning_ms_median']:.1f} ms an epoch"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
