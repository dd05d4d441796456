"""The `sweep` stage on the micro world: real dpo trials nested under one parent run.

Each test sweeps its own beta range, so each has its own study (the study name
derives from the runs, the objective and the range). Trials are 2 DPO steps
with one checkpoint, scored on 2 held-out problems per direction.
Covers: a finished sweep's parent run (best beta/value/run, table, plots, each
trial's interval and whether the best is separated from the others) and that the
same command adds no trial; two workers on one study (default sqlite
storage and PostgreSQL); a worker SIGKILLed mid-trial then restarted.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
from conftest import ROOT, SESSION_DIR, run_cli

from reverse_align import environment, tracking
from reverse_align.config import load_config
from reverse_align.eval.intervals import wilson
from reverse_align.sweep import run_sweep, study_name
from reverse_align.sweep_objective import eval_questions
from reverse_align.sweep_storage import default_url, open_storage

FAST = [
    "dpo.max_steps=2", "dpo.save_every_steps=2", "dpo.per_device_batch_size=4",
    "sweep.objective=exact_match", "sweep.objective_limit=2", "eval.max_new_tokens=16",
]  # fmt: skip
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def sweep_cfg(low: float, high: float, *overrides: str):
    return load_config("micro", [*FAST, f"sweep.beta_low={low}", f"sweep.beta_high={high}", *overrides])


def cli_args(sft: str, data: str, low: float, high: float, *extra: str) -> list[str]:
    return [
        "sweep", "--preset", "micro", "--sft_run_id", sft, "--data_run_id", data,
        "--beta_low", str(low), "--beta_high", str(high), "--set", " ".join(FAST), *extra,
    ]  # fmt: skip


def trials(cfg, sft, data, storage=None):
    storage = open_storage(load_config("micro", [f"sweep.storage={storage or default_url()}"]))
    return optuna.load_study(study_name=study_name(cfg, sft, data), storage=storage).trials


def children(client, parent_id):
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    return client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_sweep_logs_best_trial_and_the_same_command_adds_no_trial(micro_sft, micro_invert, client, tmp_path):
    cfg = sweep_cfg(0.1, 0.3)
    parent_id = run_sweep(cfg, sft_run_id=micro_sft, data_run_id=micro_invert)

    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.TAG_STAGE] == "sweep"
    assert parent.data.tags[tracking.tag_upstream("sft")] == micro_sft
    runs = children(client, parent_id)
    assert sorted(float(r.data.params["dpo.beta"]) for r in runs) == [0.1, 0.2, 0.3]  # the grid, each once
    assert all(r.info.status == "FINISHED" and r.data.tags[tracking.TAG_STAGE] == "dpo" for r in runs)
    values = {r.info.run_id: r.data.metrics[tracking.METRIC_SWEEP_OBJECTIVE] for r in runs}
    best_run = parent.data.tags[tracking.TAG_SWEEP_BEST_RUN]
    assert parent.data.metrics[tracking.METRIC_SWEEP_BEST_VALUE] == max(values.values()) == values[best_run]
    assert parent.data.metrics[tracking.METRIC_SWEEP_BEST_BETA] == float(client.get_run(best_run).data.params["dpo.beta"])
    assert parent.data.metrics[tracking.metric_sweep_trials("complete")] == 3
    # The objective of each checkpoint (step 2 = the final adapter) was reported to Optuna.
    study_trials = trials(cfg, micro_sft, micro_invert)
    assert [t.state.name for t in study_trials] == ["COMPLETE"] * 3
    assert all(list(t.intermediate_values) == [2] and t.intermediate_values[2] == t.value for t in study_trials)
    assert {t.user_attrs["dpo_run_id"] for t in study_trials} == set(values)

    # Each trial's objective carries its interval: 2 problems per direction = 4 questions.
    for r in runs:
        m = r.data.metrics
        assert m[tracking.metric_sweep_trial("n")] == 4
        assert m[tracking.metric_sweep_trial("correct")] == 4 * m[tracking.METRIC_SWEEP_OBJECTIVE]
        correct = round(m[tracking.metric_sweep_trial("correct")])
        low, high = wilson(correct, 4)
        assert (m[tracking.metric_sweep_trial("ci_low")], m[tracking.metric_sweep_trial("ci_high")]) == (low, high)
    assert all(len(t.user_attrs["questions"]) == 4 and t.user_attrs["n"] == 4 for t in study_trials)
    # On 4 questions no beta can be separated from another (4 discordant of 4: p 0.125): the tag lists the others.
    best_beta = parent.data.metrics[tracking.METRIC_SWEEP_BEST_BETA]
    assert parent.data.metrics[tracking.METRIC_SWEEP_BEST_N] == 4
    assert parent.data.metrics[tracking.METRIC_SWEEP_BEST_SEPARATED] == 0
    others = {f"{b:g}" for b in (0.1, 0.2, 0.3) if b != best_beta}
    assert set(parent.data.tags[tracking.TAG_SWEEP_NOT_SEPARATED].split(",")) == others
    best_low = parent.data.metrics[tracking.METRIC_SWEEP_BEST_CI_LOW]
    best_high = parent.data.metrics[tracking.METRIC_SWEEP_BEST_CI_HIGH]
    assert best_low <= parent.data.metrics[tracking.METRIC_SWEEP_BEST_VALUE] <= best_high
    assert parent.data.tags[tracking.TAG_ENV_LOCK_SHA] == environment.lock_sha256() != environment.NO_LOCK
    assert all(r.data.tags[tracking.TAG_ENV_LOCK_SHA] == environment.lock_sha256() for r in runs)

    table = tracking.download_artifact(parent_id, f"{tracking.ARTIFACT_SWEEP_DIR}/trials.csv", str(tmp_path))
    with open(table) as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(float(r["beta"]) for r in rows) == [0.1, 0.2, 0.3]
    assert all(r["n"] == "4" and float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"]) for r in rows)
    assert sorted(r["p_vs_best"] == "" for r in rows) == [False, False, True]  # the best is not compared to itself
    figures = {a.path for a in client.list_artifacts(parent_id, tracking.ARTIFACT_FIGURES)}
    assert figures == {"figures/sweep_objective_vs_beta.png", "figures/sweep_history.png"}

    again = run_sweep(cfg, sft_run_id=micro_sft, data_run_id=micro_invert)
    assert again == parent_id
    assert len(trials(cfg, micro_sft, micro_invert)) == 3
    assert len(children(client, parent_id)) == 3


def _two_workers(micro_sft, micro_invert, client, low, high, *storage_args):
    result = run_cli(*cli_args(micro_sft, micro_invert, low, high, "--workers", "2", "--n_trials", "2", *storage_args))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _check_each_trial_once(study_trials):
    assert [t.state.name for t in study_trials] == ["COMPLETE", "COMPLETE"]
    assert len({t.params["beta"] for t in study_trials}) == 2
    assert len({t.user_attrs["worker"] for t in study_trials}) == 2  # both workers took a trial
    assert len({t.user_attrs["dpo_run_id"] for t in study_trials}) == 2


@pytest.mark.slow
def test_two_workers_share_the_default_storage(micro_sft, micro_invert, client):
    _two_workers(micro_sft, micro_invert, client, 0.4, 0.5)
    _check_each_trial_once(trials(sweep_cfg(0.4, 0.5), micro_sft, micro_invert))


def _postgres_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _postgres_up(), reason="no PostgreSQL on 127.0.0.1:5432")
def test_two_workers_share_a_postgresql_study(micro_sft, micro_invert, client):
    name = study_name(sweep_cfg(0.6, 0.7), micro_sft, micro_invert)  # unique: contains this session's sft run id
    try:
        _two_workers(micro_sft, micro_invert, client, 0.6, 0.7, "--storage", POSTGRES)
        _check_each_trial_once(trials(sweep_cfg(0.6, 0.7), micro_sft, micro_invert, POSTGRES))
    finally:
        try:
            optuna.delete_study(study_name=name, storage=open_storage(sweep_cfg(0.6, 0.7, f"sweep.storage={POSTGRES}")))
        except KeyError:
            pass


@pytest.mark.slow
def test_killed_worker_trial_fails_and_the_restarted_sweep_completes(micro_sft, micro_invert, client):
    heartbeat = ["--set", "sweep.heartbeat_interval=1 sweep.grace_period=3"]
    args = cli_args(micro_sft, micro_invert, 0.7, 0.8, "--n_trials", "2", *heartbeat)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "reverse_align.cli", *args], env=env, cwd=SESSION_DIR,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cfg = sweep_cfg(0.7, 0.8)
    deadline = time.time() + 600
    killed = None
    while time.time() < deadline and killed is None:
        time.sleep(1)
        try:
            running = [t for t in trials(cfg, micro_sft, micro_invert) if t.state.name == "RUNNING"]
        except KeyError:
            continue  # study not created yet
        if running and "dpo_run_id" in running[0].user_attrs:  # mid-trial: its dpo run is training
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            killed = running[0]
    assert killed is not None, "the sweep never reached a training trial"

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    study_trials = trials(cfg, micro_sft, micro_invert)
    by_number = {t.number: t for t in study_trials}
    assert by_number[killed.number].state.name == "FAIL"
    complete = [t for t in study_trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["beta"] for t in complete) == [0.7, 0.8]  # each beta completed once
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params["beta"] == killed.params["beta"]
    killed_run = client.get_run(killed.user_attrs["dpo_run_id"])
    assert killed_run.info.status == "FAILED"  # not left RUNNING, never promoted
    parent = client.get_run(result.stdout.strip().split("parent run ")[-1].split()[0])
    assert parent.data.metrics[tracking.metric_sweep_trials("complete")] == 2
    assert parent.data.metrics[tracking.metric_sweep_trials("fail")] == 1


def test_bad_sweep_input_exits_2(micro_sft, micro_invert):
    result = run_cli(*cli_args(micro_sft, micro_invert, 0.5, 0.2))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: sweep beta range [0.5, 0.2]: expected 0 < beta_low < beta_high"]
    # eval_average on a benchmark whose data cannot be read (hub offline): refused before any trial trains.
    result = run_cli(
        *cli_args(micro_sft, micro_invert, 0.1, 0.8, "--objective", "eval_average", "--set", "eval.benchmarks=aime24")
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "simplescaling/aime24_nofigures" in result.stderr


def test_eval_average_questions_come_from_the_evaluate_runs_samples(client):
    # The eval_average objective's per-question scores: eval/samples/<benchmark>.json (MLflow tables), a
    # question's score the mean of its samples, keyed by benchmark so two benchmarks' ids never collide.
    tracking.setup()
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    run_id = client.create_run(experiment.experiment_id).info.run_id
    client.log_table(run_id, {"id": ["a", "a", "b", "b"], "sample": [0, 1, 0, 1], "correct": [True, False, True, True]},
                     f"{tracking.ARTIFACT_EVAL_SAMPLES}/math500.json")  # fmt: skip
    client.log_table(run_id, {"id": ["a"], "sample": [0], "correct": [False]}, f"{tracking.ARTIFACT_EVAL_SAMPLES}/gpqa.json")
    assert eval_questions(run_id) == {"math500/a": 0.5, "math500/b": 1.0, "gpqa/a": 0.0}
