"""95% intervals of benchmark accuracies (eval/intervals.py)."""

import pytest

from reverse_align.eval.intervals import bootstrap, interval, wilson


def test_wilson_known_values():
    # 1 of 30 AIME problems (3.3 points): the interval spans 0.6% to 16.7%.
    assert wilson(1, 30) == pytest.approx((0.00591, 0.16670), abs=1e-4)
    low, high = wilson(0, 30)
    assert low == 0.0 and high == pytest.approx(0.1135, abs=1e-4)  # not the normal interval's [0, 0]
    assert wilson(15, 30) == pytest.approx((0.3315, 0.6685), abs=1e-4)
    # The base model's 0 of 200 logged ci_low 1.7e-18 before the bounds were pinned at 0 and 1.
    assert wilson(0, 200)[0] == 0.0 and wilson(200, 200)[1] == 1.0


def test_bootstrap_is_seeded_and_brackets_the_mean():
    scores = [1.0, 0.0, 0.5, 0.75, 0.25] * 6
    low, high = bootstrap(scores, resamples=2000, seed=0)
    assert low < sum(scores) / len(scores) < high
    assert bootstrap(scores, resamples=2000, seed=0) == (low, high)
    assert bootstrap([1.0] * 10) == (1.0, 1.0)


def test_one_sample_per_question_uses_wilson():
    assert interval([1.0, 0.0, 0.0], samples=1) == wilson(1, 3)
    assert interval([1.0, 0.0, 0.5], samples=2) == bootstrap([1.0, 0.0, 0.5])
