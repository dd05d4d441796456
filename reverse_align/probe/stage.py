"""The `probe` stage: the learning dynamics of Figure 2 (PROTOCOL §4) from tracked checkpoints.

Two modes, each one MLflow run tagged ``reverse_align.stage = probe``:

- experiment (``--data_run_id <invert run> --train_on forward|reverse|mixed``):
  train on the probe set D_f, D_r or D_m (the invert run's ``data/probe.jsonl``:
  the 50 shortest forward items and their reverses) with the real `sft` stage
  for ``probe.sft_epochs`` epochs, a checkpoint every ``probe.sft_eval_every``;
  then the real `dpo` stage on that SFT model (reference = the SFT model) with
  beta ``probe.dpo_beta`` for ``probe.dpo_epochs`` epochs, a checkpoint each
  epoch. Both training runs are nested children of the probe run; they keep every
  adapter checkpoint until it is scored, then what ``cfg.checkpoints`` says.
- checkpoints (``--run_id <sft or dpo run>``): an existing run's logged checkpoints.

Then every checkpoint is scored on all three probe tests T_f, T_r, T_m
(:mod:`reverse_align.probe.alp`: base model loaded once, adapters swapped in),
starting from the model the phase starts from (step 0: the base model for SFT,
the SFT model for DPO). Logged: ``alp/<sft|dpo>/<pos|neg|margin>/<forward|reverse|mixed>``
at step = the checkpoint's epoch (optimizer step for a DPO run saved by steps);
the per-item values as the table ``alp/items.json``; Figure 2 as
``figures/alp_{pos,neg,margin}.png``. An experiment run draws the paper's five
curves from itself and the newest finished probe runs on the same invert run
trained on the other two sets, so the third run's figures show all five.
"""

from __future__ import annotations

import copy
import math
import re
import tempfile
from dataclasses import dataclass

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.errors import UserError
from reverse_align.models import require_same_base

