"""Training helpers shared by the SFT and DPO stages (trainer-agnostic).

Everything here works with any ``transformers.Trainer`` subclass (trl's
SFTTrainer, DPOTrainer) through its arguments and callbacks; nothing
subclasses or copies a trainer.

- :func:`peft_lora_config` - ``peft.LoraConfig`` from ``cfg.lora`` (``lm_head`` -> ``modules_to_save``, see there).
- :func:`run_output_dir` - local directory of a run's trainer checkpoints.
- :func:`device_training_args` - TrainingArguments kwargs that depend on the
  hardware and process count (ddp backend, deepspeed, gradient checkpointing).
- :class:`MlflowMetricsCallback` - trainer logs -> the active MLflow run as
  ``train/<key>`` at step = global step; rank 0 only; never logs a step twice
  (on resume the steps the killed attempt already logged are kept, not repeated).
- :class:`SaveEveryEpochsCallback` - checkpoint every N epochs (``save_strategy="no"``).
- :class:`CheckpointLoggingCallback` - each saved checkpoint's adapter ->
  ``checkpoints/<name>/`` (adapter files only) and its trainer state (optimizer,
  scheduler, RNG, trainer_state.json) -> ``resume/checkpoint-<step>/``; the older
  ones deleted from the store as it goes (``cfg.checkpoints``: only what a resume needs).
- :func:`finish_checkpoints` - once a run has logged its final adapter: what ``cfg.checkpoints``
  keeps of ``checkpoints/`` and ``resume/``, the rest deleted from the store.
- :func:`resume_checkpoint` - the checkpoint to resume from: the newest local
  one, else the newest one logged to MLflow, downloaded (not under DeepSpeed:
  refused, the store lacks its shards); None to start fresh.
- :func:`save_final_adapter` - the trained adapter -> ``<output_dir>/final`` (all ranks).
- :func:`load_adapter_model` - base model + a saved adapter (a ``PeftModel``).
- :func:`log_final_adapter` - a trained PeftModel's adapter -> ``adapter/`` and
  an MLflow transformers model (adapter + a reference to the base model) -> ``model``.
- :func:`is_worker`, :func:`is_main_process`, :func:`launch_workers` - run a
  stage function in ``num_processes`` data-parallel processes via torchrun
  (gloo on CPU, NCCL/DeepSpeed on GPUs); ``python -m reverse_align.train.common
  <spec.json>`` is the worker entry point.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any, Callable

from reverse_align import tracking
from reverse_align.config import CheckpointsConfig, Config, LoraConfig
from reverse_align.errors import UserError

try:  # transformers is always installed; the import only stays out of `--help`'s way when it is not needed
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object  # type: ignore[misc,assignment]

# What a PEFT adapter directory holds (PeftModel.from_pretrained reads these two).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# A trainer checkpoint's state besides the weights, needed to resume exactly.
RESUME_FILE_PREFIXES = ("optimizer", "scheduler", "rng_state", "trainer_state", "training_args", "scaler")
# Written into each logged resume state: which checkpoints/<name> holds its adapter.
RESUME_POINTER = "checkpoint.json"
CHECKPOINT_PREFIX = "checkpoint-"
# DeepSpeed's checkpoint inside a trainer checkpoint: sharded weights, optimizer and scheduler state.
DEEPSPEED_STATE = "global_step*"
LM_HEAD = "lm_head"


# ---------------------------------------------------------------- configuration


TIED_LM_HEAD = ("untie", "tie")


def peft_lora_config(lora: LoraConfig, tied: bool = False):
    """A causal-LM ``peft.LoraConfig`` from the ``lora:`` section (A.4.1: r, alpha, targets incl. lm_head).

    ``tied``: the model ties lm_head to its input embeddings; ``lora.tied_lm_head`` says what training it means.
    """
    import peft

    # A deviation from A.4.1, kept because no supported configuration avoids it (trl 1.16.0, transformers 5.23):
    # - trl's SFTTrainer and DPOTrainer always compute log-probs with a fused LM head that multiplies the hidden
    #   states by `lm_head.weight` directly (trl/trainer/utils.py:1623-1643, add_fused_lm_head; installed by
    #   sft_trainer.py:1144 and dpo_trainer.py:960, called with fused_lm_head=True at sft_trainer.py:1611 and
    #   dpo_trainer.py:1299). No SFTConfig/DPOConfig field turns it off; both trainers refuse a PeftModel whose
    #   output embedding is a LoRA layer (sft_trainer.py:1066-1073, dpo_trainer.py:835-842).
    # - transformers' own Trainer and loss would train an lm_head LoRA in SFT, but DPO (Table 3) continues from
    #   the SFT adapter, and trl's DPOTrainer refuses that adapter: the study needs one layout for both stages.
    # So lm_head is trained in full as A.4.1 asks, through `modules_to_save` (a trainable copy saved inside the
    # adapter, never the base weights): on paper-7b 1.19B trainable parameters instead of 686M
    # (bench/lora_lm_head_params.py), and vLLM refuses adapters with modules_to_save. The other targets get rank-r LoRA.
    targets = [m for m in lora.target_modules if m != LM_HEAD]
    if lora.tied_lm_head not in TIED_LM_HEAD:
        raise UserError(f"lora.tied_lm_head {lora.tied_lm_head!r}: expected one of {', '.join(TIED_LM_HEAD)}")
    extra = {"ensure_weight_tying": True} if lora.tied_lm_head == "tie" and tied else {}
    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=[LM_HEAD] if LM_HEAD in lora.target_modules else None,
        bias="none",
        task_type="CAUSAL_LM",
        **extra,
    )


ADAPTER_DTYPES = ("float32", "compute")


def cast_adapter_weights(model, cfg: Config) -> None:
    """Trainable adapter weights in the compute dtype when ``lora.adapter_dtype: compute``.

    peft keeps them in float32 on a bf16 model; trl casts them the same way for QLoRA. Done before the
    optimizer exists, so its state takes the same dtype.
    """
    from reverse_align.models import torch_dtype

    if cfg.lora.adapter_dtype not in ADAPTER_DTYPES:
        raise UserError(f"lora.adapter_dtype {cfg.lora.adapter_dtype!r}: expected one of {', '.join(ADAPTER_DTYPES)}")
    if cfg.lora.adapter_dtype == "float32":
        return
    dtype = torch_dtype(cfg.model.dtype)
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.to(dtype)


def run_output_dir(run_id: str) -> Path:
    """Where a run's trainer checkpoints live locally (kept between a kill and a resume)."""
    from reverse_align.models import cache_dir

    return cache_dir() / "runs" / run_id


