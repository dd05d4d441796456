"""Loaders for s1K-1.1 and s1K: local .jsonl / .parquet files or an HF dataset id.

The paper's forward target is the DeepSeek-R1 trace + attempt; an item whose
DeepSeek example is longer than ``model.max_length`` tokens, counted as SFT
renders it (chat template included), falls back to the Gemini trace + attempt
(PROTOCOL §1: "some of the excess data are replaced with Gemini data"). An
item too long either way goes through :func:`reverse_align.data.lengths.fit`
(thinking cut, or dropped when question + answer alone do not fit), counted.
s1K (1.0) only has Gemini traces, under ``thinking_trajectories`` / ``attempt``.

``gold`` is the reference *final answer* (what grading compares with): the last
``\\boxed{}`` of ``solution``, else the whole solution when it is short, else
null (a proof has no single answer). The full solution is kept as ``solution``.
"""

from __future__ import annotations

import json
from pathlib import Path

from reverse_align.data import lengths as length_rule
from reverse_align.data.schema import FORWARD, Record
from reverse_align.errors import UserError
from reverse_align.formatting import last_boxed

S1K_11_COLUMNS = (
    "solution",
    "question",
    "cot_type",
    "source_type",
    "metadata",
    "gemini_thinking_trajectory",
    "gemini_attempt",
    "deepseek_thinking_trajectory",
    "deepseek_attempt",
    "gemini_grade",
    "gemini_grade_reason",
    "deepseek_grade",
    "deepseek_grade_reason",
)
S1K_10_COLUMNS = ("solution", "question", "cot_type", "source_type", "metadata", "thinking_trajectories", "attempt")
# What each format needs to build a forward record.
_REQUIRED = {
    "s1K-1.1": ("solution", "question", "deepseek_thinking_trajectory", "deepseek_attempt",
                "gemini_thinking_trajectory", "gemini_attempt"),
    "s1K": ("solution", "question", "thinking_trajectories", "attempt"),
}


def _trace_text(value) -> str:
    # s1K stores thinking_trajectories as a one-element list.
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def _detect_format(columns, where: str) -> str:
    columns = set(columns)
    if "deepseek_thinking_trajectory" in columns or "gemini_thinking_trajectory" in columns:
        fmt = "s1K-1.1"
    elif "thinking_trajectories" in columns:
        fmt = "s1K"
    else:
        fmt = "s1K-1.1"
    missing = [c for c in _REQUIRED[fmt] if c not in columns]
    if missing:
        raise UserError(f"{where}: missing column(s) {', '.join(missing)} of {fmt}")
    return fmt


def _rows_from_jsonl(path: Path) -> list[tuple[str, dict]]:
    rows = []
    with path.open() as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {number}: malformed JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path} line {number}: expected a JSON object")
            rows.append((f"{path} line {number}", row))
    return rows


def _rows_from_parquet(path: Path) -> list[tuple[str, dict]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    return [(f"{path} row {i + 1}", row) for i, row in enumerate(frame.to_dict("records"))]


def _rows_from_hub(dataset_id: str) -> list[tuple[str, dict]]:
    try:
        import datasets

        dataset = datasets.load_dataset(dataset_id, split="train")
    except Exception as exc:
        raise UserError(f"dataset {dataset_id}: cannot load ({type(exc).__name__}: {str(exc)[:200]})") from None
    return [(f"{dataset_id} row {i + 1}", row) for i, row in enumerate(dataset)]


def read_rows(source: str) -> list[tuple[str, dict]]:
    path = Path(source)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise UserError(f"{source}: file not found")
        return _rows_from_jsonl(path)
    if path.suffix == ".parquet":
        if not path.is_file():
            raise UserError(f"{source}: file not found")
        return _rows_from_parquet(path)
    if path.exists():
        raise UserError(f"{source}: expected a .jsonl or .parquet file")
    return _rows_from_hub(source)


# A solution without a \boxed{} this short is itself the final answer ("109", "$\\frac{1}{2}$").
SHORT_SOLUTION_CHARS = 100


def final_answer(solution) -> str | None:
    """The reference final answer of an s1K solution: its last \\boxed{}, or the solution when short."""
    text = "" if solution is None else str(solution).strip()
    boxed = last_boxed(text)
    if boxed:
        return boxed
    return text if text and len(text) <= SHORT_SOLUTION_CHARS else None


def load_s1k(source: str, lengths: length_rule.Lengths, max_length: int, limit: int = 0) -> tuple[list[Record], dict]:
    """Forward records from an s1K file or dataset, and counts of what was done.

    ``lengths`` measures examples in the preset model's tokens as SFT renders
    them, for the Gemini fallback and the length rule.
    """
    rows = read_rows(source)
    if not rows:
        raise UserError(f"{source}: no rows")
    if limit:
        rows = rows[:limit]
    fmt = _detect_format(rows[0][1].keys(), rows[0][0])
    stats = {"rows": len(rows), "deepseek": 0, "gemini_fallback": 0, "gemini": 0, "gold_null": 0,
             length_rule.THINKING_CUT: 0, length_rule.DROPPED: 0}  # fmt: skip
    name = Path(source).stem if Path(source).suffix else source.split("/")[-1]
    records = []
    for index, (where, row) in enumerate(rows):
        missing = [c for c in _REQUIRED[fmt] if c not in row]
        if missing:
            raise UserError(f"{where}: missing column(s) {', '.join(missing)} of {fmt}")
        question = str(row["question"] or "").strip()
        if not question:
            raise UserError(f"{where}: empty question")
        pair_id = f"{name}-{index:05d}"
        solution = None if row["solution"] is None else str(row["solution"])

        def record(thinking, attempt, teacher):
            return Record(
                id=f"{pair_id}-f", pair_id=pair_id, direction=FORWARD, question=question,
                thinking=_trace_text(thinking).strip(), attempt=str(attempt or "").strip(),
                gold=final_answer(solution), source=f"{name}:{teacher}", solution=solution,
            )  # fmt: skip

        if fmt == "s1K":
            chosen = record(row["thinking_trajectories"], row["attempt"], "gemini")
        else:
            chosen = record(row["deepseek_thinking_trajectory"], row["deepseek_attempt"], "deepseek")
            if not chosen.thinking or lengths.example(chosen) > max_length:
                chosen = record(row["gemini_thinking_trajectory"], row["gemini_attempt"], "gemini_fallback")
        if not chosen.thinking and not chosen.attempt:
            raise UserError(f"{where}: no reasoning trace or attempt")
        fitted, outcome = length_rule.fit(chosen, lengths, max_length)
        if outcome != length_rule.KEPT:
            stats[outcome] += 1
        if fitted is None:
            continue
        stats[fitted.source.split(":")[-1]] += 1
        stats["gold_null"] += fitted.gold is None
        records.append(fitted)
    return records, stats
