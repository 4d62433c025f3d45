"""k-means on one-dimensional values in O(N k) per iteration, no sort of the N values."""

from __future__ import annotations

import torch
from torch import Tensor

from ..rng import check_generator

__all__ = ["kmeans_1d"]


def _pick(weights: Tensor, generator: torch.Generator) -> int:
    """An index drawn with probability proportional to ``weights`` (float64, >= 0), O(N)."""
    cumulative = torch.cumsum(weights, 0)
    total = float(cumulative[-1])
    if not total > 0:
        return int(torch.randint(weights.numel(), (1,), generator=generator))
    target = float(torch.rand((), generator=generator, dtype=torch.float64)) * total
    index = int(torch.searchsorted(cumulative, torch.tensor([target], dtype=torch.float64)))
    return min(index, weights.numel() - 1)


def kmeans_1d(
    values: Tensor, k: int, generator: torch.Generator, iterations: int = 30
) -> tuple[Tensor, Tensor]:
    """Cluster 1-d ``values`` (CPU, finite) into at most ``k`` groups; groups sorted by centre.

    Initialisation is k-means++ (each next centre drawn with probability proportional to the
    squared distance to the nearest chosen one, from the CPU ``generator``), then Lloyd
    iterations until no assignment changes or ``iterations`` rounds. With the centres kept in
    ascending order, a value's nearest centre is found by comparing it with the ``k - 1``
    midpoints between neighbouring centres (``bucketize``), and each centre moves to the mean
    of its values (one scatter-add): O(N k) work per iteration, vectorised, never a sort of
    the N values. Empty groups are dropped, so fewer than ``k`` groups come back when the
    values take fewer than ``k`` distinct levels.

    Args:
        values (Tensor): float values ``[N]`` on the CPU, all finite.
        k (int): number of groups wanted, ``>= 1``.
        generator (torch.Generator): CPU generator of the initialisation.
        iterations (int, optional): most Lloyd rounds. Default: ``30``.

    Returns:
        ``(labels, centres)``: ``labels`` int64 ``[N]`` in ``0 .. len(centres) - 1``, group 0
        the lowest centre; ``centres`` float64, ascending.
    """
    check_generator(generator)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"Invalid k {k!r}, k should be an int >= 1")
    n = values.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.float64)
    x = values.detach().to("cpu", torch.float64).reshape(-1)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("kmeans_1d needs finite values (leave unscored samples out)")
    centres = [float(x[_pick(torch.ones(n, dtype=torch.float64), generator)])]
    nearest = (x - centres[0]).square()
    for _ in range(1, min(k, n)):
        chosen = float(x[_pick(nearest, generator)])
        centres.append(chosen)
        nearest = torch.minimum(nearest, (x - chosen).square())
    centre = torch.tensor(sorted(set(centres)), dtype=torch.float64)
    labels = torch.zeros(n, dtype=torch.int64)
    for round_ in range(max(iterations, 1)):
        boundaries = (centre[1:] + centre[:-1]) / 2
        new_labels = torch.bucketize(x, boundaries, right=True)
        if round_ > 0 and torch.equal(new_labels, labels):
            break
        labels = new_labels
        sums = torch.zeros(centre.numel(), dtype=torch.float64).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=centre.numel())
        present = counts > 0
        centre = sums[present] / counts[present]
        if not bool(present.all()):  # drop empty groups, renumber the rest
            labels = (torch.cumsum(present.long(), 0) - 1).index_select(0, labels)
    return labels, centre
