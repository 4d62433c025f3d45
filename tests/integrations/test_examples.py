"""The examples run end to end on tiny local stand-ins (no download)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from ._common import launch, tiny_gpt2_config  # noqa: E402
from ._example_workers import load_example as _load  # noqa: E402
from ._example_workers import run_cifar  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 1-layer GPT-2 and a character-level tokenizer, saved locally."""
    folder = tmp_path_factory.mktemp("tiny-causal-lm")
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:#\n-"))
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Split(
        tokenizers.Regex(r"[\s\S]"), behavior="isolated"
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = tiny_gpt2_config(vocab_size=len(vocab), n_positions=320, pad_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def records_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    generator = torch.Generator().manual_seed(0)
    words = ["add", "sort", "count", "name", "list", "sum", "max", "min"]
    records: list[dict[str, str]] = []
    for i in range(40):
        a, b = (int(v) for v in torch.randint(10, (2,), generator=generator))
        word = words[i % len(words)]
        records.append(
            {
                "instruction": f"{word} {a} {b}",
                "input": "" if i % 2 else f"{b}",
                "output": f"{a + b}",
            }
        )
    records.append({"instruction": "x" * 400, "input": "", "output": "cut away"})  # too long
    path = tmp_path_factory.mktemp("data") / "records.json"
    path.write_text(json.dumps(records))
    return path


def _run(model_dir: Path, data: Path, out: Path, *extra: str) -> dict[str, Any]:
    example = _load("instruction_tuning")
    argv = [
        "--data", str(data), "--model", str(model_dir), "--output-dir", str(out),
        "--epochs", "3", "--batch-size", "4", "--grad-accum", "2", "--lr", "5e-3",
        "--max-length", "300", "--delta", "0.6", "--cpu", *extra,
    ]  # fmt: skip
    summary: dict[str, Any] = example.main(argv)
    assert json.loads((out / "summary.json").read_text()) == summary
    return summary


def test_instruction_tuning_example_infobatch_and_full(
    tiny_model_dir: Path, records_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    pruned = _run(tiny_model_dir, records_file, tmp_path / "ib", "--mode", "infobatch")
    full = _run(tiny_model_dir, records_file, tmp_path / "full", "--mode", "full")
    assert pruned["samples"] == full["samples"] == 40 and pruned["dropped_records"] == 1
    assert full["saved_fraction"] == 0 and full["kept_per_epoch"] == [40, 40, 40]
    kept = pruned["kept_per_epoch"]
    assert kept[0] == kept[2] == 40 and kept[1] < 40 and pruned["saved_fraction"] > 0
    assert pruned["optimizer_steps"] < full["optimizer_steps"]


def test_instruction_tuning_masks_the_prompt(tiny_model_dir: Path) -> None:
    example = _load("instruction_tuning")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    record = {"instruction": "add 1 2", "input": "", "output": "3"}
    dataset = example.InstructionDataset([record], tokenizer, max_length=300)
    item = dataset[0]
    answer = tokenizer("3", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    labelled = item["labels"][item["labels"] != -100].tolist()
    assert labelled == answer
    assert item["input_ids"][-len(answer) :].tolist() == answer
    prompt_length = len(item["input_ids"]) - len(answer)
    assert (item["labels"][:prompt_length] == -100).all()


def test_cifar_example_smoke_one_process(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    pruned = run_cifar(tmp_path, {"argv": ["--checkpoint", str(tmp_path / "ib.pt")]})
    full = run_cifar(tmp_path, {"argv": ["--mode", "full"]})
    assert full["kept_per_epoch"] == [256, 256, 256] and full["saved_fraction"] == 0
    kept = pruned["kept_per_epoch"]
    assert kept[0] == kept[2] == 256 and kept[1] < 256
    assert pruned["optimizer_steps"] < full["optimizer_steps"]
    for summary in (pruned, full):  # OneCycle reached its end although epochs shrank
        assert summary["last_step_lr"] == pytest.approx(0.05 / 25 / 1e4, rel=1e-6)
    assert (tmp_path / "ib.pt").exists()


def test_cifar_example_smoke_two_processes(tmp_path: Path) -> None:
    ranks = launch(2, run_cifar, tmp_path, {})
    assert ranks[0]["test_accuracy"] == ranks[1]["test_accuracy"]  # one model (DDP)
    assert ranks[0]["kept_per_epoch"] == ranks[1]["kept_per_epoch"]
    assert ranks[0]["kept_per_epoch"][1] < 256
    assert ranks[0]["last_step_lr"] == pytest.approx(0.05 / 25 / 1e4, rel=1e-6)
