"""Is the sweep's best beta better than the others, or a draw of binomial noise?

Each trial's objective is an accuracy on n questions (exact_match: the held-out forward and reverse
problems of the data run; eval_average: the questions of the trial's evaluate run). A trial records its
per-question scores (0/1 with one sample per question), ``n`` and ``correct``, and the Wilson 95% interval
of its accuracy (reverse_align/eval/intervals.py). Every trial of a study answers the same questions, so
the best trial is compared with each other trial question by question: the exact McNemar test (a two-sided
binomial test on the discordant questions, the ones exactly one of the two models got right). With several
samples per question a question's score is the mean of its samples, and the test is the exact sign test on
the questions where the two scores differ (McNemar's generalisation). A trial the best is not separated
from at p < ``ALPHA`` is listed: with 200 questions, 0.38 against 0.35 is such a trial.

Two caveats the verdict keeps: the best is chosen on the same answers it is then tested on, and nothing
corrects for testing it against several trials; both make "separated" easier to reach, never harder, so a
"not separated" verdict stands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from reverse_align.eval.intervals import wilson

# The conventional level; a reporting choice (it changes no trial), so not part of the sweep's config hash.
ALPHA = 0.05
# Optuna user attributes of a trial (see record_trial).
ATTR_QUESTIONS = "questions"  # {question id: score in [0, 1]}
ATTR_N = "n"
ATTR_CORRECT = "correct"
ATTR_CI_LOW = "ci_low"
ATTR_CI_HIGH = "ci_high"
TABLE_ATTRS = (ATTR_N, ATTR_CORRECT, ATTR_CI_LOW, ATTR_CI_HIGH)  # the columns sweep/trials.csv gets from them


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value for ``wins`` questions only a got right and ``losses`` only b did."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def discordant(a: dict[str, float], b: dict[str, float]) -> tuple[int, int, int]:
    """(questions a scored higher, questions b scored higher, questions both answered)."""
    common = a.keys() & b.keys()
    wins = sum(a[q] > b[q] for q in common)
    losses = sum(a[q] < b[q] for q in common)
    return wins, losses, len(common)


@dataclass(frozen=True)
class TrialScore:
    """A completed trial's objective with what it was counted from (``questions`` empty: not recorded)."""

    number: int
    beta: float
    value: float
    questions: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.questions)

    @property
    def correct(self) -> float:
        return sum(self.questions.values())

    @property
    def interval(self) -> tuple[float, float] | None:
        return interval_of(self.questions) if self.questions else None


def interval_of(questions: dict[str, float]) -> tuple[float, float]:
    """Wilson 95% interval of the mean score of ``questions`` (a fractional total is rounded to a count)."""
    return wilson(round(sum(questions.values())), len(questions))


@dataclass(frozen=True)
class Comparison:
    """The best trial against one other trial on the questions both answered."""

    beta: float
    number: int
    wins: int  # questions the best trial scored higher on
    losses: int  # questions the other trial scored higher on
    shared: int
    p: float

    @property
    def separated(self) -> bool:
        return self.p < ALPHA


def compare_best(best: TrialScore, others: list[TrialScore]) -> tuple[list[Comparison], list[TrialScore]]:
    """(the best against each other trial with recorded questions, the trials that have none to compare)."""
    comparisons, untested = [], []
    for other in others:
        if other.number == best.number:
            continue
        if not best.questions or not other.questions:
            untested.append(other)
            continue
        wins, losses, shared = discordant(best.questions, other.questions)
        comparisons.append(Comparison(other.beta, other.number, wins, losses, shared, mcnemar_exact(wins, losses)))
    return comparisons, untested


