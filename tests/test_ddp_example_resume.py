"""The README's DDP example under ``torchrun --nproc_per_node=2``: stopped inside an epoch and
relaunched from its checkpoint, it ends with the uninterrupted run's weights, bit for bit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
pytestmark = pytest.mark.skipif(
    not (MNIST / "train-images-idx3-ubyte.gz").exists(), reason="MNIST files not found"
)


def torchrun(*args: str) -> str:
    """Run examples/ddp_mnist.py on 2 gloo processes; its output (a hang fails after 300 s)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(ROOT / "examples" / "ddp_mnist.py")]
    command += ["--data-dir", str(MNIST), "--epochs", "3", "--train-subset", "2000", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def final_weights(output: str) -> str:
    found = re.search(r"final weights ([0-9a-f]{16})", output)
    assert found, output
    return found.group(1)


@pytest.mark.parametrize("extra", [(), ("--keep-steps",)], ids=["default", "keep_steps"])
def test_a_run_stopped_mid_epoch_and_relaunched_ends_with_the_same_weights(
    tmp_path: Path, extra: tuple[str, ...]
) -> None:
    straight = torchrun(*extra)
    checkpoint = str(tmp_path / "mid.pt")
    stopped = torchrun(*extra, "--checkpoint", checkpoint, "--stop-at-step", "24")  # epoch 1
    assert "stopped in epoch 1 after step 24" in stopped and "final weights" not in stopped
    resumed = torchrun(*extra, "--resume", checkpoint)
    assert "starting at epoch 1" in resumed
    assert final_weights(resumed) == final_weights(straight)
    saved = re.findall(r"InfoBatch skipped (\d+) sample passes", straight)
    assert saved and saved == re.findall(r"InfoBatch skipped (\d+) sample passes", resumed)
    # epoch, kept/total, this rank's optimizer steps: 2,000 samples, 2 ranks, batch 64
    rows = re.findall(r"^\s*(\d+)\s+(\d+)/(\d+)\s+(\d+)\s", straight, flags=re.MULTILINE)
    assert [int(row[0]) for row in rows] == [0, 1, 2]
    kept, steps = [int(row[1]) for row in rows], [int(row[3]) for row in rows]
    assert kept[1] < 2000  # epoch 1 is pruned
    if extra:
        assert steps == [16, 16, 16]  # full data's steps in every epoch
    else:
        assert steps[0] == 16 and steps[1] == -(-kept[1] // 128)  # ceil(kept / (2 x 64))
