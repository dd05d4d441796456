"""The ALP scorer against a plain per-item computation written independently here.

The reference below does not use reverse_align's formatting or tokenization: it
writes the s1 assistant turn itself, renders the chat with the tokenizer's chat
template, runs one unpadded sequence at a time and takes its own log-softmax in
float64. The scorer under test batches length-sorted, right-padded sequences and
swaps adapters in and out of one base model.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from reverse_align.config import load_config
from reverse_align.data.invert import load_run_records
from reverse_align.data.schema import Record
from reverse_align.probe import alp

TOL = 1e-5
WORDS = ["Start", "with", "7.", "Add", "3,", "then", "multiply", "by", "2.", "=", "10", "20", "subtract", "5", "\n"]


def reference_mean_logprob(model, tokenizer, question: str, response: Record, cap: int) -> float:
    """Mean log p of the first ``cap`` tokens of the assistant turn, one unpadded sequence, own log-softmax."""
    turn = "<|im_start|>think\n" + response.thinking + "\n<|im_start|>answer\n" + response.attempt
    user = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    full = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": turn}], tokenize=True, return_dict=True
    )["input_ids"]
    assert full[: len(prompt)] == prompt
    answer = full[len(prompt) :][:cap]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0].double()
    logps = torch.log_softmax(logits, dim=-1)
    total = 0.0
    for t, token in enumerate(answer):
        total += logps[len(prompt) - 1 + t, token].item()
    return total / len(answer)


def reference_scores(model, tokenizer, items, cap):
    pos = [reference_mean_logprob(model, tokenizer, i.asked.question, i.preferred, cap) for i in items]
    neg = [reference_mean_logprob(model, tokenizer, i.asked.question, i.other, cap) for i in items]
    return pos, neg


def random_items(records: list[Record], n: int, seed: int) -> list[alp.ProbeItem]:
    """Probe items whose traces are cut or stretched with random words: lengths from a few to ~150 tokens."""
    rng = random.Random(seed)
    base = alp.probe_items(records)

    def stretched(record: Record) -> Record:
        extra = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 60)))
        thinking = record.thinking[: rng.randint(0, len(record.thinking))] + extra
        return Record(**{**record.to_dict(), "thinking": thinking})

    picked = [rng.choice(base) for _ in range(n)]
    return [alp.ProbeItem(i.asked, stretched(i.preferred), stretched(i.other)) for i in picked]


@pytest.fixture(scope="module")
def cfg():
    return load_config("micro")


@pytest.fixture(scope="module")
def tokenizer(cfg, micro_base):
    from reverse_align.models import load_tokenizer

    return load_tokenizer(cfg)


@pytest.fixture(scope="module")
def probe_records(micro_invert):
    from reverse_align import tracking

    return load_run_records(micro_invert, tracking.ARTIFACT_PROBE)


def save_random_adapter(cfg, seed: int, path, r: int | None = None) -> str:
    """A random LoRA adapter (non-zero B, perturbed lm_head copy) of ``cfg.lora`` (rank ``r`` if given), saved."""
    from peft import get_peft_model

    from reverse_align.models import load_model
    from reverse_align.train.common import peft_lora_config

    lora = dataclasses.replace(cfg.lora, r=r, alpha=2 * r) if r else cfg.lora
    torch.manual_seed(seed)
    model = get_peft_model(load_model(cfg), peft_lora_config(lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def adapters(cfg, micro_base, tmp_path_factory) -> list[str]:
    """Two random LoRA adapters of the preset's LoRA config, as PEFT directories."""
    return [save_random_adapter(cfg, seed, tmp_path_factory.mktemp(f"adapter{seed}")) for seed in (1, 2)]


def fresh_model(cfg, adapter=None):
    from peft import PeftModel

    from reverse_align.models import load_model

    model = load_model(cfg)
    return (PeftModel.from_pretrained(model, adapter) if adapter else model).eval()


def assert_scores_equal(scores: alp.Scores, pos, neg):
    got = torch.tensor([scores.positive, scores.negative], dtype=torch.float64)
    want = torch.tensor([pos, neg], dtype=torch.float64)
    diff = (got - want).abs().max().item()
    assert diff <= TOL, f"max |batched - per-item| = {diff:.3g}"


@pytest.fixture(scope="module")
def mixed_items(probe_records):
    return random_items(probe_records, 24, seed=0)


