"""The `dpo` stage: DPO over the pairs of D with the SFT model as the frozen reference (PROTOCOL §3).

Two modes, both one LoRA adapter on the original base model, both through
trl's ``DPOTrainer`` configured, not subclassed:

- continuation (``sft_run_id`` given, Table 3): the SFT adapter is loaded as the
  trainable ``default`` adapter. trl sees a ``PeftModel`` with no ``ref_model``
  and no ``peft_config`` and adds a frozen adapter ``ref`` that is a copy of
  ``default`` (trl/trainer/dpo_trainer.py, "create a 'ref' adapter"); the
  reference log-probs are computed by switching to ``ref``
  (``use_adapter(model, "ref")``), never by disabling adapters, so the
  reference is the SFT model and the base weights are held once.
- direct (empty ``sft_run_id``, Table 4): trl wraps the base model with a fresh
  LoRA adapter from ``cfg.lora``; the reference is the base model (adapters
  disabled), which is the model DPO starts from.

One MLflow run per DPO, tagged with its upstream sft and invert runs. It logs:
params ``dpo.direction``, ``dpo.reference`` (``sft`` or ``base``), ``sft.mix``;
``dpo/pairs`` and ``dpo/prompts_truncated``; trl's DPO metrics as ``train/*``
at step = optimizer step (``train/rewards/{chosen,rejected,margins,accuracies}``,
``train/logps/{chosen,rejected}``, ``train/loss``); adapter checkpoints under
``checkpoints/step-<n>/`` (or ``epoch-<n>`` with ``dpo.save_every_epochs``) and
trainer state under ``resume/`` (the newest kept while training, what ``cfg.checkpoints``
says once finished); the final ``adapter/`` and MLflow model
``model``. ``--run_id`` of an unfinished run resumes it from its last
checkpoint; ``--num_processes N`` trains data-parallel via torchrun.
"""

from __future__ import annotations

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.data.invert import load_run_records
from reverse_align.errors import UserError
from reverse_align.models import require_same_base
from reverse_align.train import common
from reverse_align.train.mixes import train_set_artifacts
from reverse_align.train.preferences import BOTH, check_direction, fit_prompts, preference_dataset, preference_pairs

STAGE = "dpo"
# Adapter names inside the PeftModel: trl trains "default" and, for a PeftModel it is given, copies it to "ref".
POLICY_ADAPTER = "default"
REFERENCE_ADAPTER = "ref"


def check_dpo_config(cfg: Config) -> None:
    d = cfg.dpo
    if not d.beta > 0:
        raise UserError(f"dpo.beta must be > 0, got {d.beta}")
    if d.max_steps <= 0:
        raise UserError(f"dpo.max_steps must be > 0, got {d.max_steps}")
    if d.num_processes < 1:
        raise UserError(f"--num_processes {d.num_processes}: expected 1 or more")
    if d.max_prompt_length <= 0 or d.max_length <= d.max_prompt_length:
        raise UserError(
            f"dpo.max_length ({d.max_length}) must exceed dpo.max_prompt_length ({d.max_prompt_length}) > 0"
        )


