"""The headline paired difference: reverse SFT minus forward SFT, with a 95% interval over seeds and questions.

Both models answered the same questions, and each training seed gives one model of each mix, so the
difference is paired twice: seed s of the reverse mix against seed s of the forward mix, question q
against question q. A replicate resamples the seeds (with replacement), then the questions (with
replacement, the same draw for every seed: they are one benchmark's questions), and takes the mean
of the per-question differences; the interval is the 2.5th and 97.5th percentile of the replicates
(the convention of reverse_align/eval/intervals.py). Several benchmarks at once (the average): the
seed draw is shared, each benchmark draws its own questions, and the statistic is the mean over
benchmarks of each one's mean difference.

A question's score is the mean ``correct`` of its samples (one sample: 0 or 1). Only questions that
every seed of both models answered count, and only seeds both models have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# {seed: {question id: score in [0, 1]}}: one model's per-question scores on one benchmark, per seed.
Scores = dict[int, dict[str, float]]


@dataclass(frozen=True)
class Paired:
    diff: float  # mean of (a - b) over seeds and questions (and benchmarks), as a fraction
    low: float
    high: float
    seeds: int
    questions: int  # per benchmark, summed over benchmarks


def per_question(rows: list[dict]) -> dict[str, float]:
    """Mean ``correct`` per question id of an ``eval/samples/<benchmark>.json`` table's rows."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        groups.setdefault(str(row["id"]), []).append(float(bool(row["correct"])))
    return {qid: sum(v) / len(v) for qid, v in groups.items()}


def paired_difference(pairs: list[tuple[Scores, Scores]], resamples: int = 2000, seed: int = 0) -> Paired | None:
    """a - b for each (a, b) benchmark in ``pairs``, averaged over benchmarks; None when nothing is paired."""
    import numpy as np

    seeds = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs))) if pairs else []
    if not seeds:
        return None
    matrices = []  # per benchmark: seeds x questions of a - b
    for a, b in pairs:
        common = set.intersection(*(set(a[s]) & set(b[s]) for s in seeds))
        qids = sorted(common)
        if not qids:
            return None
        matrices.append(np.array([[a[s][q] - b[s][q] for q in qids] for s in seeds]))
    rng = np.random.default_rng(seed)
    n_seeds = len(seeds)
    # A resample with replacement is a multinomial count per item; the statistic is then a weighted mean.
    seed_counts = rng.multinomial(n_seeds, [1 / n_seeds] * n_seeds, size=resamples)  # resamples x seeds
    stats = np.zeros(resamples)
    for matrix in matrices:
        n_q = matrix.shape[1]
        question_counts = rng.multinomial(n_q, [1 / n_q] * n_q, size=resamples)  # resamples x questions
        stats += ((seed_counts @ matrix) * question_counts).sum(axis=1) / (n_seeds * n_q)
    # A replicate is an exact multiple of 1 / (seeds x questions x samples x benchmarks); summed in floats
    # an exact 0 can come out as 1e-18, whose sign would decide the verdict. Far below that resolution,
    # rounding puts every replicate back on its exact value.
    stats = np.sort(np.round(stats / len(matrices), 12))
    diff = float(np.mean([m.mean() for m in matrices]))
    low = float(stats[int(0.025 * (resamples - 1))])
    high = float(stats[math.ceil(0.975 * (resamples - 1))])
    return Paired(diff, low, high, n_seeds, sum(m.shape[1] for m in matrices))
