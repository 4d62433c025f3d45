import pytest

from infobatch import AnnealingSchedule


def test_annealing_boundary_for_fractional_delta_times_epochs() -> None:
    schedule = AnnealingSchedule(num_epochs=90, delta=0.875)  # 78.75
    assert schedule.pruned_epochs == 79
    assert [e for e in range(90) if schedule.prunes(e)] == list(range(79))


@pytest.mark.parametrize(
    ("num_epochs", "delta", "pruned"),
    [(200, 0.875, 175), (10, 0.7, 7), (10, 0.0, 0), (10, 1.0, 10), (3, 0.5, 2), (1, 0.875, 1)],
)
def test_pruned_epochs_is_ceil_of_exact_decimal_product(
    num_epochs: int, delta: float, pruned: int
) -> None:
    assert AnnealingSchedule(num_epochs, delta).pruned_epochs == pruned


@pytest.mark.parametrize("delta", [-0.1, 1.5])
def test_delta_out_of_range_is_rejected(delta: float) -> None:
    with pytest.raises(ValueError, match=r"Invalid delta .* interval \[0, 1\]"):
        AnnealingSchedule(10, delta)


def test_num_epochs_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="Invalid num_epochs 0"):
        AnnealingSchedule(0, 0.5)
    with pytest.raises(TypeError, match="num_epochs must be an int"):
        AnnealingSchedule(2.0, 0.5)  # type: ignore[arg-type]