def require_pairs_run(data_run_id: str):
    """The invert run holding D; a data run (forward items only) is refused by name."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if data_run_id:
        try:
            run = mlflow.MlflowClient(tracking.tracking_uri()).get_run(data_run_id)
        except MlflowException:
            run = None
        if run is not None and run.data.tags.get(tracking.TAG_STAGE) == "data":
            raise UserError(
                f"--data_run_id {data_run_id}: is a data run without reverses; pass the invert run made from it"
            )
    return tracking.require_run(data_run_id, "invert", "data_run_id")


def load_pairs(cfg: Config, data_run_id: str, direction: str, tokenizer) -> tuple[list[dict], int]:
    forward_artifact, reverse_artifact = train_set_artifacts(cfg.dpo.train_set)
    forward = load_run_records(data_run_id, forward_artifact)
    try:
        reverse = load_run_records(data_run_id, reverse_artifact)
    except Exception:  # noqa: BLE001 - mlflow raises several types for a missing artifact
        raise UserError(f"--data_run_id {data_run_id}: has no {reverse_artifact}") from None
    pairs = preference_pairs(forward, reverse, direction)
    return fit_prompts(pairs, tokenizer, cfg.dpo.max_prompt_length)


def dpo_arguments(cfg: Config, output_dir):
    """trl's DPOConfig from ``cfg.dpo``: every paper number passed through (PROTOCOL §7: the released script did not).

    Create before loading the model (DeepSpeed ZeRO-3 init).
    """
    from trl import DPOConfig

    d = cfg.dpo
    by_epochs = d.save_every_epochs > 0
    return DPOConfig(
        output_dir=str(output_dir),
        beta=d.beta,
        learning_rate=d.learning_rate,
        lr_scheduler_type=d.lr_scheduler,
        warmup_steps=d.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps in transformers 5
        max_steps=d.max_steps,
        per_device_train_batch_size=d.per_device_batch_size,
        gradient_accumulation_steps=d.gradient_accumulation_steps,
        optim=d.optim,
        bf16=d.bf16,
        fp16=False,
        # Prompt + completion, in tokens; the prompt was already cut to dpo.max_prompt_length (preferences.py).
        max_length=d.max_length,
        precompute_ref_log_probs=d.precompute_ref_log_probs,
        seed=d.seed,
        data_seed=d.seed,
        logging_steps=d.logging_steps,
        # Checkpoints every N steps, or every N epochs through SaveEveryEpochsCallback.
        save_strategy="no" if by_epochs or d.save_every_steps <= 0 else "steps",
        save_steps=max(1, d.save_every_steps),
        save_total_limit=2,
        # Metrics go through common.MlflowMetricsCallback into the stage's run, nowhere else.
        report_to=[],
        disable_tqdm=True,
        # trl defaults gradient_checkpointing to True; device_training_args decides from the preset and hardware.
        **common.device_training_args(d.num_processes, d.deepspeed, cfg.model.gradient_checkpointing),
    )


def policy_model(cfg: Config, sft_adapter_dir: str | None, base_path: str | None = None):
    """(model, peft_config) for DPOTrainer.

    With an SFT adapter: a PeftModel whose trainable ``default`` adapter is the
    SFT adapter and no peft_config, which makes trl copy it to the frozen
    ``ref`` adapter (LoRA layers and the ``modules_to_save`` lm_head alike).
    Without: the bare base model and the LoRA config SFT uses, which makes trl
    add a fresh adapter and use the base model (adapters disabled) as reference.
    """
    from peft import PeftModel

    from reverse_align.models import load_model

    base = load_model(cfg, base_path)
    if sft_adapter_dir is None:
        return base, common.peft_lora_config(cfg.lora, tied=base.config.tie_word_embeddings)
    model = PeftModel.from_pretrained(base, sft_adapter_dir, adapter_name=POLICY_ADAPTER, is_trainable=True)
    return model, None


def checkpoint_callbacks(cfg: Config) -> list:
    if cfg.dpo.save_every_epochs > 0:
        return [
            common.SaveEveryEpochsCallback(cfg.dpo.save_every_epochs),
            common.CheckpointLoggingCallback(common.epoch_checkpoint_name, checkpoints=cfg.checkpoints),
        ]
    return [common.CheckpointLoggingCallback(common.step_checkpoint_name, checkpoints=cfg.checkpoints)]


def build_trainer(model, peft_config, dataset, tokenizer, args, callbacks=()):
    from trl import DPOTrainer

    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    if peft_config is None and not reference_adapter_is_frozen_copy(trainer.model):
        # trl falls back to the base model as reference in some setups (see its source); never silently here.
        raise RuntimeError("trl did not create the frozen 'ref' adapter: the reference would not be the SFT model")
    return trainer


def reference_adapter_is_frozen_copy(model) -> bool:
    """True when the PeftModel holds a ``ref`` adapter and none of its parameters is trainable."""
    ref = [p for n, p in model.named_parameters() if f".{REFERENCE_ADAPTER}." in n]
    return bool(ref) and not any(p.requires_grad for p in ref)


# ---------------------------------------------------------------- stage


def train(
    cfg: Config, sft_run_id: str, data_run_id: str, direction: str, run_id: str, resume_from: str | None = None,
    callbacks=(),
) -> None:
    """Train; on rank 0 (which holds the active run) log counts, the final adapter and model."""
    import tempfile

    import mlflow

    from reverse_align.models import load_tokenizer, resolve_base_model

    output_dir = common.run_output_dir(run_id)
    args = dpo_arguments(cfg, output_dir)  # before the model: DeepSpeed ZeRO-3 init
    base_path = resolve_base_model(cfg)
    tokenizer = load_tokenizer(cfg, base_path)
    pairs, cut = load_pairs(cfg, data_run_id, direction, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = tracking.download_artifact(sft_run_id, tracking.ARTIFACT_ADAPTER, tmp) if sft_run_id else None
        model, peft_config = policy_model(cfg, adapter_dir, base_path)
    callbacks = [common.MlflowMetricsCallback(), *checkpoint_callbacks(cfg), *callbacks]
    trainer = build_trainer(model, peft_config, preference_dataset(pairs), tokenizer, args, callbacks)
    common.cast_adapter_weights(trainer.model, cfg)
    trainer.train(resume_from_checkpoint=resume_from)
    # Every rank takes part (ZeRO-3 gathers the shards); the policy adapter "default" lands at the top of final/.
    final_dir = common.save_final_adapter(trainer, output_dir)
    if not common.is_main_process():
        return
    mlflow.log_metrics(
        {
            tracking.METRIC_DPO_PAIRS: len(pairs),
            tracking.METRIC_DPO_PROMPTS_TRUNCATED: cut,
            tracking.METRIC_DPO_GLOBAL_STEPS: trainer.state.global_step,
        }
    )
    # Reloaded from what was saved and checked, as SFT does: the policy adapter alone on the original base
    # (trl's frozen "ref" copy is not part of the result), never the trainer's possibly sharded copy.
    final = common.load_adapter_model(cfg, base_path, final_dir)
    common.log_final_adapter(final, tokenizer, base_path)
    common.finish_checkpoints(run_id, cfg.checkpoints)


def train_in_worker(
    cfg: Config, sft_run_id: str, data_run_id: str, direction: str, run_id: str, resume_from: str | None = None
) -> None:
    """One torchrun process of a multi-process DPO; rank 0 logs into the run its launcher opened."""
    import mlflow

    if common.is_main_process():
        tracking.setup()
        mlflow.start_run(run_id=run_id)
    train(cfg, sft_run_id, data_run_id, direction, run_id, resume_from)


def _check_resumable(run_id: str, cfg: Config, sft_run_id: str, data_run_id: str, direction: str) -> None:
    """Continue only the run of the same SFT and invert runs, direction and config (dpo, lora, model, ...)."""
    run = tracking.require_resumable_run(run_id, STAGE)
    tracking.require_same_inputs(run, STAGE, cfg, {"sft": sft_run_id, "invert": data_run_id})
    was = run.data.params.get("dpo.direction", direction)
    if was != direction:
        raise UserError(f"--run_id {run_id}: was started with --direction {was}, not {direction}")


def run_dpo(
    cfg: Config, sft_run_id: str = "", data_run_id: str = "", direction: str = BOTH, run_id: str = "", callbacks=()
) -> str:
    """The stage. ``callbacks`` are extra TrainerCallbacks (single-process runs)."""
    import mlflow

    tracking.setup()
    direction = check_direction(direction or BOTH)
    check_dpo_config(cfg)
    common.check_checkpoints_config(cfg.checkpoints)
    sft_run = tracking.require_run(sft_run_id, "sft", "sft_run_id") if sft_run_id else None
    if sft_run:
        require_same_base(cfg, sft_run, "--sft_run_id")
    require_pairs_run(data_run_id)
    resuming = bool(run_id)
    if resuming:
        _check_resumable(run_id, cfg, sft_run_id, data_run_id, direction)
    params = {
        "dpo.direction": direction,
        "dpo.reference": "sft" if sft_run else "base",
        "sft.mix": sft_run.data.params.get("sft.mix", "") if sft_run else "none",
    }
    sft_data = sft_run.data.tags.get(tracking.tag_upstream("invert")) if sft_run else None
    if sft_data and sft_data != data_run_id:
        print(f"note: sft run {sft_run_id} was trained on invert run {sft_data}; DPO pairs come from {data_run_id}")
    upstream = {"invert": data_run_id, "sft": sft_run_id}
    with tracking.stage_run(STAGE, cfg, upstream=upstream, params=params, run_id=run_id or None) as run:
        run_id = run.info.run_id
        checkpoint = None
        if resuming:
            checkpoint = common.resume_checkpoint(
                common.run_output_dir(run_id), run_id, common.uses_deepspeed(cfg.dpo.num_processes, cfg.dpo.deepspeed)
            )
            mlflow.set_tag(tracking.TAG_RESUMED_FROM_STEP, common.resumed_step(checkpoint))
        kwargs = {
            "sft_run_id": sft_run_id, "data_run_id": data_run_id, "direction": direction, "run_id": run_id,
            "resume_from": checkpoint,
        }  # fmt: skip
        if cfg.dpo.num_processes > 1:
            common.launch_workers("reverse_align.train.dpo:train_in_worker", cfg, kwargs, cfg.dpo.num_processes)
        else:
            train(cfg, callbacks=callbacks, **kwargs)
        reference = f"sft run {sft_run_id}" if sft_run else "the base model"
        print(f"dpo run {run_id}: direction {direction}, reference = {reference}")
        return run_id
