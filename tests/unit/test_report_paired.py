"""The paired bootstrap of reverse - forward SFT against cases computed by hand."""

import pytest

from reverse_align.report.paired import paired_difference, per_question


def test_samples_of_a_question_are_averaged():
    rows = [{"id": "q1", "correct": True}, {"id": "q1", "correct": False}, {"id": "q2", "correct": 1}]
    assert per_question(rows) == {"q1": 0.5, "q2": 1.0}


def test_one_seed_hand_case():
    # Differences 1, 0, 0, 1: mean 0.5. A resample of 4 questions has mean 0 (or 1) with probability
    # 1/16 = 6.25% > 2.5%, so the 95% interval is [0, 1] exactly.
    a = {0: {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 1.0}}
    b = {0: {"q1": 0.0, "q2": 1.0, "q3": 0.0, "q4": 0.0}}
    result = paired_difference([(a, b)], resamples=2000, seed=0)
    assert result.diff == pytest.approx(0.5)
    assert (result.low, result.high) == (0.0, 1.0)
    assert (result.seeds, result.questions) == (1, 4)


def test_seeds_are_resampled():
    # One question; seed 0 differs by 1, seed 1 by 0: mean 0.5. Resampling the two seeds gives 1 or 0 with
    # probability 1/4 each, so the interval is [0, 1]; resampling questions alone would give [0.5, 0.5].
    a = {0: {"q": 1.0}, 1: {"q": 0.0}}
    b = {0: {"q": 0.0}, 1: {"q": 0.0}}
    result = paired_difference([(a, b)], resamples=1000, seed=3)
    assert result.diff == pytest.approx(0.5)
    assert (result.low, result.high) == (0.0, 1.0)


def test_only_shared_questions_and_seeds_are_paired():
    # q2 only in a, seed 1 only in a: the difference is q1 of seed 0 alone, 0.75 - 0.25 = 0.5, no spread.
    a = {0: {"q1": 0.75, "q2": 1.0}, 1: {"q1": 0.0}}
    b = {0: {"q1": 0.25}}
    result = paired_difference([(a, b)], resamples=500, seed=0)
    assert result.diff == pytest.approx(0.5)
    assert result.low == pytest.approx(0.5) and result.high == pytest.approx(0.5)
    assert (result.seeds, result.questions) == (1, 1)


def test_average_over_benchmarks_and_determinism():
    same = {0: {"q1": 1.0, "q2": 1.0}}, {0: {"q1": 0.0, "q2": 0.0}}  # difference 1, no spread
    even = {0: {"x": 0.0, "y": 1.0}}, {0: {"x": 0.0, "y": 1.0}}  # difference 0, no spread
    result = paired_difference([same, even], resamples=300, seed=0)
    assert result.diff == pytest.approx(0.5) and result.low == pytest.approx(0.5) and result.high == pytest.approx(0.5)
    assert result.questions == 4
    noisy = {0: {f"q{i}": float(i % 2) for i in range(9)}, 1: {f"q{i}": float(i % 3 == 0) for i in range(9)}}
    zero = {0: {f"q{i}": 0.0 for i in range(9)}, 1: {f"q{i}": 0.0 for i in range(9)}}
    first = paired_difference([(noisy, zero)], resamples=400, seed=7)
    assert first == paired_difference([(noisy, zero)], resamples=400, seed=7)
    assert first.low < first.diff < first.high


def test_nothing_to_pair_is_none():
    assert paired_difference([], 100) is None
    assert paired_difference([({0: {"q": 1.0}}, {1: {"q": 0.0}})], 100) is None


def test_a_bound_that_is_zero_is_exactly_zero():
    # Three benchmarks of 40 questions: summed over benchmarks in floats, a replicate whose exact value
    # is 0 came out as 2e-18, and a lower bound of 2e-18 > 0 read as "reverse did better" (seen in a tiny
    # study: 95% interval [+0.0, +7.2] points). Bounds are exact multiples of 1/120 here.
    import random

    rnd = random.Random(67)
    pairs = [tuple({0: {f"q{i}": float(rnd.random() < 0.3) for i in range(40)}} for _ in range(2)) for _ in range(3)]
    result = paired_difference(pairs, resamples=200, seed=0)
    assert 0.0 in (result.low, result.high)
    for bound in (result.low, result.high):
        assert bound * 120 == pytest.approx(round(bound * 120), abs=1e-9)


def _scores(values_by_replicate, n=100):
    """Replicate -> n questions, the first `k` of them correct."""
    return {r: {f"q{i}": float(i < k) for i in range(n)} for r, k in values_by_replicate.items()}


def test_bases_are_resampled_before_seeds():
    # Two bases whose effects disagree (+40 and -20 points), two seeds each that agree within a base:
    # the verdict rests on two bases, so the interval must span both signs, and the point estimate
    # weighs each base the same (+10).
    reverse = _scores({(0, 0): 60, (0, 1): 60, (1, 0): 30, (1, 1): 30})
    forward = _scores({(0, 0): 20, (0, 1): 20, (1, 0): 50, (1, 1): 50})
    result = paired_difference([(reverse, forward)], resamples=2000, seed=0)
    assert (result.bases, result.seeds, result.questions) == (2, 4, 100)
    assert abs(result.diff - 0.10) < 1e-12
    assert result.low < 0 < result.high
    assert result.low <= -0.15 and result.high >= 0.35  # a base draw of two copies of either base
    # The same numbers read as four seeds of one base: seeds and questions only, a narrower interval.
    as_seeds = {i: v for i, v in enumerate(reverse.values())}, {i: v for i, v in enumerate(forward.values())}
    flat = paired_difference([as_seeds], resamples=2000, seed=0)
    assert flat.bases == 1 and flat.high - flat.low < result.high - result.low


def test_unequal_seeds_per_base_weigh_each_base_the_same():
    reverse = _scores({(0, 0): 50, (1, 0): 80, (1, 1): 80, (1, 2): 80})
    forward = _scores({(0, 0): 50, (1, 0): 50, (1, 1): 50, (1, 2): 50})
    result = paired_difference([(reverse, forward)], resamples=500, seed=0)
    assert abs(result.diff - 0.15) < 1e-12  # (0 + 30) / 2, not (0 + 3 x 30) / 4
