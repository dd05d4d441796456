"""LoRA settings from the `lora:` section (paper-7b: A.4.1's r=256, alpha=512, 7 projections + lm_head)."""

from reverse_align.config import load_config
from reverse_align.train.common import peft_lora_config

PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_paper_lora_trains_every_projection_and_lm_head():
    lora = peft_lora_config(load_config("paper-7b").lora)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (256, 512, 0.0)
    assert set(lora.target_modules) == PROJECTIONS
    # trl's fused LM head cannot train an lm_head LoRA, so lm_head is trained as a saved module instead.
    assert lora.modules_to_save == ["lm_head"]
    assert lora.task_type == "CAUSAL_LM" and lora.bias == "none"


def test_without_lm_head_nothing_is_saved_in_full():
    cfg = load_config("tiny", ["lora.target_modules=q_proj,v_proj"])
    lora = peft_lora_config(cfg.lora)
    assert set(lora.target_modules) == {"q_proj", "v_proj"} and lora.modules_to_save is None
