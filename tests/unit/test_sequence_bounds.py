"""sft.sequence_length_multiple and lora.adapter_dtype: speed settings that must not change what is learned."""

import pytest

from reverse_align.config import load_config
from reverse_align.data import synthetic
from reverse_align.errors import UserError


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer():
    import torch

    from reverse_align import attention
    from reverse_align.train.pretrain import build_model, build_tokenizer

    cfg = load_config("micro")
    tokenizer = build_tokenizer(cfg)
    attention.register()
    model = build_model(cfg, tokenizer)
    model.config._attn_implementation = attention.NAME
    torch.manual_seed(0)
    return cfg, model.eval(), tokenizer


def _loss(model, tokenizer, dataset):
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = [
        {"input_ids": r["input_ids"], "labels": [t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"])]}
        for r in dataset
    ]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(rows)
    with torch.no_grad():
        out = model(**{k: batch[k] for k in ("input_ids", "labels", "position_ids")})
    return out.loss.item(), int((batch["labels"] != -100).sum()), batch["input_ids"].shape[1]


def test_padding_each_example_to_a_multiple_leaves_the_loss_unchanged(tiny_model_and_tokenizer):
    from reverse_align.train.sft import build_dataset, pad_to_multiple

    cfg, model, tokenizer = tiny_model_and_tokenizer
    records = synthetic.make_world(cfg.synthetic, 0).records("train", "forward")[:6]
    dataset, _ = build_dataset(tokenizer, records, 256)
    padded = pad_to_multiple(dataset, 16, tokenizer.pad_token_id)
    assert all(len(ids) % 16 == 0 for ids in padded["input_ids"])
    assert sum(map(len, padded["input_ids"])) > sum(map(len, dataset["input_ids"]))
    loss, labelled, width = _loss(model, tokenizer, dataset)
    padded_loss, padded_labelled, padded_width = _loss(model, tokenizer, padded)
    assert padded_labelled == labelled and padded_width > width
    assert padded_loss == pytest.approx(loss, abs=1e-6)
    assert pad_to_multiple(dataset, 0, tokenizer.pad_token_id) is dataset


def test_adapter_dtype_compute_casts_only_the_trainable_weights():
    import peft
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from reverse_align.train.common import cast_adapter_weights, peft_lora_config

    base = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1)).to(torch.bfloat16)  # fmt: skip
    cfg = load_config("micro", ["model.dtype=bfloat16"])
    model = peft.get_peft_model(base, peft_lora_config(cfg.lora))
    trainable = lambda: {p.dtype for p in model.parameters() if p.requires_grad}  # noqa: E731
    lora = lambda: {p.dtype for n, p in model.named_parameters() if "lora_" in n}  # noqa: E731
    assert lora() == {torch.float32}  # peft's default upcast of LoRA weights on a bf16 model
    cast_adapter_weights(model, cfg)
    assert lora() == {torch.float32}
    cast_adapter_weights(model, load_config("micro", ["model.dtype=bfloat16", "lora.adapter_dtype=compute"]))
    assert trainable() == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    with pytest.raises(UserError, match="lora.adapter_dtype 'bf16': expected one of float32, compute"):
        cast_adapter_weights(model, load_config("micro", ["lora.adapter_dtype=bf16"]))
