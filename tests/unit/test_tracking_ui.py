"""What the MLflow UI is pointed at: the experiment's kind, the command that serves a store, the page to open."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from reverse_align import tracking


@pytest.fixture()
def tmp_store(tmp_path, monkeypatch):
    """A fresh sqlite store as the tracking URI; mlflow's global URI put back afterwards."""
    import mlflow

    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path}/store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ui-kind")
    yield uri
    mlflow.set_tracking_uri(before)


def test_setup_makes_the_experiment_a_machine_learning_one_idempotently(tmp_store):
    import mlflow

    client = mlflow.MlflowClient(tmp_store)
    assert client.get_experiment_by_name("ui-kind") is None
    tracking.setup()
    experiment = client.get_experiment_by_name("ui-kind")
    assert experiment.tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"
    tracking.setup()  # again: same experiment, same tag
    again = client.get_experiment_by_name("ui-kind")
    assert again.experiment_id == experiment.experiment_id
    assert again.tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"
    # The UI's own selector (or an older UI's inference) wrote GenAI: the next stage sets it back.
    client.set_experiment_tag(experiment.experiment_id, tracking.TAG_EXPERIMENT_KIND, "genai_development")
    tracking.setup()
    assert client.get_experiment(experiment.experiment_id).tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"
    assert len(client.search_experiments(filter_string="name = 'ui-kind'")) == 1


def test_ui_command_serves_the_same_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    words = shlex.split(tracking.ui_command("sqlite:///mlflow.db"))
    assert Path(words[0]).name == "mlflow" and words[1] == "ui"
    # A relative sqlite path is the working directory's file, made absolute so the command runs from anywhere.
    assert words[words.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert words[words.index("--host") + 1] == "127.0.0.1" and words[words.index("--port") + 1] == "5000"
    absolute = shlex.split(tracking.ui_command("sqlite:////data/runs/m.db", port=5123))
    assert absolute[absolute.index("--backend-store-uri") + 1] == "sqlite:////data/runs/m.db"
    assert absolute[absolute.index("--port") + 1] == "5123"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////data/from-env.db")
    assert "sqlite:////data/from-env.db" in tracking.ui_command()


def test_ui_command_never_prints_a_password_and_is_empty_for_a_server():
    with_password = tracking.ui_command("postgresql://alice:s3cret@db.example:5432/mlflow")
    assert "s3cret" not in with_password and '--backend-store-uri "$MLFLOW_TRACKING_URI"' in with_password
    assert "--backend-store-uri postgresql://alice@db.example/mlflow" in tracking.ui_command("postgresql://alice@db.example/mlflow")
    assert tracking.ui_command("http://127.0.0.1:5000") == ""
    assert tracking.ui_command("https://mlflow.example.org") == ""


def test_ui_url_opens_the_runs_table_as_machine_learning():
    assert tracking.ui_url("7") == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert tracking.ui_url("7", "http://h:8080/") == "http://h:8080/#/experiments/7/runs?workflowType=machine_learning"
