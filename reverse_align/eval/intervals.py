"""95% intervals of a benchmark accuracy: how sure a number from 30 AIME problems is.

One answer per question: the Wilson score interval of k correct out of n
(good at small n and at 0% or 100%, where the normal interval collapses).
Several answers per question: a percentile bootstrap over questions (the
samples of a question are not independent; the questions are).
"""

from __future__ import annotations

import math
import random

Z95 = 1.959963984540054


def wilson(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # At 0 or all correct the bound is exactly 0 or 1 (centre - half cancels to rounding noise, 1.7e-18).
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def bootstrap(per_question: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of the mean over questions resampled with replacement."""
    if not per_question:
        return 0.0, 1.0
    rng = random.Random(seed)
    n = len(per_question)
    means = sorted(sum(per_question[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * (resamples - 1))], means[math.ceil(0.975 * (resamples - 1))]


def interval(per_question: list[float], samples: int, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Wilson for one sample per question (scores 0/1), bootstrap over questions otherwise."""
    if samples <= 1:
        return wilson(round(sum(per_question)), len(per_question))
    return bootstrap(per_question, resamples, seed)
