"""Average log-probability (ALP) of y+ and y- on the probe tests (PROTOCOL §4, Figure 2).

ALP(y) = mean over items of (1/|y_i|) Σ_t log p(y_{i,t} | x_i, y_{i,<t}), each
response cut to its first ``max_response_tokens`` tokens; margin = ALP(y+) - ALP(y-).

What is scored is what SFT and DPO train on: the context is the chat-templated
question with the assistant header, the response is the assistant turn of
:mod:`reverse_align.formatting` through the chat template up to and including
``<|im_end|>`` (``sft.tokenize_example``: the tokens SFT's loss covers), first
token included (Qwen has no BOS to skip; the released analysis dropped it,
PROTOCOL §7).

Fast: every sequence of the probe is tokenized once; sequences are sorted by
length and packed into right-padded batches of at most ``batch_tokens`` tokens,
one forward pass per batch, log-probabilities gathered for all tokens at once
(no per-token Python). :class:`CheckpointScorer` loads the base model once and
swaps each checkpoint in as a PEFT adapter (load, set active, delete the last).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from reverse_align.data.schema import FORWARD, REVERSE, Record
from reverse_align.errors import UserError

# Figure 2's tests: T_f (forward questions), T_r (reverse questions), T_m (both).
MIXED = "mixed"
TESTS = (FORWARD, REVERSE, MIXED)


@dataclass(frozen=True)
class ProbeItem:
    """One test question with its preferred (same-direction) and other-direction responses."""

    asked: Record  # the question x_i; its direction is the test set (T_f or T_r) it belongs to
    preferred: Record  # y+: the asked item's own response
    other: Record  # y-: the pair's opposite-direction response


def probe_items(records: Iterable[Record]) -> list[ProbeItem]:
    """T_f then T_r from an invert run's probe file (forward items and their reverses, paired by pair_id).

    A forward item prefers y_f over y_r; a reverse item y_r over y_f (PROTOCOL §3-4).
    """
    records = list(records)
    forward = [r for r in records if r.direction == FORWARD]
    reverse_by_pair = {r.pair_id: r for r in records if r.direction == REVERSE}
    pairs = [(f, reverse_by_pair[f.pair_id]) for f in forward if f.pair_id in reverse_by_pair]
    if not pairs:
        raise UserError("the probe set has no forward item paired with a reverse item")
    return [ProbeItem(f, f, r) for f, r in pairs] + [ProbeItem(r, r, f) for f, r in pairs]


@dataclass(frozen=True)
class Encoded:
    """One (question, response) sequence: token ids and where the scored response starts."""

    input_ids: list[int]
    response_start: int


def encode(tokenizer, question: Record, response: Record, max_response_tokens: int) -> Encoded:
    """The training chat of ``question`` answered with ``response``'s assistant turn, response cut to N tokens."""
    from reverse_align.train.sft import tokenize_example

    example = tokenize_example(tokenizer, dataclasses.replace(response, question=question.question))
    start = example["completion_mask"].index(1)
    return Encoded(example["input_ids"][: start + max_response_tokens], start)


def encode_items(tokenizer, items: list[ProbeItem], max_response_tokens: int) -> list[Encoded]:
    """2 sequences per item: [y+ of item 0, y- of item 0, y+ of item 1, ...]."""
    if max_response_tokens < 1:
        raise UserError(f"probe.max_response_tokens must be >= 1, got {max_response_tokens}")
    return [
        encode(tokenizer, item.asked, response, max_response_tokens)
        for item in items
        for response in (item.preferred, item.other)
    ]


def length_batches(sequences: list[Encoded], batch_tokens: int) -> list[list[int]]:
    """Indices of the sequences, longest first, in batches whose padded size stays within ``batch_tokens``.

    A sequence longer than ``batch_tokens`` gets a batch of its own.
    """
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].input_ids), reverse=True)
    batches: list[list[int]] = []
    for index in order:
        if batches:
            width = len(sequences[batches[-1][0]].input_ids)  # the batch's first is its longest
            if (len(batches[-1]) + 1) * width <= batch_tokens:
                batches[-1].append(index)
                continue
        batches.append([index])
    return batches


