"""A sweep trial's objective (maximised): what :func:`objective_value` returns and the checkpoint reporter.

- ``exact_match`` (tiny presets): mean greedy exact match on the first
  ``sweep.objective_limit`` held-out forward and reverse problems of the data
  run, scored at every DPO checkpoint (``trial.report``, for the pruner) and of
  the final adapter.
- ``eval_average`` (paper presets): ``eval/average`` of the `evaluate` stage on
  ``eval.benchmarks``, when this installation has that stage.

Either way the trial keeps each question's score (exact_match: 0/1 per held-out problem; eval_average:
the mean ``correct`` of a question's samples in the evaluate run's ``eval/samples/<benchmark>.json``) and
its Wilson interval (reverse_align/sweep_stats.py). For eval_average the interval is of the pooled
accuracy over all the questions scored, which is ``eval/average`` only when the benchmarks are of one size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.errors import UserError

PARAM = "beta"


def evaluate_stage():
    """The `evaluate` stage function when this installation has it (another module), else None."""
    import importlib

    from reverse_align.cli import STAGES

    stage = STAGES.get("evaluate")
    if stage is None:
        return None
    module_name, func_name = stage.target.split(":")
    try:
        return getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError):
        return None


def exact_match_score(cfg: Config, model, tokenizer, data_run_id: str) -> dict:
    """Greedy exact match per direction on the first ``objective_limit`` held-out problems, and their mean.

    Also ``questions``: ``{"<direction>/<record id>": 1.0 or 0.0}``, each problem's score (reverse_align/sweep_stats.py).
    """
    from reverse_align.data.invert import load_run_records
    from reverse_align.eval.generation import exact_match, greedy_answers

    scores: dict = {}
    questions: dict[str, float] = {}
    for direction, artifact in (
        ("forward", tracking.ARTIFACT_TEST_FORWARD),
        ("reverse", tracking.ARTIFACT_TEST_REVERSE),
    ):
        try:
            tests = load_run_records(data_run_id, artifact)[: cfg.sweep.objective_limit]
        except Exception:  # noqa: BLE001 - mlflow raises several types for a missing artifact
            raise UserError(f"--data_run_id {data_run_id}: has no {artifact} for the exact_match objective") from None
        answers = greedy_answers(model, tokenizer, [r.question for r in tests], cfg.eval.max_new_tokens)
        right = [float(exact_match(a, r.gold)) for a, r in zip(answers, tests)]
        questions.update({f"{direction}/{r.id}": v for r, v in zip(tests, right)})
        scores[direction] = sum(right) / len(right) if right else 0.0
    scores["mean"] = (scores["forward"] + scores["reverse"]) / 2
    scores["questions"] = questions
    return scores


def eval_questions(eval_run_id: str) -> dict[str, float]:
    """``{"<benchmark>/<question id>": mean correct of its samples}`` from an evaluate run's per-sample tables."""
    import json

    import mlflow

    from reverse_align.report.paired import per_question

    client = mlflow.MlflowClient(tracking.tracking_uri())
    questions: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for artifact in client.list_artifacts(eval_run_id, tracking.ARTIFACT_EVAL_SAMPLES):
            if not artifact.path.endswith(".json"):
                continue
            benchmark = artifact.path.rsplit("/", 1)[-1].removesuffix(".json")
            table = json.loads(Path(client.download_artifacts(eval_run_id, artifact.path, tmp)).read_text())
            rows = [dict(zip(table["columns"], values)) for values in table["data"]]  # an MLflow table
            questions.update({f"{benchmark}/{q}": v for q, v in per_question(rows).items()})
    return questions


