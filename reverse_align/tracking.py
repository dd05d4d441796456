"""Tracking conventions: the one place for experiment, tag, artifact and metric names.

Every stage runs inside :func:`stage_run`, which sets the store and experiment,
tags the stage, preset and upstream run ids, logs the resolved config, and
turns failures into the behaviour of INTERFACE.md (bad input: run FAILED with
``reverse_align.error``; the caller exits 2).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from reverse_align.errors import UserError

if TYPE_CHECKING:
    import mlflow

    from reverse_align.config import Config

# Telemetry and hub calls off before mlflow or transformers are imported anywhere.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DEFAULT_EXPERIMENT = "reverse-align"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# Tags
TAG_STAGE = "reverse_align.stage"
TAG_PRESET = "reverse_align.preset"
TAG_UPSTREAM_PREFIX = "reverse_align.upstream."
TAG_ERROR = "reverse_align.error"
# Fingerprint of the config a stage run depends on (STAGE_CONFIG_SECTIONS): `main` reuses a run only when it matches.
TAG_CONFIG_HASH = "reverse_align.config_hash"
# The rule for examples over model.max_length tokens (reverse_align.data.lengths.RULE), on data, invert, sft runs.
TAG_LENGTH_RULE = "reverse_align.length_rule"
# What the run computed on (tracking.hardware()): CPU model and torch's CPU kernels, threads, GPUs, torch.
# Training is bit-reproducible on one kind of machine, not across kinds: float kernels differ by CPU, and
# the tiny base, pretrained from scratch, amplifies the rounding (forward SFT 37% on one kind, 89% on another,
# 12% on the first with torch's AVX2 kernels; same commit and seeds).
TAG_HARDWARE = "reverse_align.hardware"
# sha256 of requirements-lock.txt, the exact library versions `make setup` installs (reverse_align/environment.py);
# "none" when the checkout has no lock file. Set by stage_run and on the sweep's parent run.
TAG_ENV_LOCK_SHA = "reverse_align.env.lock_sha256"
# MLflow's own run-name tag (what the UI lists): set by stage_run from tracking.run_name.
TAG_RUN_NAME = "mlflow.runName"
# `main` sets this so each stage run shows as its child in the MLflow UI.
ENV_PARENT_RUN_ID = "REVERSE_ALIGN_PARENT_RUN_ID"
# Set on an `mlflow run` launcher run in another experiment (Default): the run that holds its work. The launcher
# is deleted once `mlflow run` has ended it (reverse_align.launcher), so Default keeps no empty run.
TAG_MOVED_TO = "reverse_align.run_id"
# What MLflow 3's UI shows an experiment as (the UI's own experiment tag): `custom_model_development` is
# "Machine learning" (runs table, charts, models), not "GenAI apps & agents" (traces, overview).
# MLflow 3.17's UI ignores the tag and takes the kind from its workflow switch (browser storage, default
# GenAI) or the `workflowType` URL parameter: links we print carry UI_WORKFLOW_PARAM (tracking.ui_url).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_WORKFLOW_PARAM = "workflowType=machine_learning"

# Artifacts
ARTIFACT_FORWARD = "data/forward.jsonl"
ARTIFACT_REVERSE = "data/reverse.jsonl"
ARTIFACT_PROBE = "data/probe.jsonl"
ARTIFACT_TEST_FORWARD = "data/test_forward.jsonl"
ARTIFACT_TEST_REVERSE = "data/test_reverse.jsonl"
# Held-out transfer problems (synthetic): a family neither SFT direction trains on (benchmark `synthetic_transfer`).
ARTIFACT_TEST_TRANSFER = "data/test_transfer.jsonl"
# The synthetic held-out sets by name: sft/exact_match/<name>, the evaluate stage's synthetic_<name>.
SYNTHETIC_TESTS = {"forward": ARTIFACT_TEST_FORWARD, "reverse": ARTIFACT_TEST_REVERSE, "transfer": ARTIFACT_TEST_TRANSFER}
ARTIFACT_REJECTED = "data/rejected.jsonl"
ARTIFACT_CONFIG = "config.yaml"
ARTIFACT_ADAPTER = "adapter"
ARTIFACT_CHECKPOINTS = "checkpoints"
ARTIFACT_MODEL = "model"
ARTIFACT_BASE_MODEL = "base_model"
ARTIFACT_FIGURES = "figures"
# invert with a teacher LLM: the per-request journal (resume) and the prompt templates used.
ARTIFACT_INVERT_JOURNAL = "invert/journal.jsonl"
ARTIFACT_INVERT_TEMPLATES = "invert/templates"
# Training stages (sft, dpo): the full trainer state of each checkpoint (optimizer,
# scheduler, RNG, trainer_state.json; no weights) so a run can resume on another machine.
ARTIFACT_RESUME = "resume"
# sft: which records went into the mix, in training order (counts per direction, pair ids).
ARTIFACT_MIX = "mix/composition.json"
# probe: per item and checkpoint ALP values (an mlflow table) and Figure 2's three panels.
ARTIFACT_ALP_ITEMS = "alp/items.json"
ALP_FIGURES = {"pos": "figures/alp_pos.png", "neg": "figures/alp_neg.png", "margin": "figures/alp_margin.png"}

# MLflow system metrics on every stage run (mlflow.start_run(log_system_metrics=True), psutil; GPUs where pynvml
# sees them): system/cpu_utilization_percentage, system/system_memory_usage_megabytes, system/gpu_*, ... at step =
# sample. One sample every SYSTEM_METRICS_INTERVAL_S seconds, each logged as taken (MLflow's default, pinned here):
# tiny stages last 20 s to a few minutes, so 10 s still draws a curve; a run shorter than one interval logs none.
# MLflow's own environment variables win: MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (seconds),
# MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns it off.
SYSTEM_METRICS_INTERVAL_S = 10
METRIC_SYSTEM_CPU = "system/cpu_utilization_percentage"
METRIC_SYSTEM_MEMORY = "system/system_memory_usage_megabytes"

# main: each side-by-side stage's console output (main/logs/<key>.log) and the study's wall time.
ARTIFACT_MAIN_LOGS = "main/logs"
METRIC_MAIN_SECONDS = "main/seconds"

# Model Registry (promote): adapters under one name, the best one under an alias.
MODEL_ADAPTER = "reverse-align-adapter"
ALIAS_CHAMPION = "champion"
# Lineage tags on a registered adapter version (besides stage, preset, upstream.*, sft.mix, dpo.beta).
TAG_SOURCE_RUN = "reverse_align.source_run"
TAG_BASE_MODEL = "reverse_align.base_model"
TAG_METRIC = "reverse_align.metric"
TAG_METRIC_VALUE = "reverse_align.metric_value"

# sweep: the study's parent run holds the best trial, the trials table and figures; each trial's dpo run
# is its child, tagged with the study and trial number, and holds the objective (per checkpoint and final).
TAG_SWEEP_STUDY = "reverse_align.sweep.study"
TAG_SWEEP_TRIAL = "reverse_align.sweep.trial"
TAG_SWEEP_BEST_RUN = "reverse_align.sweep.best_run_id"
ARTIFACT_SWEEP_DIR = "sweep"  # sweep/trials.csv
METRIC_SWEEP_BEST_BETA = "sweep/best_beta"
METRIC_SWEEP_BEST_VALUE = "sweep/best_value"
METRIC_SWEEP_OBJECTIVE = "sweep/objective"
# How sure the best is (reverse_align/sweep_stats.py). On each trial's dpo run: sweep/trial/<n|correct|ci_low|ci_high>
# (questions scored, their summed score, Wilson 95% interval of the objective). On the parent run: the best trial's
# n and interval; sweep/best_separated, 1 when the exact McNemar test separates the best from every other completed
# trial (at least one) at p < 0.05, else 0; the tag listing the betas it is not separated from ("0.5,0.7", "" when
# none). sweep/trials.csv gives each trial's interval, the best's discordant wins/losses against it and p.
METRIC_SWEEP_BEST_N = "sweep/best_n"
METRIC_SWEEP_BEST_CI_LOW = "sweep/best_ci_low"
METRIC_SWEEP_BEST_CI_HIGH = "sweep/best_ci_high"
METRIC_SWEEP_BEST_SEPARATED = "sweep/best_separated"
TAG_SWEEP_NOT_SEPARATED = "reverse_align.sweep.not_separated"


# main: the study's run ids by role, re-logged by the `main` parent run as it proceeds (see reverse_align/report):
# {"preset", "seeds", "runs": {"sft.<mix>.seed<s>": id, "eval.base": id, ...}, "champion", "seconds", "reused"}.
ARTIFACT_MAIN_STAGES = "main/stages.json"
# MLflow's own run-description tag (the UI's "Description"): `report` writes its tables into the main run's.
TAG_NOTE = "mlflow.note.content"
NOTE_MAX_CHARS = 8000  # MLflow's tag value limit (mlflow.utils.validation.MAX_TAG_VAL_LENGTH); longer is cut

# report: report.md and its PNGs are logged at the report run's root as they lie on disk
# (reports/<experiment>/report.md, figure2_<kind>.png, the sweep's objective-vs-beta PNG, figures/ui/*.png);
# the MLflow UI screenshots under figures/ui/. Tags: the main run reported and the study's preset.
ARTIFACT_REPORT = "report.md"
REPORT_FIGURES = {kind: f"figure2_{kind}.png" for kind in ("pos", "neg", "margin")}
ARTIFACT_UI_SCREENSHOTS = "figures/ui"
# report metrics: the headline paired difference reverse SFT - forward SFT (accuracy, fraction) per benchmark.
METRIC_REPORT_PREFIX = "report/"


def metric_report_paired(benchmark: str, name: str) -> str:
    """``report/reverse_minus_forward/<benchmark>/<diff|ci_low|ci_high>``."""
    return f"{METRIC_REPORT_PREFIX}reverse_minus_forward/{benchmark}/{name}"


def metric_sweep_exact_match(direction: str) -> str:
    return f"sweep/exact_match/{direction}"


def metric_sweep_trial(name: str) -> str:
    """``sweep/trial/<n|correct|ci_low|ci_high>`` on a trial's dpo run."""
    return f"sweep/trial/{name}"


