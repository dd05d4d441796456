"""``sdpa_varlen``: padding-free attention for machines without flash-attn (CPUs).

A padding-free batch is one flattened row of several sequences; ``position_ids``
restart at 0 where each sequence begins. flash-attn's varlen kernel attends
within each sequence only. transformers' ``sdpa`` gets the same result through
a block-diagonal (total x total) mask, so its attention costs the square of the
*batch's* token count, and padding-free ends up slower than padding on a small
model. This attention runs torch's ``scaled_dot_product_attention`` once per
sequence with ``is_causal=True``: exact, and each sequence pays only for itself.

It is registered with transformers' ``AttentionInterface`` (and a mask function
with ``AttentionMaskInterface``), which is how transformers takes a custom
attention; a model loaded with ``attn_implementation="sdpa_varlen"`` uses it.
Anything that is not a fresh causal pass without a padding mask (padded batches,
generation with a KV cache) goes to transformers' own ``sdpa`` unchanged.
"""

from __future__ import annotations

NAME = "sdpa_varlen"


def sequence_bounds(position_ids) -> list[int]:
    """Start offsets of the sequences in a flattened row, plus its length: [0, s1, s2, ..., T]."""
    import torch

    row = position_ids[0]
    starts = (torch.nonzero(row[1:] - row[:-1] != 1).flatten() + 1).tolist()
    return [0, *starts, row.shape[0]]


def sdpa_varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Causal attention within each sequence of a padding-free row; transformers' sdpa otherwise.

    ``query`` is (batch, heads, tokens, head_dim); returns (batch, tokens, heads, head_dim) like every
    transformers attention function.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    fresh_causal = attention_mask is None and query.shape[2] == key.shape[2] and query.shape[0] == 1
    if not fresh_causal:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    bounds = [0, query.shape[2]] if position_ids is None else sequence_bounds(position_ids)
    gqa = query.shape[1] != key.shape[1]
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=gqa,
        )
        for start, end in zip(bounds, bounds[1:])
    ]
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return output.transpose(1, 2).contiguous(), None


def sdpa_varlen_mask(*, batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None, **kwargs):
    """No mask for a fresh causal pass without padding (the attention finds the sequences); sdpa's otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_offset == 0 and kv_offset == 0 and q_length == kv_length:
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        **kwargs,
    )


def register() -> None:
    """Make ``attn_implementation="sdpa_varlen"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, sdpa_varlen_attention)
    AttentionMaskInterface.register(NAME, sdpa_varlen_mask)
