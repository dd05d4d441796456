"""The `sweep` stage: an Optuna study over DPO beta, each trial a real `dpo` run.

One parent MLflow run per study (stage ``sweep``); each trial runs
:func:`reverse_align.train.dpo.run_dpo` with its beta as a child of that run,
then scores it with :func:`objective_value`. The study lives in an Optuna
storage (``sweep.storage``, see :mod:`reverse_align.sweep_storage`) under a name
derived from the SFT run, the data run, the objective and the settings that
change what a trial means, so the same command again resumes the study: it runs
only the trials still missing. ``n_trials`` counts COMPLETED trials.

- Intermediate values: the exact_match objective is scored at every DPO
  checkpoint and reported to Optuna (``trial.report``; reverse_align/sweep_objective.py), so the median pruner
  can stop a poor trial; a pruned trial's dpo run ends FAILED with
  ``TrialPruned`` in ``reverse_align.error`` (never promoted).
- Failures: a trial whose dpo run raises ends FAILED and the sweep goes on. A
  worker killed mid-trial leaves its trial RUNNING; the stale trial is failed
  (RDB: heartbeat older than ``grace_period``; journal: its worker pid is gone
  on this host) and retried ``max_retry`` times with the same beta.
- ``--workers N`` runs N workers on the study as Ray tasks (reverse_align/cluster.py: a local cluster, or
  ``--ray_address`` / ``RAY_ADDRESS``), each asking for a trial's GPUs (dpo.num_processes on GPU presets,
  none on tiny) and an equal share of a node's cores; Ray reruns a worker whose process or node was lost
  (its trial goes stale and is retried as above). Other machines also join with the same command and an
  RDB URL. One worker trains in the stage's own process.

The parent run holds metrics ``sweep/best_beta``, ``sweep/best_value``, tag
``reverse_align.sweep.best_run_id``, ``sweep/trials.csv`` and
``figures/sweep_objective_vs_beta.png``, ``figures/sweep_history.png``; and whether the best is
separated from the other trials beyond binomial noise (reverse_align/sweep_stats.py): the best trial's
Wilson interval ``sweep/best_ci_low``/``_high`` on ``sweep/best_n`` questions, ``sweep/best_separated``
and tag ``reverse_align.sweep.not_separated`` (the betas it is not separated from).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time

from reverse_align import cluster, tracking
from reverse_align import launcher as launchers
from reverse_align.config import Config
from reverse_align.environment import lock_sha256
from reverse_align.errors import UserError
from reverse_align.sweep_objective import (
    PARAM,
    check_objective_inputs,
    checkpoint_reporter,
    evaluate_stage,
    objective_value,
)
from reverse_align.sweep_storage import _redact, describe, fail_dead_local_trials, open_storage, worker_id

STAGE = "sweep"
OBJECTIVES = ("eval_average", "exact_match")
SAMPLERS = ("grid", "tpe", "tpe_log")
PRUNERS = ("median", "none")
POLL_SECONDS = 2.0
# A worker stops when this many of its trials fail in a row (a broken setup, not one unlucky beta).
MAX_FAILURES_IN_A_ROW = 3


# ---------------------------------------------------------------- settings


def check_sweep_config(cfg: Config) -> None:
    s = cfg.sweep
    if not 0 < s.beta_low < s.beta_high:
        raise UserError(f"sweep beta range [{s.beta_low}, {s.beta_high}]: expected 0 < beta_low < beta_high")
    if s.sampler not in SAMPLERS:
        raise UserError(f"sweep.sampler {s.sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if s.objective not in OBJECTIVES:
        raise UserError(f"--objective {s.objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if s.pruner not in PRUNERS:
        raise UserError(f"sweep.pruner {s.pruner!r}: expected one of {', '.join(PRUNERS)}")
    if s.workers < 1:
        raise UserError(f"--workers {s.workers}: expected 1 or more")
    if s.sampler == "grid":
        if s.grid_step <= 0:
            raise UserError(f"sweep.grid_step {s.grid_step}: expected > 0")
        size = len(beta_grid(cfg))
        if s.n_trials > size:
            raise UserError(f"--n_trials {s.n_trials}: the grid {beta_grid(cfg)} has only {size} points")
    elif s.n_trials <= 0:
        raise UserError(f"--n_trials {s.n_trials}: the {s.sampler} sampler needs a number of trials > 0")
    if s.objective == "eval_average" and evaluate_stage() is None:
        raise UserError(
            "--objective eval_average needs the `evaluate` stage, which this installation lacks; "
            "use --objective exact_match (tiny presets)"
        )
    if s.objective == "exact_match" and s.objective_limit <= 0:
        raise UserError(f"sweep.objective_limit {s.objective_limit}: expected > 0 for the exact_match objective")


def beta_grid(cfg: Config) -> list[float]:
    s = cfg.sweep
    n = math.floor((s.beta_high - s.beta_low) / s.grid_step + 1e-9) + 1
    return [round(s.beta_low + i * s.grid_step, 10) for i in range(n)]


def target_trials(cfg: Config) -> int:
    return cfg.sweep.n_trials or len(beta_grid(cfg))


def study_name(cfg: Config, sft_run_id: str, data_run_id: str) -> str:
    """Same runs, objective and trial-defining settings -> same study (the command resumes it)."""
    s = cfg.sweep
    defining = {
        "preset": cfg.preset,
        "dpo": {k: v for k, v in dataclasses.asdict(cfg.dpo).items() if k not in ("beta", "num_processes")},
        "range": [s.beta_low, s.beta_high, s.sampler, s.grid_step if s.sampler == "grid" else None, s.seed],
        "objective": [s.objective, s.objective_limit if s.objective == "exact_match" else cfg.eval.benchmarks],
        "lora": dataclasses.asdict(cfg.lora),
    }
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"dpo-beta-{sft_run_id[:8] or 'direct'}-{data_run_id[:8]}-{s.objective}-{digest}"


def make_sampler(cfg: Config):
    import optuna

    s = cfg.sweep
    if s.sampler == "grid":
        return optuna.samplers.GridSampler({PARAM: beta_grid(cfg)}, seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=min(4, max(1, target_trials(cfg) // 2)))


def make_pruner(cfg: Config):
    import optuna

    if cfg.sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=cfg.sweep.pruner_startup_trials, n_warmup_steps=0)


def suggest_beta(trial, cfg: Config) -> float:
    s = cfg.sweep
    return trial.suggest_float(PARAM, s.beta_low, s.beta_high, log=s.sampler == "tpe_log")


def trial_run_recorder(trial):
    """A TrainerCallback that records the dpo run id on the trial as training starts (a killed trial keeps it)."""
    import mlflow
    from transformers import TrainerCallback

    class RecordRun(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if mlflow.active_run() is not None:
                trial.set_user_attr("dpo_run_id", mlflow.active_run().info.run_id)

    return RecordRun()


def close_failed_trial_runs(study) -> None:
    """The dpo run of a trial failed as stale (its worker was killed) still shows RUNNING: end it FAILED."""
    import mlflow
    from optuna.trial import TrialState

    client = mlflow.MlflowClient(tracking.tracking_uri())
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get("dpo_run_id")
        if not run_id:
            continue
        run = client.get_run(run_id)
        if run.info.status == "RUNNING":
            message = f"sweep trial {trial.number} failed: its worker {trial.user_attrs.get('worker', '?')} stopped"
            client.set_tag(run_id, tracking.TAG_ERROR, message)
            client.set_terminated(run_id, "FAILED")


def make_objective(cfg: Config, sft_run_id: str, data_run_id: str, parent_id: str, name: str):
    from reverse_align.train.dpo import run_dpo

    def objective(trial) -> float:
        import mlflow

        beta = suggest_beta(trial, cfg)
        trial.set_user_attr("worker", worker_id())
        trial_cfg = copy.deepcopy(cfg)
        trial_cfg.dpo.beta = beta
        reporter = checkpoint_reporter(trial_cfg, trial, data_run_id) if cfg.sweep.objective == "exact_match" else None
        before = mlflow.last_active_run()
        outer = os.environ.get(tracking.ENV_PARENT_RUN_ID)  # `main`'s run, when the sweep is one of its stages
        os.environ[tracking.ENV_PARENT_RUN_ID] = parent_id
        try:
            print(f"[sweep] trial {trial.number}: beta {beta:g}")
            dpo_run_id = run_dpo(
                trial_cfg, sft_run_id=sft_run_id, data_run_id=data_run_id,
                callbacks=[trial_run_recorder(trial), *([reporter] if reporter else [])],
            )  # fmt: skip
        finally:
            if outer is None:
                os.environ.pop(tracking.ENV_PARENT_RUN_ID, None)
            else:
                os.environ[tracking.ENV_PARENT_RUN_ID] = outer
            _tag_trial_run(trial, name, before)
        final = reporter.scored.get(trial_cfg.dpo.max_steps) if reporter else None  # last checkpoint = final adapter
        value = objective_value(trial_cfg, cfg.sweep.objective, dpo_run_id, data_run_id, scored=final, trial=trial)
        attrs = trial.user_attrs
        ci = f" [{attrs['ci_low']:.3f}, {attrs['ci_high']:.3f}], n {attrs['n']}" if "n" in attrs else ""
        scored = f"{cfg.sweep.objective} {value:.4f}{ci}"
        print(f"[sweep] trial {trial.number}: beta {beta:g} -> {scored} (dpo run {dpo_run_id})")
        return value

    return objective


def _tag_trial_run(trial, name: str, before) -> None:
    """Tag the dpo run this trial started (also when it failed or was pruned) with the study and trial."""
    import mlflow

    run = mlflow.last_active_run()
    if run is None or (before is not None and run.info.run_id == before.info.run_id):
        return  # the trial failed before its dpo run started
    if run.data.tags.get(tracking.TAG_STAGE) != "dpo":
        return
    client = mlflow.MlflowClient(tracking.tracking_uri())
    client.set_tag(run.info.run_id, tracking.TAG_SWEEP_STUDY, name)
    client.set_tag(run.info.run_id, tracking.TAG_SWEEP_TRIAL, str(trial.number))
    trial.set_user_attr("dpo_run_id", run.info.run_id)


# ---------------------------------------------------------------- workers


def counts(study) -> dict[str, int]:
    from collections import Counter

    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def grid_exhausted(cfg: Config, study) -> bool:
    """Every grid point has a finished trial and none is left to run or retry."""
    if cfg.sweep.sampler != "grid":
        return False
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
        return False
    done = {t.params.get(PARAM) for t in trials if t.state.is_finished()}
    return all(beta in done for beta in beta_grid(cfg))


def work(cfg: Config, sft_run_id: str, data_run_id: str, parent_id: str, name: str) -> None:
    """One worker: run trials until the study has ``n_trials`` COMPLETE ones (or the grid is exhausted)."""
    import warnings

    import optuna
    from optuna.storages import fail_stale_trials

    storage = open_storage(cfg)
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(cfg), pruner=make_pruner(cfg))
    objective = make_objective(cfg, sft_run_id, data_run_id, parent_id, name)
    target = target_trials(cfg)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    failures = 0
    while True:
        fail_stale_trials(study)  # RDB: heartbeat older than grace_period -> FAIL (+ retry callback)
        fail_dead_local_trials(study, cfg.sweep.max_retry)  # journal: RUNNING trials of dead pids on this host
        close_failed_trial_runs(study)
        n = counts(study)
        if n["COMPLETE"] >= target or grid_exhausted(cfg, study):
            return
        if n["COMPLETE"] + n["RUNNING"] + n["WAITING"] >= target and not n["WAITING"]:
            time.sleep(POLL_SECONDS)  # enough trials are under way; wait for them to finish or go stale
            continue
        try:
            study.optimize(objective, n_trials=1, gc_after_trial=True)
            failures = 0
        except UserError:
            raise  # bad input fails every trial alike: stop (the trial is recorded FAILED)
        except Exception as exc:
            failures += 1
            print(f"[sweep] trial failed ({type(exc).__name__}: {str(exc)[:300]}); {failures} in a row")
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise RuntimeError(f"{failures} trials in a row failed in this worker; last: {exc}") from exc


def _worker_task(spec: dict) -> dict:
    """Body of one worker's Ray task; the worker's own errors come back as ``status`` (Ray retries lost workers only)."""
    import traceback

    import torch

    from reverse_align.train.common import config_from_dict

    with cluster.carried(spec["env"], spec["cwd"], spec["gpus"]):
        torch.set_num_threads(spec["threads"])
        try:
            work(config_from_dict(spec["config"]), **spec["kwargs"])
        except UserError as exc:
            return {"status": "user_error", "message": str(exc), "worker": worker_id()}
        except Exception as exc:  # noqa: BLE001 - its traceback in the worker's output; the driver names it
            traceback.print_exc()
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            return {"status": "failed", "message": message, "worker": worker_id()}
        return {"status": "done", "worker": worker_id()}


def launch_workers(cfg: Config, kwargs: dict, n: int, ray_address: str = "") -> None:
    """``n`` workers on the study as Ray tasks, each with a trial's GPUs; waits for all of them."""
    import ray

    from reverse_align.pipeline import stage_gpus

    started = cluster.connect(ray_address)
    try:
        node_cpus, node_gpus = cluster.largest_node()
        gpus = stage_gpus("dpo", cfg)
        if gpus > node_gpus:
            raise UserError(
                f"--workers {n}: a trial needs {gpus} GPUs and the largest node of the Ray cluster has {node_gpus:g}"
            )
        threads = max(1, int(node_cpus) // n)
        spec = {"config": dataclasses.asdict(cfg), "kwargs": kwargs, "env": cluster.stage_env(), "cwd": os.getcwd(),
                "gpus": gpus, "threads": threads}  # fmt: skip
        refs = [cluster.task(_worker_task, threads, gpus).remote(spec) for _ in range(n)]
        results = []
        for ref in refs:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayError as exc:  # its worker or node lost, retries spent
                results.append({"status": "failed", "message": f"lost: {type(exc).__name__}", "worker": "?"})
    finally:
        cluster.disconnect(started)
    for result in results:
        if result["status"] == "user_error":
            raise UserError(result["message"])
    failed = [f"{r['worker']}: {r['message']}" for r in results if r["status"] != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} sweep workers failed: {'; '.join(failed)}")


# ---------------------------------------------------------------- parent run


def parent_run(cfg: Config, study, sft_run_id: str, data_run_id: str) -> str:
    """The study's parent MLflow run: created with the study, reopened (RUNNING) when the study resumes."""
    import mlflow

    client = mlflow.MlflowClient(tracking.tracking_uri())
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id:
        try:
            client.update_run(parent_id, status="RUNNING")
            return parent_id
        except mlflow.exceptions.MlflowException:
            pass  # deleted: make a new one
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    on = f"on-{tracking._name_of(sft_run_id)}" if sft_run_id else "direct"
    tags = {
        tracking.TAG_STAGE: STAGE,
        tracking.TAG_PRESET: cfg.preset,
        # What `main` matches to reuse a finished sweep (a stage run's tag; the sweep's parent is made here).
        tracking.TAG_CONFIG_HASH: tracking.config_hash(cfg, STAGE),
        tracking.tag_upstream("invert"): data_run_id,
        tracking.TAG_SWEEP_STUDY: study.study_name,
        tracking.TAG_RUN_NAME: f"sweep-beta-{on}",
        tracking.TAG_ENV_LOCK_SHA: lock_sha256(),
    }
    tags.update({tracking.tag_upstream(k): v for k, v in tracking.base_model_upstream(cfg, STAGE).items()})
    if sft_run_id:
        tags[tracking.tag_upstream("sft")] = sft_run_id
    main_run = os.environ.get(tracking.ENV_PARENT_RUN_ID)
    if main_run:
        tags["mlflow.parentRunId"] = main_run
    parent = client.create_run(experiment.experiment_id, tags=tags)
    parent_id = parent.info.run_id
    params = {k: tracking._param_value(v) for k, v in cfg.flat().items() if k.startswith(("sweep.", "dpo.", "preset"))}
    params["sweep.study"] = study.study_name
    from mlflow.entities import Param

    client.log_batch(parent_id, params=[Param(k, v) for k, v in params.items()])
    client.log_text(parent_id, cfg.to_yaml(), tracking.ARTIFACT_CONFIG)
    study.set_user_attr("mlflow_parent_run_id", parent_id)
    return parent_id


def summarize(cfg: Config, study, parent_id: str) -> dict:
    """Best trial, trials table and plots onto the parent run."""
    import tempfile
    from pathlib import Path

    import mlflow
    from optuna.trial import TrialState

    from reverse_align import sweep_plots, sweep_stats

    client = mlflow.MlflowClient(tracking.tracking_uri())
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    rows = [
        {
            "number": t.number, "state": t.state.name, "beta": t.params.get(PARAM), "value": t.value,
            "dpo_run_id": t.user_attrs.get("dpo_run_id", ""), "worker": t.user_attrs.get("worker", ""),
            "retry_of": t.system_attrs.get("failed_trial", ""),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else "",
        }
        for t in trials
    ]  # fmt: skip
    summary = {"complete": len(complete), "trials": len(trials)}
    separation = sweep_stats.separation(complete, PARAM)  # is the best beyond binomial noise?
    if separation is not None:
        for row, t in zip(rows, trials):
            row.update(separation.table_columns(t))
        summary["verdict"] = separation.text()
    with tempfile.TemporaryDirectory() as tmp:
        import csv

        table = Path(tmp) / "trials.csv"
        with table.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["number"])
            writer.writeheader()
            writer.writerows(rows)
        client.log_artifact(parent_id, str(table), tracking.ARTIFACT_SWEEP_DIR)
        if complete:
            close, compared = separation.close, len(separation.comparisons)
            figures = sweep_plots.draw(study, PARAM, cfg.sweep.objective, Path(tmp), close, compared)
            for figure in figures:
                client.log_artifact(parent_id, str(figure), tracking.ARTIFACT_FIGURES)
    if complete:
        best = max(complete, key=lambda t: t.value)
        client.log_metric(parent_id, tracking.METRIC_SWEEP_BEST_BETA, best.params[PARAM])
        client.log_metric(parent_id, tracking.METRIC_SWEEP_BEST_VALUE, best.value)
        client.set_tag(parent_id, tracking.TAG_SWEEP_BEST_RUN, best.user_attrs.get("dpo_run_id", ""))
        summary.update(best_beta=best.params[PARAM], best_value=best.value, best_run_id=best.user_attrs.get("dpo_run_id"))
        separation.log(client, parent_id)
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        client.log_metric(parent_id, tracking.metric_sweep_trials(state.lower()), sum(t.state.name == state for t in trials))
    return summary