def metric_sweep_trials(state: str) -> str:
    """``sweep/trials/<complete|pruned|fail>``: trials of the study in that state."""
    return f"sweep/trials/{state}"


# Metrics
METRIC_INVERT_REQUESTED = "invert/requested"
METRIC_INVERT_ACCEPTED = "invert/accepted"
METRIC_INVERT_REJECTED = "invert/rejected"
METRIC_INVERT_PROMPT_TOKENS = "invert/prompt_tokens"
METRIC_INVERT_COMPLETION_TOKENS = "invert/completion_tokens"
METRIC_EVAL_AVERAGE = "eval/average"
# invert with a teacher LLM, beyond INTERFACE.md's five.
METRIC_INVERT_COST = "invert/cost_usd"  # estimate from invert.price_* fields
METRIC_INVERT_RETRIES = "invert/retries"  # requests that repeated an earlier failed one
METRIC_INVERT_PENDING = "invert/pending"  # items not finished when the spend cap stopped the run
METRIC_INVERT_NO_REASONING = "invert/no_reasoning"  # accepted reverses whose teacher returned no reasoning
# D_s1k stays whole; these count what the pair-based mixes (mixed, mixed_half, DPO) get.
METRIC_INVERT_PAIRS = "invert/pairs"  # forward items with an accepted reverse
METRIC_INVERT_GOLD_NULL = "invert/gold_null"  # accepted reverses whose answer has no \boxed{} (kept, gold null)
METRIC_INVERT_THINKING_CUT = "invert/thinking_cut"  # reverses over model.max_length whose thinking was cut to fit


