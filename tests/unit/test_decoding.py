"""Evaluation decoding (reverse_align/eval/decoding.py): nothing of a checkpoint's generation_config leaks in,
both backends get the same settings, and the new tokens fit in the model's positions."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from reverse_align.config import load_config
from reverse_align.errors import UserError
from reverse_align.eval import decoding

TOKEN_IDS = {"bos_token_id": 94, "eos_token_id": 96, "pad_token_id": 95}
# Qwen2.5-7B-Instruct's generation_config.json (its chat defaults).
QWEN_CHAT_DEFAULTS = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


def small_qwen2(max_positions: int = 128) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=max_positions, **TOKEN_IDS,
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def greedy(model, ids: torch.Tensor) -> list[list[int]]:
    """What lm-eval's HFLM asks for under greedy gen_kwargs: do_sample=False and nothing else."""
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
    return out[:, ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    return torch.randint(0, 90, (2, 6), generator=torch.Generator().manual_seed(1))


def test_a_dirty_generation_config_decodes_as_clean_greedy_once_replaced(prompts):
    clean = small_qwen2()
    clean.generation_config = GenerationConfig(**TOKEN_IDS)
    dirty = copy.deepcopy(clean)
    dirty.generation_config = GenerationConfig(**TOKEN_IDS, **QWEN_CHAT_DEFAULTS)
    expected = greedy(clean, prompts)
    # The leak: generate() fills what the call leaves unset from the model's config (repetition_penalty 1.05).
    assert greedy(dirty, prompts) != expected
    decoding.use_clean_generation_config(dirty)
    assert greedy(dirty, prompts) == expected
    left = dirty.generation_config.to_diff_dict()
    left.pop("transformers_version", None)
    assert left == TOKEN_IDS  # the token ids, nothing else


def test_a_peft_wrapped_model_is_cleaned_underneath(prompts):
    from peft import LoraConfig, get_peft_model

    clean = small_qwen2()
    clean.generation_config = GenerationConfig(**TOKEN_IDS)
    expected = greedy(clean, prompts)
    dirty = copy.deepcopy(clean)
    dirty.generation_config = GenerationConfig(**TOKEN_IDS, **QWEN_CHAT_DEFAULTS)
    wrapped = get_peft_model(dirty, LoraConfig(r=2, target_modules=["q_proj"]))  # B = 0: the base's outputs
    assert greedy(wrapped, prompts) != expected
    decoding.use_clean_generation_config(wrapped)
    assert greedy(wrapped, prompts) == expected  # PeftModel.generate copies the inner model's config


def test_token_ids_come_from_the_model_config_when_the_generation_config_lacks_them():
    model = small_qwen2()
    cleaned = decoding.clean_generation_config(GenerationConfig(temperature=0.7), model.config)
    assert (cleaned.bos_token_id, cleaned.eos_token_id, cleaned.pad_token_id) == (94, 96, 95)
    assert cleaned.temperature is None and cleaned.repetition_penalty is None


def test_paper_new_tokens_are_capped_to_qwen25_positions(capsys):
    cfg = load_config("paper-7b")
    assert (cfg.eval.max_prompt_tokens, cfg.eval.max_new_tokens) == (4096, 32768)  # the preset keeps PROTOCOL's
    qwen = Qwen2Config(max_position_embeddings=32768)  # Qwen2.5-7B-Instruct's config.json
    s = decoding.settings(cfg, qwen, "Qwen/Qwen2.5-7B-Instruct")
    assert s.max_new_tokens == 32768 - 4096 == 28672 and s.model_max_positions == 32768
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "28672" in err and "32768 positions" in err


def test_no_cap_and_no_warning_when_prompt_and_answer_fit(capsys):
    cfg = load_config("micro")
    e = cfg.eval
    fits = e.max_prompt_tokens + e.max_new_tokens
    assert decoding.settings(cfg, small_qwen2(fits).config).max_new_tokens == e.max_new_tokens
    assert decoding.settings(cfg, None).max_new_tokens == e.max_new_tokens  # no stated positions: no cap
    assert decoding.capped_new_tokens(e, fits - 10) == e.max_new_tokens - 10  # one position short of ten
    assert capsys.readouterr().err.count("warning:") == 1
    with pytest.raises(UserError, match="eval.max_prompt_tokens"):
        decoding.capped_new_tokens(e, e.max_prompt_tokens)


def test_greedy_and_sampling_settings_reach_both_backends_explicitly():
    greedy_s = decoding.settings(load_config("micro"))
    assert (greedy_s.do_sample, greedy_s.temperature, greedy_s.top_p, greedy_s.top_k, greedy_s.repetition_penalty) == (
        False, 0.0, 1.0, 0, 1.0,
    )  # fmt: skip
    assert decoding.hf_gen_kwargs(greedy_s) == {"max_gen_toks": greedy_s.max_new_tokens, "do_sample": False}
    vllm = decoding.vllm_gen_kwargs(greedy_s)
    assert {k: vllm[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty")} == {
        "temperature": 0.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0,
    }  # fmt: skip
    assert vllm["min_p"] == vllm["presence_penalty"] == vllm["frequency_penalty"] == 0.0

    sampled = decoding.settings(load_config("micro", ["eval.samples=4", "eval.temperature=0.6", "eval.top_p=0.95"]))
    assert decoding.hf_gen_kwargs(sampled) == {
        "max_gen_toks": sampled.max_new_tokens, "do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 0,
    }  # fmt: skip
    vllm = decoding.vllm_gen_kwargs(sampled)
    assert (vllm["temperature"], vllm["top_p"], vllm["top_k"], vllm["repetition_penalty"]) == (0.6, 0.95, -1, 1.0)


def test_lm_eval_normalisation_keeps_the_explicit_settings():
    """lm-eval's normalize_gen_kwargs (both backends' first step) leaves what vLLM's SamplingParams gets intact."""
    from lm_eval.models.utils import normalize_gen_kwargs

    s = decoding.settings(load_config("micro"))
    normalised = normalize_gen_kwargs(decoding.vllm_gen_kwargs(s))
    assert normalised["temperature"] == 0.0 and normalised["top_k"] == -1 and normalised["repetition_penalty"] == 1.0
    assert normalised["max_gen_toks"] == s.max_new_tokens
