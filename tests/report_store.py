"""A study written straight into a real MLflow store, as `main` and its stages would leave it.

No training: each run is created with ``MlflowClient`` and given plausible metrics and
artifacts (eval runs with ``eval/samples/<benchmark>.json`` whose ``correct`` column the
logged accuracies are computed from, probe runs with ``alp/*`` at several epochs, a sweep
run with its PNG, a main run with ``main/stages.json``). ``make_study`` returns what it
logged so tests can compare the report against it.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from reverse_align import tracking
from reverse_align.eval.intervals import wilson

SYNTHETIC = ("synthetic_forward", "synthetic_reverse", "synthetic_transfer")
PAPER = ("aime24", "math500", "gpqa")
# Probability of a correct answer per model and benchmark index: reverse beats forward, mixing hurts.
SKILL = {"base": 0.1, "sft.forward": 0.5, "sft.reverse": 0.7, "sft.mixed": 0.3, "sft.mixed_half": 0.4,
         "dpo.forward": 0.45, "dpo.reverse": 0.75, "dpo.mixed": 0.35, "dpo.direct": 0.2}  # fmt: skip


def png_bytes() -> bytes:
    """A valid 1x1 white PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\xff\xff"))
        + chunk(b"IEND", b"")
    )


@dataclass
class Logged:
    main_run_id: str
    stages: dict
    # key -> {metric: value} as logged; key -> benchmark -> rows (eval runs)
    metrics: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)


def _run(client, experiment_id: str, stage: str, name: str, preset: str) -> str:
    run = client.create_run(experiment_id, tags={tracking.TAG_STAGE: stage, tracking.TAG_PRESET: preset}, run_name=name)
    return run.info.run_id


def _finished(client, run_id: str) -> str:
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _eval_run(client, exp, key: str, model: str, seed: int, benchmarks, questions: int, preset: str, logged: Logged):
    run_id = _run(client, exp, "evaluate", f"eval-{model}-seed{seed}", preset)
    rng = random.Random(f"{model}/{seed}")
    metrics, per_bench = {}, {}
    for index, benchmark in enumerate(benchmarks):
        p = min(0.95, SKILL[model] + 0.05 * index)
        rows = [{"benchmark": benchmark, "id": f"{benchmark}-{q}", "sample": 0, "response": "r", "extracted": "1",
                 "gold": "1", "correct": rng.random() < p, "status": "ok"} for q in range(questions)]  # fmt: skip
        client.log_table(
            run_id, {k: [r[k] for r in rows] for k in rows[0]}, f"{tracking.ARTIFACT_EVAL_SAMPLES}/{benchmark}.json"
        )
        metrics[tracking.metric_eval_accuracy(benchmark)] = sum(r["correct"] for r in rows) / questions
        per_bench[benchmark] = rows
    metrics[tracking.METRIC_EVAL_AVERAGE] = sum(metrics.values()) / len(benchmarks)
    for name, value in metrics.items():
        client.log_metric(run_id, name, value)
    client.set_terminated(run_id, "FINISHED")
    logged.metrics[key], logged.samples[key] = metrics, per_bench
    return run_id


