"""Our grader against the extractors the field trusts: the installed lm-eval's own task code and filters,
and OpenAI simple-evals' answer patterns, on one table of responses (tests/data/grading_agreement.yaml).

References, per benchmark (each sees the whole response, thinking included, as it would in lm-eval):

- aime24: lm-eval's ``aime24`` task, its ``process_results`` (``aime/utils.py``: last box, else the text
  between the first and last ``$``, else the whole response; normalised string equality);
  simple-evals' MATH pattern ``(?i)Answer\\s*:\\s*([^\\n]+)`` (first match).
- math500: lm-eval's ``minerva_math500``, its ``process_docs`` on a solution boxing the gold and its
  ``process_results`` (``exact_match`` from ``Final Answer: The final answer is X. I hope it is
  correct.``, ``math_verify`` over the whole response); simple-evals' MATH pattern.
- gpqa: lm-eval's ``gpqa_diamond_cot_zeroshot``, the two pipelines of its ``filter_list``
  (``strict-match``: ``regex`` + ``take_first``; ``flexible-extract``: ``multi_choice_regex`` +
  ``take_first``) built with ``lm_eval.filters.build_filter_ensemble`` and scored with its
  ``exact_match`` settings; simple-evals' ``ANSWER_PATTERN_MULTICHOICE`` (first match).

simple-evals asks an LLM whether an extracted math answer equals the gold; with no network, math-verify
stands in for it. A row's reference verdict is *correct* when any reference marks it correct. Two
things of this venv are worked around, not changed: minerva's ``utils.py`` asserts antlr4 4.11 at
import (math-verify needs 4.13, so the assert is satisfied while importing), and sympy's ``parse_latex``
then cannot load its 4.11 grammar; it is made to raise the ``LaTeXParsingError`` that minerva's
``is_equiv`` already handles, so minerva's ``exact_match`` is its identical-string check.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from reverse_align.eval.benchmarks import BENCHMARKS
from reverse_align.eval.grading import ANSWER_MARKER, grade

BENCHMARK_NAMES = ("aime24", "math500", "gpqa")
# openai/simple-evals common.py (and math_eval.py's ANSWER_PATTERN); an earlier common.py had
# r"(?i)Answer\s*:\s*([A-D])" for the letter
SIMPLE_EVALS_MULTICHOICE = r"(?i)Answer[ \t]*:[ \t]*\$?([A-D])\$?"
SIMPLE_EVALS_ANSWER = r"(?i)Answer\s*:\s*([^\n]+)"
GPQA_TASK = "gpqa/cot_zeroshot/gpqa_diamond_cot_zeroshot.yaml"
AIME_TASK = "aime/aime24.yaml"
MINERVA_TASK = "minerva_math/minerva_math500.yaml"


@dataclass(frozen=True)
class Row:
    """One response of the table: ``attempt`` None means the model never wrote the answer marker."""

    id: str
    benchmark: str
    gold: str
    thinking: str
    attempt: str | None
    choices: tuple[str, ...] = ()
    rule: str | None = None  # our extracted_by, when the row pins it
    deliberate: str | None = None  # why we differ from the references on purpose

    @property
    def response(self) -> str:
        if self.attempt is None:
            return self.thinking
        return f"{self.thinking}\n{ANSWER_MARKER}\n{self.attempt}"


DEFAULT_THINKING = "Let me work through the problem step by step and check each case."


def load_table(path: Path) -> list[Row]:
    import yaml

    table = yaml.safe_load(Path(path).read_text())
    choices = {name: tuple(c) for name, c in (table.get("choices") or {}).items()}
    rows = []
    for item in table["rows"]:
        benchmark = item["benchmark"]
        if benchmark not in BENCHMARK_NAMES:
            raise ValueError(f"{path}: row {item.get('id')}: benchmark {benchmark!r} not in {BENCHMARK_NAMES}")
        rows.append(
            Row(
                id=str(item["id"]), benchmark=benchmark, gold=str(item["gold"]),
                thinking=item.get("thinking", DEFAULT_THINKING), attempt=item.get("attempt"),
                choices=choices.get(benchmark, ()), rule=item.get("rule"), deliberate=item.get("deliberate"),
            )
        )  # fmt: skip
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate row ids")
    return rows


# ---------------------------------------------------------------- lm-eval's own code


def _tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


@contextlib.contextmanager
def _antlr_411():
    """minerva's utils.py asserts antlr4-python3-runtime 4.11 when imported; math-verify needs 4.13."""
    real = importlib.metadata.version

    def version(name: str) -> str:
        return "4.11.0" if name.startswith("antlr4") else real(name)

    with mock.patch("importlib.metadata.version", side_effect=version):
        yield


