"""The `sft` stage: LoRA SFT on one of the four mixes of an invert run (Table 1, PROTOCOL §1-2).

trl's SFTTrainer with a peft LoraConfig, configured from ``cfg.sft``/``cfg.lora``.
Each example is the record's chat (formatting.chat_messages, the model's chat
template), tokenized here so the loss mask and the token-based truncation are
explicit: labels are -100 on the prompt, the loss is on the assistant turn
(``<|im_start|>think\\n{thinking}\\n<|im_start|>answer\\n{attempt}<|im_end|>``)
only. An example longer than ``model.max_length`` tokens has its thinking cut to fit
(never its answer) or is dropped when question + answer alone do not fit (``data.lengths``).
Batches are padding-free (one flattened sequence, exact for a per-token loss).

One MLflow run per SFT. It logs: params ``sft.mix``/``sft.data_run_id`` and the
mix counts; ``mix/composition.json``; ``train/*`` curves at step = optimizer
step; ``checkpoints/epoch-<n>/`` (adapter only) and ``resume/checkpoint-<step>/``
(trainer state) per saved epoch, of which the store keeps the newest while training and
what ``cfg.checkpoints`` says once finished; ``adapter/`` and the MLflow model ``model``;
``sft/exact_match/<direction>`` (+ ``sft/base_exact_match/...``) on held-out
synthetic problems. ``--run_id`` of an unfinished run resumes it from its last
checkpoint. ``--num_processes N`` trains data-parallel via torchrun; only rank 0
logs.
"""

from __future__ import annotations

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.data import lengths as length_rule
from reverse_align.data.schema import Record
from reverse_align.errors import UserError
from reverse_align.formatting import chat_messages, prompt_messages
from reverse_align.train import common
from reverse_align.train.mixes import MIXES, compose_mix, composition, train_set_artifacts

STAGE = "sft"
TAG_STOPPED_AT_STEP = "reverse_align.stopped_at_step"


# ---------------------------------------------------------------- data


def load_mix(data_run_id: str, mix: str, seed: int, train_set: str = "all") -> list[Record]:
    from reverse_align.data.invert import load_run_records

    forward_artifact, reverse_artifact = train_set_artifacts(train_set)
    forward = load_run_records(data_run_id, forward_artifact)
    reverse = load_run_records(data_run_id, reverse_artifact)
    return compose_mix(forward, reverse, mix, seed)


def tokenize_example(tokenizer, record: Record) -> dict:
    """``input_ids`` of the whole chat and ``completion_mask``: 1 on the assistant turn, 0 on the prompt."""
    prompt = tokenizer.apply_chat_template(
        prompt_messages(record.question), add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    full = tokenizer.apply_chat_template(chat_messages(record), tokenize=True, return_dict=True)["input_ids"]
    if full[: len(prompt)] != prompt:
        raise UserError(f"record {record.id}: the chat template renders the prompt differently inside the full chat")
    return {"input_ids": full, "completion_mask": [0] * len(prompt) + [1] * (len(full) - len(prompt))}


def build_dataset(tokenizer, records: list[Record], max_length: int):
    """Tokenized examples of at most ``max_length`` tokens, as a ``datasets.Dataset``.

    A longer example goes through the length rule (``data.lengths.fit``): its
    thinking is cut to fit, never its answer; one whose question + answer alone
    do not fit is dropped. Also returns counts: ``examples`` kept,
    ``thinking_cut``, ``dropped``.
    """
    from datasets import Dataset

    measure = length_rule.TokenizerLengths(tokenizer)
    rows, counts = [], {length_rule.THINKING_CUT: 0, length_rule.DROPPED: 0}
    for record in records:
        row = tokenize_example(tokenizer, record)
        if len(row["input_ids"]) > max_length:
            fitted, outcome = length_rule.fit(record, measure, max_length)
            counts[outcome] += 1
            if fitted is None:
                continue
            row = tokenize_example(tokenizer, fitted)
        rows.append(row)
    return Dataset.from_list(rows), {"examples": len(rows), **counts}


def pad_to_multiple(dataset, multiple: int, pad_token_id: int):
    """Each example padded at its end to a multiple of ``multiple`` tokens, with the loss off on the padding.

    In a padding-free batch the padding keeps counting positions, so it belongs to its own example, after
    every real token: causal attention keeps it from changing any real token's output or loss. What it buys
    is fewer distinct sequence lengths (sft.sequence_length_multiple).
    """
    if multiple <= 1:
        return dataset

    def pad(row):
        extra = -len(row["input_ids"]) % multiple
        return {"input_ids": row["input_ids"] + [pad_token_id] * extra, "completion_mask": row["completion_mask"] + [0] * extra}

    return dataset.map(pad, desc=f"padding each example to a multiple of {multiple} tokens")


# ---------------------------------------------------------------- trainer


def sft_args(cfg: Config, output_dir):
    """trl SFTConfig from the ``sft:`` section; create before loading the model (DeepSpeed ZeRO-3 init)."""
    from trl import SFTConfig

    s = cfg.sft
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=s.epochs,
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=s.weight_decay,
        adam_beta1=s.adam_beta1,
        adam_beta2=s.adam_beta2,
        optim=s.optim,
        max_grad_norm=s.max_grad_norm,
        per_device_train_batch_size=s.per_device_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        bf16=s.bf16,
        fp16=False,
        seed=s.seed,
        data_seed=s.seed,
        logging_steps=s.logging_steps,
        # Checkpoints are asked for by SaveEveryEpochsCallback (every N epochs).
        save_strategy="no",
        save_total_limit=2,
        # Metrics go through MlflowMetricsCallback into the stage's run, nowhere else.
        report_to=[],
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        # Examples arrive tokenized and already cut to model.max_length (token-based truncation);
        # trl builds labels from completion_mask: loss on the assistant turn only.
        max_length=None,
        completion_only_loss=True,
        padding_free=s.padding_free,
        use_liger_kernel=s.use_liger_kernel,
        **common.device_training_args(s.num_processes, s.deepspeed, cfg.model.gradient_checkpointing),
    )


