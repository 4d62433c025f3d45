"""Cost of InfoBatch's epoch planning and per-step update, next to baselines timed in the same run.

Measures, for each dataset size ``N``:

* time: the epoch transition of :class:`infobatch.InfoBatchSampler` (``set_epoch(e)``: mean,
  coin flips, shuffle of the kept samples, int8 status, this rank's share and its CPU copy) and
  the bare :func:`infobatch.build_plan`, each next to ``torch.randperm(N)`` (int64, the shuffle
  that ``RandomSampler`` / ``DistributedSampler`` pay every epoch), interleaved repetition by
  repetition; medians and their ratio;
* memory: the peak of extra process memory during each of those calls, and the state the
  sampler keeps between epochs, both in bytes per sample;
* steady state: through the public API only, the peak memory of the next epoch's planning
  (``set_epoch(1)``) after a full epoch of ``update()`` calls, above what the process held before
  the sampler was built: the score table, whatever the sampler still holds of the previous plan
  and every temporary count, i.e. everything the library holds at its busiest moment;

and the cost of one ``update()`` call on a batch of 256 losses next to a plain ``loss.mean()``.

Every sample is scored with a positive, right-skewed loss (exponential, mean 1), so about 63% of
the samples are below the mean and, with ``prune_ratio=0.5``, about 68% are kept.

Peak memory: CPU tensors are invisible to ``tracemalloc``, so the script reads the kernel's
accounting, after all timing, in a fresh process per size. For each call it returns freed heap
memory to the system (``malloc_trim(0)``), resets the peak resident set size (writes ``5`` to
``/proc/self/clear_refs``) and reads ``VmRSS``; after the call it reads ``VmHWM``. The difference
is the most memory the call held at once, page-exact, with no sampling gaps. In that process
glibc's mmap threshold is fixed at 128 KiB (``mallopt``), so every tensor is mapped on allocation
and unmapped on free: the figure is the algorithm's own peak, not glibc's heap fragmentation
(which only shows below ~32 MiB per tensor, where glibc's default puts tensors on the heap).
Timing runs under the default allocator.

Usage::

    python benchmarks/plan_cost.py                         # N = 1281167, 1e7, 1e8
    python benchmarks/plan_cost.py --threads 1 2           # both thread settings in one run
    python benchmarks/plan_cost.py --sizes 1000000 --repeats 3 --output /tmp/quick.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import multiprocessing
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from infobatch import InfoBatchSampler, SoftPruning, build_plan, epoch_generator

DEFAULT_SIZES = (1_281_167, 10_000_000, 100_000_000)
LARGE = 50_000_000  # sizes from here on use --repeats-large
BATCH = 256
PRUNE_RATIO = 0.5
TARGET_RATIO = 2.0  # planning time / randperm time
TARGET_BYTES = 16.0  # planning peak, bytes per sample (steady state: score table included)
STEADY_BATCH = 1 << 16  # batch of the epoch of updates before the steady-state measurement
WARM_UP = 1000  # samples of the sampler run before the steady-state baseline
CALLS = ("randperm", "set_epoch", "build_plan")

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


# ---------------------------------------------------------------------------- memory
def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _load_libc()


def _proc_bytes(path: Path, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", path.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{field} not found in {path}")
    return int(match.group(1)) * 1024


def peak_tracking_available() -> bool:
    """Whether this process can reset and read its peak resident set size (Linux)."""
    try:
        _CLEAR_REFS.write_text("5")
        _proc_bytes(_STATUS, "VmHWM")
    except (OSError, RuntimeError):
        return False
    return True


def map_every_tensor() -> bool:
    """Fix glibc's mmap threshold at 128 KiB: large blocks are mapped, and unmapped on free."""
    m_mmap_threshold = -3
    return _LIBC is not None and bool(_LIBC.mallopt(m_mmap_threshold, 128 * 1024))


def peak_bytes_of(call: Callable[[], Any]) -> int:
    """Most resident memory ``call`` held at once, above what the process held before it."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    _CLEAR_REFS.write_text("5")
    before = _proc_bytes(_STATUS, "VmRSS")
    result = call()
    peak = _proc_bytes(_STATUS, "VmHWM") - before
    del result
    return peak


def seconds_of(call: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds (all threads) of one call; its result is freed."""
    gc.collect()
    cpu_start, start = time.process_time(), time.perf_counter()
    result = call()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    del result
    return seconds, cpu_seconds


# ---------------------------------------------------------------------------- planning
def realistic_losses(num_samples: int, seed: int) -> torch.Tensor:
    """Positive, right-skewed per-sample losses (exponential, mean 1): ~63% below the mean."""
    generator = torch.Generator().manual_seed(seed)
    return torch.empty(num_samples, dtype=torch.float32).exponential_(1.0, generator=generator)


