"""lm-eval hooks of the shipped tasks: where the docs are, and grading through reverse_align.eval.grading."""

from __future__ import annotations

import json
from pathlib import Path

from reverse_align.eval.grading import OK, grade


def load_docs(docs_dir: str, benchmark: str, **_metadata):
    """``custom_dataset``: the docs reverse_align.eval.benchmarks wrote for this benchmark."""
    import datasets

    lines = (Path(docs_dir) / f"{benchmark}.jsonl").read_text().splitlines()
    return {"test": datasets.Dataset.from_list([json.loads(line) for line in lines if line.strip()])}


def keep_all(resps, docs):
    """Every sample of every question (a ``custom`` filter)."""
    return resps


def responses(results) -> list[str]:
    """The n sampled responses of one question (``keep_all`` leaves them as a list)."""
    first = results[0]
    return list(first) if isinstance(first, (list, tuple)) else list(results)


def process_results(doc: dict, results) -> dict:
    """Accuracy (mean over the question's samples) and the share of samples with no readable answer."""
    graded = [grade(doc["kind"], r, doc["gold"], doc["choices"], doc["marker_required"]) for r in responses(results)]
    return {
        "accuracy": sum(g.correct for g in graded) / len(graded),
        "unparsed": sum(g.status != OK for g in graded) / len(graded),
    }
