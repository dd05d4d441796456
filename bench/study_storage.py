"""Bytes a whole study leaves in the MLflow store, per stage: every checkpoint kept (before) vs `checkpoints` (after).

Computed from the shapes, for every preset asked (default tiny, paper-7b, paper-14b): the trainable tensors of
the preset's LoRA on its base model (peft on the meta device for Qwen2.5, the real tiny model for tiny presets;
LoRA in float32, the saved lm_head copy in the model dtype: bf16 on paper presets), so a checkpoint's adapter is
their bytes; its trainer state adds the optimizer (AdamW: 2 states of the parameter's dtype; bitsandbytes 8-bit
AdamW: 2 bytes + 2 float32 scales per 256) when it is a file of the checkpoint. Under DeepSpeed (paper presets:
several GPUs and a ZeRO-3 config) the optimizer lives in DeepSpeed's own global_step<n>/ shards, which the store
never held (train/common.py:resume_checkpoint), so its resume/ is small either way; `--single_gpu` shows the
preset on one GPU instead (num_processes 1: optimizer.pt in every checkpoint). The study is `main`'s plan
(pipeline.plan: SFT on four mixes, DPO on three SFT models and direct, three probe runs each training an SFT
and a DPO, the beta sweep's DPO trials), one seed; each training run also logs adapter/ and the MLflow model
`model` (the adapter again, tokenizer files not counted). Data, evaluation and report artifacts are not counted
in the computed rows (kilobytes to megabytes); a measured store counts everything.

Measured (`--store URI` or `--run_micro`): every artifact's size (the runs' and their logged models', which MLflow 3
keeps apart; registered tiny base models are the pretrain run's), summed per stage (tag reverse_align.stage; the
probe's own SFT and DPO runs and the sweep's trials on their own rows), and what the defaults leave of the same
listing (resume/ and checkpoints/ of FINISHED sft/dpo runs dropped except what `checkpoints` keeps, all but the
newest of unfinished ones): for a store written before `checkpoints` existed, before vs after; for one written
since, the two agree. `--run_micro` runs `reverse-align main --preset micro` twice into throwaway stores, once with
every checkpoint kept (checkpoints.keep_adapters=all, keep_resume=all: the behaviour before) and once with the
defaults, and measures both.

Usage: python bench/study_storage.py [--preset tiny --preset paper-7b ...] [--single_gpu]
       [--store URI [--experiment NAME]] [--run_micro]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Qwen2.5-*-Instruct config.json (hub): the fields that size the parameters.
_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
           "vocab_size", "tie_word_embeddings")  # fmt: skip
QWEN25 = {
    "paper-3b": dict(zip(_FIELDS, (2048, 11008, 36, 16, 2, 151936, True))),
    "paper-7b": dict(zip(_FIELDS, (3584, 18944, 28, 28, 4, 152064, False))),
    "paper-14b": dict(zip(_FIELDS, (5120, 13824, 48, 40, 8, 152064, False))),
}
# A trainer state's files besides the optimizer (scheduler.pt, rng_state.pth, trainer_state.json, training_args.bin,
# checkpoint.json), ~25 kB in micro's store: counted as this.
RESUME_OTHER_BYTES = 25_000
# bitsandbytes 8-bit AdamW: two uint8 states and a float32 absmax per block of 256 for each.
ADAM_8BIT_BYTES_PER_PARAM = 2 + 2 * 4 / 256


# ---------------------------------------------------------------- computed from the shapes


@dataclass
class Shapes:
    adapter_bytes: int  # one adapter checkpoint (= adapter/, = the model's copy)
    trainable: int
    lora_params: int
    head_params: int
    head_dtype: str


def adapter_shapes(cfg) -> tuple[Shapes, list]:
    """Trainable tensors of cfg.lora on the preset's base: (bytes and counts, [(numel, element size)])."""
    import peft
    import torch
    import transformers

    from reverse_align.models import torch_dtype
    from reverse_align.train.common import peft_lora_config

    dtype = torch_dtype(cfg.model.dtype)
    if cfg.preset in QWEN25:
        config = transformers.Qwen2Config(**QWEN25[cfg.preset])
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        from reverse_align.train.pretrain import build_model, build_tokenizer

        model = build_model(cfg, build_tokenizer(cfg)).to(dtype)
    wrapped = peft.get_peft_model(model, peft_lora_config(cfg.lora, tied=model.config.tie_word_embeddings))
    tensors, lora, head, head_dtype = [], 0, 0, ""
    for name, parameter in wrapped.named_parameters():
        if not parameter.requires_grad:
            continue
        size = (
            parameter.element_size()
            if cfg.lora.adapter_dtype == "float32"
            else torch.empty((), dtype=dtype).element_size()
        )
        tensors.append((parameter.numel(), size))
        if "lm_head" in name:
            head, head_dtype = head + parameter.numel(), str(parameter.dtype).removeprefix("torch.")
        else:
            lora += parameter.numel()
    shapes = Shapes(sum(n * s for n, s in tensors), lora + head, lora, head, head_dtype)
    return shapes, tensors