def not_separated(comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons the best does not win at p < ALPHA, by beta."""
    return sorted((c for c in comparisons if not c.separated), key=lambda c: c.beta)


def verdict(best: TrialScore, comparisons: list[Comparison], untested: list[TrialScore]) -> str:
    """``best beta 0.6 (acc 0.380 [0.316, 0.449], n 200); not separated from betas 0.5 (p 0.18), ...``."""
    interval = best.interval
    head = f"best beta {best.beta:g} (acc {best.value:.3f}"
    head += f" [{interval[0]:.3f}, {interval[1]:.3f}], n {best.n})" if interval else ", no per-question record)"
    close = not_separated(comparisons)
    if close:
        listed = ", ".join(f"{c.beta:g} (p {c.p:.3g}, {c.wins}-{c.losses})" for c in close)
        tail = f"not separated from betas {listed} at p<{ALPHA:g} (exact McNemar)"
    elif comparisons:
        tail = f"separated from every other beta at p<{ALPHA:g} (exact McNemar)"
    else:
        tail = "no other trial to compare with"
    if untested:
        tail += f"; betas {', '.join(f'{t.beta:g}' for t in untested)} not tested (no per-question record)"
    return f"{head}; {tail}"


def record_trial(trial, questions: dict[str, float]) -> tuple[float, float]:
    """Store a trial's per-question scores, n, correct count and Wilson interval on it; returns the interval."""
    low, high = interval_of(questions)
    trial.set_user_attr(ATTR_QUESTIONS, questions)
    trial.set_user_attr(ATTR_N, len(questions))
    trial.set_user_attr(ATTR_CORRECT, sum(questions.values()))
    trial.set_user_attr(ATTR_CI_LOW, low)
    trial.set_user_attr(ATTR_CI_HIGH, high)
    return low, high


def trial_score(trial, param: str) -> TrialScore:
    """A completed Optuna trial as a TrialScore (trials from before per-question records: none)."""
    questions = trial.user_attrs.get(ATTR_QUESTIONS) or {}
    return TrialScore(trial.number, trial.params[param], trial.value, {str(k): float(v) for k, v in questions.items()})


@dataclass(frozen=True)
class Separation:
    """The best completed trial against the others: what the sweep's parent run, table and figure show."""

    best: TrialScore
    comparisons: list[Comparison]
    untested: list[TrialScore]

    @property
    def close(self) -> list[float]:
        """The betas the best is not separated from."""
        return [c.beta for c in not_separated(self.comparisons)]

    @property
    def separated(self) -> bool:
        """Separated from every other completed trial (at least one), none left untested."""
        return bool(self.comparisons) and not self.close and not self.untested

    def text(self) -> str:
        return verdict(self.best, self.comparisons, self.untested)

    def table_columns(self, trial) -> dict:
        """sweep/trials.csv's columns for one trial: its interval; the best's wins, losses and p against it."""
        row = {key: trial.user_attrs.get(key, "") for key in TABLE_ATTRS}
        c = next((c for c in self.comparisons if c.number == trial.number), None)
        row.update(best_wins=c.wins if c else "", best_losses=c.losses if c else "", p_vs_best=c.p if c else "")
        return row

    def log(self, client, run_id: str) -> None:
        """The best's n and interval, whether it is separated, and the betas it is not (when it has a record)."""
        from reverse_align import tracking

        if not self.best.questions:
            return
        low, high = self.best.interval
        for name, value in (
            (tracking.METRIC_SWEEP_BEST_N, self.best.n),
            (tracking.METRIC_SWEEP_BEST_CI_LOW, low),
            (tracking.METRIC_SWEEP_BEST_CI_HIGH, high),
            (tracking.METRIC_SWEEP_BEST_SEPARATED, float(self.separated)),
        ):
            client.log_metric(run_id, name, value)
        client.set_tag(run_id, tracking.TAG_SWEEP_NOT_SEPARATED, ",".join(f"{b:g}" for b in self.close))


def separation(complete: list, param: str) -> Separation | None:
    """The best of the COMPLETE Optuna trials ``complete`` (the first of equals, as ``max`` picks) against each
    other one; None when there is none."""
    if not complete:
        return None
    scores = [trial_score(t, param) for t in complete]
    best = max(scores, key=lambda t: t.value)
    comparisons, untested = compare_best(best, scores)
    return Separation(best, comparisons, untested)
