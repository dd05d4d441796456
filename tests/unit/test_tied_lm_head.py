"""lora.tied_lm_head: what training lm_head means on a model that ties it to its input embeddings (Qwen2.5-3B)."""

import pytest

from reverse_align.config import load_config
from reverse_align.errors import UserError


def _train_one_step(tied_lm_head: str):
    import peft
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from reverse_align.train.common import peft_lora_config

    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))  # fmt: skip
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight
    original = base.get_input_embeddings().weight.detach().clone()
    cfg = load_config("micro", [f"lora.tied_lm_head={tied_lm_head}"])
    model = peft.get_peft_model(base, peft_lora_config(cfg.lora, tied=True))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.randint(0, 48, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    inner = model.get_base_model()
    token = torch.arange(48)
    # What the model now reads a token as, and the row it scores that token with.
    read = inner.get_input_embeddings()(token).detach()
    scored = torch.stack([inner.get_output_embeddings()(torch.eye(32))[:, t] for t in range(48)]).detach()
    return original, read, scored


def test_untie_trains_an_output_only_copy():
    original, read, scored = _train_one_step("untie")
    assert torch_equal(read, original)  # the input embedding is the base's
    assert not torch_equal(scored, original)  # the output projection moved


def test_tie_trains_one_shared_copy():
    original, read, scored = _train_one_step("tie")
    assert not torch_equal(read, original)
    assert torch_equal(read, scored)  # input and output still the same matrix


def test_unknown_meaning_is_a_config_error():
    from reverse_align.train.common import peft_lora_config

    with pytest.raises(UserError, match="lora.tied_lm_head 'both': expected one of untie, tie"):
        peft_lora_config(load_config("micro", ["lora.tied_lm_head=both"]).lora, tied=True)


def torch_equal(a, b) -> bool:
    import torch

    return torch.allclose(a, b, atol=1e-7)
