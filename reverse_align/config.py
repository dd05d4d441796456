"""Study configuration: dataclasses loaded strictly from YAML presets.

A preset file (``configs/<name>.yaml``) holds one mapping per section below.
Every key must be a field of its section: an unknown or misspelled key is a
:class:`UserError` that lists the valid ones. ``extends: <preset>`` starts from
another preset. Command-line overrides use ``section.field=value``.

Fields that come from the paper cite it: "A.4.1" is the paper's appendix
section, "PROTOCOL §2" the matching section of ``shared/PROTOCOL.md``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reverse_align.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "tiny"


@dataclass
class ModelConfig:
    # Hugging Face id or local directory of the base model. The special value
    # "tiny-base" means the registered tiny model built by the `pretrain` stage.
    name: str = "tiny-base"
    # Weights dtype for training and inference: float32 (CPU), bfloat16 (A.4.1: bf16).
    dtype: str = "float32"
    # "sdpa", "eager", "flash_attention_2" (A.4.1 trains with flash attention),
    # "sdpa_varlen" (reverse_align.attention: padding-free batches without flash-attn, e.g. on CPU), or
    # "auto": flash_attention_2 when flash-attn is installed on a GPU, else sdpa_varlen; the resolved
    # name is what the run logs (reverse_align.preflight.resolve_attention).
    attn_implementation: str = "sdpa"
    # Recompute activations in the backward pass (A.4.1, GPU presets).
    gradient_checkpointing: bool = False
    # torch.compile each decoder layer (dynamic shapes): 6,283 -> 8,549 tokens/s with bf16 LoRA on an H100 in
    # issue 15's measurement, but ~90 s of compiling on the first step, and it cannot be combined with Liger.
    compile_layers: bool = False
    # Max tokens of one training example (A.4.1: 20,000). Also the limit above
    # which an s1K DeepSeek trace is replaced by the Gemini one (PROTOCOL §1).
    max_length: int = 20000


@dataclass
class DataConfig:
    # "synthetic", a local .jsonl/.parquet path, or an HF dataset id (PROTOCOL §1: simplescaling/s1K-1.1).
    source: str = "synthetic"
    # Keep only the first `limit` forward items (0 = all).
    limit: int = 0
    # Seed of the synthetic world and of any sampling.
    seed: int = 0
    # Probe set size: the N forward items with the fewest tokens (§3.2: 50).
    probe_size: int = 50


@dataclass
class SyntheticConfig:
    # Forward training problems (each gets an exact reverse).
    n_train: int = 1000
    # Held-out test problems per direction.
    n_test: int = 200
    # Held-out transfer problems (a missing value in the middle of a chain: neither SFT direction's
    # format; either direction's skill reaches it). Scored as the `synthetic_transfer` benchmark.
    n_transfer: int = 200
    # Operations per problem, inclusive range.
    min_steps: int = 2
    max_steps: int = 3
    # Every intermediate value stays in [0, max_value].
    max_value: int = 49
    # Add/subtract operands are drawn from [1, max_addend].
    max_addend: int = 9
    # Multipliers are drawn from [2, max_multiplier].
    max_multiplier: int = 3


@dataclass
class PretrainConfig:
    # Qwen2 architecture of the tiny base model (tiny presets only).
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    # Optimisation of the from-scratch pretraining on single arithmetic steps.
    steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 5e-3
    warmup_steps: int = 50
    # Lines of arithmetic facts packed into one pretraining sequence.
    facts_per_sequence: int = 8
    # Fraction of pretraining sequences that repeat their walk (teaches looking back to copy).
    copy_fraction: float = 0.0
    # Fraction of pretraining sequences that are worked forward examples in words ("Start with 7.
    # Subtract 1, then add 4." and its steps), never a problem of the world's train or test sets:
    # the base model reads the world's language, as an instruct LLM reads English. Never the
    # question sentence, the chat format or the reverse direction: those are SFT's to teach.
    narrated_fraction: float = 0.0
    # Fraction of pretraining sequences that are chat exchanges of single steps (the user's turn "7 - 1", the
    # assistant's "7 - 1 = 6"), in the chat template SFT uses: the wrapper's tokens are trained before SFT
    # and the base copies numbers across it, as an instruct model does. Never a question or a chain.
    chat_fraction: float = 0.0
    # Seed of the base model's initialisation and of its pretraining stream, apart from `data.seed`
    # (the world): bases pretrained under different seeds on one world are the tiny study's
    # replication unit (`main --bases N` runs seeds seed, seed+1, ...).
    seed: int = 0
    # Register the model under this name and reuse it when present.
    registered_model: str = "reverse-align-tiny-base"


@dataclass
class InvertConfig:
    # "synthetic" (exact inverse, no API) or an OpenAI-compatible model name (PROTOCOL §1: DeepSeek-R1).
    teacher: str = "synthetic"
    # OpenAI-compatible endpoint; empty = OPENAI_BASE_URL or the client default.
    base_url: str = ""
    # The model the endpoint must report serving (the `model` field of each chat completion): each answer's
    # is journaled and tagged on the run, and one that differs is warned about. An alias may move on: DeepSeek's
    # `deepseek-reasoner` was R1 when the paper ran and now serves a later model. Empty = recorded, not checked.
    expected_teacher_model: str = ""
    # Requests in flight at once.
    concurrency: int = 16
    # Seconds before a request is abandoned and retried.
    timeout: float = 600.0
    # Retries per request on 429, 5xx, timeouts and dropped connections.
    max_retries: int = 8
    # Backoff before retry n: uniform in [0, min(retry_max_delay, retry_base_delay * 2^n)] seconds
    # ("full jitter"); a Retry-After header replaces it.
    retry_base_delay: float = 1.0
    retry_max_delay: float = 60.0
    # Stop cleanly after this many requests / total tokens (0 = no cap).
    max_requests: int = 0
    max_tokens_total: int = 0
    # Max completion tokens per teacher request, reasoning included. R1 traces run past 16k tokens; 65,536 is
    # deepseek-reasoner's maximum output, so no R1 solution is cut. A cut answer (finish_reason "length") is
    # rejected and counted as invert/rejected/truncated.
    max_completion_tokens: int = 65536
    # Sampling temperature of the teacher.
    temperature: float = 0.6
    # Template files (empty = the shipped paper templates, appendix A.1).
    reverse_template: str = ""
    solution_template: str = ""
    # USD per million prompt / completion tokens, for the cost estimate.
    price_prompt_per_million: float = 0.55
    price_completion_per_million: float = 2.19


@dataclass
class LoraConfig:
    # A.4.1: r=256, alpha=512, q/k/v/o/gate/up/down projections and lm_head.
    r: int = 256
    alpha: int = 512
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    )
    # dtype of the trainable adapter weights (and so of their AdamW state): "float32" (peft's default, exact
    # small updates) or "compute" (model.dtype: bf16 LoRA matmuls, +11% tokens/s on 7B in issue 15's H100
    # measurement, but bf16 optimizer state may drop small updates over a long run: not verified, so not default).
    adapter_dtype: str = "float32"
    # What training lm_head means when the model ties it to the input embeddings (Qwen2.5-3B and smaller):
    # "untie" trains an output-only copy (the input embedding stays the base's), which is what a LoRA on a tied
    # lm_head did in the paper's peft: the delta reaches the logits, never the input; "tie" trains one shared
    # copy used as both (peft's ensure_weight_tying). Ignored for untied models (Qwen2.5-7B/14B, tiny).
    tied_lm_head: str = "untie"


@dataclass
class SFTConfig:
    # A.4.1 values are the defaults.
    epochs: float = 10
    learning_rate: float = 3e-4
    lr_scheduler: str = "cosine_with_restarts"
    warmup_ratio: float = 0.05
    weight_decay: float = 1e-6
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    # "adamw_8bit" = bitsandbytes 8-bit AdamW (A.4.1); "adamw_torch" on CPU.
    optim: str = "adamw_8bit"
    max_grad_norm: float = 1.0
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    bf16: bool = True
    # Save a checkpoint every N epochs (0 = only the final adapter).
    save_every_epochs: int = 1
    # Padding-free batching: exact for per-token loss, no pad tokens computed.
    padding_free: bool = True
    # Processes for data parallelism (A.4.1: 4 GPUs for 7B, 8 for 14B).
    num_processes: int = 1
    # DeepSpeed config for multi-GPU runs (A.4.1: ZeRO-3); ignored on CPU.
    deepspeed: str = ""
    logging_steps: int = 1
    # Liger's RMSNorm, RoPE and SwiGLU kernels (GPU, `pip install -e '.[gpu]'`); trl keeps its own fused LM-head
    # loss. Exact kernels: first-step loss 12.7842 vs 12.7846, 6,283 -> 6,884 tokens/s on 7B (issue 15, H100).
    use_liger_kernel: bool = False
    # Pad each packed example at its end to a multiple of this many tokens (loss off on the padding, positions
    # continuing, so no real token's output changes): cuDNN builds an attention plan per new sequence length
    # (~0.16 s each on an H100), which bounding the distinct lengths saves. 0 = off (CPU: nothing to save).
    sequence_length_multiple: int = 0
    # Seed of training only (LoRA init, data order, dropout); the world and base model keep data.seed.
    seed: int = 0
    # Held-out synthetic problems per direction for the quick greedy exact-match check
    # after training, adapter on and off (0 = skip). Not from the paper: a tiny-world sanity check.
    exact_match_limit: int = 200
    # Which pairs of the invert run to train on: "all" (Table 1) or "probe" (the probe set's
    # 50 + 50, §3.2: what the ALP experiment trains on; set by the `probe` stage).
    train_set: str = "all"


@dataclass
class DPOConfig:
    # §4.2, A.4.2: beta 0.6 (swept 0.1-0.8), lr 5e-7 cosine, 200 steps, batch 1, accumulation 4, bf16.
    beta: float = 0.6
    # Deviates from A.4.2's 5e-7 (README "Deviations from the paper"): 5e-7 is the released script's rate for
    # *full* fine-tuning (PROTOCOL §7: its LoRA flags were ignored); our DPO trains a LoRA, which moves ~0.17x as
    # far at 5e-7. 3e-6 is the LoRA rate whose DPO reward margin matches full FT's at 5e-7 after A.4.2's
    # schedule (`bench/dpo_lora_lr.py --rates 5e-7,1e-6,2e-6,3e-6,5e-6`: 2.6e-6 continuing an SFT adapter, 4.4e-6
    # direct; at 3e-6 1.12x and 0.65x full FT's margin).
    learning_rate: float = 3e-6
    lr_scheduler: str = "cosine"
    max_steps: int = 200
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 4
    bf16: bool = True
    # A.4.2: max prompt 600 tokens, max length 20,000 tokens.
    max_prompt_length: int = 600
    max_length: int = 20000
    warmup_ratio: float = 0.0
    optim: str = "adamw_torch"
    # Compute the reference log-probs once before training.
    precompute_ref_log_probs: bool = False
    # Save a checkpoint every N steps (0 = only the final adapter).
    save_every_steps: int = 50
    # Save a checkpoint every N epochs instead of every N steps (0 = by steps). Not from the paper:
    # the ALP probe (§3.2) scores DPO checkpoints per epoch.
    save_every_epochs: int = 0
    num_processes: int = 1
    deepspeed: str = ""
    logging_steps: int = 1
    # Seed of training only (data order, dropout); the world and base model keep data.seed.
    seed: int = 0
    # Which pairs of the invert run to train on: "all" (Table 3) or "probe" (§3.2; set by `probe`).
    train_set: str = "all"


@dataclass
class CheckpointsConfig:
    # What the MLflow store keeps of a training run's (sft, dpo) checkpoints. While it trains, only what a resume
    # needs: the newest trainer state (resume/checkpoint-<step>/) and the adapter it points to; an older one is
    # deleted from the run's artifacts as soon as a newer one is logged (stores whose artifact repository deletes:
    # local files, an mlflow server's served artifacts; others keep everything, said once on stderr). Every
    # epoch's kept before: 112 MB of a 118 MB tiny SFT run, and on paper-7b 3.7 GB of adapter (1.19B parameters
    # with the saved lm_head) a checkpoint; the whole tiny study 1.2 GB -> 203 MB, paper-7b 628 -> 243 GB with the defaults
    # (bench/study_storage.py). Not in the config hash: what a run keeps does not change what it trained, so a
    # reused run keeps what it kept.
    # Adapter checkpoints (checkpoints/<name>/) left once the run FINISHED: "all" (every one, none deleted while
    # training either: `probe --run_id` scores them), "last" (the newest), "none" (only the final adapter/, the
    # last checkpoint's weights when training ends on a save). The probe's own runs keep all until it has scored
    # them, then what this says.
    # Default "last": INTERFACE.md lists checkpoints/<name>/ among an sft/dpo run's artifacts.
    keep_adapters: str = "last"
    # Trainer states (optimizer, scheduler, RNG; resume/checkpoint-<step>/) left once the run FINISHED, which
    # nothing resumes: "none", "last" or "all" (every one, none deleted while training). A kept state keeps the
    # adapter it points to. A FAILED or killed run keeps its newest, to be resumed with --run_id.
    keep_resume: str = "none"


@dataclass
class ProbeConfig:
    # §3.2 / §4.4: SFT 12 epochs evaluated every 2; DPO 7 epochs evaluated every epoch, beta 0.2.
    sft_epochs: int = 12
    sft_eval_every: int = 2
    dpo_epochs: int = 7
    dpo_beta: float = 0.2
    # ALP responses capped at 1,000 tokens (A.1).
    max_response_tokens: int = 1000
    # Tokens (padded batch width x sequences) per scoring forward pass; bounds the float32 logits
    # (tokens x vocabulary) held at once. Not from the paper.
    batch_tokens: int = 8192
    # Merge each checkpoint's LoRA into the base weights while scoring it (exact base weights put back
    # after): the same scores within 1e-6 in float32, fewer matmuls; in bf16 the merged weight is rounded
    # to bf16, so keep it off there. Not from the paper.
    merge_adapters: bool = True
    # Score y+ and y- of an item in one row behind their shared question (a 4D attention mask: sdpa,
    # eager or sdpa_varlen, not flash-attn). Not from the paper.
    share_prompts: bool = True


@dataclass
class EvalConfig:
    # PROTOCOL §5: AIME24-nofigures, MATH500, GPQA diamond (aime24, math500, gpqa); tiny world:
    # synthetic_forward, synthetic_reverse, synthetic_transfer (held-out sets of the data run).
    benchmarks: list[str] = field(default_factory=lambda: ["aime24", "math500", "gpqa"])
    # New tokens per answer (§4: 32,768, greedy). A response that never reaches the answer marker is wrong.
    max_new_tokens: int = 32768
    # Longest prompt in tokens: the model's context is max_prompt_tokens + max_new_tokens.
    max_prompt_tokens: int = 4096
    # "math-verify" (offline rules: reverse_align/eval/grading.py) or a model on an OpenAI-compatible
    # endpoint that judges each answer (§4.1: gpt-4o-mini); verdicts are cached on disk.
    judge: str = "math-verify"
    # The judge's endpoint; empty = OPENAI_BASE_URL or the client default.
    judge_base_url: str = ""
    # First N questions of each benchmark (0 = all).
    limit: int = 0
    # Answers per question. 1 = greedy decoding, the paper's row (§4); n > 1 samples with temperature
    # and top_p below and reports pass@1 averaged over the n (open-r1/lighteval: 64 AIME, 4 MATH500,
    # 8 GPQA at 0.6 / 0.95).
    samples: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    # Prompts generated together (HF backend).
    batch_size: int = 16
    # "hf" (transformers + the PEFT adapter; CPU or GPU) or "vllm" (GPUs: the adapter merged into the base first).
    backend: str = "hf"
    # Where each benchmark's questions come from: the HF dataset id of PROTOCOL §5, or a local
    # .jsonl/.parquet file with that dataset's field names. Nothing is fetched when the hub is offline.
    aime24_source: str = "simplescaling/aime24_nofigures"
    math500_source: str = "HuggingFaceH4/MATH-500"
    gpqa_source: str = "Idavidrein/gpqa"  # config gpqa_diamond (gated: needs an HF token)
    # GPQA lists the correct answer first; each question's options are shuffled with this seed.
    gpqa_shuffle_seed: int = 0
    # Models trained on the s1 format (SFT, DPO over an SFT model): the answer is read only after
    # <|im_start|>answer; false: a response without the marker is read whole. The base model and direct DPO,
    # never trained on the format, are always prompted in plain chat and read whole (eval.format "chat").
    answer_marker_required: bool = True
    # Bootstrap resamples of the questions for the 95% interval when samples > 1.
    bootstrap_resamples: int = 2000


@dataclass
class SweepConfig:
    # §4.2: "we swept beta from 0.1 to 0.8" and kept 0.6; the range of the `sweep` stage.
    beta_low: float = 0.1
    beta_high: float = 0.8
    # "grid": every grid_step from beta_low to beta_high (the paper's 0.1 steps); "tpe": Optuna's TPE
    # seeded with `seed`, linear scale; "tpe_log": TPE on a log scale.
    sampler: str = "grid"
    grid_step: float = 0.1
    # COMPLETED trials to reach (failed and pruned trials do not count). 0 = every grid point
    # (grid sampler); required > 0 for tpe.
    n_trials: int = 0
    # "eval_average": eval/average of the `evaluate` stage on eval.benchmarks (paper presets);
    # "exact_match": mean greedy exact match on the invert run's held-out forward and reverse
    # problems (tiny presets; see configs/tiny.yaml for why). Both are maximised.
    objective: str = "eval_average"
    # Held-out problems per direction scored by the exact_match objective (per checkpoint and at the end).
    objective_limit: int = 50
    # Optuna storage: empty = sqlite file optuna.db beside the MLflow sqlite store (else ./optuna.db);
    # an RDB URL (postgresql://..., sqlite:///...); or journal:PATH (Optuna JournalFileBackend, no heartbeat).
    storage: str = ""
    # Worker processes on this machine sharing the study (more machines: the same command and storage URL).
    workers: int = 1
    # Seed of the sampler (grid order, TPE).
    seed: int = 0
    # "median": a trial whose objective at a DPO checkpoint is below the median of earlier trials at
    # that step is pruned; "none": never.
    pruner: str = "median"
    # Trials completed before the median pruner may prune.
    pruner_startup_trials: int = 3
    # RDB storages: a running trial's worker writes a heartbeat every heartbeat_interval seconds; a trial
    # whose last heartbeat is older than grace_period is failed (and retried max_retry times, same beta).
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retry: int = 1


@dataclass
class MainConfig:
    # Training seeds of the SFT, DPO and evaluation grid: N runs each cell with sft.seed / dpo.seed
    # = seed, seed+1, ..., seed+N-1 (data, teacher, base model, probe and sweep shared). The paper
    # reports one run per cell; the report gives mean and spread over seeds (`--seeds` on main).
    seeds: int = 1
    # Base models of the tiny presets, the study's outer replication unit: N pretrains with pretrain.seed
    # = seed, ..., seed+N-1 on one world, and the SFT/DPO/evaluation grid on each (probe and sweep on the
    # first). A tiny base pretrained from scratch is itself a draw: float rounding alone (another CPU's
    # kernels) makes another one, so a tiny-world verdict needs several. Paper presets: 1 (their base is
    # the released model). `--bases` on main.
    bases: int = 1
    # Stages in flight at once (Ray tasks), each with (the largest node's CPU cores // jobs) torch threads
    # and, on GPU presets, the GPUs its processes train on (pipeline.stage_gpus); Ray holds a stage back
    # until its GPUs are free. Not from the paper: on 2 CPU cores two one-thread stages do 1.4x the work
    # of one two-thread stage (the tiny model's matrices are too small to split well).
    jobs: int = 1


@dataclass
class ReportConfig:
    # MLflow UI screenshots in the report (reverse_align/ui_screenshots.py: a local mlflow server + headless
    # Chromium): "auto" = when that module imports and chromium is on PATH; "true" = required; "false" = never.
    screenshots: str = "auto"
    # Resamples of the paired bootstrap (seeds, then questions) behind the reverse - forward interval.
    bootstrap_resamples: int = 2000
    # Seed of that bootstrap: the same runs give the same interval.
    seed: int = 0
    # Model size of the paper's published numbers set beside each cell (3b, 7b or 14b, PROTOCOL §6);
    # "" = from the study's preset name (paper-7b -> 7b); "none" = no published column.
    paper_size: str = ""


@dataclass
class Config:
    preset: str = DEFAULT_PRESET
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    invert: InvertConfig = field(default_factory=InvertConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    checkpoints: CheckpointsConfig = field(default_factory=CheckpointsConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    main: MainConfig = field(default_factory=MainConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def flat(self) -> dict[str, Any]:
        """``section.field -> value`` for every field, for MLflow params."""
        out: dict[str, Any] = {"preset": self.preset}
        for section in _sections():
            for f in dataclasses.fields(getattr(self, section)):
                out[f"{section}.{f.name}"] = getattr(getattr(self, section), f.name)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config) if f.name != "preset"]


def _section_type(section: str) -> type:
    return typing.get_type_hints(Config)[section]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(annotation)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation) or (str,)
        return [_coerce(v, item_type, where) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected an integer, got {value!r}") from None
        if as_float != int(as_float):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        try:
            # YAML 1.1 reads "3e-4" as a string; accept it as the number it is.
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        return "" if value is None else str(value)
    return value


def _apply(cfg: Config, section: str, key: str, value: Any, where: str) -> None:
    sections = _sections()
    if section not in sections:
        raise UserError(f"{where}: unknown section {section!r}; valid sections: {', '.join(sections)}")
    section_cls = _section_type(section)
    hints = typing.get_type_hints(section_cls)
    if key not in hints:
        raise UserError(f"{where}: unknown key {section}.{key!s}; valid keys of {section}: {', '.join(hints)}")
    setattr(getattr(cfg, section), key, _coerce(value, hints[key], f"{where}: {section}.{key}"))


def preset_path(preset: str) -> Path:
    """A preset name (``tiny``) or a path to a YAML file."""
    candidate = Path(preset)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise UserError(f"preset file {preset} not found")
        return candidate
    path = CONFIG_DIR / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise UserError(f"unknown preset {preset!r}; valid presets: {', '.join(names)}")
    return path


def _read_preset(path: Path, cfg: Config, seen: tuple[Path, ...] = ()) -> None:
    if path in seen:
        raise UserError(f"{path}: 'extends' loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise UserError(f"{path}{'' if line is None else f' line {line + 1}'}: invalid YAML") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections")
    parent = raw.pop("extends", None)
    if parent:
        _read_preset(preset_path(str(parent)), cfg, seen + (path,))
    for section, values in raw.items():
        if section not in _sections():
            raise UserError(f"{path}: unknown section {section!r}; valid sections: extends, {', '.join(_sections())}")
        if not isinstance(values, dict):
            raise UserError(f"{path}: section {section!r} must be a mapping")
        for key, value in values.items():
            _apply(cfg, section, str(key), value, str(path))


def parse_override(text: str) -> tuple[str, str, str]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UserError(f"override {text!r} must look like section.key=value")
    dotted, value = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    return section, key, value.strip()


def load_config(preset: str = DEFAULT_PRESET, overrides: list[str] | None = None) -> Config:
    """Load a preset and apply ``section.key=value`` overrides, strictly."""
    path = preset_path(preset)
    cfg = Config(preset=path.stem)
    _read_preset(path, cfg)
    for text in overrides or []:
        section, key, value = parse_override(text)
        _apply(cfg, section, key, value, "override")
    return cfg


def set_field(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``section.key`` from a stage parameter (e.g. ``--epochs`` -> ``sft.epochs``)."""
    section, key = dotted.split(".", 1)
    _apply(cfg, section, key, value, f"--{key}")
