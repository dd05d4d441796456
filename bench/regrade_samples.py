"""Regrade stored per-sample tables (``eval/samples/<benchmark>.json``) with an older grader and the
current one, and count what each leaves unparsed: issue 22's check that the new answer rules never
raise a study's unparsed counts.

The tables keep each raw response, so both graders read exactly what the model wrote. The older
grader is ``reverse_align/eval/grading.py`` at a git revision (default: the commit before issue 22),
loaded from git, not from this checkout. Printed per table: answers, unparsed (status != ok, as
``eval/<benchmark>/unparsed`` counts them: truncated included) as logged, by the old and by the new
grader, truncated, correct by each, rows whose verdict changed, and the rules that read the new
answers. A table has no GPQA options, so an option's text given as an answer is not recognised by
either grader here (both count it unparsed alike).

Usage:
  python bench/regrade_samples.py --run_id <evaluate run> [--tracking_uri URI] [--old REV]
  python bench/regrade_samples.py path/to/gpqa.json ... [--old REV] [--marker_optional]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
BEFORE_ISSUE_22 = "f3e7567"


def grader_at(revision: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:reverse_align/eval/grading.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    module = types.ModuleType(f"grading_at_{revision}")
    sys.modules[module.__name__] = module  # its dataclasses look their module up
    exec(compile(source, f"grading.py@{revision}", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


def tables_of_run(run_id: str, tracking_uri: str | None) -> list[Path]:
    import mlflow

    from reverse_align import tracking

    client = mlflow.MlflowClient(tracking_uri)
    folder = Path(tempfile.mkdtemp(prefix="regrade-"))
    names = [a.path for a in client.list_artifacts(run_id, tracking.ARTIFACT_EVAL_SAMPLES)]
    return [Path(client.download_artifacts(run_id, name, str(folder))) for name in names if name.endswith(".json")]


def regrade(path: Path, old: types.ModuleType, marker_required: bool) -> dict:
    from reverse_align.eval import grading
    from reverse_align.eval.benchmarks import BENCHMARKS

    table = json.loads(path.read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    counts = collections.Counter()
    rules = collections.Counter()
    for row in rows:
        kind = BENCHMARKS[row["benchmark"]].kind
        before = old.grade(kind, row["response"], row["gold"], [], marker_required)
        after = grading.grade(kind, row["response"], row["gold"], [], marker_required)
        counts["logged"] += row["status"] != grading.OK
        counts["old"] += before.status != grading.OK
        counts["new"] += after.status != grading.OK
        counts["truncated"] += after.status == grading.TRUNCATED
        counts["old_correct"] += before.correct
        counts["new_correct"] += after.correct
        counts["changed"] += before.correct != after.correct
        rules[after.extracted_by] += 1
    name = rows[0]["benchmark"] if rows else path.stem
    return {"benchmark": name, "answers": len(rows), **counts, "rules": dict(rules)}


def main(paths: list[Path], old_revision: str, marker_required: bool) -> None:
    old = grader_at(old_revision)
    header = f"{'table':20s} {'answers':>7s} {'unparsed: logged':>16s} {'old':>5s} {'new':>5s}"
    print(f"{header} {'truncated':>9s} {'correct: old':>12s} {'new':>5s} {'changed':>7s}  rules (new)")
    worse = []
    for path in paths:
        r = regrade(path, old, marker_required)
        print(
            f"{r['benchmark']:20s} {r['answers']:7d} {r['logged']:16d} {r['old']:5d} {r['new']:5d} "
            f"{r['truncated']:9d} {r['old_correct']:12d} {r['new_correct']:5d} {r['changed']:7d}  {r['rules']}"
        )
        if r["new"] > r["old"]:
            worse.append(r["benchmark"])
    print(f"old grader: grading.py at {old_revision}; unparsed rose on: {', '.join(worse) or 'none'}")
    sys.exit(1 if worse else 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="*", type=Path, help="eval/samples/<benchmark>.json files")
    parser.add_argument("--run_id", help="an evaluate run: regrade all its eval/samples tables")
    parser.add_argument("--tracking_uri", default=None, help="default: MLFLOW_TRACKING_URI")
    parser.add_argument("--old", default=BEFORE_ISSUE_22, help="git revision of the older grader")
    parser.add_argument("--marker_optional", action="store_true", help="grade as eval.answer_marker_required=false")
    args = parser.parse_args()
    tables = list(args.tables) + (tables_of_run(args.run_id, args.tracking_uri) if args.run_id else [])
    if not tables:
        parser.error("give tables or --run_id")
    marker_required = not args.marker_optional
    if args.run_id:
        import mlflow

        from reverse_align import tracking

        # A run graded in chat format (the base model, direct DPO) read its answers whole: regrade them so.
        params = mlflow.MlflowClient(args.tracking_uri).get_run(args.run_id).data.params
        marker_required = marker_required and params.get(tracking.PARAM_EVAL_FORMAT, "s1") != "chat"
    main(tables, args.old, marker_required)