def scored_sampler(num_samples: int, num_epochs: int, seed: int) -> InfoBatchSampler:
    """A sampler whose every sample is scored, with epoch 1 planned (a plan to replace)."""
    sampler = InfoBatchSampler(num_samples, num_epochs=num_epochs, seed=seed)
    sampler.scores.copy_(realistic_losses(num_samples, seed))
    sampler.set_epoch(1)
    return sampler


def planning_calls(sampler: InfoBatchSampler, seed: int) -> dict[str, Callable[[int], Any]]:
    """The measured calls, each taking the epoch to plan."""
    rule = SoftPruning(PRUNE_RATIO)
    scores = sampler.scores
    num_samples = sampler.num_samples
    return {
        "randperm": lambda epoch: torch.randperm(num_samples),
        "set_epoch": lambda epoch: sampler.set_epoch(epoch),
        "build_plan": lambda epoch: build_plan(epoch, scores, rule, epoch_generator(seed, epoch)),
    }


def time_planning(num_samples: int, repeats: int, seed: int) -> dict[str, Any]:
    """Seconds of randperm, set_epoch and build_plan, interleaved repetition by repetition."""
    sampler = scored_sampler(num_samples, num_epochs=10 * (repeats + 2), seed=seed)
    calls = planning_calls(sampler, seed)
    seconds: dict[str, list[float]] = {name: [] for name in CALLS}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in CALLS}
    for repeat in range(repeats):
        for name in CALLS:
            wall, cpu = seconds_of(partial(calls[name], 2 + repeat))
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
    plan = sampler.plan
    assert plan is not None
    row: dict[str, Any] = {
        "num_samples": num_samples,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "well_learned_fraction": plan.num_well_learned / num_samples,
        "kept_fraction": plan.num_kept / num_samples,
    }
    base = statistics.median(seconds["randperm"])
    cpu_base = statistics.median(cpu_seconds["randperm"])
    for name in CALLS:
        median = statistics.median(seconds[name])
        cpu_median = statistics.median(cpu_seconds[name])
        row[name] = {
            "seconds": seconds[name],
            "median_s": median,
            "ratio": median / base,
            "cpu_seconds": cpu_seconds[name],
            "cpu_median_s": cpu_median,
            "cpu_ratio": cpu_median / cpu_base,
        }
    return row


def state_bytes(sampler: InfoBatchSampler) -> dict[str, int]:
    """Bytes of the tensors the sampler keeps between epochs (shared storage counted once)."""
    plan = sampler.plan
    assert plan is not None
    parts = {
        "scores": sampler.scores,
        "order": plan.order,
        "status": plan.status,
        "share": sampler._share,  # this rank's part of order: order itself on one rank
        "share_cpu": sampler._share_cpu,  # its CPU copy: the same tensor on CPU
    }
    seen: set[int] = set()
    sizes: dict[str, int] = {}
    for name, tensor in parts.items():
        storage = tensor.untyped_storage()
        sizes[name] = 0 if storage.data_ptr() in seen else storage.nbytes()
        seen.add(storage.data_ptr())
    return sizes


def measure_memory(num_samples: int, seed: int, threads: int) -> dict[str, Any]:
    """Peak extra bytes/sample of each planning call, and the sampler's state bytes/sample.

    Runs in a fresh process, so the allocator's state left by earlier measurements (heap
    fragmentation, freed blocks kept resident) cannot blur the figures.
    """
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        row: dict[str, Any] = pool.apply(_measure_memory_here, (num_samples, seed, threads))
    return row


