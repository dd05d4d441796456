"""The report's tables as markdown, every number read from the study's runs.

Accuracies are percent, one decimal (as the paper prints them). A cell over seeds is
``mean ± sd`` (sd only with two seeds or more); ``(Δ +x.x)`` is the change against the model
it started from, averaged over the seeds both have; ``· paper x`` the published number
(PROTOCOL §6) for the preset's model size. A cell with no logged metric reads ``missing``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from reverse_align import tracking
from reverse_align.report import paper
from reverse_align.report.paired import Paired
from reverse_align.report.study import SFT_MIXES, Study

MISSING = "missing"
AVERAGE = "average"
# Row labels: the study's mix names with the paper's dataset names.
SFT_LABELS = {
    "forward": "forward (s1k)",
    "reverse": "reverse (r1k)",
    "mixed": "mixed (D)",
    "mixed_half": "mixed_half (0.5k)",
}
DPO_LABELS = {"forward": "DPO on forward (s1k)", "reverse": "DPO on reverse (r1k)", "mixed": "DPO on mixed (D)"}


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def metric_name(column: str) -> str:
    return tracking.METRIC_EVAL_AVERAGE if column == AVERAGE else tracking.metric_eval_accuracy(column)


@dataclass(frozen=True)
class Stat:
    """A metric over seeds (fractions)."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


def cell(values, change: float | None = None, published: float | None = None, published_change=None) -> str:
    stat = Stat(tuple(values))
    text = MISSING if stat.mean is None else f"{100 * stat.mean:.1f}"
    if stat.sd is not None:
        text += f" ± {100 * stat.sd:.1f}"
    if change is not None:
        text += f" (Δ {100 * change:+.1f})"
    if published is not None:
        text += f" · paper {published:g}" + (f" (Δ {published_change:+g})" if published_change is not None else "")
    return text


def paired_change(after: dict, before: dict) -> float | None:
    """Mean over the replicates (base, seed) both have of after - before."""
    seeds = sorted(set(after) & set(before))
    return statistics.fmean(after[s] - before[s] for s in seeds) if seeds else None


def seeds_text(values: dict) -> str:
    """The replicates a cell holds: its seeds (``0,1``), or base/seed pairs (``b0s0,b1s0``) over several bases."""
    keys = sorted(values)
    if len({k[0] for k in keys}) > 1:
        return ",".join(f"b{b}s{s}" for b, s in keys)
    return ",".join(str(k[1]) for k in keys) or "-"


def sft_table(study: Study, columns: list[str], size: str | None) -> str:
    rows = [["base (no SFT)", *(cell(study.base_values(metric_name(c)).values()) for c in columns), "-"]]
    for mix in SFT_MIXES:
        per_column = {c: study.seed_values(f"eval.sft.{mix}", metric_name(c)) for c in columns}
        cells = [cell(per_column[c].values(), published=paper.published(size, "sft", mix, c)) for c in columns]
        rows.append([SFT_LABELS[mix], *cells, seeds_text(per_column[columns[-1]])])
    return markdown(["SFT data", *columns, "seeds"], rows)


def dpo_table(study: Study, columns: list[str], size: str | None) -> str:
    rows = []
    for on, label in DPO_LABELS.items():
        cells = []
        for c in columns:
            dpo = study.seed_values(f"eval.dpo.{on}", metric_name(c))
            sft = study.seed_values(f"eval.sft.{on}", metric_name(c))
            published_change = paper.published(size, "dpo", on, "average_change") if c == AVERAGE else None
            cells.append(
                cell(dpo.values(), paired_change(dpo, sft), paper.published(size, "dpo", on, c), published_change)
            )
        rows.append([label, *cells, seeds_text(study.seed_values(f"eval.dpo.{on}", metric_name(columns[-1])))])
    return markdown(["model (Δ vs its SFT model)", *columns, "seeds"], rows)


def direct_table(study: Study, columns: list[str], size: str | None) -> str:
    cells = []
    for c in columns:
        direct = study.seed_values("eval.dpo.direct", metric_name(c))
        change = paired_change(direct, study.base_by_replicate(metric_name(c)))
        cells.append(cell(direct.values(), change, paper.published(size, "direct", "direct", c)))
    seeds = seeds_text(study.seed_values("eval.dpo.direct", metric_name(columns[-1])))
    return markdown(["model (Δ vs base)", *columns, "seeds"], [["direct DPO (no SFT)", *cells, seeds]])


def paired_table(results: dict[str, Paired | None]) -> str:
    rows = []
    for benchmark, result in results.items():
        if result is None:
            rows.append([benchmark, MISSING, MISSING, "-", "-", "-"])
            continue
        interval = f"[{100 * result.low:+.1f}, {100 * result.high:+.1f}]"
        seeds = result.seeds // max(1, result.bases)
        rows.append([benchmark, f"{100 * result.diff:+.1f}", interval, str(result.bases), str(seeds), str(result.questions)])
    return markdown(["benchmark", "reverse − forward (points)", "95% interval", "bases", "seeds per base", "questions"], rows)


def times_table(study: Study) -> str:
    seconds = study.stages.get("seconds") or {}
    reused = set(study.stages.get("reused") or [])
    keys = list(seconds) + sorted(reused - set(seconds))
    rows = [[k, f"{float(seconds[k]):.1f}" if k in seconds else "-", "yes" if k in reused else "no"] for k in keys]
    total = sum(float(v) for v in seconds.values())
    rows.append(["**total**", f"{total:.1f}", ""])
    return markdown(["stage", "wall seconds", "reused"], rows)


def champion_table(champion: dict) -> str:
    fields = [("model", "model"), ("version", "version"), ("alias", "alias"), ("source run", "run_id")]
    return markdown(["field", "value"], [[label, str(champion.get(key, MISSING))] for label, key in fields])


def runs_table(study: Study) -> str:
    rows = []
    for key, run_id in study.keys.items():
        run = study.run(key)
        name, status = (run.info.run_name, run.info.status) if run else ("-", "not found")
        rows.append([key, f"`{run_id}`", name or "-", status])
    return markdown(["role", "run id", "run name", "status"], rows)


def _one(value: float | None) -> list[float]:
    return [] if value is None else [value]
