"""Wall time of the whole `main` study through Ray (this checkout) against the process pool it replaced
(git revision --pool_rev, default e435d66, the last commit with scheduler.py's ProcessPoolExecutor), in one
invocation on one machine: each study runs into its own fresh sqlite store, one after the other, with the same
venv, preset and `main.jobs`. Issue 21 allows Ray at most 5% over the pool.

Usage: python bench/main_executor.py [--preset tiny] [--pool_rev e435d66] [--order pool,ray]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_study(source: Path, preset: str, workdir: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(source), MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db",
               HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    started = time.perf_counter()
    with open(workdir / "main.log", "w") as log:
        subprocess.run([sys.executable, "-m", "reverse_align.cli", "main", "--preset", preset],
                       cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--pool_rev", default="e435d66")
    parser.add_argument("--order", default="pool,ray")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="main-executor-") as tmp:
        pool_src = Path(tmp) / "pool-src"
        pool_src.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.pool_rev], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(pool_src)], input=archive.stdout, check=True)
        walls = {}
        for name in args.order.split(","):
            workdir = Path(tmp) / name
            workdir.mkdir()
            walls[name] = run_study(pool_src if name == "pool" else ROOT, args.preset, workdir)
            print(f"{name}: {walls[name]:.0f} s", flush=True)
    print(f"preset {args.preset}: process pool ({args.pool_rev}) {walls['pool']:.0f} s, Ray {walls['ray']:.0f} s, "
          f"Ray / pool = {walls['ray'] / walls['pool']:.3f}")


if __name__ == "__main__":
    main()