def _measure_memory_here(num_samples: int, seed: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    if not map_every_tensor():
        raise RuntimeError("could not fix glibc's mmap threshold; peak memory would be blurred")
    sampler = scored_sampler(num_samples, num_epochs=10, seed=seed)
    calls = planning_calls(sampler, seed)
    row: dict[str, Any] = {"num_samples": num_samples}
    for name in CALLS:
        peak = peak_bytes_of(partial(calls[name], 2))
        row[f"{name}_peak_bytes_per_sample"] = peak / num_samples
    state = state_bytes(sampler)
    row["state_bytes_per_sample"] = {k: v / num_samples for k, v in state.items()}
    row["state_bytes_per_sample_total"] = sum(state.values()) / num_samples
    return row


def measure_steady_state(num_samples: int, seed: int, threads: int) -> dict[str, Any]:
    """Peak bytes/sample of ``set_epoch(1)`` after an epoch of updates, score table included.

    Runs in a fresh process (see :func:`measure_memory`).
    """
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        row: dict[str, Any] = pool.apply(_steady_state_here, (num_samples, seed, threads))
    return row


def _train_one_epoch(sampler: InfoBatchSampler, generator: torch.Generator) -> None:
    """Draw every index of the epoch and update() each batch with fresh exponential losses."""
    loader = iter(sampler)
    while batch := sum(1 for _ in islice(loader, STEADY_BATCH)):
        sampler.update(torch.empty(batch).exponential_(1.0, generator=generator))


def _steady_state_here(num_samples: int, seed: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    if not map_every_tensor():
        raise RuntimeError("could not fix glibc's mmap threshold; peak memory would be blurred")
    generator = torch.Generator().manual_seed(seed)
    warm_up = InfoBatchSampler(WARM_UP, num_epochs=10, seed=seed)  # one-time initialisation
    _train_one_epoch(warm_up, generator)
    warm_up.set_epoch(1)
    del warm_up
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    baseline = _proc_bytes(_STATUS, "VmRSS")

    sampler = InfoBatchSampler(num_samples, num_epochs=10, seed=seed)
    _train_one_epoch(sampler, generator)
    previous = sampler.plan
    assert previous is not None and sampler.scores.isfinite().all()
    previous_bytes = previous.order.untyped_storage().nbytes()
    previous_bytes += previous.status.untyped_storage().nbytes()
    del previous
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    _CLEAR_REFS.write_text("5")
    sampler.set_epoch(1)
    peak = _proc_bytes(_STATUS, "VmHWM") - baseline
    plan = sampler.plan
    assert plan is not None and plan.epoch == 1
    return {
        "num_samples": num_samples,
        "batch_size": STEADY_BATCH,
        "steady_state_peak_bytes_per_sample": peak / num_samples,
        "held_after_bytes_per_sample": (_proc_bytes(_STATUS, "VmRSS") - baseline) / num_samples,
        "previous_plan_bytes_per_sample": previous_bytes / num_samples,
        "kept_fraction": plan.num_kept / num_samples,
    }


# ---------------------------------------------------------------------------- update
def loaded_sampler(num_samples: int, steps: int, seed: int) -> InfoBatchSampler:
    """A sampler in a pruned epoch whose loader has already drawn ``steps`` batches."""
    sampler = scored_sampler(num_samples, num_epochs=10, seed=seed)
    if len(sampler) <= steps * BATCH:
        raise ValueError(f"{num_samples} samples are too few for {steps} update steps")
    for _ in islice(iter(sampler), steps * BATCH):
        pass
    return sampler


def time_update(num_samples: int, steps: int, repeats: int, seed: int) -> list[dict[str, Any]]:
    """Microseconds per call of update(), update(indices=) and loss.mean(), per loss dtype.

    The losses require grad, as a training loss does, so autograd's recording is included.
    """
    rows = []
    generator = torch.Generator().manual_seed(seed)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        pool = [
            torch.rand(BATCH, generator=generator).to(dtype).requires_grad_() for _ in range(16)
        ]
        per_call: dict[str, list[float]] = {"mean": [], "update": [], "update_indices": []}
        for _ in range(repeats):
            start = time.perf_counter()
            for step in range(steps):
                pool[step % 16].mean()
            per_call["mean"].append((time.perf_counter() - start) / steps)

            sampler = loaded_sampler(num_samples, steps, seed)
            start = time.perf_counter()
            for step in range(steps):
                sampler.update(pool[step % 16])
            per_call["update"].append((time.perf_counter() - start) / steps)

            sampler = loaded_sampler(num_samples, steps, seed)
            share = sampler._share_cpu
            batches = [share[s * BATCH : (s + 1) * BATCH] for s in range(steps)]
            start = time.perf_counter()
            for step in range(steps):
                sampler.update(pool[step % 16], indices=batches[step])
            per_call["update_indices"].append((time.perf_counter() - start) / steps)
        row: dict[str, Any] = {
            "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(),
            "steps": steps,
        }
        for name, values in per_call.items():
            row[f"{name}_us"] = statistics.median(values) * 1e6
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    """Versions, cores, memory and load of the machine the figures come from."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_default_threads": torch.get_num_threads(),
        "peak_memory_tracking": peak_tracking_available(),
    }
    with contextlib.suppress(OSError, RuntimeError):
        info["memory_gib"] = round(_proc_bytes(Path("/proc/meminfo"), "MemTotal") / 2**30, 1)
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def markdown(results: dict[str, Any]) -> str:
    """The tables of the README."""
    memory = {row["num_samples"]: row for row in results["memory"]}
    lines = [
        "| N | threads | randperm(N) s | set_epoch s | ratio | build_plan s | ratio | "
        "ratio in CPU time: set_epoch, build_plan | kept |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: |",
    ]
    for row in results["planning"]:
        rp, se, bp = (row[name] for name in CALLS)
        lines.append(
            f"| {row['num_samples']:,} | {row['threads']} | {rp['median_s']:.3f} | "
            f"{se['median_s']:.3f} | {se['ratio']:.2f}x | {bp['median_s']:.3f} | "
            f"{bp['ratio']:.2f}x | {se['cpu_ratio']:.2f}x, {bp['cpu_ratio']:.2f}x | "
            f"{row['kept_fraction']:.1%} |"
        )
    if memory:
        lines += [
            "",
            "| N | peak extra B/sample: randperm | set_epoch | build_plan | "
            "state kept between epochs B/sample | steady state: set_epoch peak B/sample, "
            "score table included |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for n, row in memory.items():
            peaks = " | ".join(f"{row[f'{name}_peak_bytes_per_sample']:.1f}" for name in CALLS)
            lines.append(
                f"| {n:,} | {peaks} | {row['state_bytes_per_sample_total']:.2f} | "
                f"{row['steady_state_peak_bytes_per_sample']:.1f} |"
            )
    lines += [
        "",
        f"| loss dtype (batch {BATCH}) | threads | loss.mean() us | update() us | "
        "update(indices=) us |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in results["update"]:
        lines.append(
            f"| {row['dtype']} | {row['threads']} | {row['mean_us']:.1f} | "
            f"{row['update_us']:.1f} | {row['update_indices_us']:.1f} |"
        )
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[str]:
    """One line per target: met or missed, with the figure."""
    lines = []
    for row in results["planning"]:
        ratio = row["set_epoch"]["ratio"]
        verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
        lines.append(
            f"N={row['num_samples']:,}, {row['threads']} thread(s): planning {ratio:.2f}x "
            f"randperm (target <= {TARGET_RATIO:g}x): {verdict}"
        )
    for row in results["memory"]:
        peak = row["set_epoch_peak_bytes_per_sample"]
        verdict = "met" if peak <= TARGET_BYTES else "MISSED"
        lines.append(
            f"N={row['num_samples']:,}: planning peak {peak:.1f} B/sample "
            f"(target <= {TARGET_BYTES:g}): {verdict}"
        )
        steady = row["steady_state_peak_bytes_per_sample"]
        verdict = "met" if steady <= TARGET_BYTES else "MISSED"
        lines.append(
            f"N={row['num_samples']:,}: steady-state planning peak, score table included, "
            f"{steady:.1f} B/sample (target <= {TARGET_BYTES:g}): {verdict}"
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--repeats", type=int, default=7, help="repetitions below 5e7 samples")
    parser.add_argument("--repeats-large", type=int, default=3, help="repetitions from 5e7 on")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None, help="torch thread counts to time"
    )
    parser.add_argument("--update-steps", type=int, default=2000, help="update() calls a repeat")
    parser.add_argument("--update-repeats", type=int, default=5)
    parser.add_argument("--update-samples", type=int, default=DEFAULT_SIZES[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "plan_cost.json"
    )
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.repeats < 1 or args.repeats_large < 1:
        parser.error("sizes and repeats must be at least 1")
    if args.threads is not None and min(args.threads) < 1:
        parser.error("thread counts must be at least 1")
    needed = (args.update_steps + 1) * BATCH * 2
    if args.update_samples < needed:
        parser.error(
            f"--update-samples {args.update_samples} is too small for --update-steps "
            f"{args.update_steps}: give at least {needed}"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    """Time, then measure memory; print the tables and the targets; write the JSON."""
    args = parse_args(argv)
    results: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine_info(),
        "prune_ratio": PRUNE_RATIO,
        "batch_size": BATCH,
        "planning": [],
        "update": [],
        "memory": [],
    }
    started = time.perf_counter()
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for size in args.sizes:
            repeats = args.repeats_large if size >= LARGE else args.repeats
            row = time_planning(size, repeats, args.seed)
            results["planning"].append(row)
            print(
                f"N={size:,}, {threads} thread(s): randperm {row['randperm']['median_s']:.3f}s, "
                f"set_epoch {row['set_epoch']['median_s']:.3f}s, "
                f"build_plan {row['build_plan']['median_s']:.3f}s",
                flush=True,
            )
        results["update"] += time_update(
            args.update_samples, args.update_steps, args.update_repeats, args.seed
        )
    if results["machine"]["peak_memory_tracking"] and _LIBC is not None:
        for size in args.sizes:
            row = measure_memory(size, args.seed, torch.get_num_threads())
            row.update(measure_steady_state(size, args.seed, torch.get_num_threads()))
            results["memory"].append(row)
            print(
                f"N={size:,}: steady-state planning peak "
                f"{row['steady_state_peak_bytes_per_sample']:.1f} B/sample",
                flush=True,
            )
    else:
        print("peak memory not measured: needs Linux, glibc and /proc/self/clear_refs", flush=True)
    results["seconds_total"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = targets(results)

    print()
    print(markdown(results))
    print()
    print("\n".join(results["targets"]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.output} ({results['seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
