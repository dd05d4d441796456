"""Wall time of the `pretrain` stage for a preset, against a throwaway MLflow store
(issue target: under 3 minutes for `tiny` on 2 CPU cores).

Usage: python bench/pretrain_time.py [--preset tiny]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "REVERSE_ALIGN_CACHE": f"{tmp}/cache",
               "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "reverse_align.cli", "pretrain", "--preset", args.preset, "--force", "true"],
                                cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    summary = [line for line in result.stdout.splitlines() if line.startswith("pretrained")]
    print(f"pretrain --preset {args.preset}: exit {result.returncode}, {seconds:.0f} s wall "
          f"({seconds / 180:.2f} of the 3-minute budget, {os.cpu_count()} CPUs); {summary[0] if summary else result.stderr[-300:]}")


if __name__ == "__main__":
    main()
