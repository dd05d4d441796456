"""Stage-by-stage wall time of `main` on a preset (issue 10: the whole tiny study in 15 minutes on
2 CPU cores).

Runs `reverse-align main --preset tiny` against a throwaway MLflow store and prints each stage's
start (seconds after main began), its wall time and whether it was reused (main/stages.json), with
each evaluation's held-out exact match, so a speed-up that loses the learning signal shows in the
same table; stages run side by side (main.jobs), so the seconds sum to more than the wall time.
With --store, reads the newest `main` run of an existing store instead of running one (a main run
from before main/stages.json: each child run's end - start, the "before" reference).

Usage: python bench/main_stages.py [--preset tiny] [--set section.key=value ...] [--store URI]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage_name(run) -> str:
    tags, params = run.data.tags, run.data.params
    stage = tags.get("reverse_align.stage", "?")
    if stage == "sft":
        return f"sft.{params.get('sft.mix', '?')}"
    if stage == "dpo":
        return f"dpo.{params.get('sft.mix') or 'direct'}"
    return stage


def report(uri: str) -> None:
    import json

    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", "reverse-align"))
    mains = client.search_runs([experiment.experiment_id], "tags.`reverse_align.stage` = 'main'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if not mains:
        sys.exit(f"no main run in {uri}")
    main = mains[0]
    total = ((main.info.end_time or int(time.time() * 1000)) - main.info.start_time) / 1000
    listed = {a.path for a in client.list_artifacts(main.info.run_id, "main")}
    record = None  # a main run from before main/stages.json: its child runs' own times
    if "main/stages.json" in listed:
        with open(client.download_artifacts(main.info.run_id, "main/stages.json")) as f:
            record = json.load(f)
    if record is None:
        return report_children(client, experiment, main, total)
    print(f"main run {main.info.run_id} ({main.info.status}): {total:.0f} s wall, {len(record['seconds'])} stages, "
          f"main.jobs {main.data.params.get('main.jobs', '?')}")
    print(f"{'stage':<26}{'starts at':>10}{'seconds':>9}  reused  scores (eval runs: forward / reverse / transfer)")
    busy = 0.0
    rows = []
    for key, seconds in record["seconds"].items():
        run_id = record["runs"].get(key)
        run = client.get_run(run_id) if run_id else None
        offset = (run.info.start_time - main.info.start_time) / 1000 if run and key not in record["reused"] else 0.0
        scores = ""
        if run is not None and run.data.tags.get("reverse_align.stage") == "evaluate":
            m = run.data.metrics
            scores = " / ".join(f"{m.get(f'eval/synthetic_{n}/accuracy', float('nan')):.3f}"
                                for n in ("forward", "reverse", "transfer"))
        rows.append((offset, key, seconds, key in record["reused"], scores))
        busy += seconds
    for offset, key, seconds, reused, scores in sorted(rows):
        print(f"{key:<26}{offset:>10.0f}{seconds:>9.1f}  {'yes' if reused else 'no':>6}  {scores}")
    print(f"stage seconds summed {busy:.0f} s over {total:.0f} s wall: {busy / total:.2f} stages at a time on average")


def report_children(client, experiment, main, total: float) -> None:
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{main.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    print(f"main run {main.info.run_id} ({main.info.status}): {total:.0f} s wall, {len(children)} stage runs")
    print(f"{'stage':<16}{'seconds':>9}{'share':>8}  held-out exact match (trained / base)")
    for run in children:
        seconds = ((run.info.end_time or int(time.time() * 1000)) - run.info.start_time) / 1000
        metrics = run.data.metrics
        exact = "  ".join(
            f"{name} {metrics[f'sft/exact_match/{name}']:.3f}/{metrics.get(f'sft/base_exact_match/{name}', float('nan')):.3f}"
            for name in ("forward", "reverse", "transfer") if f"sft/exact_match/{name}" in metrics
        )
        print(f"{stage_name(run):<16}{seconds:>9.1f}{seconds / total:>8.1%}  {exact}")
    accounted = sum(((r.info.end_time or int(time.time() * 1000)) - r.info.start_time) / 1000 for r in children)
    print(f"{'(between runs)':<16}{total - accounted:>9.1f}{(total - accounted) / total:>8.1%}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], help="config override, passed to main")
    parser.add_argument("--store", default="", help="read the newest main run of this tracking URI instead")
    args = parser.parse_args()
    if args.store:
        report(args.store)
        return
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "REVERSE_ALIGN_CACHE": f"{tmp}/cache", "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "reverse_align.cli", "main", "--preset", args.preset]
        for override in args.set:
            command += ["--set", override]
        started = time.perf_counter()
        result = subprocess.run(command, check=False, cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        print(f"{' '.join(command[2:])}: exit {result.returncode}, {seconds:.0f} s wall ({os.cpu_count()} CPUs, "
              f"{seconds / 900:.2f} of the 15-minute budget)")
        if result.returncode:
            print(result.stderr[-2000:])
        report(uri)


if __name__ == "__main__":
    main()
