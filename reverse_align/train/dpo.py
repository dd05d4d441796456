"""The `dpo` stage: DPO over the pairs of D with the SFT model as the frozen reference (PROTOCOL §3).

Two modes, both one LoRA adapter on the original base model, both through
trl's ``DPOTrainer`` configured, not subclassed:

- continuation (``sft_run_id`` given, Table 2): the SFT adapter is loaded as the
  trainable ``default`` adapter. trl sees a ``PeftModel`` with no ``ref_model``
  and no ``peft_config`` and adds a frozen adapter ``ref`` that is a copy of
  ``default`` (trl/trainer/dpo_trainer.py, "create a 'ref' adapter"); the
  reference log-probs are computed by switching to ``ref``
  (``use_adapter(model, "ref")``), never by disabling adapters, so the
  reference is the SFT model and the base weights are held once.
- direct (empty ``sft_run_id``, Table 4): trl wraps the base model with a fresh
  LoRA adapter from ``cfg.lora``; the reference is the base model (adapters
  disabled), which is the model DPO starts from.

Logs trl's DPO metrics (``train/rewards/*``, ``train/logps/*``), adapter
checkpoints under ``checkpoints/step-<n>/`` and the final ``adapter/``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.data.invert import load_run_records
from reverse_align.errors import UserError
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
    forward = load_run_records(data_run_id, tracking.ARTIFACT_FORWARD)
    try:
        reverse = load_run_records(data_run_id, tracking.ARTIFACT_REVERSE)
    except Exception:  # noqa: BLE001 - mlflow raises several types for a missing artifact
        raise UserError(f"--data_run_id {data_run_id}: has no {tracking.ARTIFACT_REVERSE}") from None
    pairs = preference_pairs(forward, reverse, direction)
    return fit_prompts(pairs, tokenizer, cfg.dpo.max_prompt_length)


def dpo_arguments(cfg: Config, output_dir: str, report_to: str = "none"):
    """trl's DPOConfig from ``cfg.dpo``: every paper number passed through (PROTOCOL §7: the released script did not)."""
    import torch
    from trl import DPOConfig

    d = cfg.dpo
    save_steps = d.save_every_steps if d.save_every_steps > 0 else d.max_steps
    return DPOConfig(
        output_dir=output_dir,
        beta=d.beta,
        learning_rate=d.learning_rate,
        lr_scheduler_type=d.lr_scheduler,
        warmup_steps=d.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps in transformers 5
        max_steps=d.max_steps,
        per_device_train_batch_size=d.per_device_batch_size,
        gradient_accumulation_steps=d.gradient_accumulation_steps,
        bf16=d.bf16,
        max_length=d.max_length,
        optim=d.optim,
        precompute_ref_log_probs=d.precompute_ref_log_probs,
        # trl defaults to True; the preset decides (A.4.1 on GPU, off on CPU).
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        save_strategy="steps",
        save_steps=save_steps,
        logging_steps=d.logging_steps,
        seed=cfg.data.seed,
        data_seed=cfg.data.seed,
        deepspeed=(d.deepspeed or None) if torch.cuda.is_available() else None,
        use_cpu=not torch.cuda.is_available(),
        report_to=report_to,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def lora_config(cfg: Config):
    """A fresh LoRA adapter for direct DPO.

    trl computes log-probs from ``lm_head.weight`` directly and refuses a LoRA
    layer on ``lm_head`` (it would never train), so that target is dropped here.
    TODO(common.py): use the shared helper once the SFT stage lands, so SFT and direct DPO agree.
    """
    from peft import LoraConfig

    targets = [m for m in cfg.lora.target_modules if m != "lm_head"]
    return LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=targets,
        task_type="CAUSAL_LM",
    )


def policy_model(cfg: Config, sft_adapter_dir: str | None):
    """(model, peft_config) for DPOTrainer.

    With an SFT adapter: a PeftModel whose trainable ``default`` adapter is the
    SFT adapter and no peft_config, which makes trl copy it to the frozen ``ref``.
    Without: the bare base model and a LoRA config, which makes trl add a fresh
    adapter and use the base model (adapters disabled) as the reference.
    """
    from peft import PeftModel

    from reverse_align.models import load_model

    base = load_model(cfg)
    if sft_adapter_dir is None:
        return base, lora_config(cfg)
    model = PeftModel.from_pretrained(base, sft_adapter_dir, adapter_name=POLICY_ADAPTER, is_trainable=True)
    return model, None


