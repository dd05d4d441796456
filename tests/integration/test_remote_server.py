"""A real `mlflow server` on 127.0.0.1 works the same as the local sqlite store."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not start")
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


def test_pretrain_and_data_against_a_remote_server(mlflow_server, tmp_path):
    import mlflow

    env = {"MLFLOW_TRACKING_URI": mlflow_server, "REVERSE_ALIGN_CACHE": str(tmp_path / "cache")}
    fast = ["--set", "pretrain.steps=5"]
    result = run_cli("pretrain", "--preset", "micro", *fast, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("data", "--preset", "micro", *fast, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("reverse-align")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    assert sorted(r.data.tags["reverse_align.stage"] for r in runs) == ["data", "pretrain"]
    data_run = next(r for r in runs if r.data.tags["reverse_align.stage"] == "data")
    assert {a.path for a in client.list_artifacts(data_run.info.run_id, "data")} >= {"data/forward.jsonl", "data/probe.jsonl"}
    assert client.search_model_versions("name = 'reverse-align-tiny-base-micro'")[0].run_id != data_run.info.run_id
