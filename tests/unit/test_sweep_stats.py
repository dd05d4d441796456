"""The sweep's noise check (reverse_align/sweep_stats.py): Wilson intervals, exact McNemar, the verdict, the figure."""

from __future__ import annotations

import optuna
import pytest
from scipy.stats import binomtest

from reverse_align import sweep_plots, sweep_stats
from reverse_align.eval.intervals import wilson
from reverse_align.sweep_stats import TrialScore, compare_best, mcnemar_exact, not_separated, verdict


def test_wilson_of_the_issue_case():
    # 0.38 on 200 questions: the interval spans 0.35-0.41, the whole range the sweep saw.
    low, high = wilson(76, 200)
    assert low == pytest.approx(0.3157, abs=5e-4) and high == pytest.approx(0.4487, abs=5e-4)
    assert sweep_stats.interval_of({str(i): float(i < 76) for i in range(200)}) == (low, high)


@pytest.mark.parametrize("wins, losses", [(10, 4), (4, 10), (0, 6), (20, 5), (7, 7), (1, 0), (30, 12)])
def test_mcnemar_exact_is_the_two_sided_binomial_test(wins, losses):
    expected = binomtest(wins, wins + losses, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(wins, losses) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_numbers():
    assert mcnemar_exact(10, 4) == pytest.approx(0.1796, abs=1e-4)  # 1471 / 8192
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 6 losses out of 6: separated
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # 5 out of 5 is not (p 0.0625)


def _trial(number: int, beta: float, right: set[int], n: int = 200) -> TrialScore:
    questions = {f"q{i}": float(i in right) for i in range(n)}
    return TrialScore(number, beta, len(right) / n, questions)


def test_best_of_the_issue_is_not_separated():
    # Five betas at 0.33-0.41 on the same 200 questions: 60 questions every trial gets right, and each trial
    # its own further ones. The best (beta 0.6, 0.41) is inside the noise of three of them.
    extra = {0.2: 6, 0.4: 14, 0.5: 16, 0.6: 22, 0.8: 12}
    trials, start = [], 60
    for number, (beta, plus) in enumerate(extra.items()):
        trials.append(_trial(number, beta, set(range(60)) | set(range(start, start + plus))))
        start += plus
    best = max(trials, key=lambda t: t.value)
    assert best.beta == 0.6 and best.value == pytest.approx(0.41)
    comparisons, untested = compare_best(best, trials)
    assert untested == [] and len(comparisons) == 4
    by_beta = {c.beta: (c.wins, c.losses, round(c.p, 4)) for c in comparisons}
    assert by_beta == {0.2: (22, 6, 0.0037), 0.4: (22, 14, 0.243), 0.5: (22, 16, 0.4177), 0.8: (22, 12, 0.1214)}
    assert [c.beta for c in not_separated(comparisons)] == [0.4, 0.5, 0.8]
    assert verdict(best, comparisons, []) == (
        "best beta 0.6 (acc 0.410 [0.344, 0.479], n 200); not separated from betas 0.4 (p 0.243, 22-14), "
        "0.5 (p 0.418, 22-16), 0.8 (p 0.121, 22-12) at p<0.05 (exact McNemar)"
    )


def test_ten_wins_four_losses_is_not_separated():
    best = _trial(0, 0.6, set(range(10)) | set(range(20, 70)))  # 60 right
    other = _trial(1, 0.4, set(range(10, 14)) | set(range(20, 70)))  # 54 right
    comparisons, _ = compare_best(best, [best, other])
    (c,) = comparisons
    assert (c.wins, c.losses, c.shared) == (10, 4, 200) and c.p == pytest.approx(0.1796, abs=1e-4)
    assert not c.separated
    assert verdict(best, comparisons, []) == (
        "best beta 0.6 (acc 0.300 [0.241, 0.367], n 200); "
        "not separated from betas 0.4 (p 0.18, 10-4) at p<0.05 (exact McNemar)"
    )


def test_separated_and_untested_trials_are_said():
    best = _trial(0, 0.6, set(range(120)))
    worse = _trial(1, 0.1, set(range(60)))
    old = TrialScore(2, 0.3, 0.2)  # a trial from before per-question records
    comparisons, untested = compare_best(best, [best, worse, old])
    assert [c.beta for c in comparisons] == [0.1] and untested == [old]
    assert comparisons[0].p < 1e-15
    assert verdict(best, comparisons, untested) == (
        "best beta 0.6 (acc 0.600 [0.531, 0.665], n 200); separated from every other beta at p<0.05 "
        "(exact McNemar); betas 0.3 not tested (no per-question record)"
    )


def test_fractional_scores_use_the_sign_test_on_differing_questions():
    # Several samples per question: scores are means; only questions whose scores differ count.
    a = {"q1": 1.0, "q2": 0.5, "q3": 0.25, "q4": 0.0}
    b = {"q1": 0.5, "q2": 0.5, "q3": 0.75, "q4": 0.0, "q5": 1.0}
    assert sweep_stats.discordant(a, b) == (1, 1, 4)  # q5 is not shared


def _study_with_trials(values: dict[float, tuple[float, int]]):
    """A study of completed trials carrying what record_trial stores, as the sweep leaves them."""
    study = optuna.create_study(direction="maximize", study_name="dpo-beta-test")
    distribution = optuna.distributions.FloatDistribution(0.1, 0.8)
    for beta, (value, n) in values.items():
        right = round(value * n)
        attrs = dict(zip(sweep_stats.TABLE_ATTRS, (n, right, *wilson(right, n))))
        attrs[sweep_stats.ATTR_QUESTIONS] = {f"q{i}": float(i < right) for i in range(n)}
        study.add_trial(
            optuna.trial.create_trial(
                params={"beta": beta}, distributions={"beta": distribution}, value=value, user_attrs=attrs
            )
        )
    return study


def test_record_trial_stores_the_interval():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    beta = trial.suggest_float("beta", 0.1, 0.8)
    questions = {str(i): float(i < 76) for i in range(200)}
    low, high = sweep_stats.record_trial(trial, questions)
    study.tell(trial, 0.38)
    attrs = study.trials[0].user_attrs
    assert (attrs["n"], attrs["correct"], attrs["ci_low"], attrs["ci_high"]) == (200, 76, low, high)
    assert (low, high) == wilson(76, 200)
    score = sweep_stats.trial_score(study.trials[0], "beta")
    assert (score.beta, score.value, score.n, score.correct, score.interval) == (beta, 0.38, 200, 76, (low, high))


def test_figure_draws_error_bars(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = _study_with_trials({0.2: (0.35, 200), 0.4: (0.38, 200), 0.6: (0.41, 200), 0.8: (0.36, 200)})
    drawn = []
    original = plt.Axes.errorbar

    def spy(self, x, y, yerr=None, **kwargs):
        drawn.append((list(x), list(y), [list(v) for v in yerr]))
        return original(self, x, y, yerr=yerr, **kwargs)

    plt.Axes.errorbar = spy
    try:
        paths = sweep_plots.draw(study, "beta", "exact_match", tmp_path, close=[0.4, 0.8], compared=3)
    finally:
        plt.Axes.errorbar = original
    assert [p.name for p in paths] == [sweep_plots.OBJECTIVE_VS_BETA, sweep_plots.HISTORY]
    assert all(p.stat().st_size > 10_000 for p in paths)
    ((x, y, (below, above)),) = drawn
    assert x == [0.2, 0.4, 0.6, 0.8] and y == [0.35, 0.38, 0.41, 0.36]
    low, high = wilson(76, 200)
    assert below[1] == pytest.approx(0.38 - low) and above[1] == pytest.approx(high - 0.38)


class _Client:
    """Records what Separation.log writes to the parent run."""

    def __init__(self):
        self.metrics, self.tags = {}, {}

    def log_metric(self, run_id, name, value):
        self.metrics[name] = value

    def set_tag(self, run_id, name, value):
        self.tags[name] = value


def test_separation_of_a_study_logs_table_columns_metrics_and_tag():
    from reverse_align import tracking

    study = _study_with_trials({0.2: (0.35, 200), 0.4: (0.38, 200), 0.6: (0.41, 200), 0.8: (0.30, 200)})
    found = sweep_stats.separation(study.trials, "beta")
    # Nested answers (trial k right on the first 200 * value questions): the best wins every discordant one.
    assert [(c.beta, c.wins, c.losses) for c in found.comparisons] == [(0.2, 12, 0), (0.4, 6, 0), (0.8, 22, 0)]
    assert found.close == [] and found.separated  # 6-0: p 0.031
    row = found.table_columns(study.trials[1])
    assert row == {"n": 200, "correct": 76, "ci_low": wilson(76, 200)[0], "ci_high": wilson(76, 200)[1],
                   "best_wins": 6, "best_losses": 0, "p_vs_best": pytest.approx(2 / 64)}  # fmt: skip
    assert found.table_columns(study.trials[2])["p_vs_best"] == ""  # the best itself
    client = _Client()
    found.log(client, "parent")
    assert client.metrics == {
        tracking.METRIC_SWEEP_BEST_N: 200,
        tracking.METRIC_SWEEP_BEST_CI_LOW: wilson(82, 200)[0],
        tracking.METRIC_SWEEP_BEST_CI_HIGH: wilson(82, 200)[1],
        tracking.METRIC_SWEEP_BEST_SEPARATED: 1.0,
    }
    assert client.tags == {tracking.TAG_SWEEP_NOT_SEPARATED: ""}
    # One trial alone is not "separated" from anything; no trial: nothing to say.
    alone = sweep_stats.separation(study.trials[2:3], "beta")
    alone.log(client, "parent")
    assert client.metrics[tracking.METRIC_SWEEP_BEST_SEPARATED] == 0.0 and alone.text().endswith(
        "no other trial to compare with"
    )
    assert sweep_stats.separation([], "beta") is None