STAGE = "probe"
PROBE_TRAIN_SET = "probe"
# --train_on -> (sft mix, dpo direction) on the probe set: D_f, D_r, D_m.
TRAIN_ON = {"forward": ("forward", "forward"), "reverse": ("reverse", "reverse"), "mixed": ("mixed", "both")}
MODE_EXPERIMENT = "experiment"
MODE_CHECKPOINTS = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^(epoch|step)-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A model to score: the base (``artifact`` None) or an adapter artifact of a run."""

    step: int  # x of the curve: epoch, or optimizer step for step-<n> checkpoints
    name: str
    run_id: str | None = None
    artifact: str | None = None


def logged_checkpoints(client, run_id: str) -> list[Checkpoint]:
    """``checkpoints/epoch-<n>`` or ``checkpoints/step-<n>`` of a run, in order."""
    found = []
    for entry in client.list_artifacts(run_id, tracking.ARTIFACT_CHECKPOINTS):
        name = entry.path.split("/")[-1]
        match = _CHECKPOINT_NAME.match(name)
        if entry.is_dir and match:
            found.append(Checkpoint(int(match.group(2)), name, run_id, entry.path))
    return sorted(found, key=lambda c: c.step)


def starting_point(run) -> Checkpoint:
    """Step 0 of a phase: the model training started from (SFT: base; DPO: its SFT model, or base if direct)."""
    sft_run_id = run.data.tags.get(tracking.tag_upstream("sft"))
    if run.data.tags.get(tracking.TAG_STAGE) == "dpo" and sft_run_id:
        return Checkpoint(0, "sft", sft_run_id, tracking.ARTIFACT_ADAPTER)
    return Checkpoint(0, "base")


# ---------------------------------------------------------------- scoring


def score_checkpoints(scorer, checkpoints: list[Checkpoint], phase: str, rows: list[dict]) -> None:
    """Score each checkpoint on the probe, log ``alp/<phase>/...`` at its step, collect per-item rows."""
    import mlflow
    from tqdm.auto import tqdm

    for checkpoint in tqdm(checkpoints, desc=f"probe {phase} checkpoints", unit="ckpt"):
        with tqdm(total=len(scorer.sequences), desc=checkpoint.name, unit="seq", leave=False) as bar:
            if checkpoint.artifact is None:
                scores = scorer.score_base(bar)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    adapter = tracking.download_artifact(checkpoint.run_id, checkpoint.artifact, tmp)
                    scores = scorer.score_adapter(adapter, bar)
        metrics = {
            tracking.metric_alp(phase, kind, test): value
            for test, values in scores.summary().items()
            for kind, value in values.items()
        }
        mlflow.log_metrics(metrics, step=checkpoint.step)
        rows += [{"phase": phase, "checkpoint": checkpoint.name, "step": checkpoint.step, **r} for r in scores.rows()]


def make_scorer(cfg: Config, data_run_id: str):
    from reverse_align.data.invert import load_run_records
    from reverse_align.models import load_model, load_tokenizer, resolve_base_model
    from reverse_align.probe.alp import CheckpointScorer, probe_items

    if cfg.probe.batch_tokens < 1:
        raise UserError(f"probe.batch_tokens must be >= 1, got {cfg.probe.batch_tokens}")
    items = probe_items(load_run_records(data_run_id, tracking.ARTIFACT_PROBE))
    base_path = resolve_base_model(cfg)
    tokenizer = load_tokenizer(cfg, base_path)
    model = load_model(cfg, base_path)
    return CheckpointScorer.from_config(cfg.probe, model, tokenizer, items)


def log_items_table(rows: list[dict]) -> None:
    import mlflow
    import pandas as pd

    mlflow.log_table(pd.DataFrame(rows), tracking.ARTIFACT_ALP_ITEMS)


# ---------------------------------------------------------------- experiment mode


def training_config(cfg: Config, n_pairs: int) -> Config:
    """The preset's SFT and DPO settings with the probe's schedule, on the probe set (§3.2, §4.4, A.1)."""
    p = cfg.probe
    if p.sft_epochs < 1 or p.sft_eval_every < 1 or p.dpo_epochs < 1:
        raise UserError(
            f"probe.sft_epochs ({p.sft_epochs}), probe.sft_eval_every ({p.sft_eval_every}) "
            f"and probe.dpo_epochs ({p.dpo_epochs}) must be >= 1"
        )
    out = copy.deepcopy(cfg)
    # The probe scores every checkpoint of its own runs once both are trained (run_experiment), so they keep them
    # all until then; run_experiment applies the caller's `checkpoints` after scoring.
    out.checkpoints.keep_adapters = "all"
    out.sft.epochs = p.sft_epochs
    out.sft.save_every_epochs = p.sft_eval_every
    out.sft.train_set = PROBE_TRAIN_SET
    # The probe measures log-probabilities; the greedy held-out check would only cost time here.
    out.sft.exact_match_limit = 0
    d = out.dpo
    d.beta = p.dpo_beta
    d.train_set = PROBE_TRAIN_SET
    d.save_every_epochs = 1
    # DPO is set by steps; the probe asks for epochs. Optimizer steps per epoch as transformers counts them.
    batches = math.ceil(n_pairs / (d.per_device_batch_size * d.num_processes))
    d.max_steps = p.dpo_epochs * math.ceil(batches / d.gradient_accumulation_steps)
    return out


def sibling_runs(client, cfg: Config, data_run_id: str) -> dict[str, str]:
    """train_on -> the newest FINISHED experiment probe run on this invert run and preset."""
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    query = " and ".join(
        [
            f"tags.`{tracking.TAG_STAGE}` = '{STAGE}'",
            f"tags.`{tracking.TAG_PRESET}` = '{cfg.preset}'",
            f"tags.`{tracking.tag_upstream('invert')}` = '{data_run_id}'",
            f"params.`probe.mode` = '{MODE_EXPERIMENT}'",
            "attributes.status = 'FINISHED'",
        ]
    )
    found: dict[str, str] = {}
    for run in client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"]):
        found.setdefault(run.data.params.get("probe.train_on", ""), run.info.run_id)
    return found


def run_experiment(cfg: Config, data_run_id: str, train_on: str) -> str:
    import mlflow

    from reverse_align.data.invert import load_run_records
    from reverse_align.probe import figures
    from reverse_align.probe.alp import probe_items
    from reverse_align.train import common
    from reverse_align.train.dpo import run_dpo
    from reverse_align.train.sft import run_sft

    if train_on not in TRAIN_ON:
        raise UserError(f"--train_on {train_on!r}: expected one of {', '.join(TRAIN_ON)}")
    tracking.require_run(data_run_id, "invert", "data_run_id")
    mix, direction = TRAIN_ON[train_on]
    items = probe_items(load_run_records(data_run_id, tracking.ARTIFACT_PROBE))
    n_pairs = sum(direction in ("both", item.asked.direction) for item in items)
    train_cfg = training_config(cfg, n_pairs)
    params = {"probe.mode": MODE_EXPERIMENT, "probe.train_on": train_on, "probe.dpo_max_steps": train_cfg.dpo.max_steps}
    with tracking.stage_run(STAGE, cfg, upstream={"invert": data_run_id}, params=params) as run:
        run_id = run.info.run_id
        client = mlflow.MlflowClient()
        sft_id = run_sft(train_cfg, data_run_id=data_run_id, mix=mix)
        dpo_id = run_dpo(train_cfg, sft_run_id=sft_id, data_run_id=data_run_id, direction=direction)
        mlflow.set_tags({tracking.tag_upstream("sft"): sft_id, tracking.tag_upstream("dpo"): dpo_id})
        scorer = make_scorer(cfg, data_run_id)
        rows: list[dict] = []
        score_checkpoints(scorer, [Checkpoint(0, "base")] + logged_checkpoints(client, sft_id), "sft", rows)
        dpo_run = client.get_run(dpo_id)
        score_checkpoints(scorer, [starting_point(dpo_run)] + logged_checkpoints(client, dpo_id), "dpo", rows)
        log_items_table(rows)
        # Scored: the training runs now keep what the study's `checkpoints` settings say (default: adapter/ only).
        for trained in (sft_id, dpo_id):
            common.finish_checkpoints(trained, cfg.checkpoints)
        runs = {**sibling_runs(client, cfg, data_run_id), train_on: run_id}
        figures.log_figures(client, figures.figure2_curves(runs))
        print(f"probe run {run_id}: trained on D_{train_on} (sft {sft_id}, dpo {dpo_id}); figures from {runs}")
        return run_id


# ---------------------------------------------------------------- checkpoint mode


def run_checkpoints(cfg: Config, run_id: str) -> str:
    import mlflow

    from reverse_align.probe import figures

    run = tracking.require_run(run_id, ("sft", "dpo"), "run_id")
    phase = run.data.tags[tracking.TAG_STAGE]
    data_run_id = run.data.tags.get(tracking.tag_upstream("invert"))
    if not data_run_id:
        raise UserError(f"--run_id {run_id}: has no {tracking.tag_upstream('invert')} tag naming its data run")
    require_same_base(cfg, run, "--run_id")
    client = mlflow.MlflowClient(tracking.tracking_uri())
    checkpoints = logged_checkpoints(client, run_id)
    if not checkpoints:
        raise UserError(
            f"--run_id {run_id}: has no {tracking.ARTIFACT_CHECKPOINTS}/<name>/ artifacts to score; a finished run keeps "
            "them with checkpoints.keep_adapters=all (train it again with --set checkpoints.keep_adapters=all)"
        )
    unit = "step" if checkpoints[0].name.startswith("step-") else "epoch"
    params = {"probe.mode": MODE_CHECKPOINTS, "probe.run_id": run_id, "probe.step_unit": unit}
    upstream = {"invert": data_run_id, phase: run_id}
    with tracking.stage_run(STAGE, cfg, upstream=upstream, params=params) as probe_run:
        scorer = make_scorer(cfg, data_run_id)
        rows: list[dict] = []
        score_checkpoints(scorer, [starting_point(run)] + checkpoints, phase, rows)
        log_items_table(rows)
        own = probe_run.info.run_id
        curves = [figures.Curve(f"T_{figures.SHORT[t]}", own, t) for t in tracking.ALP_TESTS]
        figures.log_figures(client, curves, x_label=unit)
        print(f"probe run {own}: {len(checkpoints) + 1} checkpoints of {phase} run {run_id} scored")
        return own


def run_probe(cfg: Config, data_run_id: str = "", train_on: str = "", run_id: str = "") -> str:
    """The stage: an experiment on an invert run, or the checkpoints of an existing run."""
    tracking.setup()
    if run_id and (data_run_id or train_on):
        raise UserError("--run_id scores an existing run's checkpoints; give it without --data_run_id/--train_on")
    if run_id:
        return run_checkpoints(cfg, run_id)
    if not data_run_id:
        raise UserError(
            "give --data_run_id <invert run> --train_on forward|reverse|mixed, or --run_id <sft or dpo run>"
        )
    return run_experiment(cfg, data_run_id, train_on or "forward")
