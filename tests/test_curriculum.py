"""The noise curriculum: the exponential schedule and reproducible noisy flags."""

from __future__ import annotations

import pytest

from zerosearch.search.curriculum import noise_probability, noisy_flags


def test_start_and_end_values():
    assert noise_probability(0, 100, 0.1, 0.6) == pytest.approx(0.1)
    assert noise_probability(100, 100, 0.1, 0.6) == pytest.approx(0.6)


def test_midpoint_matches_hand_computed_formula():
    # x = 0.5, base 4: (4**0.5 - 1) / (4 - 1) = (2 - 1) / 3
    expected = 0.25 + (2 - 1) / 3 * 0.25
    assert noise_probability(50, 100, 0.25, 0.5, base=4.0) == pytest.approx(expected)
    # base 9, x = 0.5: (3 - 1) / 8 = 0.25 of the way
    assert noise_probability(5, 10, 0.0, 1.0, base=9.0) == pytest.approx(0.25)


def test_monotone_non_decreasing_and_within_bounds():
    values = [noise_probability(s, 203, 0.0, 0.5) for s in range(0, 260)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert all(0.0 <= v <= 0.5 for v in values)
    # exponential: below the straight line in the middle of training
    assert values[101] < 0.5 * 101 / 203


def test_clamped_after_total_steps():
    for step in (203, 204, 10_000):
        assert noise_probability(step, 203, 0.0, 0.5) == 0.5


def test_constant_when_start_equals_end():
    assert all(noise_probability(s, 50, 0.3, 0.3) == pytest.approx(0.3) for s in range(70))


@pytest.mark.parametrize(
    "args, match",
    [
        ((-1, 10, 0.0, 0.5), "step"),
        ((0, 0, 0.0, 0.5), "total_steps"),
        ((0, -3, 0.0, 0.5), "total_steps"),
        ((0, 10, 0.0, 0.5, 1.0), "base"),
        ((0, 10, 0.0, 0.5, 0.5), "base"),
        ((0, 10, -0.1, 0.5), "p_start"),
        ((0, 10, 0.0, 1.5), "p_end"),
    ],
)
def test_errors(args, match):
    with pytest.raises(ValueError, match=match):
        noise_probability(*args)


def test_noisy_flags_reproducible():
    assert noisy_flags(7, 12, 64, 0.4) == noisy_flags(7, 12, 64, 0.4)
    assert len(noisy_flags(7, 12, 64, 0.4)) == 64
    assert noisy_flags(7, 12, 0, 0.4) == []


def test_noisy_flags_differ_across_steps_and_seeds():
    base = noisy_flags(7, 12, 64, 0.5)
    assert noisy_flags(7, 13, 64, 0.5) != base
    assert noisy_flags(8, 12, 64, 0.5) != base


def test_noisy_flags_frequency_near_p():
    flags = [f for step in range(50) for f in noisy_flags(3, step, 200, 0.3)]
    assert abs(sum(flags) / len(flags) - 0.3) < 0.02  # 10,000 draws: sd ~ 0.0046


def test_noisy_flags_extremes():
    assert noisy_flags(1, 5, 100, 0.0) == [False] * 100
    assert noisy_flags(1, 5, 100, 1.0) == [True] * 100


def test_noisy_flags_errors():
    with pytest.raises(ValueError, match="p"):
        noisy_flags(1, 0, 4, 1.2)
    with pytest.raises(ValueError, match="n"):
        noisy_flags(1, 0, -1, 0.5)


@pytest.mark.parametrize("p_start, p_end", [(0.0, 0.5), (0.25, 0.25), (0.1, 0.75)])
def test_fixed_schedule_is_p_end_at_every_step(p_start, p_end):
    total = 203
    for step in (0, total // 2, total - 1, total, 10_000):
        assert noise_probability(step, total, p_start, p_end, schedule="fixed") == p_end
    # the exponential schedule of the same values starts at p_start and stays below p_end in training
    assert noise_probability(0, total, p_start, p_end) == pytest.approx(p_start)
    assert noise_probability(total - 1, total, p_start, p_end, schedule="exponential") <= p_end


def test_exponential_is_the_default_schedule():
    for step in (0, 7, 50, 99, 100):
        assert noise_probability(step, 100, 0.1, 0.6, 4.0) == noise_probability(step, 100, 0.1, 0.6, 4.0,
                                                                                  schedule="exponential")


def test_unknown_schedule_and_bad_arguments_under_fixed():
    with pytest.raises(ValueError, match="unknown noise schedule 'linear'; known: exponential, fixed"):
        noise_probability(0, 10, 0.0, 0.5, schedule="linear")
    with pytest.raises(ValueError, match="p_end"):
        noise_probability(0, 10, 0.0, 1.5, schedule="fixed")
    with pytest.raises(ValueError, match="step"):
        noise_probability(-1, 10, 0.0, 0.5, schedule="fixed")
