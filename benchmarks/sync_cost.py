"""Per-epoch cross-rank synchronisation cost of InfoBatch, next to an all-reduce of N floats.

Under ``torch.distributed`` InfoBatch synchronises once per epoch: at the epoch's last
``update()`` the score table is merged by :class:`infobatch.merge.ScoreMerge` (each rank's
scores recorded this epoch live in an ``N``-float local part, ``-inf`` elsewhere, followed by
the plan digest; one ``all_reduce(MAX)`` of it, in place; the digests are compared and the
result is folded into the table). For each dataset size ``N`` this
script times, in the same run and interleaved repetition by repetition:

* ``merge``: that whole epoch-end merge, each rank having recorded its half of the samples,
  including the hash of the table its digest holds (made when the epoch is planned);
* ``all_reduce``: a plain ``all_reduce(SUM)`` of ``N`` float32 (the floor for moving the table);
* ``per-step gather``: what a per-step design pays instead (the official code all-gathers each
  batch's indices and losses every step): one ``all_gather`` of a batch's int64 indices and
  float32 losses, timed over ``--gather-steps`` steps and multiplied by the steps of an epoch
  (``N / (batch * world)``), so an extrapolation, said as such.

Each time is the slowest rank's (max over ranks), after a barrier; the table shows medians.

Usage (spawns ``--world-size`` local processes; gloo on CPU, NCCL when each rank has a GPU)::

    python benchmarks/sync_cost.py                          # N = 1e6 and 1e7, world size 2
    python benchmarks/sync_cost.py --sizes 1000000 --repeats 3
    torchrun --nproc_per_node=2 benchmarks/sync_cost.py     # or under torchrun
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from infobatch import ScoreTable, TorchCollectives
from infobatch.hashing import hash_int64, sum_bits
from infobatch.merge import DIGEST_FIELDS, ScoreMerge

DEFAULT_SIZES = (1_000_000, 10_000_000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--world-size", type=int, default=2, help="processes to spawn")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256, help="per-rank batch (per-step gather)")
    parser.add_argument("--gather-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "sync_cost.json"
    )
    return parser.parse_args(argv)


def slowest_rank_seconds(call: Callable[[], Any], device: torch.device) -> float:
    """Run ``call`` on every rank after a barrier; the longest time any rank took."""
    dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed)


def measure_size(
    num_samples: int, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Median merge, all-reduce and per-step gather times for ``num_samples`` samples."""
    rank, world = dist.get_rank(), dist.get_world_size()
    collectives = TorchCollectives()
    table = ScoreTable(num_samples, track_updates=True, spare=ScoreMerge.SPARE)
    table.to(device)
    score_merge = ScoreMerge(table, collectives)
    kept_order = torch.randperm(num_samples // 2, generator=torch.Generator().manual_seed(0))
    kept_order = kept_order.to(device)
    mine = torch.arange(rank, num_samples, world, device=device)  # this rank's trained samples
    losses = torch.rand(mine.numel(), generator=torch.Generator().manual_seed(rank)).to(device)
    floats = torch.ones(num_samples, dtype=torch.float32, device=device)
    batch_indices = torch.arange(args.batch, dtype=torch.int64, device=device)
    batch_losses = torch.rand(args.batch, device=device)
    gathered_indices = [torch.empty_like(batch_indices) for _ in range(world)]
    gathered_losses = [torch.empty_like(batch_losses) for _ in range(world)]

    def merge() -> None:  # started by the epoch's last update, finished by the next planning
        # the plan digest the merge checks: its hashes of the table are made at planning
        digest = torch.zeros(len(DIGEST_FIELDS), dtype=torch.int64, device=device)
        digest[3] = sum_bits(table.values)
        digest[4] = hash_int64(kept_order)  # the plan's order: about half the table here
        score_merge.planned(digest)
        score_merge.start(epoch=0)
        score_merge.finish()

    def all_reduce() -> None:
        dist.all_reduce(floats)

    def per_step_gathers() -> None:
        for _ in range(args.gather_steps):
            dist.all_gather(gathered_indices, batch_indices)
            dist.all_gather(gathered_losses, batch_losses)

    times: dict[str, list[float]] = {"merge": [], "all_reduce": [], "gather_steps": []}
    for repeat in range(args.repeats + 1):  # the first repetition warms up
        table.record(mine, losses)  # the epoch's updates (untimed)
        merge_s = slowest_rank_seconds(merge, device)
        reduce_s = slowest_rank_seconds(all_reduce, device)
        gather_s = slowest_rank_seconds(per_step_gathers, device)
        if repeat:
            times["merge"].append(merge_s)
            times["all_reduce"].append(reduce_s)
            times["gather_steps"].append(gather_s)
    merged_ok = bool((table.values[mine] == losses).all())  # own scores survive the merge
    steps = num_samples / (args.batch * world)
    merge_ms = 1e3 * statistics.median(times["merge"])
    reduce_ms = 1e3 * statistics.median(times["all_reduce"])
    step_ms = 1e3 * statistics.median(times["gather_steps"]) / args.gather_steps
    return {
        "num_samples": num_samples,
        "merge_ms": merge_ms,
        "all_reduce_ms": reduce_ms,
        "merge_over_all_reduce": merge_ms / reduce_ms,
        "gather_per_step_ms": step_ms,
        "steps_per_epoch": steps,
        "per_step_gather_epoch_ms": step_ms * steps,
        "table_mb": 4 * num_samples / 2**20,
        "merge_times_s": times["merge"],
        "all_reduce_times_s": times["all_reduce"],
        "own_scores_kept": merged_ok,
    }


def markdown(results: dict[str, Any]) -> str:
    setup = results["setup"]
    lines = [
        f"world size {setup['world_size']}, backend {setup['backend']}, device "
        f"{setup['device']}, {setup['threads']} thread(s) per rank, torch {setup['torch']}, "
        f"{setup['cpus']} CPUs; medians of {setup['repeats']} repetitions, slowest rank",
        "",
        "| N | score table | InfoBatch merge, once per epoch | all_reduce of N float32 | "
        "merge / all_reduce | per-step gather (extrapolated to one epoch) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["sizes"]:
        lines.append(
            f"| {row['num_samples']:,} | {row['table_mb']:.1f} MiB | {row['merge_ms']:.1f} ms | "
            f"{row['all_reduce_ms']:.1f} ms | {row['merge_over_all_reduce']:.2f}x | "
            f"{row['per_step_gather_epoch_ms']:.0f} ms ({row['steps_per_epoch']:.0f} steps x "
            f"{row['gather_per_step_ms']:.3f} ms) |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    """Body of every rank (the process group is initialised)."""
    torch.set_num_threads(args.threads)
    device = TorchCollectives().device  # CUDA for NCCL, CPU for gloo
    rows = [measure_size(n, args, device) for n in args.sizes]
    if dist.get_rank() != 0:
        return
    results = {
        "setup": {
            "world_size": dist.get_world_size(),
            "backend": dist.get_backend(),
            "device": str(device),
            "threads": args.threads,
            "repeats": args.repeats,
            "batch": args.batch,
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.platform(),
        },
        "sizes": rows,
    }
    print(markdown(results), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}", flush=True)


def _spawned_rank(rank: int, args: argparse.Namespace, port: int) -> None:
    use_cuda = torch.cuda.device_count() >= args.world_size
    if use_cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if use_cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=args.world_size,
        timeout=timedelta(minutes=5),
    )
    try:
        run(args)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "RANK" in os.environ:  # under torchrun
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        try:
            run(args)
        finally:
            dist.destroy_process_group()
        return
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    mp.start_processes(
        _spawned_rank, args=(args, port), nprocs=args.world_size, start_method="spawn"
    )


if __name__ == "__main__":
    main()