# ---------------------------------------------------------------- stage


def run_sweep(cfg: Config, sft_run_id: str = "", data_run_id: str = "", ray_address: str = "") -> str:
    """The stage: create or resume the study, run trials in ``workers`` workers, summarize. Returns the parent run id.

    ``ray_address``: the Ray cluster of the workers when there are several (empty: RAY_ADDRESS, else this machine;
    inside `main` the cluster main runs on)."""
    import mlflow
    import optuna

    from reverse_align.models import require_same_base
    from reverse_align.train.dpo import check_dpo_config, require_pairs_run

    tracking.setup()
    check_sweep_config(cfg)
    check_dpo_config(cfg)
    sft_run = tracking.require_run(sft_run_id, "sft", "sft_run_id") if sft_run_id else None
    if sft_run is not None:
        require_same_base(cfg, sft_run, "--sft_run_id")
    require_pairs_run(data_run_id)
    check_objective_inputs(cfg, data_run_id)
    name = study_name(cfg, sft_run_id, data_run_id)
    storage = open_storage(cfg)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=make_sampler(cfg), pruner=make_pruner(cfg),
    )  # fmt: skip
    parent_id = parent_run(cfg, study, sft_run_id, data_run_id)
    launcher = launchers.take()  # `mlflow run`: trials must not reuse its run; retired at the end
    if launcher:
        launchers.point(launcher, parent_id)
    before = counts(study)
    print(f"[sweep] study {name} ({_redact(describe(cfg))}): {dict(before) or 'new'}; "
          f"target {target_trials(cfg)} completed trials; parent run {parent_id}")  # fmt: skip
    client = mlflow.MlflowClient(tracking.tracking_uri())
    kwargs = {"sft_run_id": sft_run_id, "data_run_id": data_run_id, "parent_id": parent_id, "name": name}
    try:
        if cfg.sweep.workers > 1:
            launch_workers(cfg, kwargs, cfg.sweep.workers, ray_address)
        else:
            work(cfg, **kwargs)
        summary = summarize(cfg, study, parent_id)
    except BaseException as exc:
        client.set_tag(parent_id, tracking.TAG_ERROR, f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(parent_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        if launcher:
            launchers.retire(launcher, parent_id)
    client.set_terminated(parent_id, "FINISHED")
    after = counts(study)
    added = sum(after.values()) - sum(before.values())
    best = f"best beta {summary['best_beta']:g} ({cfg.sweep.objective} {summary['best_value']:.4f}, dpo run {summary['best_run_id']})" if "best_beta" in summary else "no completed trial"
    print(f"[sweep] {summary['complete']} completed of {summary['trials']} trials ({added} new); {best}; parent run {parent_id}")
    if "verdict" in summary:
        print(f"[sweep] {summary['verdict']}")
    return parent_id
