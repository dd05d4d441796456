"""The run `mlflow run` makes before our command starts (the launcher run), and how it goes away.

`mlflow run . -e <stage>` without ``--experiment-name`` creates its run in the Default experiment and
hands its id to the command (``MLFLOW_RUN_ID``). Our stages work in the ``reverse-align`` experiment,
so there that run stays empty. While a stage works, the launcher points at the stage's run (tag
``tracking.TAG_MOVED_TO``); when the stage is done, it is deleted (soft: hidden in the UI and in
searches, ``mlflow gc`` purges it), so Default keeps no empty run.

It cannot be deleted from inside the command: after the command exits, `mlflow run` ends its run
with ``set_terminated`` whatever its state (MLflow 3.x compares the stored status string with
integer constants in ``projects._maybe_set_run_terminated``, so it never sees the run as ended),
and ``set_terminated`` on a deleted run raises, which fails the `mlflow run` command. So
:func:`retire` starts a small detached process that waits until `mlflow run` has ended the
launcher run and deletes it then (``python -m reverse_align.launcher <launcher> <run>``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from reverse_align import tracking

# How long the detached process waits for `mlflow run` to end its run (it does so as soon as our
# command exits), and how often it looks.
WAIT_S = 300.0
POLL_S = 0.25


def take() -> str | None:
    """The launcher run id (``MLFLOW_RUN_ID``), out of this process's environment for good.

    So that no later ``mlflow.start_run()`` or stage in this process (or its children) picks it up.
    """
    return os.environ.pop("MLFLOW_RUN_ID", None)


def in_our_experiment(launcher: str | None) -> bool:
    """Whether the launcher run is in our experiment (`mlflow run --experiment-name reverse-align`): then it
    is the stage's own run, not one to retire."""
    import mlflow

    if not launcher:
        return False
    client = mlflow.MlflowClient()
    experiment = client.get_experiment(client.get_run(launcher).info.experiment_id)
    return experiment.name == tracking.experiment_name()


def point(launcher: str, run_id: str) -> None:
    """Tag the launcher run with the run that holds its work."""
    import mlflow

    mlflow.MlflowClient().set_tag(launcher, tracking.TAG_MOVED_TO, run_id)


def retire(launcher: str, run_id: str) -> subprocess.Popen:
    """Point the launcher at ``run_id`` and have it deleted once `mlflow run` has ended it (detached)."""
    point(launcher, run_id)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.Popen(
        [sys.executable, "-m", "reverse_align.launcher", launcher],
        env=env, start_new_session=True, close_fds=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def delete_when_ended(launcher: str, wait_s: float = WAIT_S, poll_s: float = POLL_S) -> bool:
    """Delete the launcher run once it is no longer RUNNING; False if it still runs after ``wait_s``."""
    import mlflow

    client = mlflow.MlflowClient(tracking.tracking_uri())
    deadline = time.monotonic() + wait_s
    while True:
        info = client.get_run(launcher).info
        if info.lifecycle_stage == "deleted":
            return True
        if info.status != "RUNNING":
            client.delete_run(launcher)
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)


if __name__ == "__main__":
    delete_when_ended(sys.argv[1])
