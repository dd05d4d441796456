"""How a record becomes a chat example, and how an answer is read back.

The s1 convention (PROTOCOL §1): a Qwen chat whose assistant turn is
``<|im_start|>think\\n{trace}\\n<|im_start|>answer\\n{attempt}``. Training,
DPO, the ALP probe and evaluation all use these functions, so the template a
model is probed or graded with is the one it was trained on.
"""

from __future__ import annotations

from reverse_align.data.schema import Record

THINK_MARKER = "<|im_start|>think\n"
ANSWER_MARKER = "<|im_start|>answer\n"


def assistant_turn(thinking: str, attempt: str) -> str:
    return f"{THINK_MARKER}{thinking}\n{ANSWER_MARKER}{attempt}"


def record_assistant_turn(record: Record) -> str:
    return assistant_turn(record.thinking, record.attempt)


def prompt_messages(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def chat_messages(record: Record) -> list[dict]:
    """The full conversation of one training example."""
    return prompt_messages(record.question) + [{"role": "assistant", "content": record_assistant_turn(record)}]


BOX_OPENERS = ("\\boxed{", "\\fbox{")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched; None if there is none or
    it is cut off inside the box. Training data, teachers and grading all read answers through this."""
    start, opener = max((text.rfind(o), o) for o in BOX_OPENERS)
    if start < 0:
        return None
    depth, begin = 0, start + len(opener)
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i].strip()
            depth -= 1
    return None