def optimizer_bytes(tensors: list, optim: str) -> float:
    if "8bit" in optim:
        return sum(n * (ADAM_8BIT_BYTES_PER_PARAM if n >= 4096 else 8) for n, _ in tensors)
    return sum(2 * n * size for n, size in tensors)  # exp_avg, exp_avg_sq: zeros_like(parameter)


def in_store_resume_bytes(tensors: list, optim: str, num_processes: int, deepspeed: str, on_gpus: bool) -> float:
    """Bytes of one resume/checkpoint-<step>/ in the store (the optimizer only where it is a file of the checkpoint)."""
    under_deepspeed = bool(deepspeed) and num_processes > 1 and on_gpus
    return RESUME_OTHER_BYTES + (0 if under_deepspeed else optimizer_bytes(tensors, optim))


def sft_checkpoints(s) -> int:
    return int(s.epochs // s.save_every_epochs) if s.save_every_epochs > 0 else 0


def dpo_checkpoints(d) -> int:
    if d.save_every_epochs > 0:
        raise ValueError("epoch-saved DPO: count with probe_dpo_checkpoints")
    return d.max_steps // d.save_every_steps if d.save_every_steps > 0 else 0


def kept(n: int, rule: str) -> int:
    return {"all": n, "last": min(n, 1), "none": 0}[rule]


def training_rows(cfg) -> list[tuple[str, int, object, int]]:
    """(row, runs, stage config, checkpoints per run) of one study on cfg, as `main` plans it (one seed)."""
    from reverse_align import pipeline
    from reverse_align.probe.stage import training_config

    jobs = pipeline.plan(cfg, [cfg.sft.seed], parent_id="bench")
    count = {}
    for job in jobs:
        stage = job.key.split(".")[0]
        count[stage] = count.get(stage, 0) + 1
    rows = [
        ("sft", count.get("sft", 0), cfg, sft_checkpoints(cfg.sft)),
        ("dpo", count.get("dpo", 0), cfg, dpo_checkpoints(cfg.dpo)),
    ]
    # Probe runs train on the probe set: D_f/D_r have probe_size pairs, D_m twice that (3 runs).
    for train_on, pairs in (("forward", 1), ("reverse", 1), ("mixed", 2)):
        probe_cfg = training_config(cfg, cfg.data.probe_size * pairs)
        rows.append((f"probe.{train_on} (sft)", 1, probe_cfg, sft_checkpoints(probe_cfg.sft)))
        rows.append((f"probe.{train_on} (dpo)", 1, probe_cfg, cfg.probe.dpo_epochs))
    sw = cfg.sweep
    trials = sw.n_trials or (round((sw.beta_high - sw.beta_low) / sw.grid_step) + 1)
    rows.append(("sweep (dpo trials)", trials * count.get("sweep", 0), cfg, dpo_checkpoints(cfg.dpo)))
    return rows


def computed(preset: str, single_gpu: bool) -> tuple[list[list], int, int, Shapes]:
    from reverse_align.config import load_config

    overrides = ["sft.num_processes=1", "dpo.num_processes=1"] if single_gpu else []
    cfg = load_config(preset, overrides)
    shapes, tensors = adapter_shapes(cfg)
    on_gpus = cfg.model.dtype != "float32"  # paper presets run on GPUs, tiny ones on CPU
    table, before_total, after_total = [], 0, 0
    for row, runs, c, n in training_rows(cfg):
        section = c.sft if "sft" in row.split(" ")[-1] or row == "sft" else c.dpo
        resume = in_store_resume_bytes(tensors, section.optim, section.num_processes, section.deepspeed, on_gpus)
        final = 2 * shapes.adapter_bytes  # adapter/ and the MLflow model's copy
        before = runs * (final + n * (shapes.adapter_bytes + resume))
        k = cfg.checkpoints  # the probe's runs too, once it has scored their checkpoints
        adapters_left = max(kept(n, k.keep_adapters), kept(n, k.keep_resume))
        after = runs * (final + adapters_left * shapes.adapter_bytes + kept(n, k.keep_resume) * resume)
        table.append([row, runs, n, before, after])
        before_total += before
        after_total += after
    return table, before_total, after_total, shapes


# ---------------------------------------------------------------- measured from a store


def _files(client, run_id: str, path: str = ""):
    for entry in client.list_artifacts(run_id, path or None):
        if entry.is_dir:
            yield from _files(client, run_id, entry.path)
        else:
            yield entry.path, entry.file_size or 0


def _model_files(client, model_id: str, path: str | None = None):
    for entry in client.list_logged_model_artifacts(model_id, path):
        if entry.is_dir:
            yield from _model_files(client, model_id, entry.path)
        else:
            yield entry.file_size or 0


def logged_model_bytes(client, experiment_id: str) -> dict[str, int]:
    """Run id -> bytes of the MLflow models it logged (MLflow 3 keeps them outside the run's artifacts)."""
    found: dict[str, int] = {}
    token = None
    while True:
        page = client.search_logged_models([experiment_id], max_results=100, page_token=token)
        for model in page:
            found[model.source_run_id] = found.get(model.source_run_id, 0) + sum(_model_files(client, model.model_id))
        token = page.token
        if not token:
            return found


def stage_row(run) -> str:
    tags, params = run.data.tags, run.data.params
    stage = tags.get("reverse_align.stage", "?")
    if stage in ("sft", "dpo") and params.get(f"{stage}.train_set") == "probe":
        return f"probe ({stage})"
    if stage == "dpo" and "reverse_align.sweep.trial" in tags:
        return "sweep (dpo trials)"
    return stage


def what_defaults_leave(run, files: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The same listing without what `checkpoints` (the run's preset defaults) deletes: of resume/ and checkpoints/
    the newest while unfinished, what the settings keep once FINISHED (the probe's runs too: it has scored them)."""
    from reverse_align.config import load_config
    from reverse_align.train.common import _number

    stage = run.data.tags.get("reverse_align.stage")
    if stage not in ("sft", "dpo"):
        return files
    keep = load_config(run.data.tags.get("reverse_align.preset", "tiny")).checkpoints
    adapters, resume = keep.keep_adapters, keep.keep_resume
    if run.info.status != "FINISHED":
        adapters, resume = ("all" if adapters == "all" else "last"), "last"
    elif ("all", "last", "none").index(resume) < ("all", "last", "none").index(adapters):
        adapters = resume
    left = []
    for folder, rule in (("resume", resume), ("checkpoints", adapters)):
        names = sorted({p.split("/")[1] for p, _ in files if p.startswith(folder + "/")}, key=_number)
        keep_names = set(names if rule == "all" else names[-1:] if rule == "last" else [])
        left += [(p, b) for p, b in files if p.startswith(folder + "/") and p.split("/")[1] in keep_names]
    left += [(p, b) for p, b in files if not p.startswith(("resume/", "checkpoints/"))]
    return left


def measured(uri: str, experiment: str) -> tuple[list[list], int, int]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        sys.exit(f"no experiment {experiment!r} in {uri}")
    rows: dict[str, list] = {}
    models = logged_model_bytes(client, found.experiment_id)
    for run in client.search_runs([found.experiment_id], max_results=50000):
        files = list(_files(client, run.info.run_id))
        name = stage_row(run)
        row = rows.setdefault(name, [name, 0, 0, 0, 0])
        row[1] += 1
        row[2] += sum(1 for p, _ in files if p.startswith("resume/") and p.endswith("/checkpoint.json"))
        model = models.get(run.info.run_id, 0)  # the logged `model`: never deleted
        row[3] += sum(b for _, b in files) + model
        row[4] += sum(b for _, b in what_defaults_leave(run, files)) + model
    table = sorted(rows.values(), key=lambda r: -r[3])
    return table, sum(r[3] for r in table), sum(r[4] for r in table)


def run_micro(keep_all: bool) -> str:
    """`reverse-align main --preset micro` into a throwaway store; returns its tracking URI (the directory stays)."""
    work = Path(tempfile.mkdtemp(prefix="study-storage-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db", "REVERSE_ALIGN_CACHE": str(work / "cache"),
           "PYTHONPATH": str(ROOT), "MLFLOW_EXPERIMENT_NAME": "reverse-align"}  # fmt: skip
    env.pop("MLFLOW_RUN_ID", None)
    sets = ["--set", "checkpoints.keep_adapters=all", "--set", "checkpoints.keep_resume=all"] if keep_all else []
    command = [sys.executable, "-m", "reverse_align.cli", "main", "--preset", "micro",
               "--set", "report.screenshots=false", *sets]  # fmt: skip
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"main --preset micro failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return env["MLFLOW_TRACKING_URI"]


# ---------------------------------------------------------------- output


def human(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


MEASURED_HEADS = ("resume states stored (all runs)", "stored", "what the defaults leave")


def millions(n: int) -> str:
    return f"{n / 1e6:,.0f}M" if n >= 1e8 else f"{n / 1e6:.3g}M"


def print_table(
    title: str, rows: list[list], before: int, after: int, heads=("checkpoints a run", "before", "after")
) -> None:
    print(f"\n{title}")
    print(f"| stage | runs | {heads[0]} | {heads[1]} | {heads[2]} |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs, n, b, a in rows:
        print(f"| {name} | {runs} | {n} | {human(b)} | {human(a)} |")
    ratio = f" ({before / after:.1f}x less)" if after else ""
    print(f"| whole study | | | {human(before)} | {human(after)}{ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="computed rows for this preset (repeatable)")
    parser.add_argument("--single_gpu", action="store_true", help="paper presets on one GPU (no DeepSpeed)")
    parser.add_argument("--store", help="an MLflow tracking URI to measure")
    parser.add_argument("--experiment", default="reverse-align")
    parser.add_argument("--run_micro", action="store_true", help="run main --preset micro before/after and measure")
    args = parser.parse_args()

    for preset in args.preset or ["tiny", "paper-7b", "paper-14b"]:
        rows, before, after, s = computed(preset, args.single_gpu)
        print_table(
            f"{preset}{' on one GPU' if args.single_gpu else ''}, computed: {millions(s.trainable)} trainable "
            f"({millions(s.lora_params)} LoRA float32 + {millions(s.head_params)} lm_head {s.head_dtype}), "
            f"{human(s.adapter_bytes)} an adapter; before = every checkpoint kept, after = `checkpoints` defaults",
            rows, before, after,
        )  # fmt: skip
    if args.store:
        rows, stored, left = measured(args.store, args.experiment)
        print_table(f"measured: {args.store}", rows, stored, left, MEASURED_HEADS)
    if args.run_micro:
        for keep_all in (True, False):
            uri = run_micro(keep_all)
            rows, stored, left = measured(uri, "reverse-align")
            label = "every checkpoint kept (keep_adapters=all, keep_resume=all)" if keep_all else "defaults"
            print_table(f"micro study, {label}: {uri}", rows, stored, left, MEASURED_HEADS)


if __name__ == "__main__":
    main()