def build_trainer(cfg: Config, records: list[Record], output_dir, callbacks=(), base_path: str | None = None):
    """SFTTrainer with a fresh LoRA adapter on the base model (the preset's, or ``base_path``);
    returns (trainer, tokenizer, base path, data stats)."""
    from trl import SFTTrainer

    from reverse_align.models import load_model, load_tokenizer, resolve_base_model

    args = sft_args(cfg, output_dir)
    base_path = base_path or resolve_base_model(cfg)
    tokenizer = load_tokenizer(cfg, base_path)
    dataset, stats = build_dataset(tokenizer, records, cfg.model.max_length)
    dataset = pad_to_multiple(dataset, cfg.sft.sequence_length_multiple, tokenizer.pad_token_id)
    model = load_model(cfg, base_path)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=common.peft_lora_config(cfg.lora, tied=model.config.tie_word_embeddings),
        callbacks=[
            common.MlflowMetricsCallback(),
            common.SaveEveryEpochsCallback(cfg.sft.save_every_epochs),
            common.CheckpointLoggingCallback(common.epoch_checkpoint_name, checkpoints=cfg.checkpoints),
            *callbacks,
        ],
    )
    common.cast_adapter_weights(trainer.model, cfg)
    return trainer, tokenizer, base_path, stats


# ---------------------------------------------------------------- quick check


def exact_match_check(cfg: Config, model, tokenizer, data_run_id: str) -> dict[str, float]:
    """Greedy exact match on the invert run's held-out synthetic problems, adapter on and off."""
    import mlflow

    from reverse_align.data.invert import load_run_records
    from reverse_align.eval.generation import greedy_accuracy

    if cfg.sft.exact_match_limit <= 0:
        return {}
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(data_run_id, "data")}
    metrics = {}
    for direction, artifact in tracking.SYNTHETIC_TESTS.items():
        if artifact not in names:
            continue
        tests = load_run_records(data_run_id, artifact)[: cfg.sft.exact_match_limit]
        max_new_tokens = cfg.eval.max_new_tokens
        # Short synthetic problems: one generate call per 100 (1.4x over batches of 32 on CPU).
        metrics[tracking.metric_sft_exact_match(direction)] = greedy_accuracy(model, tokenizer, tests, max_new_tokens, 100)
        with model.disable_adapter():
            base = greedy_accuracy(model, tokenizer, tests, max_new_tokens, 100)
        metrics[tracking.metric_sft_exact_match(direction, base=True)] = base
    return metrics


# ---------------------------------------------------------------- stage


