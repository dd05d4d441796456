"""`mlflow run . -e <stage> --env-manager local` is the same as `reverse-align <stage>`."""

import os
import subprocess
import sys
from pathlib import Path

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
    # The launcher run `mlflow run` made in the Default experiment points at ours.
    all_experiments = [e.experiment_id for e in client.search_experiments()]
    launchers = client.search_runs(all_experiments, f"tags.`{tracking.TAG_MOVED_TO}` = '{run.info.run_id}'")
    assert len(launchers) == 1 and launchers[0].info.experiment_id == "0"
    assert launchers[0].info.run_id != run.info.run_id
