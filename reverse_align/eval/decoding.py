"""The decoding every evaluation backend uses: the preset's, stated in full, nothing inherited from the checkpoint.

A checkpoint's ``generation_config.json`` carries its authors' chat defaults (Qwen2.5-7B-Instruct:
temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05). transformers' ``generate()`` fills every
setting a call leaves unset from the model's ``generation_config`` (GenerationMixin._prepare_generation_config),
and lm-eval's HFLM passes only the task's ``gen_kwargs`` (models/huggingface.py, ``_model_generate``), so
"greedy" on the HF backend would still apply the repetition penalty. lm-eval's vLLM backend builds
``SamplingParams`` from the same ``gen_kwargs`` (``VLLM.modify_gen_kwargs``) over vLLM's own defaults, so
the two backends would decode differently. Here:

- HF: the model's ``generation_config`` is replaced by :func:`clean_generation_config` (token ids only;
  everything else transformers' neutral defaults: repetition_penalty 1.0, no length or n-gram rules).
- vLLM: every sampling setting is passed explicitly (:func:`vllm_gen_kwargs`).
- Greedy (``eval.samples`` 1, §4): temperature 0, top_p 1, no top_k, repetition_penalty 1. Sampling
  (``eval.samples`` > 1): ``eval.temperature`` and ``eval.top_p``, no top_k, no penalties.

Context: the model sees ``eval.max_prompt_tokens + max_new_tokens`` positions. PROTOCOL §4's 32,768 new
tokens plus a 4,096-token prompt exceed Qwen2.5's 32,768 ``max_position_embeddings``, so the new tokens
are capped at run time to what the model's config allows (:func:`capped_new_tokens`; the preset's numbers
stay the paper's). The settings used are logged as params ``eval.generation.<name>``
(:meth:`GenerationSettings.params`).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

from reverse_align import tracking
from reverse_align.config import Config, EvalConfig
from reverse_align.errors import UserError

TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
VLLM_ALL_TOKENS = -1  # vLLM's "top_k off" in every version (newer ones also take 0)


@dataclass(frozen=True)
class GenerationSettings:
    """What each answer is decoded with, on either backend (params eval.generation.<field>)."""

    max_new_tokens: int  # eval.max_new_tokens, capped to the model's positions (capped_new_tokens)
    do_sample: bool  # False: greedy (eval.samples 1)
    temperature: float  # 0 when greedy
    top_p: float  # 1 = every token
    top_k: int  # 0 = every token (transformers' off; vLLM gets VLLM_ALL_TOKENS)
    repetition_penalty: float  # 1 = none
    model_max_positions: int | None  # the model config's max_position_embeddings (None: not stated)

    def params(self) -> dict[str, str]:
        return {f"{tracking.PARAM_EVAL_GENERATION}.{k}": str(v) for k, v in asdict(self).items()}


def max_positions(model_config) -> int | None:
    """The positions the model was built for (``max_position_embeddings``), or None when its config has none."""
    value = getattr(model_config, "max_position_embeddings", None)
    return int(value) if value else None


def capped_new_tokens(e: EvalConfig, positions: int | None, model: str = "the model") -> int:
    """``eval.max_new_tokens``, or fewer so that prompt + answer fit in ``positions``; says so in one line."""
    if positions is None or e.max_prompt_tokens + e.max_new_tokens <= positions:
        return e.max_new_tokens
    room = positions - e.max_prompt_tokens
    if room < 1:
        raise UserError(
            f"eval.max_prompt_tokens {e.max_prompt_tokens} leaves no room to generate in {model}'s "
            f"{positions} positions (max_position_embeddings); lower eval.max_prompt_tokens"
        )
    print(
        f"warning: eval.max_prompt_tokens {e.max_prompt_tokens} + eval.max_new_tokens {e.max_new_tokens} exceed "
        f"{model}'s {positions} positions (max_position_embeddings): answers are capped at {room} new tokens "
        f"(param {tracking.PARAM_EVAL_GENERATION}.max_new_tokens)",
        file=sys.stderr,
    )
    return room


def settings(cfg: Config, model_config=None, model: str = "the model") -> GenerationSettings:
    """The preset's decoding on a model of ``model_config`` (a transformers config; None: no cap)."""
    e = cfg.eval
    positions = max_positions(model_config)
    new_tokens = capped_new_tokens(e, positions, model)
    if e.samples > 1:
        return GenerationSettings(new_tokens, True, e.temperature, e.top_p, 0, 1.0, positions)
    return GenerationSettings(new_tokens, False, 0.0, 1.0, 0, 1.0, positions)


def for_model(cfg: Config, base_path: str) -> GenerationSettings:
    """:func:`settings` for the base model at ``base_path`` (a directory or hub id; adapters keep its positions)."""
    from transformers import AutoConfig

    return settings(cfg, AutoConfig.from_pretrained(base_path), base_path)


def hf_gen_kwargs(s: GenerationSettings) -> dict:
    """lm-eval HFLM's gen_kwargs: over a :func:`clean_generation_config` nothing else applies."""
    if s.do_sample:
        return {"max_gen_toks": s.max_new_tokens, "do_sample": True, "temperature": s.temperature,
                "top_p": s.top_p, "top_k": s.top_k}  # fmt: skip
    return {"max_gen_toks": s.max_new_tokens, "do_sample": False}


def vllm_gen_kwargs(s: GenerationSettings) -> dict:
    """lm-eval VLLM's gen_kwargs, every field of its SamplingParams that shapes the choice of token."""
    return {
        "max_gen_toks": s.max_new_tokens,
        "do_sample": s.do_sample,  # lm-eval's normalize_gen_kwargs: False -> temperature 0 (vLLM's greedy)
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k or VLLM_ALL_TOKENS,
        "min_p": 0.0,
        "repetition_penalty": s.repetition_penalty,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }


def gen_kwargs(backend: str, s: GenerationSettings) -> dict:
    return vllm_gen_kwargs(s) if backend == "vllm" else hf_gen_kwargs(s)


def clean_generation_config(generation_config, model_config=None):
    """A transformers GenerationConfig holding only the bos/eos/pad token ids of the given one (or the model config)."""
    from transformers import GenerationConfig

    ids = {}
    for name in TOKEN_ID_FIELDS:
        value = getattr(generation_config, name, None)
        if value is None and model_config is not None:
            value = getattr(model_config, name, None)
        if value is not None:
            ids[name] = value
    return GenerationConfig(**ids)


def use_clean_generation_config(model):
    """Replace the (PEFT-wrapped) transformers model's ``generation_config`` by :func:`clean_generation_config`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.generation_config = clean_generation_config(inner.generation_config, inner.config)
    return model