def train(cfg: Config, data_run_id: str, mix: str, run_id: str, resume_from: str | None = None, callbacks=()) -> None:
    """Train one mix; on rank 0 (which holds the active run) log the adapter, model and quick check."""
    import mlflow

    records = load_mix(data_run_id, mix, cfg.sft.seed, cfg.sft.train_set)
    output_dir = common.run_output_dir(run_id)
    trainer, tokenizer, base_path, stats = build_trainer(cfg, records, output_dir, callbacks)
    trainer.train(resume_from_checkpoint=resume_from)
    final_dir = common.save_final_adapter(trainer, output_dir)
    if not common.is_main_process():
        return
    mlflow.log_metrics({"sft/global_steps": trainer.state.global_step, **{f"sft/{k}": v for k, v in stats.items()}})
    # Reloaded from what was saved: the quick check and the MLflow model see exactly the logged adapter
    # (and under ZeRO-3 the trainer's copy is sharded).
    model = common.load_adapter_model(cfg, base_path, final_dir)
    metrics = exact_match_check(cfg, model, tokenizer, data_run_id)
    if metrics:
        mlflow.log_metrics(metrics)
    common.log_final_adapter(model, tokenizer, base_path)
    common.finish_checkpoints(run_id, cfg.checkpoints)
    summary = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
    print(f"sft {mix}: {trainer.state.global_step} steps{'; ' + summary if summary else ''}")


def train_in_worker(cfg: Config, data_run_id: str, mix: str, run_id: str, resume_from: str | None = None) -> None:
    """One torchrun process of a multi-process SFT; rank 0 logs into the run its launcher opened."""
    import mlflow

    if common.is_main_process():
        tracking.setup()
        mlflow.start_run(run_id=run_id)
    train(cfg, data_run_id, mix, run_id, resume_from)


def _check_resumable(run_id: str, cfg: Config, data_run_id: str, mix: str) -> None:
    """Continue only the run of the same invert run, mix and config (sft, lora, model, ... sections)."""
    run = tracking.require_resumable_run(run_id, STAGE)
    tracking.require_same_inputs(run, STAGE, cfg, {"invert": data_run_id})
    if run.data.params.get("sft.mix", mix) != mix:
        raise UserError(f"--run_id {run_id}: was started with --mix {run.data.params['sft.mix']}, not {mix}")


def _note_resume(run_id: str, checkpoint: str | None) -> None:
    """Tag and print where a resumed run stopped and where it continues from."""
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(run_id, tracking.metric_train("loss"))
    stopped = max((m.step for m in history), default=0)
    resumed = common.resumed_step(checkpoint)
    mlflow.set_tags({TAG_STOPPED_AT_STEP: stopped, tracking.TAG_RESUMED_FROM_STEP: resumed})
    print(f"sft run {run_id}: stopped after step {stopped}; resuming from the checkpoint at step {resumed}")


def run_sft(cfg: Config, data_run_id: str = "", mix: str = "forward", run_id: str = "", callbacks=()) -> str:
    """The stage. ``callbacks`` are extra TrainerCallbacks (single-process runs)."""
    import mlflow

    tracking.setup()
    mix = mix or "forward"
    if mix not in MIXES:
        raise UserError(f"--mix {mix!r}: expected one of {', '.join(MIXES)}")
    tracking.require_run(data_run_id, "invert", "data_run_id")
    resuming = bool(run_id)
    if resuming:
        _check_resumable(run_id, cfg, data_run_id, mix)
    if cfg.sft.num_processes < 1:
        raise UserError(f"--num_processes {cfg.sft.num_processes}: expected 1 or more")
    common.check_checkpoints_config(cfg.checkpoints)
    params = {"sft.mix": mix, "sft.data_run_id": data_run_id}
    with tracking.stage_run(STAGE, cfg, upstream={"invert": data_run_id}, params=params, run_id=run_id or None) as run:
        run_id = run.info.run_id
        records = load_mix(data_run_id, mix, cfg.sft.seed, cfg.sft.train_set)
        mix_info = composition(records, mix, cfg.sft.seed)
        mlflow.log_dict(mix_info, tracking.ARTIFACT_MIX)
        mlflow.set_tag(tracking.TAG_LENGTH_RULE, length_rule.RULE)  # applied in build_dataset
        existing = mlflow.MlflowClient().get_run(run_id).data.params
        counts = {f"mix.{k}": mix_info[k] for k in ("examples", "forward", "reverse", "pairs")}
        mlflow.log_params({k: v for k, v in counts.items() if k not in existing})
        checkpoint = None
        if resuming:
            checkpoint = common.resume_checkpoint(
                common.run_output_dir(run_id), run_id, common.uses_deepspeed(cfg.sft.num_processes, cfg.sft.deepspeed)
            )
            _note_resume(run_id, checkpoint)
        if cfg.sft.num_processes > 1:
            kwargs = {"data_run_id": data_run_id, "mix": mix, "run_id": run_id, "resume_from": checkpoint}
            common.launch_workers("reverse_align.train.sft:train_in_worker", cfg, kwargs, cfg.sft.num_processes)
        else:
            train(cfg, data_run_id, mix, run_id, checkpoint, callbacks)
        print(f"sft run {run_id}: mix {mix}, {mix_info['forward']} forward + {mix_info['reverse']} reverse examples")
        return run_id
