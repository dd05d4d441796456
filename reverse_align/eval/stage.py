"""The `evaluate` stage: benchmarks of PROTOCOL §5 (and the tiny world's) on an adapter run or the base model.

``--run_id`` an sft or dpo run (its ``adapter/`` on the preset's base model;
empty: the base model alone). Synthetic benchmarks read the held-out sets of
``--data_run_id`` (a data or invert run), by default the invert run the
evaluated run was trained on (its ``reverse_align.upstream.invert`` tag).

lm-eval's ``simple_evaluate`` runs the tasks shipped in eval/tasks/ (registered
with ``TaskManager(include_path=...)``, lm-eval's own tasks not loaded), with
the chat template, in the format the evaluated model was trained on
(:func:`answer_format`, param ``eval.format``): ``s1`` for SFT models and DPO
over them (the think marker opens the response, the answer is read after
``<|im_start|>answer``, as ``eval.answer_marker_required`` says); ``chat`` for
the base model and direct DPO, which never learnt the s1 format (no think
marker, the answer read from the whole response: graded as SFT models, every
answer of theirs would count as truncated). Then the preset's generation settings, the same on both
backends and nothing of the checkpoint's ``generation_config`` (eval/decoding.py): greedy with
``eval.max_new_tokens`` (§4; capped to the model's positions less ``eval.max_prompt_tokens``), or
``eval.samples`` answers per question at ``eval.temperature``/``eval.top_p`` (pass@1 averaged over them).
Generation is batched (``eval.batch_size``) with lm-eval's progress bar. Answers are graded offline
(eval/grading.py) or by a judge model (``--judge``, eval/judge.py, cached).

Logs ``eval/<benchmark>/{accuracy,ci_low,ci_high,unparsed,truncated,questions,answers}``
and ``eval/average``; ``eval/samples/<benchmark>.json`` (per-sample table) and
``eval/lm_eval_results.json``; params: the eval config, ``eval.format``, ``eval.task_sha.<benchmark>``
(shipped task files), ``eval.data_sha.<benchmark>`` (the questions scored) and ``eval.generation.<name>``
(the decoding used: decoding.GenerationSettings);
tags ``reverse_align.upstream.<sft|dpo>`` and ``.upstream.<invert|data>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.errors import UserError
from reverse_align.eval import benchmarks as bench
from reverse_align.eval import decoding, results
from reverse_align.eval.decoding import GenerationSettings
from reverse_align.eval.judge import OFFLINE, Judge
from reverse_align.formatting import THINK_MARKER
from reverse_align.models import require_same_base

STAGE = "evaluate"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
TEMPLATE = "_default_template_yaml"
S1_FORMAT, CHAT_FORMAT = "s1", "chat"


@dataclass(frozen=True)
class AnswerFormat:
    """How a model is prompted and its answer read: the shipped tasks' ``gen_prefix`` and the grader's marker rule."""

    name: str  # S1_FORMAT or CHAT_FORMAT (param eval.format)
    gen_prefix: str | None  # what opens the assistant turn; None = the bare chat template's assistant header
    marker_required: bool  # the answer only after <|im_start|>answer (eval/grading.py)


S1 = AnswerFormat(S1_FORMAT, THINK_MARKER, True)


def answer_format(cfg: Config, evaluated) -> AnswerFormat:
    """The format the evaluated model was trained on: s1 for an SFT run and DPO over one (``dpo.reference``
    ``sft``); plain chat for the base model (``evaluated`` None) and direct DPO (reference ``base``)."""
    trained_on_s1 = evaluated is not None and not (
        evaluated.data.tags.get(tracking.TAG_STAGE) == "dpo" and evaluated.data.params.get("dpo.reference") == "base"
    )
    if trained_on_s1:
        return AnswerFormat(S1_FORMAT, THINK_MARKER, cfg.eval.answer_marker_required)
    return AnswerFormat(CHAT_FORMAT, None, False)


def check_eval_config(cfg: Config) -> None:
    e = cfg.eval
    if e.samples < 1:
        raise UserError(f"eval.samples must be >= 1, got {e.samples}")
    if e.max_new_tokens < 1 or e.batch_size < 1:
        raise UserError(f"eval.max_new_tokens ({e.max_new_tokens}) and eval.batch_size ({e.batch_size}) must be >= 1")
    if e.samples > 1 and not (e.temperature > 0 and 0 < e.top_p <= 1):
        raise UserError(f"eval.samples {e.samples} needs eval.temperature > 0 and 0 < eval.top_p <= 1")


def task_sha(name: str) -> str:
    """What the task's behaviour depends on in the package: its YAML, the shared template, the hooks."""
    digest = hashlib.sha256()
    for path in (TASKS_DIR / f"{name}.yaml", TASKS_DIR / TEMPLATE, TASKS_DIR / "hooks.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def run_lm_eval(
    cfg: Config,
    lm,
    names: list[str],
    docs_dir: Path,
    fmt: AnswerFormat = S1,
    settings: GenerationSettings | None = None,
) -> dict:
    """lm-eval's simple_evaluate over the shipped tasks; returns its results with the samples.

    ``settings``: the decoding (eval/decoding.py; default: the preset's on the HF model's config)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if settings is None:
        settings = decoding.settings(cfg, getattr(getattr(lm, "model", None), "config", None))

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"docs_dir": str(docs_dir)})
    tasks = manager.load(names)["tasks"]
    for task in tasks.values():
        task.set_config(key="repeats", value=cfg.eval.samples)
        task.set_config(key="gen_prefix", value=fmt.gen_prefix)  # the tasks' YAML holds the s1 marker
    return simple_evaluate(
        model=lm,
        tasks=[tasks[n] for n in names],
        task_manager=manager,
        apply_chat_template=True,
        gen_kwargs=decoding.gen_kwargs(cfg.eval.backend, settings),
        log_samples=True,
        bootstrap_iters=0,  # intervals are ours (eval/intervals.py), per question
        random_seed=cfg.data.seed,
        numpy_random_seed=cfg.data.seed,
        torch_random_seed=cfg.data.seed,
    )


def _data_run(evaluated, data_run_id: str, names: list[str]) -> str:
    if data_run_id:
        tracking.require_run(data_run_id, ("data", "invert"), "data_run_id")
        return data_run_id
    if evaluated is not None and any(bench.BENCHMARKS[n].synthetic for n in names):
        return evaluated.data.tags.get(tracking.tag_upstream("invert"), "")
    return ""


def _base_run_id(cfg: Config) -> str:
    from reverse_align.models import TINY_BASE, find_tiny_base

    version = find_tiny_base(cfg) if cfg.model.name == TINY_BASE else None
    return version.run_id if version else ""


def run_evaluate(cfg: Config, run_id: str = "", data_run_id: str = "", api_key: str = "") -> str:
    tracking.setup()
    names = bench.check_benchmarks(cfg.eval.benchmarks)
    check_eval_config(cfg)
    evaluated = tracking.require_run(run_id, ("sft", "dpo"), "run_id") if run_id else None
    if evaluated is not None:
        require_same_base(cfg, evaluated, "--run_id")
    data_run_id = _data_run(evaluated, data_run_id, names)
    judge = None if cfg.eval.judge in ("", OFFLINE) else Judge(cfg.eval.judge, cfg.eval.judge_base_url, api_key)
    fmt = answer_format(cfg, evaluated)
    # The docs carry the grader's marker rule (eval/tasks/hooks.py reads it per doc).
    doc_cfg = dataclasses.replace(cfg.eval, answer_marker_required=fmt.marker_required)
    # Every benchmark's questions are read before any run or model exists: missing data is one line.
    docs = {name: bench.load_docs(name, doc_cfg, data_run_id) for name in names}
    with tempfile.TemporaryDirectory(prefix="reverse-align-eval-") as tmp:
        return _evaluate(cfg, names, docs, evaluated, run_id, data_run_id, judge, Path(tmp), fmt)


def _evaluate(
    cfg: Config, names, docs, evaluated, run_id: str, data_run_id: str, judge, docs_dir: Path, fmt: AnswerFormat
) -> str:
    import mlflow

    from reverse_align.eval.lm import build_lm
    from reverse_align.models import resolve_base_model

    params = {"eval.run_id": run_id or "base", "eval.data_run_id": data_run_id, tracking.PARAM_EVAL_FORMAT: fmt.name}
    for name in names:
        params[f"{tracking.PARAM_EVAL_TASK_SHA}.{name}"] = task_sha(name)
        params[f"{tracking.PARAM_EVAL_DATA_SHA}.{name}"] = bench.write_docs(docs[name], docs_dir / f"{name}.jsonl")
    upstream = {} if evaluated else {"pretrain": _base_run_id(cfg)}  # an adapter's base is tagged by stage_run
    if evaluated is not None:
        upstream[evaluated.data.tags[tracking.TAG_STAGE]] = run_id
    if data_run_id:
        data_stage = mlflow.MlflowClient().get_run(data_run_id).data.tags.get(tracking.TAG_STAGE, "data")
        upstream[data_stage] = data_run_id
    with tracking.stage_run(STAGE, cfg, upstream=upstream, params=params) as run:
        base_path = resolve_base_model(cfg)
        adapter_dir = (
            tracking.download_artifact(run_id, tracking.ARTIFACT_ADAPTER, str(docs_dir / "adapter")) if run_id else None
        )
        settings = decoding.for_model(cfg, base_path)
        mlflow.log_params(settings.params())
        lm = build_lm(cfg, base_path, adapter_dir, settings=settings)
        output = run_lm_eval(cfg, lm, names, docs_dir, fmt, settings)
        rows, metrics = {}, {}
        for name in names:
            rows[name] = results.sample_rows(name, output["samples"][name])
            if judge is not None:
                results.apply_judge(judge, rows[name], {d["id"]: d for d in docs[name]})
            metrics.update(
                results.benchmark_metrics(
                    name, rows[name], cfg.eval.samples, cfg.eval.bootstrap_resamples, judge is not None
                )
            )
        metrics[tracking.METRIC_EVAL_AVERAGE] = results.average(metrics, names)
        results.log(output, rows, metrics)
        if evaluated is not None:
            results.copy_to_evaluated(run_id, run.info.run_id, metrics, names)
        what = f"{evaluated.data.tags[tracking.TAG_STAGE]} run {run_id}" if evaluated else "the base model"
        print(f"evaluate run {run.info.run_id}: {what}, {fmt.name} format\n{results.summary_table(metrics, names)}")
        if judge is not None:
            print(f"judge {judge.model}: {judge.requests} requests sent (the rest from its cache)")
        return run.info.run_id