def metric_invert_rejected(reason: str) -> str:
    """``invert/rejected/<reason>``, reasons in reverse_align.data.teacher_parse.REASONS."""
    return f"{METRIC_INVERT_REJECTED}/{reason}"


# Trainer logs (loss, learning_rate, epoch, tokens_per_second, ...) are `train/<key>`, step = optimizer step.
METRIC_TRAIN_PREFIX = "train/"
# Set when a training run resumed: the global step of the checkpoint it continued from.
TAG_RESUMED_FROM_STEP = "reverse_align.resumed_from_step"


def metric_train(key: str) -> str:
    return f"{METRIC_TRAIN_PREFIX}{key}"


def metric_sft_exact_match(direction: str, base: bool = False) -> str:
    """Quick greedy exact match on held-out synthetic problems after SFT (``base``: before, adapter off)."""
    return f"sft/{'base_' if base else ''}exact_match/{direction}"


# dpo: preference pairs trained on, prompts cut to dpo.max_prompt_length tokens, optimizer steps taken.
METRIC_DPO_PAIRS = "dpo/pairs"
METRIC_DPO_PROMPTS_TRUNCATED = "dpo/prompts_truncated"
METRIC_DPO_GLOBAL_STEPS = "dpo/global_steps"
# trl's DPO metrics, logged per step as train/<key>: rewards = beta * (policy - reference) log-prob
# of the chosen/rejected completion, margins = chosen - rejected, accuracies = share with margin > 0;
# logps = the policy's summed completion log-probs.
DPO_TRAIN_METRICS = (
    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
)  # fmt: skip


