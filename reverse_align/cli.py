"""`reverse-align <stage> --key value`: the console command behind every entry point.

Each stage declares its parameters once, here. A parameter either sets a config
field (``--epochs`` -> ``sft.epochs``) or is passed to the stage function.
An empty value means "keep the preset's", so MLproject defaults can be empty.
Unknown flags are an error (exit 2), like a misspelled config key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
import traceback
from dataclasses import dataclass, field

from reverse_align.errors import UserError
from reverse_align.scheduler import StageFailed, resolve


@dataclass(frozen=True)
class Param:
    name: str
    help: str
    # "section.field" of the config this parameter sets; None = a stage argument.
    config: str | None = None
    default: str = ""


@dataclass(frozen=True)
class Stage:
    target: str  # "module:function"
    help: str
    params: tuple[Param, ...] = field(default_factory=tuple)
    # "module:function" giving the preset to load from the parsed arguments when --preset is empty
    # (report: the preset its study ran on). Empty: --preset defaults to tiny, as everywhere else.
    default_preset: str = ""


PRESET = Param(
    "preset", "preset name (configs/<name>.yaml) or a YAML path; default: the upstream run's preset, else tiny"
)
# Arguments naming the run a stage starts from: its preset is the stage's unless --preset says otherwise.
UPSTREAM_ARGS = ("data_run_id", "sft_run_id", "run_id")
SEED = Param("seed", "random seed of the world and sampling", config="data.seed")

STAGES: dict[str, Stage] = {
    "main": Stage(
        "reverse_align.pipeline:run_main",
        "the whole study on a preset, reusing finished runs",
        (
            PRESET,
            Param("force", "rerun every stage even if a finished run exists", default="false"),
            Param("seeds", "training seeds per SFT/DPO/eval cell: a count (3) or a list (0,1,2); default main.seeds"),
            Param("bases", "tiny base models (pretrain seeds) per study: a count (3) or a list (0,1,2); default main.bases"),
            Param("jobs", "stages run side by side", config="main.jobs"),
            Param("ray_address", "Ray cluster to run the stages on: auto, ray://host:10001 (empty: RAY_ADDRESS, else this machine)"),
        ),
    ),
    "data": Stage(
        "reverse_align.data.stage:run_data",
        "forward set, held-out tests and probe set",
        (
            PRESET,
            Param("source", "synthetic, a local .jsonl/.parquet of s1K, or an HF dataset id", config="data.source"),
            Param("limit", "keep the first N forward items (0 = all)", config="data.limit"),
            SEED,
        ),
    ),
    "pretrain": Stage(
        "reverse_align.train.pretrain:run_pretrain",
        "build the tiny base model from scratch (tiny presets)",
        (
            PRESET, SEED,
            Param("base_seed", "seed of the base's initialisation and pretraining stream", config="pretrain.seed"),
            Param("force", "rebuild even if registered", default="false"),
        ),
    ),
    "invert": Stage(
        "reverse_align.data.invert:run_invert",
        "reverse set from a data run",
        (
            PRESET,
            Param("data_run_id", "finished data run"),
            Param("teacher", "synthetic or an OpenAI-compatible model name", config="invert.teacher"),
            Param("base_url", "OpenAI-compatible endpoint", config="invert.base_url"),
            Param("concurrency", "requests in flight", config="invert.concurrency"),
            Param("limit", "invert the first N forward items (0 = all)"),
            Param("api_key", "teacher API key (default: OPENAI_API_KEY or DEEPSEEK_API_KEY)"),
            Param("run_id", "resume this invert run"),
        ),
    ),
    "sft": Stage(
        "reverse_align.train.sft:run_sft",
        "LoRA SFT",
        (
            PRESET,
            Param("data_run_id", "finished invert run"),
            Param("mix", "forward, reverse, mixed or mixed_half", default="forward"),
            Param("epochs", "training epochs", config="sft.epochs"),
            Param("seed", "training seed (LoRA init, data order)", config="sft.seed"),
            Param("num_processes", "data-parallel processes", config="sft.num_processes"),
            Param("run_id", "resume this sft run"),
        ),
    ),
    "dpo": Stage(
        "reverse_align.train.dpo:run_dpo",
        "DPO with the SFT model as frozen reference",
        (
            PRESET,
            Param("sft_run_id", "finished sft run (empty: direct DPO from the base model)"),
            Param("data_run_id", "finished invert run"),
            Param("beta", "DPO beta", config="dpo.beta"),
            Param("max_steps", "optimizer steps", config="dpo.max_steps"),
            Param("direction", "both, forward or reverse", default="both"),
            Param("seed", "training seed (data order)", config="dpo.seed"),
            Param("num_processes", "data-parallel processes", config="dpo.num_processes"),
            Param("run_id", "resume this dpo run"),
        ),
    ),
    "probe": Stage(
        "reverse_align.probe.stage:run_probe",
        "ALP learning dynamics (Figure 2) on the probe set, or of an existing run's checkpoints",
        (
            PRESET,
            Param("data_run_id", "finished invert run: train on its probe set and score"),
            Param("train_on", "forward, reverse or mixed (D_f, D_r, D_m)"),
            Param("run_id", "finished sft or dpo run: score its logged checkpoints instead"),
        ),
    ),
    "evaluate": Stage(
        "reverse_align.eval.stage:run_evaluate",
        "benchmarks (AIME24, MATH500, GPQA, synthetic) through lm-eval, with 95% intervals",
        (
            PRESET,
            Param("run_id", "finished sft or dpo run whose adapter is scored (empty: the base model)"),
            Param("data_run_id", "data or invert run with the synthetic held-out sets (default: the run's own)"),
            Param("benchmarks", "comma-separated: aime24, math500, gpqa, synthetic_forward, ...", config="eval.benchmarks"),
            Param("judge", "math-verify (offline) or a model on an OpenAI-compatible endpoint", config="eval.judge"),
            Param("base_url", "the judge's OpenAI-compatible endpoint", config="eval.judge_base_url"),
            Param("limit", "first N questions of each benchmark (0 = all)", config="eval.limit"),
            Param("samples", "answers per question (1 = greedy)", config="eval.samples"),
            Param("api_key", "judge API key (default: OPENAI_API_KEY)"),
        ),
    ),
    "sweep": Stage(
        "reverse_align.sweep:run_sweep",
        "Optuna sweep of DPO beta, each trial a dpo run (same command again: resume)",
        (
            PRESET,
            Param("sft_run_id", "finished sft run (empty: direct DPO from the base model)"),
            Param("data_run_id", "finished invert run"),
            Param("beta_low", "lowest beta", config="sweep.beta_low"),
            Param("beta_high", "highest beta", config="sweep.beta_high"),
            Param("n_trials", "completed trials to reach (0: the whole grid)", config="sweep.n_trials"),
            Param("objective", "eval_average or exact_match", config="sweep.objective"),
            Param("storage", "Optuna storage: RDB URL or journal:PATH (empty: optuna.db beside mlflow.db)", config="sweep.storage"),
            Param("workers", "workers on this study (Ray tasks, each with a trial's GPUs)", config="sweep.workers"),
            Param("ray_address", "Ray cluster of the workers: auto, ray://host:10001 (empty: RAY_ADDRESS, else this machine)"),
            Param("sampler", "grid, tpe or tpe_log", config="sweep.sampler"),
            Param("max_steps", "DPO optimizer steps of each trial", config="dpo.max_steps"),
        ),
    ),
    "promote": Stage(
        "reverse_align.registry:run_promote",
        "register the best adapter run and move the champion alias if it wins",
        (
            Param("experiment", "experiment to search (default: MLFLOW_EXPERIMENT_NAME or reverse-align)"),
            Param("metric", "higher is better; runs without it are not candidates", default="eval/average"),
            Param("model_name", "registered model name", default="reverse-align-adapter"),
            Param("alias", "alias moved to the new version when it beats the holder", default="champion"),
            Param("force", "move the alias even when the new version does not beat the holder", default="false"),
            Param("stage", "sft, dpo or sft,dpo (default: both)"),
            Param("preset", "only runs of this preset (default: any)"),
            Param("where", "extra MLflow search filter, e.g. \"params.`sft.mix` = 'mixed'\""),
            Param("run_id", "promote this run instead of searching"),
        ),
    ),
    "report": Stage(
        "reverse_align.report.stage:run_report",
        "the paper's tables, Figure 2, the sweep and the champion from a study's runs (reports/<experiment>/report.md)",
        (
            Param("experiment", "experiment of the study (default: MLFLOW_EXPERIMENT_NAME or reverse-align)"),
            Param("output", "folder for <experiment>/report.md and its PNGs", default="reports"),
            Param("main_run_id", "the main run to report (default: the newest with main/stages.json)"),
            Param("preset", "preset whose report: section applies (default: the study's, from main/stages.json)"),
            Param("screenshots", "MLflow UI screenshots: auto, true or false", config="report.screenshots"),
        ),
        default_preset="reverse_align.report.stage:study_preset",
    ),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (INTERFACE.md)
        raise UserError(message)


def make_parser(stage_name: str) -> argparse.ArgumentParser:
    stage = STAGES[stage_name]
    parser = _Parser(prog=f"reverse-align {stage_name}", description=stage.help, allow_abbrev=False)
    for param in stage.params:
        parser.add_argument(f"--{param.name}", default=param.default, help=param.help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="config override section.key=value (repeatable; spaces separate several)",
    )
    return parser


def upstream_presets(args: dict) -> list[tuple[str, str, str]]:
    """(flag, run id, preset) of every upstream run the arguments name that records its preset."""
    names = [(name, args.get(name)) for name in UPSTREAM_ARGS if args.get(name)]
    if not names:
        return []
    import mlflow
    from mlflow.exceptions import MlflowException

    from reverse_align import tracking

    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []  # no store yet, so no upstream run (and opening one would create it)
    client = mlflow.MlflowClient(uri)
    found = []
    for name, run_id in names:
        try:
            preset = client.get_run(str(run_id)).data.tags.get(tracking.TAG_PRESET)
        except MlflowException:
            continue  # the stage says what is wrong with a run it cannot find
        if preset:
            found.append((f"--{name}", str(run_id), preset))
    return found


def follow_upstream(preset: str, args: dict) -> str:
    """The preset to load: --preset if given (it must match the upstream runs'), else the upstream runs'."""
    upstream = upstream_presets(args)
    if not upstream:
        return preset
    if preset:
        wanted = Path(preset).stem
        for flag, run_id, theirs in upstream:
            if theirs != wanted:
                raise UserError(f"--preset {preset}: {flag} {run_id} ran with preset {theirs}; drop --preset or pass --preset {theirs}")
        return preset
    presets = {theirs for _, _, theirs in upstream}
    if len(presets) > 1:
        listed = ", ".join(f"{flag} {run_id} ({theirs})" for flag, run_id, theirs in upstream)
        raise UserError(f"upstream runs of different presets: {listed}; pass --preset")
    return presets.pop()


def run_stage(stage_name: str, argv: list[str]) -> None:
    from reverse_align import preflight
    from reverse_align.config import load_config, set_field

    stage = STAGES[stage_name]
    args = vars(make_parser(stage_name).parse_args(argv))
    overrides = [item for chunk in args.pop("overrides") for item in chunk.split()]
    # --preset names the config to load, except where a stage declares its own --preset (promote: a filter).
    preset = args.pop("preset", "") if PRESET in stage.params or stage.default_preset else ""
    if not preset and stage.default_preset:
        preset = resolve(stage.default_preset)(args)
    if PRESET in stage.params:
        preset = follow_upstream(preset, args)
    cfg = load_config(preset or "tiny", overrides)
    kwargs = {}
    for param in stage.params:
        if param.name not in args:
            continue
        value = args[param.name]
        if param.config:
            if value != "":
                set_field(cfg, param.config, value)
        else:
            kwargs[param.name] = value
    # Before any MLflow run exists: everything the config needs from this machine, at once.
    preflight.check(cfg, stage_name)
    resolve(stage.target)(cfg, **kwargs)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: reverse-align <stage> [--key value ...]\nstages:")
        for name, stage in STAGES.items():
            print(f"  {name:10s} {stage.help}")
        return 0 if argv else 2
    stage_name, rest = argv[0], argv[1:]
    try:
        if stage_name not in STAGES:
            raise UserError(f"unknown stage {stage_name!r}; valid stages: {', '.join(STAGES)}")
        run_stage(stage_name, rest)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except StageFailed as exc:  # `main`: the stage's traceback is in its log
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def entrypoint(stage_name: str) -> None:
    """`python entrypoints/<stage>.py --key value` (what MLproject runs)."""
    sys.exit(main([stage_name, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