@pytest.fixture(scope="module")
def mixed_references(cfg, tokenizer, mixed_items, adapters):
    """Per-item reference scores of the base model, adapter 1 and adapter 2."""
    return [
        reference_scores(fresh_model(cfg, adapter), tokenizer, mixed_items, 1000)
        for adapter in (None, adapters[0], adapters[1])
    ]


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
@pytest.mark.parametrize("share_prompts", [True, False], ids=["shared-prompt", "one-per-row"])
def test_batched_scorer_with_adapter_swaps_equals_per_item_reference(
    cfg, tokenizer, mixed_items, mixed_references, adapters, merge, share_prompts
):
    items = mixed_items
    lengths = [len(s.input_ids) for s in alp.encode_items(tokenizer, items, 1000)]
    assert max(lengths) > 2 * min(lengths)  # mixed lengths: batches really are padded
    assert {i.asked.direction for i in items} == {"forward", "reverse"}
    # A small token budget: several batches of different widths.
    model = fresh_model(cfg)
    base_params = list(model.named_parameters())
    base_values = [p.detach().clone() for _, p in base_params]
    scorer = alp.CheckpointScorer(model, tokenizer, items, 1000, 600, merge=merge, share_prompts=share_prompts)
    assert len(scorer.batches) > 2
    # Shared: one row per distinct question (y+ and y- together); else one row per sequence.
    questions = {i.asked.question for i in items}
    rows = alp.pack_rows(scorer.sequences, share_prompts)
    assert len(rows) == (len(questions) if share_prompts else 2 * len(items))
    assert sum(len(b.input_ids) for b in scorer.batches) == len(rows)
    # Base, adapter 1, adapter 2, base again: each swap must leave nothing of the previous one behind.
    results = [
        scorer.score_base(),
        scorer.score_adapter(adapters[0]),
        scorer.score_adapter(adapters[1]),
        scorer.score_base(),
    ]
    base, first, second = mixed_references
    for scores, reference in zip(results, [base, first, second, base]):
        assert_scores_equal(scores, *reference)
    # The adapters change the scores (so "equal" above is not the base model three times).
    assert abs(results[1].positive[0] - results[0].positive[0]) > 1e-3
    assert abs(results[2].positive[0] - results[1].positive[0]) > 1e-3
    # Merging and unmerging leave the base weights exactly as loaded (PEFT wraps the same tensors).
    for (name, param), value in zip(base_params, base_values):
        assert torch.equal(param, value), name


def test_an_adapter_of_another_config_is_built_anew_and_scored_exactly(
    cfg, tokenizer, mixed_items, mixed_references, adapters, tmp_path
):
    # Same config: the tensors are copied into the active adapter; another rank: a new adapter replaces it.
    other = save_random_adapter(cfg, 3, tmp_path / "r8", r=8)
    scorer = alp.CheckpointScorer(fresh_model(cfg), tokenizer, mixed_items, 1000, 600)
    first = scorer.score_adapter(adapters[0])
    slot = scorer.active
    second = scorer.score_adapter(adapters[1])
    assert scorer.active == slot
    small = scorer.score_adapter(other)
    assert scorer.active != slot and scorer.model.peft_config[scorer.active].r == 8
    again = scorer.score_adapter(adapters[0])
    assert list(scorer.model.peft_config) == [scorer.active]  # one adapter in memory
    assert_scores_equal(first, *mixed_references[1])
    assert_scores_equal(second, *mixed_references[2])
    assert_scores_equal(small, *reference_scores(fresh_model(cfg, other), tokenizer, mixed_items, 1000))
    assert_scores_equal(again, *mixed_references[1])


def test_prompt_sharing_needs_a_masked_attention(cfg, tokenizer, probe_records):
    from reverse_align.errors import UserError

    model = fresh_model(cfg)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UserError, match="share_prompts"):
        alp.CheckpointScorer(model, tokenizer, alp.probe_items(probe_records), 1000, 4096, share_prompts=True)


def test_summary_is_the_mean_over_items_per_test(cfg, tokenizer, probe_records):
    items = alp.probe_items(probe_records)
    scores = alp.CheckpointScorer(fresh_model(cfg), tokenizer, items, 1000, 4096).score_base()
    summary = scores.summary()
    forward = [i for i, item in enumerate(items) if item.asked.direction == "forward"]
    assert len(forward) == len(items) // 2 == 8
    pos_f = sum(scores.positive[i] for i in forward) / len(forward)
    assert summary["forward"]["pos"] == pytest.approx(pos_f)
    assert summary["mixed"]["neg"] == pytest.approx(sum(scores.negative) / len(items))
    assert summary["reverse"]["margin"] == pytest.approx(summary["reverse"]["pos"] - summary["reverse"]["neg"])
    # y+ of a forward item is y- of its reverse item (same text, different question).
    first_reverse = items[len(items) // 2]
    assert items[0].preferred == first_reverse.other and items[0].other == first_reverse.preferred


def test_a_response_longer_than_the_cap_is_scored_on_its_first_n_tokens(cfg, tokenizer, probe_records):
    item = alp.probe_items(probe_records)[0]
    cap = 6
    long = Record(**{**item.preferred.to_dict(), "thinking": item.preferred.thinking + " add 1" * 200})
    changed_tail = Record(**{**long.to_dict(), "attempt": "completely different"})
    items = [alp.ProbeItem(item.asked, long, changed_tail)]
    model = fresh_model(cfg)
    encoded = alp.encode_items(tokenizer, items, cap)
    assert all(len(e.input_ids) - e.response_start == cap for e in encoded)
    scores = alp.CheckpointScorer(model, tokenizer, items, cap, 4096).score_base()
    assert_scores_equal(scores, *reference_scores(model, tokenizer, items, cap))
    # Only the first `cap` tokens count: a different tail far beyond them changes nothing.
    assert scores.positive[0] == pytest.approx(scores.negative[0], abs=TOL)
    uncapped = alp.CheckpointScorer(model, tokenizer, items, 1000, 4096).score_base()
    assert abs(uncapped.positive[0] - uncapped.negative[0]) > 1e-4


def test_the_first_response_token_is_scored(cfg, tokenizer, probe_records):
    items = alp.probe_items(probe_records)[:4]
    model = fresh_model(cfg)
    scores = alp.CheckpointScorer(model, tokenizer, items, 1, 4096).score_base()
    # With a cap of 1 the score is log p(first assistant token | templated question), nothing else.
    assert_scores_equal(scores, *reference_scores(model, tokenizer, items, 1))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": items[0].asked.question}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    encoded = alp.encode_items(tokenizer, items, 1)[0]
    assert encoded.response_start == len(prompt)
    assert tokenizer.decode(encoded.input_ids[encoded.response_start :]) == "<|im_start|>"
