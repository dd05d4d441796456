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


def test_trl_still_refuses_a_lora_on_lm_head():
    """The reason lm_head is a saved module (train/common.py): when trl drops this refusal, train a LoRA there."""
    import inspect

    from trl import DPOTrainer, SFTTrainer

    for trainer in (SFTTrainer, DPOTrainer):
        source = inspect.getsource(trainer.__init__)
        assert "Applying a PEFT adapter to `lm_head` is not supported" in source, trainer.__name__


def test_paper_7b_trainable_parameters_lm_head_as_lora_and_as_saved_module():
    """On a meta-device model of Qwen2.5-7B's shape (bench/lora_lm_head_params.py)."""
    import dataclasses
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench", Path(__file__).parents[2] / "bench" / "lora_lm_head_params.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = load_config("paper-7b")
    as_trained = peft_lora_config(cfg.lora)
    as_paper = dataclasses.replace(as_trained, target_modules=set(cfg.lora.target_modules), modules_to_save=None)
    hidden, vocab = bench.QWEN25_7B["hidden_size"], bench.QWEN25_7B["vocab_size"]
    lora_head, _ = bench.trainable(as_paper)
    saved_head, _ = bench.trainable(as_trained)
    assert lora_head == 685_768_704
    # The difference is exactly lm_head in full minus its rank-256 LoRA.
    assert saved_head - lora_head == hidden * vocab - 256 * (hidden + vocab)
