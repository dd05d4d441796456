"""The headline paired difference: reverse SFT minus forward SFT, with a 95% interval over bases, seeds and questions.

Both models answered the same questions, and each (base model, training seed) replicate gives one model
of each mix, so the difference is paired: replicate (b, s) of the reverse mix against (b, s) of the
forward mix, question q against question q. A bootstrap replicate resamples the bases (with
replacement), then within each drawn base its seeds (with replacement), then the questions (with
replacement, the same draw for every model: they are one benchmark's questions), and takes the mean of
the per-question differences, each base weighing the same; the interval is the 2.5th and 97.5th
percentile of the replicates (the convention of reverse_align/eval/intervals.py). Resampling the bases
first is what makes a tiny-world verdict about the recipe rather than about one base: a base pretrained
from scratch is itself a draw (another CPU's rounding makes another one). One base: seeds, then
questions, as before. Several benchmarks at once (the average): the base and seed draws are shared,
each benchmark draws its own questions, and the statistic is the mean over benchmarks of each one's
mean difference.

A question's score is the mean ``correct`` of its samples (one sample: 0 or 1). Only questions that
every replicate of both models answered count, and only replicates both models have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# {(base, seed): {question id: score in [0, 1]}}: one model's per-question scores on one benchmark, per
# replicate. A plain int key is a seed of one base (base 0).
Scores = dict[object, dict[str, float]]


def _base_and_seed(replicate) -> tuple:
    return tuple(replicate) if isinstance(replicate, tuple) else (0, replicate)


@dataclass(frozen=True)
class Paired:
    diff: float  # mean of (a - b) over seeds and questions (and benchmarks), as a fraction
    low: float
    high: float
    seeds: int  # replicates (base, seed) paired
    questions: int  # per benchmark, summed over benchmarks
    bases: int = 1


def per_question(rows: list[dict]) -> dict[str, float]:
    """Mean ``correct`` per question id of an ``eval/samples/<benchmark>.json`` table's rows."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        groups.setdefault(str(row["id"]), []).append(float(bool(row["correct"])))
    return {qid: sum(v) / len(v) for qid, v in groups.items()}


def replicate_weights(replicates: list, resamples: int, rng):
    """resamples x replicates weights summing to 1: bases drawn with replacement, then seeds within each
    drawn base; every drawn base weighs the same, split over its drawn seeds."""
    import numpy as np

    by_base: dict = {}
    for i, r in enumerate(replicates):
        by_base.setdefault(_base_and_seed(r)[0], []).append(i)
    groups = list(by_base.values())
    weights = np.zeros((resamples, len(replicates)))
    base_counts = rng.multinomial(len(groups), [1 / len(groups)] * len(groups), size=resamples)  # resamples x bases
    for g, members in enumerate(groups):
        seed_counts = rng.multinomial(len(members), [1 / len(members)] * len(members), size=resamples)
        weights[:, members] += base_counts[:, [g]] * seed_counts / (len(groups) * len(members))
    return weights


def paired_difference(pairs: list[tuple[Scores, Scores]], resamples: int = 2000, seed: int = 0) -> Paired | None:
    """a - b for each (a, b) benchmark in ``pairs``, averaged over benchmarks; None when nothing is paired."""
    import numpy as np

    replicates = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs)), key=_base_and_seed) if pairs else []
    if not replicates:
        return None
    matrices = []  # per benchmark: replicates x questions of a - b
    for a, b in pairs:
        common = set.intersection(*(set(a[r]) & set(b[r]) for r in replicates))
        qids = sorted(common)
        if not qids:
            return None
        matrices.append(np.array([[a[r][q] - b[r][q] for q in qids] for r in replicates]))
    rng = np.random.default_rng(seed)
    # A resample with replacement is a multinomial count per item; the statistic is then a weighted mean.
    weights = replicate_weights(replicates, resamples, rng)
    point = replicate_weights(replicates, 1, _Identity())[0]
    stats = np.zeros(resamples)
    for matrix in matrices:
        n_q = matrix.shape[1]
        question_counts = rng.multinomial(n_q, [1 / n_q] * n_q, size=resamples)  # resamples x questions
        stats += ((weights @ matrix) * question_counts).sum(axis=1) / n_q
    # A replicate is an exact multiple of 1 / (bases x seeds x questions x samples x benchmarks); summed in
    # floats an exact 0 can come out as 1e-18, whose sign would decide the verdict. Far below that
    # resolution, rounding puts every replicate back on its exact value.
    stats = np.sort(np.round(stats / len(matrices), 12))
    diff = float(np.mean([point @ m.mean(axis=1) for m in matrices]))
    low = float(stats[int(0.025 * (resamples - 1))])
    high = float(stats[math.ceil(0.975 * (resamples - 1))])
    n_bases = len({_base_and_seed(r)[0] for r in replicates})
    return Paired(diff, low, high, len(replicates), sum(m.shape[1] for m in matrices), n_bases)


class _Identity:
    """A stand-in generator whose "draw" takes every item once: the point estimate's weights."""

    @staticmethod
    def multinomial(n, pvals, size):
        import numpy as np

        return np.ones((size, len(pvals)), dtype=int)
