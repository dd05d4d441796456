"""Our grader against the installed lm-eval's own task code and filters and simple-evals' patterns (issue 22).

The shared table (tests/data/grading_agreement.yaml) holds real-looking responses of the three paper
benchmarks; reverse_align/eval/agreement.py runs the references on each. Our verdict must equal theirs
except on rows that say why we differ, and those rows must really differ (a stale reason fails).
"""

import functools
from pathlib import Path

import pytest

from reverse_align.eval import agreement
from reverse_align.eval.grading import EXTRACTION_RULES

TABLE = Path(__file__).resolve().parent.parent / "data" / "grading_agreement.yaml"
ROWS = agreement.load_table(TABLE)
compare = functools.cache(agreement.compare)  # rows are frozen: each is graded once per session


def test_table_covers_the_three_benchmarks_and_the_forms_the_issue_names():
    assert len(ROWS) >= 40
    by_benchmark = {name: [r for r in ROWS if r.benchmark == name] for name in agreement.BENCHMARK_NAMES}
    assert all(len(rows) >= 10 for rows in by_benchmark.values())
    attempts = [r.attempt or "" for r in ROWS]
    for form in ("(C)", "The answer is", "Answer:", "\\boxed", "\\frac", "(1, 3]", "033"):
        assert any(form in a for a in attempts), form
    assert any(a.strip() and "\\boxed" not in a and "Answer" not in a for a in attempts)  # unboxed
    assert any(r.attempt is None for r in ROWS)  # truncated thinking
    assert all(r.rule in EXTRACTION_RULES for r in ROWS if r.rule)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_our_verdict_equals_the_references_unless_the_row_says_why_not(row):
    outcome = compare(row)
    if row.deliberate:
        assert not outcome.agrees, f"{row.id} is marked a deliberate difference but agrees: {outcome.references}"
    else:
        assert outcome.agrees, f"{row.id}: ours {outcome.ours}, references {outcome.references}"
    if row.rule:
        assert outcome.extracted_by == row.rule


def test_references_are_the_installed_lm_eval_code():
    # the gpqa pipelines are the filter_list of the installed task YAML, by name and filter class
    pipelines, _ = agreement._gpqa_pipelines()
    assert [p.name for p in pipelines] == ["strict-match", "flexible-extract"]
    assert agreement._task(agreement.AIME_TASK)["process_results"].__module__ == "lm_eval.tasks.aime.utils"
    minerva = agreement._task(agreement.MINERVA_TASK)["process_results"]
    assert minerva.__module__ == "lm_eval.tasks.minerva_math.utils"
    # a reference can disagree with us: lm-eval's flexible-extract reads a mentioned option's text
    (row,) = [r for r in ROWS if r.id == "gpqa-option-mentioned"]
    assert agreement.lm_eval_gpqa(row)["lm-eval gpqa flexible-extract"] is True


def test_summary_counts_rows_agreements_and_deliberate_differences():
    table = agreement.summary([compare(r) for r in ROWS])
    for name, counts in table.items():
        assert counts["unexplained"] == 0, name
        assert counts["agreements"] + counts["deliberate"] == counts["rows"]
        assert counts["deliberate"] == sum(1 for r in ROWS if r.benchmark == name and r.deliberate)


def test_regrading_a_stored_table_counts_unparsed_before_and_after(tmp_path):
    import importlib.util
    import json
    import subprocess

    spec = importlib.util.spec_from_file_location("regrade_samples", TABLE.parents[2] / "bench" / "regrade_samples.py")
    regrade_samples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regrade_samples)
    git = ["git", "-C", str(TABLE.parent), "cat-file", "-e", regrade_samples.BEFORE_ISSUE_22]
    known = subprocess.run(git, check=False, capture_output=True)
    if known.returncode != 0:
        pytest.skip("a checkout without the commit before issue 22")
    marker = "<|im_start|>answer\n"
    responses = [
        f"x\n{marker}\\boxed{{33}}",
        f"x\n{marker}The answer is 33.",
        "cut off while thinking",
        f"x\n{marker}?",
    ]
    columns = ["benchmark", "id", "sample", "response", "extracted", "gold", "correct", "status"]
    statuses = ["ok", "unparsed", "truncated", "unparsed"]
    data = [["aime24", str(i), 0, r, None, "33", False, s] for i, (r, s) in enumerate(zip(responses, statuses))]
    path = tmp_path / "aime24.json"
    path.write_text(json.dumps({"columns": columns, "data": data}))
    counts = regrade_samples.regrade(path, regrade_samples.grader_at(regrade_samples.BEFORE_ISSUE_22), True)
    assert (counts["answers"], counts["logged"], counts["old"], counts["new"], counts["truncated"]) == (4, 3, 3, 2, 1)
    assert (counts["old_correct"], counts["new_correct"], counts["changed"]) == (1, 2, 1)
    assert counts["rules"] == {"boxed": 1, "the_answer_is": 1, "none": 2}