def _probe_run(client, exp, train_on: str, preset: str, logged: Logged) -> str:
    run_id = _run(client, exp, "probe", f"probe-{train_on}", preset)
    for test in tracking.ALP_TESTS:
        final = 0.08 if train_on == "mixed" else (0.4 if test == train_on else -0.2)
        for phase, steps in (("sft", (0, 2, 4)), ("dpo", (0, 1, 2))):
            for step in steps:
                pos = -2.0 + 0.2 * step
                margin = final * step / steps[-1]
                values = {"pos": pos, "neg": pos - margin, "margin": margin}
                for kind, value in values.items():
                    client.log_metric(run_id, tracking.metric_alp(phase, kind, test), value, step=step)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def make_study(
    experiment: str,
    seeds=(0, 1),
    benchmarks=SYNTHETIC,
    questions: int = 12,
    preset: str = "tiny",
    omit: tuple[str, ...] = (),
) -> Logged:
    """A whole study in ``experiment``; keys starting with any prefix in ``omit`` are left out of stages.json."""
    client = mlflow.MlflowClient(tracking.tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    exp = exp.experiment_id if exp else client.create_experiment(experiment)
    logged = Logged("", {})
    runs: dict[str, str] = {}

    def wanted(key: str) -> bool:
        return not any(key.startswith(prefix) for prefix in omit)

    for key in ("data", "invert"):
        runs[key] = _finished(client, _run(client, exp, key, key, preset))
    runs["eval.base"] = _eval_run(client, exp, "eval.base", "base", 0, benchmarks, questions, preset, logged)
    for seed in seeds:
        for mix in ("forward", "reverse", "mixed", "mixed_half"):
            runs[f"sft.{mix}.seed{seed}"] = _finished(client, _run(client, exp, "sft", f"sft-{mix}-seed{seed}", preset))
            key = f"eval.sft.{mix}.seed{seed}"
            runs[key] = _eval_run(client, exp, key, f"sft.{mix}", seed, benchmarks, questions, preset, logged)
        for on in ("forward", "reverse", "mixed", "direct"):
            runs[f"dpo.{on}.seed{seed}"] = _finished(client, _run(client, exp, "dpo", f"dpo-{on}-seed{seed}", preset))
            key = f"eval.dpo.{on}.seed{seed}"
            runs[key] = _eval_run(client, exp, key, f"dpo.{on}", seed, benchmarks, questions, preset, logged)
    for on in ("forward", "reverse", "mixed"):
        runs[f"probe.{on}"] = _probe_run(client, exp, on, preset, logged)
    runs["sweep"] = _run(client, exp, "sweep", "sweep", preset)
    client.log_metric(runs["sweep"], tracking.METRIC_SWEEP_BEST_BETA, 0.6)
    client.log_metric(runs["sweep"], tracking.METRIC_SWEEP_BEST_VALUE, 0.4375)
    # 28 of 64 questions; the best is not separated from betas 0.5 and 0.7 (reverse_align/sweep_stats.py).
    client.log_param(runs["sweep"], "sweep.objective", "exact_match")
    for name, value in ((tracking.METRIC_SWEEP_BEST_N, 64), (tracking.METRIC_SWEEP_BEST_SEPARATED, 0)):
        client.log_metric(runs["sweep"], name, value)
    low, high = wilson(28, 64)
    client.log_metric(runs["sweep"], tracking.METRIC_SWEEP_BEST_CI_LOW, low)
    client.log_metric(runs["sweep"], tracking.METRIC_SWEEP_BEST_CI_HIGH, high)
    client.set_tag(runs["sweep"], tracking.TAG_SWEEP_NOT_SEPARATED, "0.5,0.7")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "sweep_objective_vs_beta.png"
        png.write_bytes(png_bytes())
        client.log_artifact(runs["sweep"], str(png), tracking.ARTIFACT_FIGURES)
    client.set_terminated(runs["sweep"], "FINISHED")

    stages = {
        "preset": preset,
        "seeds": list(seeds),
        "runs": {k: v for k, v in runs.items() if wanted(k)},
        "champion": {
            "model": tracking.MODEL_ADAPTER,
            "alias": "champion",
            "version": "3",
            "run_id": runs.get("dpo.reverse.seed0", ""),
        },
        "seconds": {"data": 1.5, "invert": 2.25, "sft.forward.seed0": 30.0},
        "reused": ["data", "pretrain"],
    }
    for key in ("champion", "seconds", "reused"):
        if not wanted(key):
            stages.pop(key)
    main_id = _run(client, exp, "main", f"main-{preset}", preset)
    client.log_text(main_id, json.dumps(stages), tracking.ARTIFACT_MAIN_STAGES)
    client.set_terminated(main_id, "FINISHED")
    logged.main_run_id, logged.stages = main_id, stages
    return logged


# Reading report.md back: its tables as {row: {column: cell}}, a cell as mean / sd / change / paper.
CELL = re.compile(
    r"^(?P<mean>missing|-?\d+\.\d)(?: ± (?P<sd>\d+\.\d))?(?: \(Δ (?P<change>[+-]\d+\.\d)\))?"
    r"(?: · paper (?P<paper>[\d.]+)(?: \(Δ (?P<paper_change>[+-][\d.]+)\))?)?$"
)


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def table(text: str, title: str) -> dict[str, dict[str, str]]:
    """{row label: {column: cell}} of the first markdown table in the section."""
    lines = [line for line in section(text, title).splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {
        cells[0]: dict(zip(header[1:], cells[1:]))
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    }


def parse(cell: str) -> dict:
    match = CELL.match(cell)
    assert match, cell
    return match.groupdict()


def pct(values) -> tuple[str, str | None]:
    values = list(values)
    sd = f"{100 * statistics.stdev(values):.1f}" if len(values) >= 2 else None
    return f"{100 * statistics.fmean(values):.1f}", sd


def metric(column: str) -> str:
    return tracking.METRIC_EVAL_AVERAGE if column == "average" else tracking.metric_eval_accuracy(column)
