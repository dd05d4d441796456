"""bench/gpu_sft_throughput.py runs on a CPU with the tiny shape, so the GPU benchmark cannot rot."""

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_throughput_bench_runs_sft_and_dpo_on_the_tiny_shape():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_sft_throughput.py"), "--shape", "tiny", "--preset", "tiny",
         "--steps", "2", "--dpo_steps", "2", "--mean_tokens", "48"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    sft = re.search(r"^sft: 1 timed steps, (\d+) tokens in [\d.]+s = ([\d,]+) tokens/s; .* of the measured matmul", out, re.M)
    assert sft and int(sft.group(1)) > 0, out
    assert re.search(r"^dpo: 1 timed steps, [\d.]+ s/step", out, re.M), out
    assert "FLOPs per step = 6 x dense params x tokens" in out