def resume_artifact(checkpoint_dir_name: str) -> str:
    return f"{ARTIFACT_RESUME}/{checkpoint_dir_name}"


def metric_eval_accuracy(benchmark: str) -> str:
    return f"eval/{benchmark}/accuracy"


# probe: ALP of y+ / y- and their margin (PROTOCOL §4), per training phase and probe test set
# (T_f = forward questions, T_r = reverse questions, T_m = both), at step = the checkpoint's epoch.
# A probe run trained on D_f logs all three tests, so (D_f,T_f) and the out-of-distribution (D_f,T_r)
# are `alp/<phase>/<kind>/forward` and `.../reverse` of the run whose param probe.train_on is forward.
ALP_PHASES = ("sft", "dpo")
ALP_KINDS = ("pos", "neg", "margin")
ALP_TESTS = ("forward", "reverse", "mixed")

# evaluate: per benchmark, the 95% interval of the accuracy (Wilson for one answer per question,
# bootstrap over questions for n), answers with nothing readable (unparsed, incl. truncated: no
# answer marker), those cut off inside the thinking, and the questions / answers scored.
EVAL_CI_SIDES = ("ci_low", "ci_high")
EVAL_COUNTS = ("unparsed", "truncated", "questions", "answers")


def metric_eval(benchmark: str, name: str) -> str:
    """``eval/<benchmark>/<name>``: name in EVAL_CI_SIDES, EVAL_COUNTS or ``accuracy_rules`` (judged runs)."""
    return f"eval/{benchmark}/{name}"


