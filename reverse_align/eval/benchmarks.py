"""The benchmarks `evaluate` scores and where their questions come from, as lm-eval docs.

Every benchmark becomes a list of docs of one shape, ``{id, question, gold,
choices, kind, marker_required}``: ``question`` is the user message, ``gold``
the reference answer (GPQA: the letter of the correct option after shuffling),
``kind`` the grading rule (eval/grading.py). The shipped lm-eval tasks
(eval/tasks/*.yaml) read these docs from a file written here.

- aime24, math500, gpqa: ``eval.<name>_source``, the HF dataset of PROTOCOL §5
  or a local .jsonl/.parquet with that dataset's field names (aime24_nofigures:
  ``problem``, ``answer``; MATH-500: ``problem``, ``answer``, ``unique_id``;
  GPQA: ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``, ``Record ID``).
  The hub is only asked when the source is not a file; offline, a missing
  dataset is one error line.
- synthetic_forward / _reverse / _transfer: the held-out sets a data (or invert)
  run logged (tracking.SYNTHETIC_TEST_ARTIFACTS).

Prompts: AIME and MATH give the problem alone, as s1K's training questions do;
GPQA uses the multiple-choice template of OpenAI's simple-evals (which s1's
``gpqa_diamond_openai`` task uses), hence the ``Answer: LETTER`` fallback of the grader.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from reverse_align import tracking
from reverse_align.config import EvalConfig
from reverse_align.errors import UserError
from reverse_align.eval.grading import CHOICE, INTEGER, LETTERS, MATH


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # grading rule
    # HF dataset layout (split, config) and the fields a row must have; synthetic ones come from a run.
    split: str = "train"
    hf_config: str | None = None
    fields: tuple[str, ...] = ()

    @property
    def synthetic(self) -> bool:
        return self.name in tracking.SYNTHETIC_TEST_ARTIFACTS

    def source(self, cfg: EvalConfig) -> str:
        return getattr(cfg, f"{self.name}_source")


GPQA_OPTIONS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
BENCHMARKS = {
    "aime24": Benchmark("aime24", INTEGER, "train", None, ("problem", "answer")),
    "math500": Benchmark("math500", MATH, "test", None, ("problem", "answer")),
    "gpqa": Benchmark("gpqa", CHOICE, "train", "gpqa_diamond", ("Question", *GPQA_OPTIONS)),
    **{name: Benchmark(name, INTEGER) for name in tracking.SYNTHETIC_TEST_ARTIFACTS},
}

GPQA_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step "
    "before answering.\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)


def check_benchmarks(names: list[str]) -> list[str]:
    if not names:
        raise UserError("--benchmarks is empty; valid benchmarks: " + ", ".join(BENCHMARKS))
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"--benchmarks {','.join(unknown)}: unknown; valid benchmarks: {', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- reading sources


def _rows_from_hub(source: str, bench: Benchmark) -> list[tuple[str, dict]]:
    try:
        import datasets

        dataset = datasets.load_dataset(source, bench.hf_config, split=bench.split)
    except Exception as exc:  # noqa: BLE001 - offline, gated, missing: datasets raises many types
        raise UserError(
            f"eval.{bench.name}_source {source}: not a local file and the hub cannot give it "
            f"({type(exc).__name__}); pass a local .jsonl/.parquet with the dataset's fields "
            f"(--set eval.{bench.name}_source=PATH)"
        ) from None
    return [(f"{source} row {i + 1}", row) for i, row in enumerate(dataset)]


def read_rows(bench: Benchmark, source: str) -> list[tuple[str, dict]]:
    from reverse_align.data.s1k import _rows_from_jsonl, _rows_from_parquet

    path = Path(source)
    if path.suffix in (".jsonl", ".parquet"):
        if not path.is_file():
            raise UserError(f"eval.{bench.name}_source {source}: file not found")
        rows = _rows_from_jsonl(path) if path.suffix == ".jsonl" else _rows_from_parquet(path)
    else:
        rows = _rows_from_hub(source, bench)
    if not rows:
        raise UserError(f"eval.{bench.name}_source {source}: no rows")
    for where, row in rows:
        missing = [f for f in bench.fields if f not in row]
        if missing:
            raise UserError(f"{where}: missing field(s) {', '.join(missing)} of {bench.name}")
    return rows


# ---------------------------------------------------------------- docs


def _doc(doc_id, question: str, gold, kind: str, cfg: EvalConfig, choices: list[str] | None = None) -> dict:
    return {
        "id": str(doc_id), "question": question, "gold": str(gold), "choices": choices or [], "kind": kind,
        "marker_required": cfg.answer_marker_required,
    }  # fmt: skip


def gpqa_doc(index: int, row: dict, cfg: EvalConfig) -> dict:
    """The four options in an order fixed by (seed, question id); gold = the correct option's new letter."""
    options = [str(row[f]).strip() for f in GPQA_OPTIONS]
    doc_id = row.get("Record ID") or f"gpqa-{index:04d}"
    order = list(range(4))
    random.Random(f"{cfg.gpqa_shuffle_seed}:{doc_id}").shuffle(order)
    choices = [options[i] for i in order]
    gold = LETTERS[order.index(0)]
    question = GPQA_TEMPLATE.format(question=str(row["Question"]).strip(), **dict(zip(LETTERS, choices)))
    return _doc(doc_id, question, gold, CHOICE, cfg, choices)


def hub_docs(bench: Benchmark, cfg: EvalConfig) -> list[dict]:
    rows = read_rows(bench, bench.source(cfg))
    if bench.kind == CHOICE:
        return [gpqa_doc(i, row, cfg) for i, (_, row) in enumerate(rows)]
    docs = []
    for i, (_, row) in enumerate(rows):
        doc_id = row.get("unique_id") or row.get("id") or row.get("ID") or f"{bench.name}-{i:04d}"
        docs.append(_doc(doc_id, str(row["problem"]).strip(), str(row["answer"]).strip(), bench.kind, cfg))
    return docs


def synthetic_docs(bench: Benchmark, cfg: EvalConfig, data_run_id: str) -> list[dict]:
    import mlflow

    from reverse_align.data.invert import load_run_records

    artifact = tracking.SYNTHETIC_TEST_ARTIFACTS[bench.name]
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(data_run_id, "data")}
    if artifact not in names:
        raise UserError(f"--data_run_id {data_run_id}: has no {artifact} (benchmark {bench.name})")
    return [_doc(r.id, r.question, r.gold, bench.kind, cfg) for r in load_run_records(data_run_id, artifact)]


def load_docs(name: str, cfg: EvalConfig, data_run_id: str | None) -> list[dict]:
    """The docs of one benchmark, the first ``cfg.limit`` of them when set."""
    bench = BENCHMARKS[name]
    if bench.synthetic:
        if not data_run_id:
            raise UserError(f"benchmark {name} needs held-out problems: pass --data_run_id <data or invert run>")
        docs = synthetic_docs(bench, cfg, data_run_id)
    else:
        docs = hub_docs(bench, cfg)
    return docs[: cfg.limit] if cfg.limit > 0 else docs


def write_docs(docs: list[dict], path: Path) -> str:
    """Docs as JSON lines; returns their sha256 (12 hex), logged as the benchmark's data hash."""
    text = "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs)
    path.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
