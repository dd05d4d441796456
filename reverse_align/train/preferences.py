"""Preference pairs for DPO from the forward/reverse pairs of D (PROTOCOL §3).

A forward item x_f prefers its own trace y_f over the reverse trace y_r; a
reverse item x_r prefers y_r over y_f. Pairs are in trl's conversational
prompt/chosen/rejected form: the prompt is the user turn and chosen/rejected
are assistant turns written by :mod:`reverse_align.formatting`, so trl renders
exactly the chat SFT trained on and the question appears once (the released
script put it in both prompt and chosen, PROTOCOL §7).

trl >= 1.x has no ``max_prompt_length``; the prompt is cut here, in tokens of
the model's own tokenizer and chat template. Like trl's former DPO prompt
truncation it keeps the *end* of the question, the part nearest the answer.
"""

from __future__ import annotations

from reverse_align.data.schema import FORWARD, REVERSE, Record
from reverse_align.errors import UserError
from reverse_align.formatting import prompt_messages, record_assistant_turn

BOTH = "both"
DIRECTION_CHOICES = (BOTH, FORWARD, REVERSE)


def check_direction(direction: str) -> str:
    if direction not in DIRECTION_CHOICES:
        raise UserError(f"--direction {direction!r}: expected one of {', '.join(DIRECTION_CHOICES)}")
    return direction


def _assistant(record: Record) -> list[dict]:
    return [{"role": "assistant", "content": record_assistant_turn(record)}]


def preference_pairs(forward: list[Record], reverse: list[Record], direction: str = BOTH) -> list[dict]:
    """One pair per item of D in the chosen direction(s); forward items first, in file order.

    Each pair: ``prompt``/``chosen``/``rejected`` message lists plus ``pair_id``
    and ``direction`` of the item whose question is asked.
    """
    check_direction(direction)
    reverse_by_pair = {r.pair_id: r for r in reverse if r.direction == REVERSE}
    forward_by_pair = {f.pair_id: f for f in forward if f.direction == FORWARD}
    if not reverse_by_pair:
        raise UserError("the data run has no reverse items; DPO needs the pairs of an invert run")
    matched = [pid for pid in forward_by_pair if pid in reverse_by_pair]
    if not matched:
        raise UserError("no forward item shares a pair_id with a reverse item; DPO needs the pairs of an invert run")
    pairs = []
    for wanted in (FORWARD, REVERSE):
        if direction not in (BOTH, wanted):
            continue
        for pid in matched:
            f, r = forward_by_pair[pid], reverse_by_pair[pid]
            asked, preferred, other = (f, f, r) if wanted == FORWARD else (r, r, f)
            pairs.append(
                {
                    "pair_id": pid,
                    "direction": wanted,
                    "prompt": prompt_messages(asked.question),
                    "chosen": _assistant(preferred),
                    "rejected": _assistant(other),
                }
            )
    return pairs


def prompt_token_ids(tokenizer, question: str) -> list[int]:
    """Token ids of the chat-templated prompt, ending with the assistant header (what trl feeds the model)."""
    text = tokenizer.apply_chat_template(prompt_messages(question), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_question(tokenizer, question: str, max_prompt_length: int) -> str:
    """The question, cut from the front in tokens so the templated prompt has at most ``max_prompt_length`` tokens."""
    length = len(prompt_token_ids(tokenizer, question))
    if length <= max_prompt_length:
        return question
    question_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    template_tokens = length - len(question_ids)
    keep = max_prompt_length - template_tokens
    if keep <= 0:
        raise UserError(
            f"dpo.max_prompt_length {max_prompt_length}: the chat template alone takes {template_tokens} tokens"
        )
    # Re-tokenising a cut text can merge differently at the cut; shorten until the templated prompt fits.
    while keep > 0:
        cut = tokenizer.decode(question_ids[-keep:])
        if len(prompt_token_ids(tokenizer, cut)) <= max_prompt_length:
            return cut
        keep -= 1
    raise UserError(f"dpo.max_prompt_length {max_prompt_length}: no part of the question fits")


def fit_prompts(pairs: list[dict], tokenizer, max_prompt_length: int) -> tuple[list[dict], int]:
    """Pairs with questions cut to ``max_prompt_length`` tokens, and how many were cut."""
    out, cut = [], 0
    for pair in pairs:
        question = pair["prompt"][0]["content"]
        fitted = fit_question(tokenizer, question, max_prompt_length)
        cut += fitted != question
        out.append({**pair, "prompt": prompt_messages(fitted)})
    return out, cut


def preference_dataset(pairs: list[dict]):
    """A ``datasets.Dataset`` in trl's conversational preference format."""
    from datasets import Dataset

    return Dataset.from_list(pairs)
