"""``torch.compile`` with epochs that shrink: pruned epochs change the batch shapes (a shorter
last batch, or with ``keep_steps=True`` smaller batches every epoch), and the compiled model
must not be recompiled for each of them. Dynamo decides recompilation before any backend runs,
so a counting backend measures it without a C++ compiler."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from infobatch import InfoBatch, ShortScheduleWarning

EPOCHS = 6


def compiled_run(keep_steps: bool, dynamic: bool | None) -> tuple[int, set[int]]:
    """Compilations and distinct batch sizes over a pruned run of a compiled model."""
    torch._dynamo.reset()
    compilations = 0

    def counting_backend(graph: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
        nonlocal compilations
        compilations += 1
        return graph.forward

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(1000, 8, generator=generator), torch.arange(1000) % 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortScheduleWarning)
        dataset = InfoBatch(data, EPOCHS, batch_size=64, keep_steps=keep_steps, seed=0)
    loader = DataLoader(dataset, batch_sampler=dataset.batch_sampler)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    compiled = torch.compile(model, backend=counting_backend, dynamic=dynamic)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sizes: set[int] = set()
    for _ in range(EPOCHS):
        for x, y in loader:
            sizes.add(len(y))
            loss = dataset.update(F.cross_entropy(compiled(x), y, reduction="none"))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    torch._dynamo.reset()
    return compilations, sizes


@pytest.mark.parametrize("keep_steps", [False, True], ids=["fixed_batch", "keep_steps"])
def test_shrinking_epochs_compile_twice_at_the_default_then_never_again(keep_steps: bool) -> None:
    compilations, sizes = compiled_run(keep_steps, dynamic=None)
    assert len(sizes) >= 4  # the shapes do change from epoch to epoch
    assert compilations == 2  # one static graph, then one dynamic in the batch dimension


def test_dynamic_false_recompiles_for_every_batch_size() -> None:
    """The negative control: with dynamic=False every new batch size is a new graph."""
    compilations, sizes = compiled_run(keep_steps=True, dynamic=False)
    assert compilations == len(sizes) >= 4
