"""Sweep storage and study identity without training: stale trials are failed and retried with the same beta."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import optuna
import pytest

from reverse_align.config import load_config
from reverse_align.errors import UserError
from reverse_align.sweep import beta_grid, check_sweep_config, study_name
from reverse_align.sweep_storage import _redact, fail_dead_local_trials, open_storage


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _study(storage):
    return optuna.create_study(study_name="s", storage=storage, direction="maximize")


def _running_trial(study, beta: float, worker: str):
    trial = study.ask()
    study._storage.set_trial_param(trial._trial_id, "beta", beta, optuna.distributions.FloatDistribution(0.1, 0.8))
    trial.set_user_attr("worker", worker)
    return trial


def test_journal_fails_and_retries_trials_of_dead_local_workers(tmp_path):
    cfg = load_config("micro", [f"sweep.storage=journal:{tmp_path}/journal.log"])
    study = _study(open_storage(cfg))
    host = socket.gethostname()
    dead = _running_trial(study, 0.3, f"{host}:{_dead_pid()}")
    alive = _running_trial(study, 0.4, f"{host}:{os.getpid()}")
    elsewhere = _running_trial(study, 0.5, f"another-host:{_dead_pid()}")

    assert fail_dead_local_trials(study, max_retry=1) == [dead.number]
    states = {t.number: t.state.name for t in study.trials}
    assert states[dead.number] == "FAIL"
    assert states[alive.number] == states[elsewhere.number] == "RUNNING"  # no way to know: left running
    (retry,) = [t for t in study.trials if t.state.name == "WAITING"]
    assert retry.params == {"beta": 0.3} and retry.system_attrs["failed_trial"] == dead.number
    assert fail_dead_local_trials(study, max_retry=1) == []  # failed once only


def test_sqlite_heartbeat_fails_a_silent_trial_and_retries_it(tmp_path):
    cfg = load_config(
        "micro", [f"sweep.storage=sqlite:///{tmp_path}/optuna.db", "sweep.heartbeat_interval=1", "sweep.grace_period=1"]
    )
    storage = open_storage(cfg)
    study = _study(storage)
    trial = _running_trial(study, 0.6, "x:1")
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # no heartbeat for longer than grace_period, as after a SIGKILL
    optuna.storages.fail_stale_trials(study)
    assert study.trials[trial.number].state.name == "FAIL"
    (retry,) = [t for t in study.trials if t.state.name == "WAITING"]
    assert retry.params == {"beta": 0.6}


def test_study_name_is_stable_and_names_what_a_trial_means():
    cfg = load_config("micro", ["sweep.objective=exact_match"])
    name = study_name(cfg, "a" * 32, "b" * 32)
    assert name == study_name(load_config("micro", ["sweep.objective=exact_match"]), "a" * 32, "b" * 32)
    assert name.startswith("dpo-beta-aaaaaaaa-bbbbbbbb-exact_match-")
    assert study_name(load_config("micro", ["sweep.objective=exact_match", "dpo.beta=0.2"]), "a" * 32, "b" * 32) == name
    assert study_name(load_config("micro", ["sweep.objective=exact_match", "dpo.max_steps=9"]), "a" * 32, "b" * 32) != name
    assert study_name(load_config("micro", ["sweep.objective=exact_match", "sweep.workers=4"]), "a" * 32, "b" * 32) == name


def test_grid_and_bad_settings():
    assert beta_grid(load_config("tiny", ["sweep.beta_low=0.2", "sweep.beta_high=0.5"])) == [0.2, 0.3, 0.4, 0.5]
    with pytest.raises(UserError, match="only 8 points"):
        check_sweep_config(load_config("tiny", ["sweep.n_trials=9"]))
    with pytest.raises(UserError, match="needs a number of trials"):
        check_sweep_config(load_config("tiny", ["sweep.sampler=tpe"]))
    with pytest.raises(UserError, match="expected one of grid"):
        check_sweep_config(load_config("tiny", ["sweep.sampler=random"]))
    assert _redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
