"""The paper-* presets hold every number of PROTOCOL.md sections 2-4, but the README's "Deviations from the paper"
(the DPO learning rate on a LoRA: test_dpo_section_3)."""

import pytest

from reverse_align.config import load_config
from reverse_align.preflight import Machine, resolve_attention

PAPER = ["paper-3b", "paper-7b", "paper-14b"]
MODELS = {"paper-3b": "Qwen/Qwen2.5-3B-Instruct", "paper-7b": "Qwen/Qwen2.5-7B-Instruct", "paper-14b": "Qwen/Qwen2.5-14B-Instruct"}


@pytest.mark.parametrize("preset", PAPER)
def test_model_and_data(preset):
    cfg = load_config(preset)
    assert cfg.model.name == MODELS[preset]
    assert cfg.model.dtype == "bfloat16"
    # A.4.1 flash attention: what `auto` picks where flash-attn is installed on a GPU.
    assert cfg.model.attn_implementation == "auto"
    assert resolve_attention(cfg.model.attn_implementation, Machine(gpus=1, packages=frozenset({"flash_attn"}))) == (
        "flash_attention_2"
    )
    assert cfg.model.gradient_checkpointing is True
    assert cfg.model.max_length == 20000
    assert cfg.data.source == "simplescaling/s1K-1.1"
    assert cfg.data.probe_size == 50


@pytest.mark.parametrize("preset", PAPER)
def test_teacher_is_r1_by_name(preset):
    """PROTOCOL §1: the reverses come from DeepSeek-R1; an alias (deepseek-reasoner) may serve another model."""
    i = load_config(preset).invert
    assert i.teacher == i.expected_teacher_model == "deepseek-ai/DeepSeek-R1"
    assert i.base_url == ""  # no default endpoint serves R1 under that name: the user names one


@pytest.mark.parametrize("preset", PAPER)
def test_sft_section_2(preset):
    cfg = load_config(preset)
    assert (cfg.lora.r, cfg.lora.alpha) == (256, 512)
    assert set(cfg.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    s = cfg.sft
    assert s.learning_rate == pytest.approx(3e-4)
    assert s.lr_scheduler == "cosine_with_restarts"
    assert s.warmup_ratio == pytest.approx(0.05)
    assert s.weight_decay == pytest.approx(1e-6)
    assert (s.adam_beta1, s.adam_beta2) == (0.9, 0.95)
    assert s.optim == "adamw_8bit"
    assert s.max_grad_norm == 1.0
    assert s.epochs == 10
    assert (s.per_device_batch_size, s.gradient_accumulation_steps) == (1, 1)
    assert s.bf16 is True
    assert "zero3" in s.deepspeed


def test_gpus_per_size():
    assert load_config("paper-7b").sft.num_processes == 4
    assert load_config("paper-14b").sft.num_processes == 8
    # A.4.2: DPO on 4 GPUs, for 7B and 14B alike.
    assert load_config("paper-7b").dpo.num_processes == 4
    assert load_config("paper-14b").dpo.num_processes == 4


@pytest.mark.parametrize("preset", PAPER)
def test_dpo_section_3(preset):
    d = load_config(preset).dpo
    assert d.beta == pytest.approx(0.6)
    # A deliberate deviation from A.4.2 (README "Deviations from the paper"): A.4.2's 5e-7 is the released
    # script's rate for *full* fine-tuning (its LoRA flags were ignored, PROTOCOL §7), and a LoRA at 5e-7 gets
    # 0.17x full FT's DPO reward margin. 3e-6 is the LoRA rate that matches it (bench/dpo_lora_lr.py: 2.6e-6
    # continuing an SFT adapter, 4.4e-6 direct), rounded. Not 5e-7.
    assert d.learning_rate == pytest.approx(3e-6)
    assert d.lr_scheduler == "cosine"
    assert d.max_steps == 200
    assert (d.per_device_batch_size, d.gradient_accumulation_steps) == (1, 4)
    assert d.bf16 is True
    assert (d.max_prompt_length, d.max_length) == (600, 20000)


@pytest.mark.parametrize("preset", PAPER)
def test_probe_section_4(preset):
    p = load_config(preset).probe
    assert (p.sft_epochs, p.sft_eval_every) == (12, 2)
    assert (p.dpo_epochs, p.dpo_beta) == (7, pytest.approx(0.2))
    assert p.max_response_tokens == 1000


@pytest.mark.parametrize("preset", PAPER)
def test_eval_section_5(preset):
    e = load_config(preset).eval
    assert e.benchmarks == ["aime24", "math500", "gpqa"]
    assert e.judge == "gpt-4o-mini"
    assert (e.max_new_tokens, e.samples) == (32768, 1)  # greedy, 32,768 new tokens
    assert (e.aime24_source, e.math500_source, e.gpqa_source) == (
        "simplescaling/aime24_nofigures", "HuggingFaceH4/MATH-500", "Idavidrein/gpqa",
    )


@pytest.mark.parametrize("preset", PAPER)
def test_sweep_section_4_2(preset):
    """§4.2: beta swept from 0.1 to 0.8 in 0.1 steps, scored on the benchmarks; 0.6 kept."""
    from reverse_align.sweep import beta_grid

    cfg = load_config(preset)
    s = cfg.sweep
    assert (s.beta_low, s.beta_high, s.sampler, s.grid_step) == (0.1, 0.8, "grid", 0.1)
    assert beta_grid(cfg) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert s.objective == "eval_average"
    assert cfg.dpo.beta in beta_grid(cfg)


def test_tiny_sweep_uses_the_cheap_objective():
    cfg = load_config("tiny")
    assert cfg.sweep.objective == "exact_match"
    assert (cfg.sweep.beta_low, cfg.sweep.beta_high) == (0.1, 0.8)


@pytest.mark.parametrize("preset", PAPER)
def test_speed_settings_are_explicit(preset):
    """Issue 15: GPU speed settings that keep the loss; tied lm_head (paper-3b) trained output-only."""
    cfg = load_config(preset)
    assert (cfg.sft.use_liger_kernel, cfg.sft.sequence_length_multiple) == (True, 32)
    assert (cfg.lora.adapter_dtype, cfg.lora.tied_lm_head, cfg.model.compile_layers) == ("float32", "untie", False)
