"""A team's store: a real `mlflow server` on PostgreSQL serving the artifacts, and Optuna on the same PostgreSQL.

What README "Team store: one study from several machines" tells a lab to run: every node points
MLFLOW_TRACKING_URI at the server (runs, params, tags and artifacts all go over HTTP; the server writes
the artifacts under --artifacts-destination) and the sweep's storage at the database. Skips only when
PostgreSQL is not reachable at 127.0.0.1:5432 (user postgres, trust auth); a fresh database per run,
dropped after.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg2
import pytest
from conftest import run_cli

from reverse_align import tracking

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def _admin():
    connection = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    connection.autocommit = True
    return connection


def _databases(*roles: str):
    """postgresql:// URLs of fresh databases on the server, one per role, dropped after."""
    try:
        admin = _admin()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG['host']}:{PG['port']} as {PG['user']}: {str(exc).strip()}")
    names = [f"reverse_align_{role}_{uuid.uuid4().hex[:8]}" for role in roles]
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f"CREATE DATABASE {name}")
    admin.close()
    yield [f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{name}" for name in names]
    admin = _admin()
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="module")
def team_database():
    """The MLflow server's database and the sweep's, both fresh on the one PostgreSQL server."""
    yield from _databases("mlflow", "optuna")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def team_server(team_database, tmp_path_factory):
    mlflow_database = team_database[0]
    """(URL, artifacts directory) of `mlflow server` on the database, serving artifacts from a local directory."""
    work = tmp_path_factory.mktemp("team-server")
    artifacts = work / "artifacts"
    port = _free_port()
    log = (work / "server.log").open("w")
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
        # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; psycopg2-binary is the dev dependency.
        "--backend-store-uri", mlflow_database.replace("postgresql://", "postgresql+psycopg2://", 1),
        "--artifacts-destination", str(artifacts), "--workers", "1",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": ""}
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            pytest.fail(f"mlflow server did not answer on {url}:\n{(work / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url, artifacts
    server.terminate()
    server.wait(timeout=30)
    log.close()


def _newest(client, stage: str):
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    return client.search_runs(
        [experiment.experiment_id], f"tags.`{tracking.TAG_STAGE}` = '{stage}'", order_by=["attributes.start_time DESC"]
    )[0]


def test_stages_on_another_machine_write_and_read_through_the_server(team_server, tmp_path):
    import mlflow

    url, artifacts = team_server
    # A node: nothing of the store on its disk, only the server's URL (and its own cache).
    env = {"MLFLOW_TRACKING_URI": url, "REVERSE_ALIGN_CACHE": str(tmp_path / "cache"),
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}  # fmt: skip
    for args in (
        ["pretrain", "--preset", "micro", "--set", "pretrain.steps=5"],
        ["data", "--preset", "micro", "--set", "pretrain.steps=5"],
    ):
        result = run_cli(*args, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    client = mlflow.MlflowClient(url)
    data = _newest(client, "data")
    fast = ["--set", "pretrain.steps=5"]  # the same base model as above (its fingerprint)
    result = run_cli("invert", "--data_run_id", data.info.run_id, *fast, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    invert = _newest(client, "invert")
    result = run_cli(
        "sft", "--data_run_id", invert.info.run_id, "--mix", "reverse", "--epochs", "2",
        "--set", "sft.exact_match_limit=0", *fast, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()

    # Read back through the server: params, tags, metrics, an artifact downloaded.
    sft = _newest(client, "sft")
    assert sft.info.status == "FINISHED" and sft.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert sft.data.params["sft.mix"] == "reverse" and sft.data.params["sft.epochs"] == "2.0"
    assert sft.data.tags[tracking.TAG_PRESET] == "micro"
    assert sft.data.tags[tracking.tag_upstream("invert")] == invert.info.run_id
    assert invert.data.tags[tracking.tag_upstream("data")] == data.info.run_id
    assert client.get_metric_history(sft.info.run_id, tracking.METRIC_SYSTEM_CPU)
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=sft.info.run_id, artifact_path=f"{tracking.ARTIFACT_ADAPTER}/adapter_config.json",
        dst_path=str(tmp_path / "download"), tracking_uri=url,
    )  # fmt: skip
    assert json.loads(Path(downloaded).read_text())["r"] == 64
    # The server holds the artifacts; epoch 1's trainer state was deleted through it (HTTP DELETE) when epoch 2's
    # was logged, and epoch 2's once the run finished: only adapter/ is left of the training (MLflow 3 keeps the
    # logged model under <experiment>/models/, apart from the run).
    under_run = [p.relative_to(artifacts).parts for p in artifacts.rglob("*") if sft.info.run_id in p.parts]
    on_disk = {parts[3] for parts in under_run if len(parts) > 3}  # <experiment>/<run>/artifacts/<top>/...
    assert {tracking.ARTIFACT_ADAPTER, tracking.ARTIFACT_CONFIG, "mix"} <= on_disk
    assert not on_disk & {tracking.ARTIFACT_RESUME, tracking.ARTIFACT_CHECKPOINTS}
    assert client.list_artifacts(sft.info.run_id, tracking.ARTIFACT_RESUME) == []


def test_optuna_sweep_storage_on_the_same_postgresql(team_server, team_database):
    import optuna

    from reverse_align.config import load_config
    from reverse_align.errors import UserError
    from reverse_align.sweep_storage import open_storage

    mlflow_database, optuna_database = team_database
    # Not in MLflow's own database: both keep their schema version in one `alembic_version` table, and Optuna
    # refuses MLflow's (said in one line).
    with pytest.raises(UserError, match=r"^--storage postgresql\+psycopg2://postgres@.*: cannot open \(RuntimeError"):
        open_storage(load_config("micro", [f"sweep.storage={mlflow_database}"]))
    cfg = load_config("micro", [f"sweep.storage={optuna_database}"])
    study = optuna.create_study(study_name="team-beta", storage=open_storage(cfg), direction="maximize")
    study.optimize(lambda trial: -((trial.suggest_float("beta", 0.1, 0.8) - 0.6) ** 2), n_trials=3)
    # Another worker (a fresh storage on the same URL) sees the same study and trials.
    again = optuna.load_study(study_name="team-beta", storage=open_storage(cfg))
    assert [t.state for t in again.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert again.best_value == pytest.approx(study.best_value)
    assert again.best_params == study.best_params
