"""Reading a teacher's answers: reasoning vs answer, the reverse Q/A, the boxed solution.

Pure functions on text, so that the journal of raw answers can be re-judged
without sending a request again. Every way an answer can be unusable is a
:class:`Rejected` with one of the ``REASONS`` below; the stage counts them and
lists the items in ``data/rejected.jsonl`` instead of failing the run.

Where the reasoning comes from (three server styles):
- DeepSeek API (deepseek-reasoner) and vLLM/SGLang reasoning parsers: a
  separate ``reasoning_content`` (newer vLLM: ``reasoning``) field;
- servers without a reasoning parser: ``<think>...</think>`` inside the content
  (R1 distills often omit the opening tag, which the chat template put in the prompt);
- non-reasoning models: nowhere; the thinking is then empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reverse_align.formatting import last_boxed

# Rejection reasons (metric invert/rejected/<reason>).
TRUNCATED = "truncated"  # finish_reason "length": the answer was cut at max tokens
CONTENT_FILTER = "content_filter"  # finish_reason "content_filter" or a refusal
EMPTY_RESPONSE = "empty_response"  # no answer text at all (reasoning only, or nothing)
UNPARSEABLE = "unparseable"  # no "New Question:" followed by "New Answer:"
EMPTY_NEW_QUESTION = "empty_new_question"
EMPTY_NEW_ANSWER = "empty_new_answer"
SAME_QUESTION = "same_question"  # the "reverse" question is the forward question again
REQUEST_REFUSED = "request_refused"  # the server refused the request itself (4xx, e.g. context too long)
RETRIES_EXHAUSTED = "retries_exhausted"  # 429/5xx/timeouts past invert.max_retries (retried on resume)
REASONS = (
    TRUNCATED,
    CONTENT_FILTER,
    EMPTY_RESPONSE,
    UNPARSEABLE,
    EMPTY_NEW_QUESTION,
    EMPTY_NEW_ANSWER,
    SAME_QUESTION,
    REQUEST_REFUSED,
    RETRIES_EXHAUSTED,
)


class Rejected(Exception):
    """An item the stage leaves out, with the reason and a short excerpt of why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Answer:
    """One teacher answer as the journal keeps it."""

    content: str
    reasoning: str = ""
    finish_reason: str = "stop"
    refusal: str = ""


@dataclass(frozen=True)
class Solution:
    thinking: str
    attempt: str
    gold: str | None


_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
_THINK_OPEN_ONLY = re.compile(r"^\s*<think>(.*)$", re.DOTALL | re.IGNORECASE)


def split_reasoning(answer: Answer) -> tuple[str, str]:
    """(thinking, answer text) from any of the three server styles."""
    content = answer.content or ""
    thinking = (answer.reasoning or "").strip()
    blocks = _THINK_BLOCK.findall(content)
    if blocks:
        thinking = "\n".join(filter(None, [thinking, *(b.strip() for b in blocks)]))
        content = _THINK_BLOCK.sub("", content)
    elif "</think>" in content.lower():
        # The opening <think> was part of the prompt (R1 distill chat templates).
        cut = content.lower().rindex("</think>")
        thinking = "\n".join(filter(None, [thinking, content[:cut].strip()]))
        content = content[cut + len("</think>") :]
    else:
        unclosed = _THINK_OPEN_ONLY.match(content)
        if unclosed:  # reasoning never closed: there is no answer after it
            thinking = "\n".join(filter(None, [thinking, unclosed.group(1).strip()]))
            content = ""
    return thinking, content.strip()


def check_finish(answer: Answer) -> None:
    if answer.finish_reason == "length":
        raise Rejected(TRUNCATED, "finish_reason=length")
    if answer.finish_reason == "content_filter" or answer.refusal:
        raise Rejected(CONTENT_FILTER, _excerpt(answer.refusal or "finish_reason=content_filter"))


# "New Question:" in any dress: "- ", "* ", "1. ", "### ", "**New Question:**", "**New Question**:",
# "New question -", or a heading line "**New Question**" with the text on the next lines.
_DECOR = r"[ \t>*_#\-\d.)]*"
_COLON = r"(?:[ \t]*[*_]{0,3}[ \t]*[:：\-–—][ \t]*[*_]{0,3}|[ \t]*[*_]{0,3}[ \t]*(?=\n))"


def _marker(words: str) -> re.Pattern:
    return re.compile(rf"(?im)^{_DECOR}[*_]{{0,3}}[ \t]*{words}{_COLON}")


_NEW_QUESTION = _marker(r"new[ \t]+question")
_NEW_ANSWER = _marker(r"new[ \t]+answer")
# Fallback when the markers are not at the start of a line: "... New Question: x New Answer: y".
_NEW_QUESTION_INLINE = re.compile(r"(?i)[*_]{0,3}new[ \t]+question[ \t]*[*_]{0,3}[ \t]*[:：][ \t]*[*_]{0,3}")
_NEW_ANSWER_INLINE = re.compile(r"(?i)[*_]{0,3}new[ \t]+answer[ \t]*[*_]{0,3}[ \t]*[:：][ \t]*[*_]{0,3}")


def _clean(text: str) -> str:
    text = text.strip()
    # Trailing horizontal rules and stray emphasis markers left by markdown formatting.
    text = re.sub(r"(?:\n\s*(?:-{3,}|\*{3,}|_{3,})\s*)+$", "", text).strip()
    for mark in ("**", "__"):
        if text.startswith(mark) and text.endswith(mark) and len(text) > 2 * len(mark):
            text = text[len(mark) : -len(mark)].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    if text.startswith("“") and text.endswith("”"):
        text = text[1:-1].strip()
    return text


def _split_markers(text: str, question_re: re.Pattern, answer_re: re.Pattern) -> tuple[str, str] | None:
    # The last "New Question" that has a "New Answer" after it: a teacher may first echo the format.
    for q in reversed(list(question_re.finditer(text))):
        a = answer_re.search(text, q.end())
        if a:
            return text[q.end() : a.start()], text[a.end() :]
    return None


def _normalise(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def parse_reverse(answer: Answer, original_question: str) -> tuple[str, str]:
    """(new question, new answer) from the reverse template's output, or :class:`Rejected`."""
    check_finish(answer)
    _, text = split_reasoning(answer)
    if not text:
        raise Rejected(EMPTY_RESPONSE, "no answer text")
    parts = _split_markers(text, _NEW_QUESTION, _NEW_ANSWER) or _split_markers(
        text, _NEW_QUESTION_INLINE, _NEW_ANSWER_INLINE
    )
    if parts is None:
        raise Rejected(UNPARSEABLE, _excerpt(text))
    question, new_answer = (_clean(p) for p in parts)
    if not question:
        raise Rejected(EMPTY_NEW_QUESTION, _excerpt(text))
    if not new_answer:
        raise Rejected(EMPTY_NEW_ANSWER, _excerpt(text))
    if _normalise(question) == _normalise(original_question):
        raise Rejected(SAME_QUESTION, _excerpt(question))
    return question, new_answer


def parse_solution(answer: Answer) -> Solution:
    """thinking = the reasoning, attempt = the answer text, gold = its last \\boxed{} or None.

    An answer without a box is kept: the solution template asks for a box only when the answer is a
    number, and A.5's reverse answer is an equation. The reasoning and attempt are the training
    target; gold is only for grading, so null means "grade by other means".
    """
    check_finish(answer)
    thinking, attempt = split_reasoning(answer)
    if not attempt:
        raise Rejected(EMPTY_RESPONSE, "no answer text")
    return Solution(thinking=thinking, attempt=attempt, gold=last_boxed(attempt) or None)


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
