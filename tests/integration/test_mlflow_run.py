"""`mlflow run . -e <stage> --env-manager local` is the same as `reverse-align <stage>`."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType

from conftest import ROOT, SESSION_DIR
from reverse_align import tracking


def test_mlflow_run_data_entry_point(micro_base, client):
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    result = subprocess.run(
        [str(mlflow_bin), "run", str(ROOT), "-e", "data", "-P", "preset=micro", "-P", "overrides=data.probe_size=4 data.limit=30",
         "--env-manager", "local"],
        capture_output=True, text=True, cwd=SESSION_DIR, timeout=600,
        # As a user's shell: no experiment chosen, so `mlflow run` puts its launcher run in Default.
        # MLproject commands run `python`; a user's activated venv puts ours first on PATH.
        env={
            k: v
            for k, v in {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{mlflow_bin.parent}:{os.environ['PATH']}"}.items()
            if k != "MLFLOW_EXPERIMENT_ID"
        },
    )
    assert result.returncode == 0, result.stderr[-2000:]
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`{tracking.TAG_STAGE}` = 'data' and params.`data.probe_size` = '4'"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_PRESET] == "micro"
    # Space-separated overrides reach the stage as two (mlflow shell-quotes each value itself).
    assert run.data.params["data.limit"] == "30"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "data")} >= {"data/forward.jsonl", "data/probe.jsonl"}
    # The launcher run `mlflow run` made in the Default experiment points at ours and is deleted once
    # `mlflow run` has ended it (a detached process waits for that): Default keeps no active run.
    launchers = client.search_runs(["0"], f"tags.`{tracking.TAG_MOVED_TO}` = '{run.info.run_id}'", run_view_type=ViewType.ALL)
    assert len(launchers) == 1 and launchers[0].info.run_id != run.info.run_id
    launcher_id = launchers[0].info.run_id
    deadline = time.monotonic() + 60
    while client.get_run(launcher_id).info.lifecycle_stage != "deleted" and time.monotonic() < deadline:
        time.sleep(0.2)
    launcher = client.get_run(launcher_id)
    assert launcher.info.lifecycle_stage == "deleted" and launcher.info.status == "FINISHED"
    assert client.search_runs(["0"], run_view_type=ViewType.ACTIVE_ONLY) == []
    assert client.get_experiment("0").lifecycle_stage == "active"  # the experiment itself stays


@pytest.mark.slow
def test_mlflow_run_main_leaves_no_run_in_default(tmp_path):
    """`mlflow run . -e main` (about a minute on micro): the study in our experiment, nothing active in Default."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    store = f"sqlite:///{tmp_path}/main.db"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"}
    env.update({"PYTHONPATH": str(ROOT), "PATH": f"{mlflow_bin.parent}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": store})
    result = subprocess.run(
        [str(mlflow_bin), "run", str(ROOT), "-e", "main", "-P", "preset=micro", "--env-manager", "local"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "workflowType=machine_learning" in result.stdout
    import mlflow

    store_client = mlflow.MlflowClient(store)
    experiment = store_client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    (main,) = store_client.search_runs([experiment.experiment_id], f"tags.`{tracking.TAG_STAGE}` = 'main'")
    assert main.info.status == "FINISHED"
    children = store_client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{main.info.run_id}'")
    assert {r.data.tags[tracking.TAG_STAGE] for r in children} >= {"data", "invert", "sft", "dpo"}
    deadline = time.monotonic() + 60
    while store_client.search_runs(["0"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store_client.search_runs(["0"]) == []
    (launcher,) = store_client.search_runs(["0"], run_view_type=ViewType.DELETED_ONLY)
    assert launcher.data.tags[tracking.TAG_MOVED_TO] == main.info.run_id
