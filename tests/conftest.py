"""Test-wide setup: an isolated MLflow store, offline hubs, and the micro base model.

Every test runs against a real sqlite MLflow store in a temporary directory
(never the developer's ./mlflow.db). The micro preset's base model is
pretrained once per session through the real `pretrain` stage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SESSION_DIR = Path(tempfile.mkdtemp(prefix="reverse-align-tests-"))

os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{SESSION_DIR}/mlflow.db"
os.environ["REVERSE_ALIGN_CACHE"] = str(SESSION_DIR / "cache")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("MLFLOW_RUN_ID", None)
os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
os.chdir(SESSION_DIR)


def pytest_sessionfinish(session, exitstatus):
    """Leave nothing behind in /tmp (set REVERSE_ALIGN_KEEP_TEST_DIR=1 to inspect a failure)."""
    if not os.environ.get("REVERSE_ALIGN_KEEP_TEST_DIR"):
        os.chdir(ROOT)
        shutil.rmtree(SESSION_DIR, ignore_errors=True)


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`reverse-align <args>` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "reverse_align.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=cwd or SESSION_DIR,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def micro_base() -> str:
    """Run id of the micro preset's pretrain run (built once per session)."""
    from reverse_align.config import load_config
    from reverse_align.train.pretrain import run_pretrain

    return run_pretrain(load_config("micro"))


@pytest.fixture(scope="session")
def micro_data(micro_base) -> str:
    """Run id of a micro synthetic data run."""
    from reverse_align.config import load_config
    from reverse_align.data.stage import run_data

    return run_data(load_config("micro"))


@pytest.fixture()
def client():
    import mlflow

    return mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="session")
def micro_invert(micro_data) -> str:
    """Run id of a synthetic invert run over the micro data run."""
    from reverse_align.config import load_config
    from reverse_align.data.invert import run_invert

    return run_invert(load_config("micro"), data_run_id=micro_data)


@pytest.fixture(scope="session")
def micro_sft(micro_invert) -> str:
    """Run id of a real micro SFT run (mix forward) over the micro invert run."""
    from reverse_align.config import load_config
    from reverse_align.train.sft import run_sft

    return run_sft(load_config("micro"), data_run_id=micro_invert, mix="forward")