# evaluate: held-out sets of a data run per synthetic benchmark; per-sample tables
# (eval/samples/<benchmark>.json: id, sample, response, extracted, extracted_by, gold, correct, status;
# extracted_by: the rule that read the answer, eval/grading.py EXTRACTION_RULES: boxed, answer_colon,
# the_answer_is, last_line, option_letter, none), lm-eval's results JSON.
SYNTHETIC_TEST_ARTIFACTS = {f"synthetic_{name}": artifact for name, artifact in SYNTHETIC_TESTS.items()}
ARTIFACT_EVAL_SAMPLES = "eval/samples"
# On an evaluated sft/dpo run: its newest evaluate run, whose eval/<benchmark>/accuracy and eval/average it carries.
TAG_EVAL_RUN = "reverse_align.eval_run"
ARTIFACT_EVAL_RESULTS = "eval/lm_eval_results.json"
# evaluate params beyond the config: sha256 (12 hex) of each shipped task file and of the questions scored.
# The models the teacher endpoint reported serving (the `model` of each chat completion, journal included):
# "name (answers), ..."; and "true"/"false": one of them is not invert.expected_teacher_model (unset: not checked).
TAG_INVERT_SERVED_MODELS = "reverse_align.invert.served_models"
TAG_INVERT_TEACHER_MISMATCH = "reverse_align.invert.teacher_mismatch"
# How the evaluated model was prompted and graded: "s1" (think marker, answer after the answer marker) or "chat"
# (plain chat, answer read from the whole response: the base model and direct DPO). reverse_align.eval.stage.
PARAM_EVAL_FORMAT = "eval.format"
PARAM_EVAL_TASK_SHA = "eval.task_sha"
PARAM_EVAL_DATA_SHA = "eval.data_sha"
# The decoding an evaluate run used, on either backend (reverse_align.eval.decoding.GenerationSettings):
# eval.generation.{max_new_tokens (eval.max_new_tokens capped to the model's positions), do_sample, temperature,
# top_p, top_k (0 = off), repetition_penalty (1 = none), model_max_positions (max_position_embeddings)}.
PARAM_EVAL_GENERATION = "eval.generation"


def metric_alp(phase: str, kind: str, test: str) -> str:
    """``alp/<sft|dpo>/<pos|neg|margin>/<forward|reverse|mixed>``."""
    return f"alp/{phase}/{kind}/{test}"


def checkpoint_artifact(name: str) -> str:
    return f"{ARTIFACT_CHECKPOINTS}/{name}"