def uses_deepspeed(num_processes: int, deepspeed: str) -> bool:
    """Whether a run with these settings trains under DeepSpeed here (several processes on GPUs, a config given)."""
    import torch

    return bool(deepspeed) and num_processes > 1 and torch.cuda.is_available()


def device_training_args(num_processes: int, deepspeed: str, gradient_checkpointing: bool) -> dict[str, Any]:
    """TrainingArguments kwargs that depend on where the run executes.

    On GPUs: DeepSpeed (the shipped ZeRO-3 config) when several processes, and
    gradient checkpointing when asked. On CPU: DDP over gloo, no DeepSpeed, no
    gradient checkpointing (it only trades compute for GPU memory).
    """
    import torch

    on_gpu = torch.cuda.is_available()
    args: dict[str, Any] = {"gradient_checkpointing": bool(gradient_checkpointing and on_gpu)}
    if not on_gpu:
        args["use_cpu"] = True
    if num_processes > 1:
        args["ddp_backend"] = "nccl" if on_gpu else "gloo"
        # LoRA: every trainable parameter takes part in every step.
        args["ddp_find_unused_parameters"] = False
        if uses_deepspeed(num_processes, deepspeed):
            # Relative paths (configs/deepspeed/zero3.json) are the project's, wherever the run starts.
            path = Path(deepspeed)
            if not path.is_absolute() and not path.exists():
                path = Path(__file__).resolve().parents[2] / path
            args["deepspeed"] = str(path)
    return args


