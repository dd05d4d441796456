"""Preference pairs from the pairs of D, and prompt truncation in tokens (PROTOCOL §3)."""

from __future__ import annotations

import pytest

from reverse_align.config import load_config
from reverse_align.data import synthetic
from reverse_align.errors import UserError
from reverse_align.formatting import record_assistant_turn
from reverse_align.train.preferences import fit_prompts, fit_question, preference_pairs, prompt_token_ids


@pytest.fixture(scope="module")
def world_pairs():
    cfg = load_config("micro")
    forward = synthetic.make_world(cfg.synthetic, cfg.data.seed).records("train", "forward")[:5]
    return forward, [synthetic.invert(f) for f in forward]


@pytest.fixture(scope="module")
def tokenizer():
    from reverse_align.train.pretrain import build_tokenizer

    return build_tokenizer(load_config("micro"))


def test_forward_prefers_its_trace_and_reverse_prefers_its_own(world_pairs):
    forward, reverse = world_pairs
    pairs = preference_pairs(forward, list(reversed(reverse)))  # matched by pair_id, not position
    assert [p["direction"] for p in pairs] == ["forward"] * 5 + ["reverse"] * 5
    for f, r, fp, rp in zip(forward, reverse, pairs[:5], pairs[5:]):
        assert fp["pair_id"] == rp["pair_id"] == f.pair_id == r.pair_id
        assert fp["prompt"] == [{"role": "user", "content": f.question}]
        assert fp["chosen"] == [{"role": "assistant", "content": record_assistant_turn(f)}]
        assert fp["rejected"] == [{"role": "assistant", "content": record_assistant_turn(r)}]
        assert rp["prompt"] == [{"role": "user", "content": r.question}]
        assert rp["chosen"] == fp["rejected"] and rp["rejected"] == fp["chosen"]
        # The question is never inside a completion (the released script repeated it there).
        assert f.question not in fp["chosen"][0]["content"] + fp["rejected"][0]["content"]


def test_one_direction_and_unpaired_items(world_pairs):
    forward, reverse = world_pairs
    assert {p["direction"] for p in preference_pairs(forward, reverse, "forward")} == {"forward"}
    only_reverse = preference_pairs(forward, reverse, "reverse")
    assert [p["pair_id"] for p in only_reverse] == [r.pair_id for r in reverse]
    # A forward item whose reverse was rejected by the teacher has no pair.
    assert len(preference_pairs(forward, reverse[:3])) == 6


def test_bad_input(world_pairs):
    forward, reverse = world_pairs
    with pytest.raises(UserError, match="no reverse items"):
        preference_pairs(forward, [])
    with pytest.raises(UserError, match="--direction 'both-ways'"):
        preference_pairs(forward, reverse, "both-ways")


def test_prompt_is_cut_in_tokens_keeping_the_end(tokenizer, world_pairs):
    forward, _ = world_pairs
    question = forward[0].question
    full = len(prompt_token_ids(tokenizer, question))
    assert fit_question(tokenizer, question, full) == question
    for limit in (full - 1, full - 7):
        cut = fit_question(tokenizer, question, limit)
        assert len(prompt_token_ids(tokenizer, cut)) <= limit
        assert question.endswith(cut) and len(cut) < len(question)
    # The template alone (role markers, assistant header) does not fit: one-line error naming the key.
    template_only = full - len(tokenizer(question, add_special_tokens=False)["input_ids"])
    with pytest.raises(UserError, match="dpo.max_prompt_length"):
        fit_question(tokenizer, question, template_only)


def test_fit_prompts_counts_cut_prompts(tokenizer, world_pairs):
    pairs = preference_pairs(*world_pairs)
    lengths = [len(prompt_token_ids(tokenizer, p["prompt"][0]["content"])) for p in pairs]
    limit = sorted(lengths)[len(lengths) // 2]
    fitted, cut = fit_prompts(pairs, tokenizer, limit)
    assert cut == sum(n > limit for n in lengths)
    assert all(len(prompt_token_ids(tokenizer, p["prompt"][0]["content"])) <= limit for p in fitted)
    assert [p["chosen"] for p in fitted] == [p["chosen"] for p in pairs]