def tag_upstream(stage: str) -> str:
    return f"{TAG_UPSTREAM_PREFIX}{stage}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def setup() -> None:
    """Point mlflow at the project's store and experiment (created as a "Machine learning" experiment)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.set_experiment(experiment_name())
    if experiment.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)


def ui_command(uri: str | None = None, port: int = 5000) -> str:
    """The command that serves the MLflow UI over a store (``uri``: the tracking URI, default ours).

    Empty for an MLflow server (http/https: already a UI, see :func:`ui_url`) and for an in-memory
    sqlite store. A relative sqlite path is made absolute; a database URI with a password is passed
    as ``"$MLFLOW_TRACKING_URI"`` so the password is never printed.
    """
    import shlex
    import sys
    from urllib.parse import urlsplit

    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")) or uri in ("sqlite://", "sqlite:///:memory:"):
        return ""
    if uri.startswith("sqlite:///"):
        path, sep, query = uri[len("sqlite:///"):].partition("?")
        store = f"sqlite:///{Path(path).resolve()}{sep}{query}"
    elif uri.startswith("file:") or "://" not in uri:
        store = Path(uri.removeprefix("file://").removeprefix("file:")).resolve().as_uri()
    elif urlsplit(uri).password:
        store = '"$MLFLOW_TRACKING_URI"'
    else:
        store = shlex.quote(uri)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    program = shlex.quote(str(mlflow_bin)) if mlflow_bin.exists() else "mlflow"
    return f"{program} ui --backend-store-uri {store} --host 127.0.0.1 --port {port}"


def ui_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The UI page of an experiment's runs table, as a "Machine learning" experiment (UI_WORKFLOW_PARAM)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_WORKFLOW_PARAM}"


@contextlib.contextmanager
def stage_run(
    stage: str,
    cfg: "Config",
    upstream: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> Iterator["mlflow.ActiveRun"]:
    """Run a stage inside an MLflow run with the project's tags and failure rules.

    ``run_id`` resumes an existing run (resume after a kill); otherwise the
    `mlflow run` launcher run is reused when it is in our experiment, and
    retired (reverse_align.launcher) when it is not.
    """
    import mlflow

    from reverse_align import environment
    from reverse_align import launcher as launchers

    setup()
    # A stage started inside another stage's run (the probe's SFT and DPO) is its nested child;
    # it never takes over the `mlflow run` launcher run, which the outer stage already holds.
    nested = mlflow.active_run() is not None
    launcher = os.environ.get("MLFLOW_RUN_ID")
    reuse = run_id or (None if nested or not launchers.in_our_experiment(launcher) else launcher)
    # mlflow.start_run() reads MLFLOW_RUN_ID itself; hide it when we do not reuse it.
    os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        system_metrics = log_system_metrics()
        run = mlflow.start_run(run_id=reuse, nested=nested, log_system_metrics=system_metrics)
    except BaseException:
        if launcher:
            os.environ["MLFLOW_RUN_ID"] = launcher
        raise
    # A launcher that is not our run (it is in another experiment) points at ours while we work and is
    # retired when we are done; it stays out of the environment from now on.
    moved = bool(launcher) and launcher != run.info.run_id and not nested
    if moved:
        launchers.point(launcher, run.info.run_id)
    elif launcher:
        os.environ["MLFLOW_RUN_ID"] = launcher
    try:
        mlflow.set_tags({TAG_STAGE: stage, TAG_PRESET: cfg.preset, TAG_CONFIG_HASH: config_hash(cfg, stage),
                         TAG_HARDWARE: hardware(), TAG_ENV_LOCK_SHA: environment.lock_sha256()})  # fmt: skip
        if not run_id:  # a resumed run keeps its name
            mlflow.set_tag(TAG_RUN_NAME, run_name(stage, cfg, params, upstream))
        parent = os.environ.get(ENV_PARENT_RUN_ID)
        if parent and parent != run.info.run_id and not nested:
            mlflow.set_tag("mlflow.parentRunId", parent)
        upstream = {**base_model_upstream(cfg, stage), **(upstream or {})}
        for up_stage, up_id in upstream.items():
            if up_id:
                mlflow.set_tag(tag_upstream(up_stage), up_id)
        log_config(cfg, params)
        yield run
    except UserError as exc:
        mlflow.set_tag(TAG_ERROR, str(exc))
        mlflow.end_run(status="FAILED")
        raise
    except BaseException as exc:
        mlflow.set_tag(TAG_ERROR, f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
    finally:
        if moved:
            launchers.retire(launcher, run.info.run_id)


def log_system_metrics() -> bool:
    """Whether stage runs log MLflow system metrics (yes, unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says no);
    sets MLflow's sampling interval to SYSTEM_METRICS_INTERVAL_S unless MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL is set."""
    from mlflow.environment_variables import (
        MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING,
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL,
    )

    if not MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.is_set():
        os.environ[MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.name] = str(SYSTEM_METRICS_INTERVAL_S)
    # Its start/stop lines (INFO) on every stage's stderr say nothing a user acts on; warnings still show.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    return MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get() if MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.is_set() else True