# ---------------------------------------------------------------- callbacks


class MlflowMetricsCallback(TrainerCallback):
    """Logs every trainer log into the active MLflow run at step = global step (rank 0 only).

    Used instead of transformers' MLflowCallback, which starts and ends runs of
    its own. Keys become ``train/<key>``; transformers' ``train_`` prefix is
    dropped (``train_tokens_per_second`` -> ``train/tokens_per_second``), and the
    end-of-training mean loss is ``train/mean_loss`` so it never collides with
    the per-step ``train/loss``. Steps at or below the last step already in the
    run (a resumed run) are skipped, so no step is logged twice.
    """

    RENAMES = {"train_loss": "mean_loss"}

    def __init__(self, prefix: str = tracking.METRIC_TRAIN_PREFIX):
        self.prefix = prefix
        self.logged_until = -1

    def _name(self, key: str) -> str:
        key = self.RENAMES.get(key, key)
        return self.prefix + (key[len("train_") :] if key.startswith("train_") else key)

    def on_train_begin(self, args, state, control, **kwargs):
        import mlflow

        if state.is_world_process_zero and mlflow.active_run() is not None:
            client = mlflow.MlflowClient()
            history = client.get_metric_history(mlflow.active_run().info.run_id, self._name("loss"))
            self.logged_until = max((m.step for m in history), default=-1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        if not state.is_world_process_zero or mlflow.active_run() is None or state.global_step <= self.logged_until:
            return
        metrics = {
            self._name(k): float(v)
            for k, v in (logs or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if metrics:
            mlflow.log_metrics(metrics, step=state.global_step)


class SaveEveryEpochsCallback(TrainerCallback):
    """Asks the trainer for a checkpoint at the end of every ``every``-th epoch (0 = never)."""

    def __init__(self, every: int):
        self.every = every

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.every > 0 and round(state.epoch or 0) % self.every == 0:
            control.should_save = True
        return control


def epoch_checkpoint_name(state) -> str:
    return f"epoch-{round(state.epoch or 0)}"


def step_checkpoint_name(state) -> str:
    return f"step-{state.global_step}"


KEEP = ("all", "last", "none")


def check_checkpoints_config(checkpoints: CheckpointsConfig) -> None:
    for key in ("keep_adapters", "keep_resume"):
        value = getattr(checkpoints, key)
        if value not in KEEP:
            raise UserError(f"checkpoints.{key} {value!r}: expected one of {', '.join(KEEP)}")


_CHECKPOINT_NUMBER = re.compile(r"(\d+)$")


def _number(name: str) -> int:
    """The step or epoch at the end of a checkpoint's name (``checkpoint-16``, ``epoch-2``, ``step-40``)."""
    match = _CHECKPOINT_NUMBER.search(name)
    return int(match.group(1)) if match else -1


def _logged(run_id: str, folder: str) -> list[str]:
    """Artifact paths of the folders directly under ``folder`` (``resume``, ``checkpoints``), oldest first."""
    import mlflow

    entries = mlflow.MlflowClient(tracking.tracking_uri()).list_artifacts(run_id, folder)
    return sorted((e.path for e in entries if e.is_dir), key=lambda p: _number(p.rsplit("/", 1)[-1]))


_CANNOT_DELETE_SAID: set[str] = set()


def delete_artifacts(run_id: str, paths: list[str]) -> list[str]:
    """Delete artifact paths of a run from its store; returns those deleted.

    MLflow's client has no delete call; the run's artifact repository does for local files and an
    mlflow server's served artifacts (``mlflow-artifacts:``, HTTP DELETE), and for most object stores.
    Where the repository has none (it inherits ``ArtifactRepository.delete_artifacts``, which does
    nothing) or the store refuses, nothing is deleted and that is said once per scheme on stderr:
    housekeeping never fails a training run.
    """
    import mlflow
    from mlflow.store.artifact.artifact_repo import ArtifactRepository
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if not paths:
        return []
    artifact_uri = mlflow.MlflowClient(tracking.tracking_uri()).get_run(run_id).info.artifact_uri
    scheme = artifact_uri.split(":", 1)[0] if ":" in artifact_uri else "file"
    repo = get_artifact_repository(artifact_uri, tracking_uri=tracking.tracking_uri())
    if type(repo).delete_artifacts is ArtifactRepository.delete_artifacts:
        _say_cannot_delete(scheme, f"{type(repo).__name__} cannot delete artifacts")
        return []
    deleted = []
    for path in paths:
        try:
            repo.delete_artifacts(path)
        except Exception as exc:  # noqa: BLE001 - every repository raises its own types
            _say_cannot_delete(scheme, f"{type(exc).__name__}: {exc}"[:300])
            break
        deleted.append(path)
    return deleted


def _say_cannot_delete(scheme: str, why: str) -> None:
    if scheme not in _CANNOT_DELETE_SAID:
        _CANNOT_DELETE_SAID.add(scheme)
        print(f"warning: older checkpoints stay in the {scheme} artifact store ({why})", file=sys.stderr)


def prune_checkpoints(run_id: str, checkpoints: CheckpointsConfig, finished: bool = False) -> list[str]:
    """Delete the run's logged resume states and adapter checkpoints that ``checkpoints`` does not keep.

    While training (``finished`` false) the newest of each stays, what a resume needs (all of them where a
    setting is ``all``); once the run has logged its final adapter, each setting as it says (a kept resume
    state keeps the adapter it points to). Returns the deleted artifact paths.
    """
    resume_rule = checkpoints.keep_resume
    adapter_rule = checkpoints.keep_adapters
    if not finished:
        resume_rule = "all" if resume_rule == "all" else "last"
        adapter_rule = "all" if "all" in (adapter_rule, resume_rule) else "last"
    elif KEEP.index(resume_rule) < KEEP.index(adapter_rule):
        adapter_rule = resume_rule  # the adapter a kept resume state points to stays
    doomed = []
    for folder, rule in ((tracking.ARTIFACT_RESUME, resume_rule), (tracking.ARTIFACT_CHECKPOINTS, adapter_rule)):
        if rule == "all":
            continue
        logged = _logged(run_id, folder)
        doomed += ([folder] if logged else []) if rule == "none" else logged[:-1]
    return delete_artifacts(run_id, doomed)


def finish_checkpoints(run_id: str, checkpoints: CheckpointsConfig) -> list[str]:
    """Once the run has logged its final adapter: keep of ``checkpoints/`` and ``resume/`` what the settings say."""
    return prune_checkpoints(run_id, checkpoints, finished=True)


class CheckpointLoggingCallback(TrainerCallback):
    """After each checkpoint save: its adapter -> ``checkpoints/<name>/``, its trainer state -> ``resume/``.

    ``name(state)`` names the checkpoint (``epoch-<n>`` for SFT, ``step-<n>`` for
    DPO). Only the adapter files go under ``checkpoints/`` (never base weights);
    the optimizer/scheduler/RNG/trainer state go under
    ``resume/checkpoint-<step>/`` with a pointer to the adapter, so a run can be
    resumed on a machine that lost the local output directory. Once both are
    logged, the older ones ``checkpoints`` (``cfg.checkpoints``) does not keep are
    deleted from the store (:func:`prune_checkpoints`): the newest pair is always
    complete in the store before anything is deleted.
    """

    def __init__(
        self,
        name: Callable[[Any], str] = step_checkpoint_name,
        log_resume_state: bool = True,
        checkpoints: CheckpointsConfig | None = None,
    ):
        self.name = name
        self.log_resume_state = log_resume_state
        self.checkpoints = checkpoints or CheckpointsConfig()

    def on_save(self, args, state, control, **kwargs):
        import mlflow

        if not state.is_world_process_zero or mlflow.active_run() is None:
            return
        checkpoint = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
        adapter_artifact = tracking.checkpoint_artifact(self.name(state))
        for file_name in ADAPTER_FILES:
            mlflow.log_artifact(str(checkpoint / file_name), artifact_path=adapter_artifact)
        if self.log_resume_state:
            with tempfile.TemporaryDirectory() as tmp:
                pointer = Path(tmp) / RESUME_POINTER
                pointer.write_text(json.dumps({"step": state.global_step, "adapter": adapter_artifact}))
                resume_artifact = tracking.resume_artifact(checkpoint.name)
                mlflow.log_artifact(str(pointer), artifact_path=resume_artifact)
                for path in sorted(checkpoint.iterdir()):
                    if path.is_file() and path.name.startswith(RESUME_FILE_PREFIXES):
                        mlflow.log_artifact(str(path), artifact_path=resume_artifact)
        prune_checkpoints(mlflow.active_run().info.run_id, self.checkpoints)


# ---------------------------------------------------------------- resume


def _checkpoint_step(name: str) -> int:
    try:
        return int(name.removeprefix(CHECKPOINT_PREFIX))
    except ValueError:
        return -1


def _complete(checkpoint: Path, deepspeed: bool = False) -> bool:
    """A checkpoint a kill did not cut short: adapter and trainer state are both written (and, for a
    DeepSpeed run, DeepSpeed's own ``global_step<n>/`` folder, which transformers resumes from)."""
    written = all((checkpoint / f).is_file() for f in (*ADAPTER_FILES, "trainer_state.json"))
    return written and (not deepspeed or any(p.is_dir() for p in checkpoint.glob(DEEPSPEED_STATE)))


def resume_checkpoint(output_dir: Path, run_id: str, deepspeed: bool = False) -> str | None:
    """The newest complete local checkpoint, else the newest one logged to the run (downloaded).

    None when the run has no checkpoint yet (training starts from scratch). ``deepspeed``: the run
    resumes under DeepSpeed (:func:`uses_deepspeed`), whose trainer loads model, optimizer and scheduler
    from the checkpoint's ``global_step<n>/`` shards only (transformers' ``deepspeed_load_checkpoint``
    raises without one). The store keeps the adapter and trainer state, not those shards (tens of GB
    for 7B under ZeRO-3), so a DeepSpeed run resumes from its local checkpoints only; when only the
    store has one, that is bad input, said in one line with the ways out.
    """
    import mlflow

    local = sorted(
        (p for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and _complete(p, deepspeed)),
        key=lambda p: _checkpoint_step(p.name),
    )
    if local:
        return str(local[-1])
    client = mlflow.MlflowClient(tracking.tracking_uri())
    logged = [a.path.split("/")[-1] for a in client.list_artifacts(run_id, tracking.ARTIFACT_RESUME) if a.is_dir]
    logged = sorted((n for n in logged if _checkpoint_step(n) >= 0), key=_checkpoint_step)
    if not logged:
        return None
    name = logged[-1]
    if deepspeed:
        raise UserError(
            f"--run_id {run_id}: its last checkpoint ({name}) is in the MLflow store only, which holds the adapter and "
            f"trainer state but not DeepSpeed's ZeRO-3 shards ({DEEPSPEED_STATE.rstrip('*')}<n>/) that a DeepSpeed "
            f"run resumes from; resume on the machine whose {output_dir} holds them, or start a new run (no --run_id)"
        )
    target = Path(output_dir) / name
    partial = Path(output_dir) / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tracking.download_artifact(run_id, tracking.resume_artifact(name), f"{tmp}/state"))
        pointer = json.loads((state_dir / RESUME_POINTER).read_text())
        adapter_dir = Path(tracking.download_artifact(run_id, pointer["adapter"], f"{tmp}/adapter"))
        for path in [*state_dir.iterdir(), *adapter_dir.iterdir()]:
            shutil.copy2(path, partial / path.name)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return str(target)


def resumed_step(checkpoint: str | None) -> int:
    return 0 if checkpoint is None else _checkpoint_step(Path(checkpoint).name)


# ---------------------------------------------------------------- final model


def save_final_adapter(trainer, output_dir: Path) -> Path:
    """Save the trained adapter to ``output_dir/final`` (call on every rank: ZeRO-3 gathers the shards)."""
    final = Path(output_dir) / "final"
    trainer.save_model(str(final))
    return final


def load_adapter_model(cfg: Config, base_model_path: str, adapter_dir: Path):
    """The base model with a saved adapter on top, as every later stage loads it (checked: see below)."""
    from peft import PeftModel

    from reverse_align.models import load_model

    model = PeftModel.from_pretrained(load_model(cfg, base_model_path), str(adapter_dir))
    check_saved_adapter(adapter_dir, model)
    return model


def check_saved_adapter(adapter_dir: Path, model) -> None:
    """The saved adapter holds every tensor the reloaded model's adapter has, with its shape, none empty.

    A ZeRO-3 save where a rank skipped the gather writes empty (numel 0) shards, and peft only warns
    about missing keys; either would silently log an untrained or partial adapter.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(Path(adapter_dir) / ADAPTER_FILES[1]))
    expected = get_peft_model_state_dict(model)
    empty = sorted(k for k, v in saved.items() if v.numel() == 0)
    missing = sorted(set(expected) - set(saved))
    wrong = sorted(k for k in set(expected) & set(saved) if tuple(expected[k].shape) != tuple(saved[k].shape))
    if empty or missing or wrong or not saved:
        raise RuntimeError(
            f"saved adapter {adapter_dir} is incomplete: {len(empty)} empty, {len(missing)} missing, "
            f"{len(wrong)} misshapen tensors (first: {(empty + missing + wrong + ['no tensors'])[0]})"
        )


def log_final_adapter(model, tokenizer, base_model_path: str) -> None:
    """A trained PeftModel -> ``adapter/`` (PEFT, safetensors) and the MLflow model ``model``.

    The MLflow model is mlflow.transformers' PEFT format: the adapter plus a
    reference to the base model. A local base directory is referenced by path
    (``base_model_path``: loads offline, as long as the directory exists); a hub
    id is referenced by name and revision. Neither copies the base weights.
    """
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for file_name in ADAPTER_FILES:
            mlflow.log_artifact(str(Path(tmp) / file_name), artifact_path=tracking.ARTIFACT_ADAPTER)
    local_base = base_model_path if Path(base_model_path).is_dir() else None
    mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name=tracking.ARTIFACT_MODEL,
        task="text-generation",
        base_model_path=local_base,
        # Given explicitly: mlflow's inference of them imports torchvision, which is not a dependency.
        pip_requirements=_pinned(("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors")),
    )


def _pinned(packages: tuple[str, ...]) -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in packages]


# ---------------------------------------------------------------- multi-process


def is_worker() -> bool:
    """True inside a process started by torchrun (or accelerate launch)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def config_from_dict(raw: dict) -> Config:
    hints = typing.get_type_hints(Config)
    sections = {name: hints[name](**values) for name, values in raw.items() if name != "preset"}
    return Config(preset=raw["preset"], **sections)


def launch_workers(target: str, cfg: Config, kwargs: dict[str, Any], num_processes: int) -> None:
    """Run ``target(cfg, **kwargs)`` ("module:function") in ``num_processes`` torchrun processes.

    Blocks until they exit; raises RuntimeError if any failed. The workers see
    RANK/WORLD_SIZE, so Trainer sets up DDP (gloo on CPU) or DeepSpeed by itself.
    CPU threads are split between the processes so they do not oversubscribe.
    """
    spec = {"target": target, "config": dataclasses.asdict(cfg), "kwargs": kwargs}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
            "-m", "reverse_align.train.common", str(spec_path),
        ]  # fmt: skip
        returncode = subprocess.run(command, env=env).returncode
    if returncode != 0:
        raise RuntimeError(f"{num_processes} training processes exited with code {returncode}")


def worker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    module_name, func_name = spec["target"].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    func(config_from_dict(spec["config"]), **spec["kwargs"])


if __name__ == "__main__":
    worker_main(sys.argv[1])
