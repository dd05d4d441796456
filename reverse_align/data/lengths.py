"""The one rule for an example longer than ``model.max_length`` tokens, wherever it is met.

Length is measured as SFT trains the example: the whole chat (``formatting.chat_messages``)
through the model's chat template, special tokens included. The rule (``RULE``, logged on
every data, invert and sft run as tag ``reverse_align.length_rule``):

1. it fits: kept as is;
2. it does not: the *thinking* keeps its start and loses its end, in the model's tokens,
   until the whole example fits (``THINKING_CUT``); question and answer are never cut, so
   the training target still ends in the answer it is graded on;
3. it does not fit even with an empty thinking: dropped (``DROPPED``) and counted.

The s1K loader applies it after the DeepSeek -> Gemini fallback (``data.s1k``), invert to
every reverse, and SFT to every example of its mix (a shorter ``model.max_length`` there).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from reverse_align.data.schema import Record
from reverse_align.formatting import chat_messages

RULE = (
    "over model.max_length tokens (chat template included): the thinking keeps its start and is cut to fit; "
    "question and answer are never cut; an example that does not fit with an empty thinking is dropped"
)
KEPT = "kept"
THINKING_CUT = "thinking_cut"
DROPPED = "dropped"


class Lengths(Protocol):
    def example(self, record: Record) -> int: ...  # tokens of the example as SFT renders it

    def text(self, text: str) -> int: ...  # tokens of a piece of text

    def prefix(self, text: str, tokens: int) -> str: ...  # the first `tokens` tokens of text, as text


class TokenizerLengths:
    """:class:`Lengths` in a model's tokens, chat template included."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def example(self, record: Record) -> int:
        return example_tokens(self.tokenizer, record)

    def text(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix(self, text: str, tokens: int) -> str:
        return self.tokenizer.decode(self.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens])


def example_tokens(tokenizer, record: Record) -> int:
    """Tokens of the full chat-formatted example, exactly as SFT tokenizes it."""
    return len(tokenizer.apply_chat_template(chat_messages(record), tokenize=True, return_dict=True)["input_ids"])


def fit(record: Record, lengths: Lengths, max_length: int) -> tuple[Record | None, str]:
    """``(record, KEPT)``, ``(record with its thinking cut, THINKING_CUT)`` or ``(None, DROPPED)``."""
    if lengths.example(record) <= max_length:
        return record, KEPT
    if lengths.example(dataclasses.replace(record, thinking="")) > max_length:
        return None, DROPPED
    # The longest start of the thinking that fits (binary search: lengths grow with the kept tokens).
    low, high = 0, lengths.text(record.thinking)
    while low < high:
        middle = (low + high + 1) // 2
        if lengths.example(dataclasses.replace(record, thinking=lengths.prefix(record.thinking, middle))) <= max_length:
            low = middle
        else:
            high = middle - 1
    return dataclasses.replace(record, thinking=lengths.prefix(record.thinking, low)), THINKING_CUT