def hardware() -> str:
    """``cpu AMD EPYC (AuthenticAMD, AVX512), 2 torch threads; torch 2.13.0+cpu`` (and the GPUs, when any)."""
    import platform

    import torch

    cpu = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "vendor_id"):
                cpu.setdefault(key.strip(), value.strip())
    model = cpu.get("model name") or platform.processor() or platform.machine()
    kernels = ", ".join(filter(None, [cpu.get("vendor_id"), torch.backends.cpu.get_cpu_capability()]))
    parts = [f"cpu {model} ({kernels}), {torch.get_num_threads()} torch threads"]
    if torch.cuda.is_available():
        parts.append("gpu " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    return "; ".join([*parts, f"torch {torch.__version__}"])


def run_name(stage: str, cfg: "Config", params: dict[str, Any] | None, upstream: dict[str, str] | None) -> str:
    """What a run is, as the MLflow UI lists it: ``sft-reverse``, ``dpo-beta0.6-on-sft-mixed``, ``eval-sft-forward``.

    Built from the stage's own parameters and, for stages that work on another run, that run's name.
    """
    p, up = params or {}, upstream or {}
    if stage == "sft":
        mix = p.get("sft.mix", "")
        name = f"sft-{mix}" if cfg.sft.train_set == "all" else f"sft-{cfg.sft.train_set}-{mix}"
        return name + (f"-seed{cfg.sft.seed}" if cfg.sft.seed else "")
    if stage == "dpo":
        target = f"on-{_name_of(up['sft'])}" if up.get("sft") else "direct"
        return f"dpo-beta{cfg.dpo.beta:g}-{target}" + (f"-seed{cfg.dpo.seed}" if cfg.dpo.seed else "")
    if stage == "evaluate":
        evaluated = up.get("dpo") or up.get("sft")
        return f"eval-{_name_of(evaluated) if evaluated else 'base'}"
    if stage == "probe":
        if p.get("probe.train_on"):
            return f"probe-{p['probe.train_on']}"
        return f"probe-of-{_name_of(p.get('probe.run_id', ''))}"
    if stage == "invert":
        return f"invert-{cfg.invert.teacher}"
    if stage == "data":
        return f"data-{Path(cfg.data.source).name or cfg.data.source}"
    return f"{stage}-{cfg.preset}"


def _name_of(run_id: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_run(run_id).info.run_name or run_id[:8]
    except MlflowException:  # a name is a label: never fail a stage over it
        return run_id[:8]


def base_model_upstream(cfg: "Config", stage: str) -> dict[str, str]:
    """``{"pretrain": run id}`` of the registered tiny base model a tiny-preset run starts from, else ``{}``.

    So every result traces to the weights it started from (tag ``reverse_align.upstream.pretrain``).
    """
    from reverse_align.models import TINY_BASE, find_tiny_base

    if stage == "pretrain" or cfg.model.name != TINY_BASE:
        return {}
    version = find_tiny_base(cfg)
    return {"pretrain": version.run_id} if version is not None else {}


# The config a stage's result depends on (besides its input runs, which are tagged): whole sections or
# "section.key". Changing sft.learning_rate reruns SFT and DPO; changing invert.concurrency, a timeout
# or a spend cap reruns nothing, so the (paid) teacher inversion is never redone for them.
_BASE = ("model", "data", "synthetic", "pretrain")
STAGE_CONFIG_SECTIONS = {
    "data": _BASE,
    "invert": (
        *_BASE, "invert.teacher", "invert.base_url", "invert.max_completion_tokens", "invert.temperature",
        "invert.reverse_template", "invert.solution_template",
    ),  # fmt: skip
    "sft": (*_BASE, "lora", "sft", "eval"),
    "dpo": (*_BASE, "lora", "dpo", "eval"),
    "evaluate": (*_BASE, "eval"),
    # The probe trains with settings derived from sft and dpo (probe.stage.training_config).
    "probe": (*_BASE, "lora", "sft", "dpo", "probe", "eval"),
    "sweep": (*_BASE, "lora", "dpo", "eval", "sweep"),
}


def config_hash(cfg: "Config", stage: str) -> str:
    """Fingerprint of the config ``stage`` depends on (the whole config for other stages)."""
    import dataclasses
    import hashlib
    import json

    values = dataclasses.asdict(cfg)
    picked = {}
    for name in STAGE_CONFIG_SECTIONS.get(stage, tuple(values)):
        section, _, key = name.partition(".")
        picked[name] = values[section][key] if key else values[section]
    payload = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def stage_config_keys(cfg: "Config", stage: str) -> list[str]:
    """The ``section.key`` params that :func:`config_hash` covers for ``stage``, in config order."""
    picked = STAGE_CONFIG_SECTIONS.get(stage)
    keys = [k for k in cfg.flat() if k != "preset"]
    if picked is None:
        return keys
    return [k for k in keys if k in picked or k.split(".", 1)[0] in picked]


def require_same_inputs(run: "mlflow.entities.Run", stage: str, cfg: "Config", upstream: dict[str, str]) -> None:
    """A run is continued only with the upstream runs and config (hash) it was started with.

    Bad input otherwise, naming the first differing key: upstream run ids first (the tiny base
    model's pretrain run included), then the stage's config keys in config order (from the run's
    logged params).
    """
    run_id, tags, params = run.info.run_id, run.data.tags, run.data.params
    base = base_model_upstream(cfg, stage)
    if tag_upstream("pretrain") not in tags:  # a run from before the lineage tag
        base = {}
    for up_stage, up_id in {**base, **upstream}.items():
        was = tags.get(tag_upstream(up_stage), "")
        if was != (up_id or ""):
            raise UserError(
                f"--run_id {run_id}: was started with {up_stage} run {was or '(none)'}, not {up_id or '(none)'}; "
                "start a new run for different inputs"
            )
    if tags.get(TAG_CONFIG_HASH) == config_hash(cfg, stage):
        return
    flat = cfg.flat()
    for key in stage_config_keys(cfg, stage):
        if key in params and params[key] != _param_value(flat[key]):
            raise UserError(
                f"--run_id {run_id}: was started with {key}={params[key]}, not {_param_value(flat[key])}; "
                "resume with the same settings or start a new run"
            )
    if TAG_CONFIG_HASH not in tags:  # a run from before the hash tag: its params agree
        return
    raise UserError(f"--run_id {run_id}: was started with a different {stage} config ({TAG_CONFIG_HASH} differs)")


def log_config(cfg: "Config", params: dict[str, Any] | None = None) -> None:
    """Flattened params plus the YAML of the resolved config as an artifact."""
    import mlflow

    flat = {k: _param_value(v) for k, v in cfg.flat().items()}
    flat.update({k: _param_value(v) for k, v in (params or {}).items()})
    client = mlflow.MlflowClient()
    run_id = mlflow.active_run().info.run_id
    existing = client.get_run(run_id).data.params
    # A param cannot change value within a run; the launcher may have logged some already.
    fresh = {k: v for k, v in flat.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)
    mlflow.log_text(cfg.to_yaml(), ARTIFACT_CONFIG)


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def log_jsonl(records: list[dict], artifact_path: str) -> None:
    """Write records as JSON lines straight into the run's artifacts."""
    import json

    import mlflow

    directory, name = os.path.split(artifact_path)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        with path.open("w") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        mlflow.log_artifact(str(path), artifact_path=directory or None)


def download_artifact(run_id: str, artifact_path: str, dst: str | None = None) -> str:
    import mlflow

    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst)


def require_run(run_id: str, stage: str | tuple[str, ...], param: str) -> "mlflow.entities.Run":
    """Fetch a FINISHED upstream run of the given stage, or fail as bad input."""
    import mlflow
    from mlflow.exceptions import MlflowException

    stages = (stage,) if isinstance(stage, str) else stage
    if not run_id:
        raise UserError(f"--{param} is required (a finished {' or '.join(stages)} run id)")
    try:
        run = mlflow.MlflowClient(tracking_uri()).get_run(run_id)
    except MlflowException:
        raise UserError(f"--{param} {run_id}: no such run in {tracking_uri()}") from None
    actual = run.data.tags.get(TAG_STAGE)
    if actual not in stages:
        raise UserError(f"--{param} {run_id}: is a {actual or 'non-reverse-align'} run, expected {' or '.join(stages)}")
    if run.info.status != "FINISHED":
        raise UserError(f"--{param} {run_id}: {actual} run is {run.info.status}, not FINISHED")
    return run


def require_resumable_run(run_id: str, stage: str) -> "mlflow.entities.Run":
    """An unfinished run of this stage that ``--run_id`` asks to continue, or bad input."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.MlflowClient(tracking_uri()).get_run(run_id)
    except MlflowException:
        raise UserError(f"--run_id {run_id}: no such run in {tracking_uri()}") from None
    if run.data.tags.get(TAG_STAGE) != stage:
        raise UserError(f"--run_id {run_id}: is not a {stage} run")
    if run.info.status == "FINISHED":
        raise UserError(f"--run_id {run_id}: {stage} run is already FINISHED")
    return run
