"""A thin MLflow adapter over lm-eval's results: per-sample rows, accuracies with 95% intervals, artifacts.

lm-eval's own numbers (``accuracy``, ``unparsed`` of the shipped tasks, same grading) stay in its
results JSON; the metrics here are recomputed from its logged samples because lm-eval has no
per-question interval, no count of truncated answers, and no judge. With a judge, ``accuracy`` is
the judge's and ``accuracy_rules`` the offline rules'.
"""

from __future__ import annotations

import json

from reverse_align import tracking
from reverse_align.eval import intervals
from reverse_align.eval.grading import LETTERS, OK, TRUNCATED, attempt_part, grade
from reverse_align.eval.tasks.hooks import responses


def sample_rows(benchmark: str, samples: list[dict]) -> list[dict]:
    """One row per (question, sample): id, sample, response, extracted, extracted_by (the grading rule
    that read it, grading.EXTRACTION_RULES), gold, correct, status."""
    rows = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        doc = sample["doc"]
        for index, response in enumerate(responses(sample["filtered_resps"])):
            graded = grade(doc["kind"], response, doc["gold"], doc["choices"], doc["marker_required"])
            rows.append(
                {
                    "benchmark": benchmark, "id": doc["id"], "sample": index, "response": response,
                    "extracted": graded.extracted, "extracted_by": graded.extracted_by, "gold": doc["gold"],
                    "correct": graded.correct,
                    "status": graded.status,
                }
            )  # fmt: skip
    return rows


def apply_judge(judge, rows: list[dict], docs: dict[str, dict]) -> None:
    """The judge's verdict becomes ``correct`` (the rules' stays as ``correct_rules``); truncated stay wrong."""
    asked = [r for r in rows if r["status"] != TRUNCATED]
    items = []
    for row in asked:
        doc = docs[row["id"]]
        reference = doc["gold"]
        if doc["choices"]:
            reference = f"{doc['gold']}) {doc['choices'][LETTERS.index(doc['gold'])]}"
        attempt = attempt_part(row["response"], doc["marker_required"])
        items.append((doc["question"], reference, attempt))
    for row in rows:
        row["correct_rules"] = row["correct"]
    for row, match in zip(asked, judge.verdicts(items)):
        row["correct"] = match


def benchmark_metrics(benchmark: str, rows: list[dict], samples: int, resamples: int, judged: bool) -> dict:
    by_question: dict[str, list[dict]] = {}
    for row in rows:
        by_question.setdefault(row["id"], []).append(row)
    per_question = [sum(r["correct"] for r in group) / len(group) for group in by_question.values()]
    accuracy = sum(per_question) / len(per_question) if per_question else 0.0
    low, high = intervals.interval(per_question, samples, resamples)
    metrics = {
        tracking.metric_eval_accuracy(benchmark): accuracy,
        tracking.metric_eval(benchmark, "ci_low"): low,
        tracking.metric_eval(benchmark, "ci_high"): high,
        tracking.metric_eval(benchmark, "unparsed"): sum(r["status"] != OK for r in rows),
        tracking.metric_eval(benchmark, "truncated"): sum(r["status"] == TRUNCATED for r in rows),
        tracking.metric_eval(benchmark, "questions"): len(by_question),
        tracking.metric_eval(benchmark, "answers"): len(rows),
    }
    if judged:
        metrics[tracking.metric_eval(benchmark, "accuracy_rules")] = sum(r["correct_rules"] for r in rows) / max(
            1, len(rows)
        )
    return metrics


def average(metrics: dict, benchmarks: list[str]) -> float:
    return sum(metrics[tracking.metric_eval_accuracy(b)] for b in benchmarks) / len(benchmarks)


def log(results: dict, rows: dict[str, list[dict]], metrics: dict) -> None:
    """Metrics, one MLflow table per benchmark and lm-eval's results JSON (without the samples)."""
    import mlflow
    import pandas as pd
    from lm_eval.utils import handle_non_serializable

    mlflow.log_metrics(metrics)
    for benchmark, benchmark_rows in rows.items():
        mlflow.log_table(pd.DataFrame(benchmark_rows), f"{tracking.ARTIFACT_EVAL_SAMPLES}/{benchmark}.json")
    summary = {k: v for k, v in results.items() if k != "samples"}
    mlflow.log_text(json.dumps(summary, indent=2, default=handle_non_serializable), tracking.ARTIFACT_EVAL_RESULTS)


def copy_to_evaluated(evaluated_id: str, eval_id: str, metrics: dict, benchmarks: list[str]) -> None:
    """The accuracies and average onto the adapter's own run too, so that runs compare (and `promote`
    ranks them) by score in the MLflow UI; the tag names the evaluate run they come from."""
    import time

    import mlflow
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    names = [tracking.metric_eval_accuracy(b) for b in benchmarks] + [tracking.METRIC_EVAL_AVERAGE]
    mlflow.MlflowClient().log_batch(
        evaluated_id,
        metrics=[Metric(name, float(metrics[name]), now, 0) for name in names],
        tags=[RunTag(tracking.TAG_EVAL_RUN, eval_id)],
    )


def summary_table(metrics: dict, benchmarks: list[str]) -> str:
    lines = [f"{'benchmark':20s} {'accuracy':>8s}  {'95% interval':>15s}  {'unparsed':>8s}  {'answers':>7s}"]
    for b in benchmarks:
        acc, low, high, unparsed, answers = (
            metrics[tracking.metric_eval(b, n)] for n in ("accuracy", "ci_low", "ci_high", "unparsed", "answers")
        )
        lines.append(f"{b:20s} {acc:8.3f}  [{low:.3f}, {high:.3f}]  {int(unparsed):8d}  {int(answers):7d}")
    lines.append(f"{'average':20s} {metrics[tracking.METRIC_EVAL_AVERAGE]:8.3f}")
    return "\n".join(lines)