def build_trainer(cfg: Config, model, peft_config, dataset, tokenizer, output_dir: str, callbacks=(), report_to="none"):
    from trl import DPOTrainer

    return DPOTrainer(
        model=model,
        ref_model=None,
        args=dpo_arguments(cfg, output_dir, report_to=report_to),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )


def reference_adapter_is_frozen_copy(model) -> bool:
    """True when the PeftModel holds a ``ref`` adapter with no trainable parameter."""
    names = [n for n, _ in model.named_parameters() if f".{REFERENCE_ADAPTER}." in n]
    return bool(names) and not any(p.requires_grad for n, p in model.named_parameters() if n in set(names))


def save_policy_adapter(model, directory: str | Path) -> Path:
    """Save only the trained ``default`` adapter (never the ``ref`` copy) in PEFT format, safetensors."""
    directory = Path(directory)
    model.save_pretrained(directory, selected_adapters=[POLICY_ADAPTER], safe_serialization=True)
    return directory


def _mlflow_callback():
    """Trainer logs into the active MLflow run at the optimizer step; adapter checkpoints on save.

    TODO(common.py): replace with the shared SFT/DPO callback once it lands.
    """
    import mlflow
    from transformers import TrainerCallback

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numbers = {tracking.metric_train(k): float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if numbers and state.is_world_process_zero:
                mlflow.log_metrics(numbers, step=state.global_step)

        def on_save(self, args, state, control, model=None, **kwargs):
            if not state.is_world_process_zero:
                return
            with tempfile.TemporaryDirectory() as tmp:
                save_policy_adapter(model, tmp)
                mlflow.log_artifacts(tmp, tracking.checkpoint_artifact(f"step-{state.global_step}"))

    return _Log()


def run_dpo(cfg: Config, sft_run_id: str = "", data_run_id: str = "", direction: str = BOTH, run_id: str = "") -> str:
    import mlflow

    from reverse_align.models import load_tokenizer

    tracking.setup()
    check_dpo_config(cfg)
    check_direction(direction)
    sft_run = tracking.require_run(sft_run_id, "sft", "sft_run_id") if sft_run_id else None
    require_pairs_run(data_run_id)
    params = {
        "dpo.direction": direction,
        "dpo.reference": "sft" if sft_run else "base",
        "sft.mix": sft_run.data.params.get("sft.mix", "") if sft_run else "none",
    }
    upstream = {"invert": data_run_id, "sft": sft_run_id}
    with tracking.stage_run(STAGE, cfg, upstream=upstream, params=params, run_id=run_id or None) as run:
        tokenizer = load_tokenizer(cfg)
        pairs, cut = load_pairs(cfg, data_run_id, direction, tokenizer)
        mlflow.log_metrics({"dpo/pairs": len(pairs), "dpo/prompts_truncated": cut})
        with tempfile.TemporaryDirectory() as tmp:
            adapter_dir = None
            if sft_run:
                adapter_dir = tracking.download_artifact(sft_run_id, tracking.ARTIFACT_ADAPTER, tmp)
            model, peft_config = policy_model(cfg, adapter_dir)
            trainer = build_trainer(
                cfg, model, peft_config, preference_dataset(pairs), tokenizer, str(Path(tmp) / "trainer"),
                callbacks=[_mlflow_callback()],
            )
            if sft_run and not reference_adapter_is_frozen_copy(trainer.model):
                raise RuntimeError("trl did not create the frozen 'ref' adapter; the reference would not be the SFT model")
            trainer.train()
            final = save_policy_adapter(trainer.model, Path(tmp) / tracking.ARTIFACT_ADAPTER)
            tokenizer.save_pretrained(final)
            mlflow.log_artifacts(str(final), tracking.ARTIFACT_ADAPTER)
        print(f"dpo run {run.info.run_id}: {len(pairs)} pairs, reference = {'sft ' + sft_run_id if sft_run else 'base'}")
        return run.info.run_id
