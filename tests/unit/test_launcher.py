"""The `mlflow run` launcher run in Default is deleted only after `mlflow run` has ended it."""

from __future__ import annotations

import time

import pytest

from reverse_align import launcher, tracking


@pytest.fixture()
def store(tmp_path, monkeypatch):
    import mlflow

    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path}/store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(before)


def test_retire_waits_for_mlflow_run_to_end_the_launcher_then_deletes_it(store):
    ours = store.create_run(store.create_experiment("reverse-align")).info.run_id
    started = store.create_run("0").info.run_id  # what `mlflow run` made in Default
    store.set_terminated(ours, "FAILED")
    reaper = launcher.retire(started, ours)
    time.sleep(3)  # the detached process is up and looking; the launcher still runs: it must stay
    assert reaper.poll() is None
    run = store.get_run(started)
    assert run.info.lifecycle_stage == "active" and run.info.status == "RUNNING"
    assert run.data.tags[tracking.TAG_MOVED_TO] == ours
    store.set_terminated(started, "FAILED")  # what `mlflow run` does once our command has exited
    assert reaper.wait(timeout=60) == 0
    run = store.get_run(started)
    assert run.info.lifecycle_stage == "deleted" and run.info.status == "FAILED"
    assert store.search_runs(["0"]) == []
    assert store.get_run(ours).info.lifecycle_stage == "active"


def test_a_launcher_nobody_ends_is_left_alone(store):
    started = store.create_run("0").info.run_id
    t0 = time.monotonic()
    assert launcher.delete_when_ended(started, wait_s=0.5, poll_s=0.1) is False
    assert 0.5 <= time.monotonic() - t0 < 5
    assert store.get_run(started).info.lifecycle_stage == "active"


def test_take_removes_the_launcher_from_the_environment(monkeypatch):
    import os

    monkeypatch.setenv("MLFLOW_RUN_ID", "abc123")
    assert launcher.take() == "abc123"
    assert "MLFLOW_RUN_ID" not in os.environ
    assert launcher.take() is None