def mean_response_logprobs(model, sequences: list[Encoded], pad_token_id: int, batch_tokens: int, progress=None):
    """Per sequence, the mean log-probability of its response tokens (a float64 tensor, input order)."""
    import torch

    device = next(model.parameters()).device
    result = torch.empty(len(sequences), dtype=torch.float64)
    with torch.inference_mode():
        for batch in length_batches(sequences, batch_tokens):
            rows = [sequences[i] for i in batch]
            width = len(rows[0].input_ids)
            input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            scored = torch.zeros((len(rows), width), dtype=torch.bool)
            for row, seq in enumerate(rows):
                n = len(seq.input_ids)
                input_ids[row, :n] = torch.tensor(seq.input_ids)
                attention_mask[row, :n] = 1
                scored[row, seq.response_start : n] = True
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
            # Position t predicts token t+1; log p(token) = logit - logsumexp(logits).
            targets = input_ids[:, 1:]
            token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            mask = scored[:, 1:].to(device)
            token_logps = torch.where(mask, token_logps, torch.zeros_like(token_logps))
            means = token_logps.double().sum(-1) / mask.sum(-1)
            result[torch.tensor(batch)] = means.cpu()
            if progress is not None:
                progress.update(len(batch))
    return result


@dataclass
class Scores:
    """Per-item mean log-probabilities of y+ and y- (item order of the probe)."""

    items: list[ProbeItem]
    positive: list[float]
    negative: list[float]

    def summary(self) -> dict[str, dict[str, float]]:
        """``{test: {"pos": ALP(y+), "neg": ALP(y-), "margin": ALP(y+) - ALP(y-)}}`` for T_f, T_r, T_m."""
        out = {}
        for test in TESTS:
            picked = [i for i, item in enumerate(self.items) if test == MIXED or item.asked.direction == test]
            if not picked:
                continue
            pos = sum(self.positive[i] for i in picked) / len(picked)
            neg = sum(self.negative[i] for i in picked) / len(picked)
            out[test] = {"pos": pos, "neg": neg, "margin": pos - neg}
        return out

    def rows(self) -> list[dict]:
        return [
            {
                "id": item.asked.id,
                "pair_id": item.asked.pair_id,
                "test": item.asked.direction,
                "pos": pos,
                "neg": neg,
                "margin": pos - neg,
            }
            for item, pos, neg in zip(self.items, self.positive, self.negative)
        ]


def score(
    model, tokenizer, items: list[ProbeItem], sequences: list[Encoded], batch_tokens: int, progress=None
) -> Scores:
    values = mean_response_logprobs(model, sequences, tokenizer.pad_token_id, batch_tokens, progress).tolist()
    return Scores(items, values[0::2], values[1::2])


class CheckpointScorer:
    """Scores the probe on the base model and on adapters swapped in one after another.

    The base model is loaded once and wrapped in a ``PeftModel`` at the first
    adapter; each later adapter is loaded beside the current one, made active,
    and the previous one deleted, so memory holds the base plus at most two adapters.
    """

    def __init__(self, model, tokenizer, items: list[ProbeItem], max_response_tokens: int, batch_tokens: int):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.items = items
        self.sequences = encode_items(tokenizer, items, max_response_tokens)
        self.batch_tokens = batch_tokens
        self.active: str | None = None
        self._count = 0

    def _score(self, model, progress) -> Scores:
        return score(model, self.tokenizer, self.items, self.sequences, self.batch_tokens, progress)

    def score_base(self, progress=None) -> Scores:
        """The base model alone (adapters disabled if any is loaded)."""
        if self.active is None:
            return self._score(self.model, progress)
        with self.model.disable_adapter():
            return self._score(self.model, progress)

    def score_adapter(self, adapter_dir: str, progress=None) -> Scores:
        """The base model with the PEFT adapter saved in ``adapter_dir``."""
        from peft import PeftModel

        self._count += 1
        name = f"checkpoint_{self._count}"
        if self.active is None:
            self.model = PeftModel.from_pretrained(self.model, adapter_dir, adapter_name=name).eval()
        else:
            self.model.load_adapter(adapter_dir, adapter_name=name)
            self.model.set_adapter(name)
            self.model.delete_adapter(self.active)
        self.active = name
        self.model.eval()
        return self._score(self.model, progress)