@functools.cache
def _task(relative: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    with _antlr_411():
        return load_yaml(_tasks_dir() / relative, resolve_func=True)


def _no_antlr_latex(*_args, **_kwargs):
    from sympy.parsing.latex.errors import LaTeXParsingError

    raise LaTeXParsingError("sympy's antlr LaTeX grammar needs antlr4 4.11 (not installed)")


def lm_eval_aime(row: Row) -> bool:
    process_results = _task(AIME_TASK)["process_results"]
    return bool(process_results({"Answer": row.gold}, [row.response])["exact_match"])


@functools.cache
def _minerva_doc(gold: str) -> dict:
    """The doc minerva's own process_docs makes of a MATH solution that boxes ``gold``."""
    import datasets

    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        solution = datasets.Dataset.from_list([{"problem": "", "solution": f"So it is $\\boxed{{{gold}}}$."}])
        return dict(_task(MINERVA_TASK)["process_docs"](solution)[0])
    finally:
        if shown:
            datasets.enable_progress_bars()


def lm_eval_minerva(row: Row) -> bool:
    process_results = _task(MINERVA_TASK)["process_results"]
    doc = _minerva_doc(row.gold)
    with mock.patch.dict(process_results.__globals__, {"parse_latex": _no_antlr_latex}):
        scores = process_results(doc, [row.response])
    return bool(scores["exact_match"] or scores["math_verify"])


@functools.cache
def _gpqa_pipelines():
    from lm_eval.api.registry import get_metric
    from lm_eval.filters import build_filter_ensemble
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(_tasks_dir() / GPQA_TASK, resolve_func=False)
    # as ConfigurableTask builds them from filter_list
    pipelines = [
        build_filter_ensemble(
            f["name"], [[step["function"], {k: v for k, v in step.items() if k != "function"}] for step in f["filter"]]
        )
        for f in config["filter_list"]
    ]
    (metric,) = [m for m in config["metric_list"] if m["metric"] == "exact_match"]
    options = {k: v for k, v in metric.items() if k not in ("metric", "aggregation", "higher_is_better")}
    return pipelines, functools.partial(get_metric("exact_match"), **options)


def lm_eval_gpqa(row: Row) -> dict[str, bool]:
    """Verdict of each filter pipeline of lm-eval's gpqa_diamond_cot_zeroshot."""
    from lm_eval.api.instance import Instance

    pipelines, exact_match = _gpqa_pipelines()
    doc = {"choices": list(row.choices), "answer": f"({row.gold})"}
    instance = Instance("generate_until", doc, ("", {}), 0, resps=[row.response])
    verdicts = {}
    for pipeline in pipelines:
        pipeline.apply([instance])
        extracted = instance.filtered_resps[pipeline.name]
        verdicts[f"lm-eval gpqa {pipeline.name}"] = bool(
            exact_match(references=[doc["answer"]], predictions=[extracted])["exact_match"]
        )
    return verdicts


# ---------------------------------------------------------------- simple-evals' patterns


def _math_verify_equal(gold: str, extracted: str) -> bool:
    """math-verify in place of simple-evals' LLM equality check."""
    from math_verify import parse, verify

    return bool(verify(parse(f"${gold}$"), parse(extracted)))


def simple_evals_math(row: Row) -> bool:
    match = re.search(SIMPLE_EVALS_ANSWER, row.response)
    return bool(match) and _math_verify_equal(row.gold, match.group(1))


def simple_evals_gpqa(row: Row) -> bool:
    match = re.search(SIMPLE_EVALS_MULTICHOICE, row.response)
    return bool(match) and match.group(1) == row.gold


def reference_verdicts(row: Row) -> dict[str, bool]:
    """Each reference's verdict on the row, by reference name."""
    if row.benchmark == "aime24":
        return {"lm-eval aime24": lm_eval_aime(row), "simple-evals Answer:": simple_evals_math(row)}
    if row.benchmark == "math500":
        return {"lm-eval minerva_math500": lm_eval_minerva(row), "simple-evals Answer:": simple_evals_math(row)}
    return {**lm_eval_gpqa(row), "simple-evals Answer: X": simple_evals_gpqa(row)}


# ---------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Outcome:
    row: Row
    ours: bool
    extracted_by: str
    references: dict[str, bool]

    @property
    def reference(self) -> bool:
        return any(self.references.values())

    @property
    def agrees(self) -> bool:
        return self.ours == self.reference


def compare(row: Row) -> Outcome:
    graded = grade(BENCHMARKS[row.benchmark].kind, row.response, row.gold, list(row.choices))
    return Outcome(row, graded.correct, graded.extracted_by, reference_verdicts(row))


def summary(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    """Per benchmark: rows, agreements, deliberate differences, and differences nobody explained."""
    table = {}
    for name in BENCHMARK_NAMES:
        mine = [o for o in outcomes if o.row.benchmark == name]
        table[name] = {
            "rows": len(mine),
            "agreements": sum(o.agrees for o in mine),
            "deliberate": sum(not o.agrees and bool(o.row.deliberate) for o in mine),
            "unexplained": sum(not o.agrees and not o.row.deliberate for o in mine),
        }
    return table
