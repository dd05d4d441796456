"""Trainable parameters of paper-7b's LoRA (A.4.1): lm_head as a LoRA adapter vs as a saved module.

A model of Qwen2.5-7B-Instruct's shape is built on the meta device (no weights, no
download) and wrapped by peft twice: with ``lora.target_modules`` as the paper
lists them, lm_head included as a rank-256 LoRA; and as this project trains it
(``train.common.peft_lora_config``: lm_head a full-rank ``modules_to_save`` copy,
because trl 1.x's fused LM-head loss refuses an adapter there, see that function).
Prints peft's ``print_trainable_parameters`` for both and their ratio.

Usage: python bench/lora_lm_head_params.py [--preset paper-7b]
"""

import argparse
import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Qwen2.5-7B-Instruct's config.json (hub), the fields that size the parameters.
QWEN25_7B = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
)  # fmt: skip


def trainable(peft_config) -> tuple[int, int]:
    import peft
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(**QWEN25_7B))
    wrapped = peft.get_peft_model(model, peft_config)
    wrapped.print_trainable_parameters()
    return wrapped.get_nb_trainable_parameters()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="paper-7b")
    args = parser.parse_args()

    import peft

    from reverse_align.config import load_config
    from reverse_align.train.common import peft_lora_config

    cfg = load_config(args.preset)
    as_trained = peft_lora_config(cfg.lora)
    as_paper = dataclasses.replace(as_trained, target_modules=set(cfg.lora.target_modules), modules_to_save=None)
    assert isinstance(as_paper, peft.LoraConfig)
    print(f"{args.preset}: r={cfg.lora.r}, alpha={cfg.lora.alpha}, targets {', '.join(cfg.lora.target_modules)}")
    print("lm_head as LoRA (A.4.1):")
    lora_head, total = trainable(as_paper)
    print("lm_head as a saved module (this project, trl's fused LM head):")
    saved_head, _ = trainable(as_trained)
    print(f"saved module / LoRA trainable parameters: {saved_head / lora_head:.2f}x "
          f"(+{(saved_head - lora_head) / 1e6:,.0f}M of {total / 1e9:.2f}B)")  # fmt: skip


if __name__ == "__main__":
    main()
