"""Per-epoch generators and planning's draws: on the CPU whatever device the scores are on."""

from __future__ import annotations

import inspect

import pytest
import torch

from infobatch import epoch_generator
from infobatch.rng import check_generator, random_mask, random_permutation

META = torch.device("meta")


def test_epoch_generator_is_a_cpu_generator_with_no_device_parameter() -> None:
    assert epoch_generator(0, 0).device == torch.device("cpu")
    assert list(inspect.signature(epoch_generator).parameters) == ["seed", "epoch"]
    with pytest.raises(TypeError):
        epoch_generator(0, 0, "cpu")  # type: ignore[call-arg]


@pytest.mark.parametrize("seed", [0, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1])
def test_every_seed_in_the_uint64_range_is_accepted(seed: int) -> None:
    first = torch.rand(4, generator=epoch_generator(seed, 3))
    again = torch.rand(4, generator=epoch_generator(seed, 3))
    assert torch.equal(first, again)


def test_torch_initial_seed_is_a_valid_seed() -> None:
    torch.manual_seed(2**64 - 1)
    try:
        assert torch.initial_seed() == 2**64 - 1
        epoch_generator(torch.initial_seed(), 0)
    finally:
        torch.manual_seed(0)


@pytest.mark.parametrize("seed", [-1, 2**64, 2**70, -(2**63)])
def test_seeds_outside_the_uint64_range_are_rejected(seed: int) -> None:
    with pytest.raises(ValueError, match=r"seed should be in the interval \[0, 2\*\*64 - 1\]"):
        epoch_generator(seed, 0)


@pytest.mark.parametrize("epoch", [-1, 2**64])
def test_epochs_outside_the_uint64_range_are_rejected(epoch: int) -> None:
    with pytest.raises(ValueError, match="epoch should be in the interval"):
        epoch_generator(0, epoch)


@pytest.mark.parametrize("seed", [1.0, "1", True, None])
def test_non_integer_seeds_are_rejected(seed: object) -> None:
    with pytest.raises(TypeError, match="seed must be an int"):
        epoch_generator(seed, 0)  # type: ignore[arg-type]


def test_numpy_integer_seeds_are_accepted() -> None:
    np = pytest.importorskip("numpy")
    a = torch.rand(4, generator=epoch_generator(np.uint64(2**64 - 1), np.int64(2)))
    assert torch.equal(a, torch.rand(4, generator=epoch_generator(2**64 - 1, 2)))


def test_seeds_that_differ_by_2_to_the_63_give_different_streams() -> None:
    # seeds used to be truncated to 64 bits silently; the full range must not alias
    for seed in (0, 12345):
        a = torch.rand(8, generator=epoch_generator(seed, 0))
        b = torch.rand(8, generator=epoch_generator(seed + 2**63, 0))
        assert not torch.equal(a, b)


class _GeneratorOn:
    """Stands in for a generator on another device (none exists on a CPU-only machine)."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)


def test_draws_refuse_a_generator_that_is_not_on_the_cpu() -> None:
    cuda = _GeneratorOn("cuda")
    check_generator(torch.Generator())
    with pytest.raises(ValueError, match="CPU generator"):
        check_generator(cuda)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CPU generator"):
        random_mask(4, 0.5, cuda, torch.device("cpu"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CPU generator"):
        random_permutation(4, cuda, torch.device("cpu"))  # type: ignore[arg-type]


def test_random_mask_is_the_cpu_comparison_of_cpu_uniforms() -> None:
    mask = random_mask(1000, 0.3, torch.Generator().manual_seed(5), torch.device("cpu"))
    expected = torch.rand(1000, generator=torch.Generator().manual_seed(5)) < 0.3
    assert mask.dtype == torch.bool and torch.equal(mask, expected)


def test_random_mask_drawn_in_pieces_continues_one_stream() -> None:
    generator = torch.Generator().manual_seed(8)
    cpu = torch.device("cpu")
    pieces = torch.cat([random_mask(size, 0.5, generator, cpu) for size in (1, 7, 100, 892)])
    assert torch.equal(pieces, random_mask(1000, 0.5, torch.Generator().manual_seed(8), cpu))


def test_a_draw_aimed_at_another_device_advances_the_cpu_generator_like_a_cpu_draw() -> None:
    # The meta device holds no values, but shows where a draw is made: torch.rand(...,
    # device="meta") would not consume the CPU generator at all; the helpers draw on the CPU
    # (consuming exactly what a CPU draw does) and only move the result.
    untouched = torch.Generator().manual_seed(1)
    torch.rand(100, generator=untouched, device=META)
    assert torch.equal(untouched.get_state(), torch.Generator().manual_seed(1).get_state())

    for draw, cpu_draw in [
        (
            lambda g, device: random_mask(100, 0.5, g, device),
            lambda g: torch.rand(100, generator=g) < 0.5,
        ),
        (
            lambda g, device: random_permutation(100, g, device, torch.int32),
            lambda g: torch.randperm(100, generator=g, dtype=torch.int32),
        ),
    ]:
        on_meta, on_cpu = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
        moved = draw(on_meta, META)
        reference = cpu_draw(on_cpu)
        assert moved.device == META
        assert moved.shape == reference.shape and moved.dtype == reference.dtype
        assert torch.equal(on_meta.get_state(), on_cpu.get_state())
        assert not torch.equal(on_meta.get_state(), torch.Generator().manual_seed(2).get_state())


def test_random_permutation_is_a_cpu_permutation() -> None:
    for dtype in (torch.int32, torch.int64):
        permutation = random_permutation(
            50, torch.Generator().manual_seed(3), torch.device("cpu"), dtype
        )
        expected = torch.randperm(50, generator=torch.Generator().manual_seed(3), dtype=dtype)
        assert permutation.dtype == dtype and torch.equal(permutation, expected)
        assert sorted(permutation.tolist()) == list(range(50))


def test_the_digests_tell_apart_a_changed_value_and_a_swap_and_agree_on_equal_tensors() -> None:
    from infobatch.hashing import hash_int64, sum_bits

    values = torch.rand(1001, generator=torch.Generator().manual_seed(0))
    changed = values.clone()
    changed[500] = torch.nextafter(changed[500], torch.tensor(2.0))
    assert sum_bits(values) == sum_bits(values.clone()) != sum_bits(changed)
    assert sum_bits(values[1:]) == sum_bits(values[1:].clone())  # odd offset and length
    order = torch.randperm(70000, generator=torch.Generator().manual_seed(1))
    swapped = order.clone()
    swapped[[3, 69000]] = swapped[[69000, 3]]
    assert hash_int64(order) == hash_int64(order.clone()) != hash_int64(swapped)
    assert hash_int64(order.int()) == hash_int64(order)
    assert torch.equal(order, torch.randperm(70000, generator=torch.Generator().manual_seed(1)))
