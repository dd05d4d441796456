"""Average log-probability (ALP) of y+ and y- on the probe tests (PROTOCOL §4, Figure 2).

ALP(y) = mean over items of (1/|y_i|) Σ_t log p(y_{i,t} | x_i, y_{i,<t}), each
response cut to its first ``max_response_tokens`` tokens; margin = ALP(y+) - ALP(y-).

What is scored is what SFT and DPO train on: the context is the chat-templated
question with the assistant header, the response is the assistant turn of
:mod:`reverse_align.formatting` through the chat template up to and including
``<|im_end|>`` (``sft.tokenize_example``: the tokens SFT's loss covers), first
token included (Qwen has no BOS to skip; the released analysis dropped it,
PROTOCOL §7).

Fast: every sequence of the probe is tokenized once; y+ and y- of an item share
one row behind their common question (``share_prompts``); rows are sorted by
length and packed into right-padded batches of at most ``batch_tokens`` tokens,
one forward pass per batch, logits only from the first response position on and
log-probabilities gathered for all response tokens at once (no per-token Python).
:class:`CheckpointScorer` loads the base model once and swaps each checkpoint in
as a PEFT adapter (its tensors copied into the active adapter), merged into the
base weights while it is scored (``merge``).
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
# Attentions that take a 4D attention mask, which prompt sharing needs (flash-attn does not).
MASKED_ATTENTION = ("sdpa", "eager", "sdpa_varlen")


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


@dataclass(frozen=True)
class Row:
    """One row of a forward pass: a prompt, then each response to it seeing only the prompt and itself.

    Without prompt sharing every row holds one response: a plain causal sequence. With it, the
    responses of one question follow their single prompt (positions restarting where the prompt
    ends) and an attention mask keeps each response from seeing the others: the question is
    computed once for y+ and y-, and each token sees exactly what it sees alone.
    """

    input_ids: list[int]  # the prompt, then every response but its last token (only ever a target)
    position_ids: list[int]
    segment: list[int]  # 0: prompt; k: the k-th response
    scored: list[tuple[int, list[int], list[int]]]  # (sequence index, predicting positions, target tokens)


def pack_rows(sequences: list[Encoded], share_prompts: bool) -> list[Row]:
    """The sequences as rows: one each, or grouped by identical prompt (``share_prompts``)."""
    groups: dict[tuple, list[int]] = {}
    for index, seq in enumerate(sequences):
        key = tuple(seq.input_ids[: seq.response_start]) if share_prompts else (index,)
        groups.setdefault(key, []).append(index)
    rows = []
    for members in groups.values():
        start = sequences[members[0]].response_start
        input_ids = list(sequences[members[0]].input_ids[:start])
        position_ids, segment, scored = list(range(start)), [0] * start, []
        for k, index in enumerate(members, 1):
            response = sequences[index].input_ids[start:]
            # The first response token is predicted at the prompt's last position, token t+1 at token t.
            scored.append((index, [start - 1, *range(len(input_ids), len(input_ids) + len(response) - 1)], response))
            input_ids += response[:-1]
            position_ids += range(start, start + len(response) - 1)
            segment += [k] * (len(response) - 1)
        rows.append(Row(input_ids, position_ids, segment, scored))
    return rows


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices, longest first, in batches whose padded size (rows x longest) stays within ``batch_tokens``.

    A row longer than ``batch_tokens`` gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    for index in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(index)  # the batch's first is its longest
        else:
            batches.append([index])
    return batches


@dataclass
class Batch:
    """One forward pass, prepared once for every checkpoint: padded rows and where each scored logit sits."""

    input_ids: object  # (rows, width) long tensor, right-padded
    model_kwargs: dict  # position_ids and a 4D additive attention mask when a row shares its prompt
    logits_to_keep: int  # logits from the batch's first predicting position on
    at: object  # per scored token, its row-major index into the (rows, logits_to_keep) logits
    targets: object  # per scored token, the token
    owner: object  # per scored token, the index of its sequence
    size: int  # sequences completed by this batch


def prepare_batches(rows: list[Row], batch_tokens: int, pad_token_id: int, dtype) -> list[Batch]:
    """Rows, longest first, in right-padded batches of at most ``batch_tokens`` tokens (:func:`length_batches`).

    Right padding under causal attention: no real token sees a pad, so rows of one response
    need no attention mask (any attention kernel). Rows sharing a prompt get a 4D mask:
    a token sees the prompt and its own response up to itself; a pad sees the first prompt
    token and the pads, so no attention row is empty. The batches are kept for every checkpoint,
    masks included (rows x width^2 values a batch).
    """
    import torch

    batches = []
    for batch in length_batches([len(r.input_ids) for r in rows], batch_tokens):
        picked = [rows[i] for i in batch]
        width = len(picked[0].input_ids)
        input_ids = torch.full((len(picked), width), pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((len(picked), width), dtype=torch.long)
        segment = torch.full((len(picked), width), -1, dtype=torch.long)
        for r, row in enumerate(picked):
            n = len(row.input_ids)
            input_ids[r, :n] = torch.tensor(row.input_ids)
            position_ids[r, :n] = torch.tensor(row.position_ids)
            segment[r, :n] = torch.tensor(row.segment)
        first = min(at[0] for row in picked for _, at, _ in row.scored)
        keep = width - first
        scored = [(r, index, at, response) for r, row in enumerate(picked) for index, at, response in row.scored]
        model_kwargs = {}
        if any(len(row.scored) > 1 for row in picked):
            seg_q, seg_k = segment[:, :, None], segment[:, None, :]
            pos_q, pos_k = position_ids[:, :, None], position_ids[:, None, :]
            seen = ((seg_k == 0) | (seg_k == seg_q)) & (pos_k <= pos_q)
            # Additive, in the model's dtype: sdpa adds it as is (a boolean one it converts at every layer).
            mask = torch.zeros(seen.shape, dtype=dtype).masked_fill_(~seen, torch.finfo(dtype).min)
            model_kwargs = {"position_ids": position_ids, "attention_mask": mask[:, None]}
        batches.append(
            Batch(
                input_ids=input_ids,
                model_kwargs=model_kwargs,
                logits_to_keep=keep,
                at=torch.tensor([r * keep + a - first for r, _, at, _ in scored for a in at]),
                targets=torch.tensor([t for _, _, _, response in scored for t in response]),
                owner=torch.tensor([index for _, index, _, response in scored for _ in response]),
                size=len(scored),
            )
        )
    return batches


def mean_response_logprobs(model, batches: list[Batch], response_lengths: list[int], progress=None):
    """Per sequence, the mean log-probability of its response tokens (a float64 tensor, sequence order).

    One forward pass per batch; log-softmax only where a response token is predicted.
    """
    import torch

    device = next(model.parameters()).device
    sums = torch.zeros(len(response_lengths), dtype=torch.float64)
    with torch.inference_mode():
        for batch in batches:
            kwargs = {k: v.to(device) for k, v in batch.model_kwargs.items()}
            logits = model(
                input_ids=batch.input_ids.to(device), logits_to_keep=batch.logits_to_keep, use_cache=False, **kwargs
            ).logits
            logits = logits.reshape(-1, logits.shape[-1])[batch.at.to(device)].float()
            targets = batch.targets.to(device)
            token_logps = logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)
            sums.index_add_(0, batch.owner, token_logps.double().cpu())
            if progress is not None:
                progress.update(batch.size)
    return sums / torch.tensor(response_lengths, dtype=torch.float64)


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


class CheckpointScorer:
    """Scores the probe on the base model and on adapters swapped in one after another.

    The base model is loaded once and wrapped in a ``PeftModel`` at the first
    adapter; a later adapter with the same LoRA config (every checkpoint of a run)
    has its tensors copied into the active one, any other is loaded beside it, made
    active, and the previous one deleted, so memory holds the base plus at most two adapters.

    ``merge``: each adapter's LoRA is merged into the base weights while it is scored (one
    matmul per projection instead of three; r=64 on a hidden-128 model nearly doubles the
    cost), and the exact base weights are put back afterwards (unmerging alone leaves
    rounding behind). In float32 the merged scores equal the unmerged ones within 1e-6; in
    bf16 the merged weight is rounded to bf16, so bf16 presets keep adapters unmerged.
    ``share_prompts``: y+ and y- of an item in one row behind their shared question
    (:func:`pack_rows`; needs an attention that takes a 4D mask: sdpa, eager, sdpa_varlen).
    """

    @classmethod
    def from_config(cls, probe_cfg, model, tokenizer, items: list[ProbeItem]) -> CheckpointScorer:
        """With the ``probe:`` section's response cap, batch size, merging and prompt sharing."""
        return cls(
            model, tokenizer, items, probe_cfg.max_response_tokens, probe_cfg.batch_tokens,
            merge=probe_cfg.merge_adapters, share_prompts=probe_cfg.share_prompts,
        )  # fmt: skip

    def __init__(
        self,
        model,
        tokenizer,
        items: list[ProbeItem],
        max_response_tokens: int,
        batch_tokens: int,
        merge: bool = True,
        share_prompts: bool = True,
    ):
        if share_prompts and model.config._attn_implementation not in MASKED_ATTENTION:
            raise UserError(
                f"probe.share_prompts needs an attention that takes a 4D mask ({', '.join(MASKED_ATTENTION)}),"
                f" the model uses {model.config._attn_implementation!r}: set probe.share_prompts=false"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.items = items
        self.sequences = encode_items(tokenizer, items, max_response_tokens)
        rows = pack_rows(self.sequences, share_prompts)
        dtype = next(model.parameters()).dtype
        self.batches = prepare_batches(rows, batch_tokens, tokenizer.pad_token_id, dtype)
        self.response_lengths = [len(s.input_ids) - s.response_start for s in self.sequences]
        self.merge = merge
        self.active: str | None = None
        self._count = 0
        self._unmerged_weights: list | None = None  # (weight, its exact base value) while an adapter is merged
        self._slots: tuple | None = None  # (adapter name, its comparable config, its tensors by file name)

    def _score(self, progress) -> Scores:
        values = mean_response_logprobs(self.model, self.batches, self.response_lengths, progress).tolist()
        return Scores(self.items, values[0::2], values[1::2])

    def _merge(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        self._unmerged_weights = [(w, w.detach().clone()) for w in (m.get_base_layer().weight for m in layers)]
        self.model.merge_adapter()

    def _unmerge(self) -> None:
        if self._unmerged_weights is None:
            return
        import torch

        self.model.unmerge_adapter()
        with torch.no_grad():
            for weight, exact in self._unmerged_weights:
                weight.copy_(exact)
        self._unmerged_weights = None

    def score_base(self, progress=None) -> Scores:
        """The base model alone (adapters disabled if any is loaded)."""
        if self.active is None:
            return self._score(progress)
        self._unmerge()
        with self.model.disable_adapter():
            return self._score(progress)

    def score_adapter(self, adapter_dir: str, progress=None) -> Scores:
        """The base model with the PEFT adapter saved in ``adapter_dir``."""
        from peft import PeftModel

        self._unmerge()
        # low_cpu_mem_usage: a new adapter's LoRA weights are created empty and filled from the file, not initialised first
        if self.active is None:
            self._count += 1
            self.active = f"checkpoint_{self._count}"
            self.model = PeftModel.from_pretrained(
                self.model, adapter_dir, adapter_name=self.active, low_cpu_mem_usage=True
            )
        elif not self._overwrite_active(adapter_dir):
            self._count += 1
            name = f"checkpoint_{self._count}"
            self.model.load_adapter(adapter_dir, adapter_name=name, low_cpu_mem_usage=True)
            self.model.set_adapter(name)
            self.model.delete_adapter(self.active)
            self.active = name
        self.model.eval()
        if self.merge:
            self._merge()
        return self._score(progress)

    def _overwrite_active(self, adapter_dir: str) -> bool:
        """Load the adapter's weights into the active one in place when both have the same config and tensors.

        Checkpoints of one run share their LoRA config: on the tiny model a later checkpoint is
        swapped in (read, copied, merged) in 0.017 s against 0.09 s for the first, which builds the
        adapter. The active adapter's tensors are looked up once (peft's state dict holds the
        parameters themselves, under the names the adapter files use) and each later checkpoint
        is copied straight into them. Anything else returns False.
        """
        import torch
        from peft import PeftConfig
        from peft.utils import load_peft_weights

        config = _comparable(PeftConfig.from_pretrained(adapter_dir))
        if self._slots is None or self._slots[0] != self.active:
            self._slots = (self.active, _comparable(self.model.peft_config[self.active]), self._parameter_views())
        _, active_config, slots = self._slots
        if config != active_config:
            return False
        weights = load_peft_weights(adapter_dir, device=str(next(iter(slots.values())).device))
        if set(weights) != set(slots) or any(weights[k].shape != slots[k].shape for k in weights):
            return False
        with torch.no_grad():
            for name, tensor in weights.items():
                slots[name].copy_(tensor)
        return True

    def _parameter_views(self) -> dict:
        """The active adapter's tensors by the names its files use, each a view of the parameter itself."""
        from peft import get_peft_model_state_dict

        views = get_peft_model_state_dict(self.model, adapter_name=self.active)
        storage = {p.data_ptr() for p in self.model.parameters()}
        unshared = [name for name, tensor in views.items() if tensor.data_ptr() not in storage]
        if unshared:  # a peft that copies its state dict: writing into it would change nothing
            raise RuntimeError(f"peft's state dict does not share the adapter's parameters: {unshared[:3]}")
        return views


def _comparable(config) -> dict:
    """A PEFT config as a dict, without what differs between checkpoints of one run."""
    ignored = ("base_model_name_or_path", "revision", "inference_mode")
    return {k: v for k, v in config.to_dict().items() if k not in ignored}