def objective_value(
    cfg: Config,
    objective: str,
    dpo_run_id: str,
    data_run_id: str,
    scored: dict | None = None,
    trial=None,
) -> float:
    """The trial's score (higher is better), also logged to the dpo run as ``sweep/objective`` at its last step.

    ``scored``: exact_match scores the checkpoint callback already took of the final weights (not redone).
    ``trial``: the Optuna trial, given its per-question scores, n, correct count and Wilson interval
    (reverse_align/sweep_stats.py record_trial); the dpo run gets them as ``sweep/trial/*`` metrics.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking.tracking_uri())
    step = int(client.get_run(dpo_run_id).data.metrics.get(tracking.METRIC_DPO_GLOBAL_STEPS, 0))
    if objective == "exact_match" and scored is not None:
        value, questions = scored["mean"], scored["questions"]
    elif objective == "exact_match":
        from reverse_align.models import load_tokenizer, resolve_base_model
        from reverse_align.train.common import load_adapter_model

        base_path = resolve_base_model(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            adapter = tracking.download_artifact(dpo_run_id, tracking.ARTIFACT_ADAPTER, tmp)
            model = load_adapter_model(cfg, base_path, adapter)
        scores = exact_match_score(cfg, model, load_tokenizer(cfg, base_path), data_run_id)
        for direction in ("forward", "reverse"):
            client.log_metric(dpo_run_id, tracking.metric_sweep_exact_match(direction), scores[direction], step=step)
        client.log_metric(dpo_run_id, tracking.METRIC_SWEEP_OBJECTIVE, scores["mean"], step=step)
        value, questions = scores["mean"], scores["questions"]
    else:
        evaluate = evaluate_stage()
        if evaluate is None:
            raise UserError("--objective eval_average needs the `evaluate` stage, which this installation lacks")
        # The synthetic benchmarks' held-out sets come from the trial's invert run (evaluate's own default).
        eval_run_id = evaluate(cfg, run_id=dpo_run_id, data_run_id=data_run_id)
        value = client.get_run(eval_run_id).data.metrics[tracking.METRIC_EVAL_AVERAGE]
        client.log_metric(dpo_run_id, tracking.METRIC_SWEEP_OBJECTIVE, value, step=step)
        questions = eval_questions(eval_run_id)
    if trial is not None and questions:
        from reverse_align import sweep_stats

        low, high = sweep_stats.record_trial(trial, questions)
        metrics = {"n": len(questions), "correct": sum(questions.values()), "ci_low": low, "ci_high": high}
        for name, number in metrics.items():
            client.log_metric(dpo_run_id, tracking.metric_sweep_trial(name), number, step=step)
    return value


def check_objective_inputs(cfg: Config, data_run_id: str) -> None:
    """Before any trial trains: every benchmark of an eval_average objective can be read (else one line, exit 2)."""
    if cfg.sweep.objective != "eval_average":
        return
    if evaluate_stage() is None:
        raise UserError("--objective eval_average needs the `evaluate` stage, which this installation lacks")
    from reverse_align.eval import benchmarks as bench

    for name in bench.check_benchmarks(cfg.eval.benchmarks):
        bench.load_docs(name, cfg.eval, data_run_id)


def checkpoint_reporter(cfg: Config, trial, data_run_id: str):
    """A TrainerCallback scoring each DPO checkpoint: ``trial.report`` it, log it, prune if Optuna says so."""
    import mlflow
    import optuna
    from transformers import TrainerCallback

    from reverse_align.models import load_tokenizer

    class ReportCheckpoints(TrainerCallback):
        def __init__(self):
            self.scored: dict[int, dict] = {}  # global step -> scores (exact_match_score)

        def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
            tokenizer = processing_class or load_tokenizer(cfg)
            was_training, padding_side = model.training, tokenizer.padding_side
            try:
                scores = exact_match_score(cfg, model, tokenizer, data_run_id)  # the policy adapter is active
            finally:
                model.train(was_training)
                tokenizer.padding_side = padding_side
            self.scored[state.global_step] = scores
            mlflow.log_metrics(
                {
                    tracking.METRIC_SWEEP_OBJECTIVE: scores["mean"],
                    **{tracking.metric_sweep_exact_match(d): scores[d] for d in ("forward", "reverse")},
                },
                step=state.global_step,
            )
            trial.report(scores["mean"], state.global_step)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"beta {trial.params[PARAM]}: {scores['mean']:.3f} at step {state.global_step}"
                )

    return ReportCheckpoints()
