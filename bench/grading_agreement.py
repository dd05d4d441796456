"""The agreement table of issue 22: our grader against lm-eval's own aime24 / minerva_math500 /
gpqa_diamond_cot_zeroshot code and filters and simple-evals' answer patterns, per benchmark.

Rows come from tests/data/grading_agreement.yaml (or --table); reverse_align/eval/agreement.py says
what each reference is. Prints, per benchmark: rows, agreements, deliberate differences (each with
its reason under --reasons) and unexplained differences (the unit test keeps these at 0), then how
often each reference alone agrees with us.

Usage: python bench/grading_agreement.py [--table PATH] [--reasons]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def main(table: Path, reasons: bool) -> None:
    from reverse_align.eval import agreement

    outcomes = [agreement.compare(row) for row in agreement.load_table(table)]
    counts = agreement.summary(outcomes)
    print(f"{'benchmark':10s} {'rows':>5s} {'agreements':>11s} {'deliberate':>11s} {'unexplained':>12s}")
    for name, c in counts.items():
        print(f"{name:10s} {c['rows']:5d} {c['agreements']:11d} {c['deliberate']:11d} {c['unexplained']:12d}")
    total = {k: sum(c[k] for c in counts.values()) for k in ("rows", "agreements", "deliberate", "unexplained")}
    print(
        f"{'all':10s} {total['rows']:5d} {total['agreements']:11d} {total['deliberate']:11d} {total['unexplained']:12d}"
    )
    print("\neach reference alone: rows where its verdict equals ours")
    for name in agreement.BENCHMARK_NAMES:
        mine = [o for o in outcomes if o.row.benchmark == name]
        for reference in mine[0].references:
            same = sum(o.references[reference] == o.ours for o in mine)
            print(f"  {name:10s} {reference:30s} {same:3d} / {len(mine)}")
    if reasons:
        print("\ndeliberate differences")
        for o in outcomes:
            if o.row.deliberate and not o.agrees:
                print(f"  {o.row.id} (ours {o.ours}, references {o.reference}): {o.row.deliberate}")
    unexplained = [o.row.id for o in outcomes if not o.agrees and not o.row.deliberate]
    if unexplained:
        print("\nUNEXPLAINED: " + ", ".join(unexplained))
        sys.exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=ROOT / "tests" / "data" / "grading_agreement.yaml")
    parser.add_argument("--reasons", action="store_true", help="print each deliberate difference's reason")
    args = parser.parse_args()
    main(args.table, args.reasons)
