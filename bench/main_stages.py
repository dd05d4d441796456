"""Stage-by-stage wall time of `main` on a preset (issue 10: the whole tiny study in 15 minutes on
2 CPU cores; today's stages -- pretrain, data, invert, 4 SFT, 4 DPO -- in about 6).

Runs `reverse-align main --preset tiny` against a throwaway MLflow store and prints each child run's
wall time (end - start) and its share of the `main` run, plus the held-out exact match each SFT run
logged, so a speed-up that loses the learning signal shows in the same table. With --store, reads the
newest `main` run of an existing store instead of running one (a "before" reference).

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
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", "reverse-align"))
    mains = client.search_runs([experiment.experiment_id], "tags.`reverse_align.stage` = 'main'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if not mains:
        sys.exit(f"no main run in {uri}")
    main = mains[0]
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{main.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    total = ((main.info.end_time or int(time.time() * 1000)) - main.info.start_time) / 1000
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
