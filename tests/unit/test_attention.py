"""``sdpa_varlen``: a padding-free row attends within each sequence, exactly as the sequences one by one."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from reverse_align import attention

LENGTHS = [9, 23, 1, 14]


def tiny_qwen(attn_implementation: str) -> Qwen2ForCausalLM:
    attention.register()
    config = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.set_attn_implementation(attn_implementation)
    return model


@pytest.fixture(scope="module")
def sequences() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(1, 64, (n,), generator=generator) for n in LENGTHS]


def packed(sequences):
    input_ids = torch.cat(sequences)[None]
    position_ids = torch.cat([torch.arange(len(s)) for s in sequences])[None]
    return input_ids, position_ids


def test_sequence_bounds_from_restarting_positions():
    _, position_ids = packed([torch.zeros(n, dtype=torch.long) for n in LENGTHS])
    assert attention.sequence_bounds(position_ids) == [0, 9, 32, 33, 47]
    assert attention.sequence_bounds(torch.arange(5)[None]) == [0, 5]


def test_padding_free_row_equals_each_sequence_alone(sequences):
    model = tiny_qwen(attention.NAME)
    input_ids, position_ids = packed(sequences)
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0]
    alone = torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in sequences])
    torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)
    # A plain causal pass over the same row mixes the sequences: the check above can fail.
    mixed = model(input_ids=input_ids, use_cache=False).logits[0]
    assert not torch.allclose(mixed, alone, atol=1e-3)


def test_same_loss_and_gradients_as_sdpa_with_its_block_mask(sequences):
    input_ids, position_ids = packed(sequences)
    results = {}
    for name in ("sdpa", attention.NAME):
        model = tiny_qwen(name)
        loss = model(input_ids=input_ids, position_ids=position_ids, labels=input_ids, use_cache=False).loss
        loss.backward()
        results[name] = (loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(results["sdpa"], results[attention.NAME], atol=1e-5, rtol=1e-5)


def test_padded_batches_and_cached_generation_match_sdpa(sequences):
    width = max(LENGTHS)
    input_ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, s in enumerate(sequences):
        input_ids[row, width - len(s) :], mask[row, width - len(s) :] = s, 1  # left-padded, as for generation
    outputs = {}
    for name in ("sdpa", attention.NAME):
        model = tiny_qwen(name)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            generated = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        outputs[name] = (logits * mask[..., None], generated)
    torch.testing.assert_close(outputs["sdpa"], outputs[attention.NAME], atol=1e-5, rtol=1e-5)
