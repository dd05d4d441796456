"""Grading: read a response's final answer and compare it with the gold one. Every benchmark uses this.

A response is the assistant turn after the prompt's think marker (s1 format,
formatting.py): ``{thinking}\\n<|im_start|>answer\\n{attempt}``. The answer is
read from the attempt only, after the *last* answer marker: the last
``\\boxed{}`` (or ``\\fbox{}``), else the last ``Answer:`` line, as s1's
evaluation does. Then, by kind:

- ``integer`` (AIME, the synthetic world): equal integer values (``033`` = ``33``);
- ``math`` (MATH500): math-verify equivalence (``\\frac{1}{2}`` = ``0.5``, units, intervals, ``x=3`` = ``3``);
- ``choice`` (GPQA): the option letter, or an option's text given instead of its letter.

A response with no answer marker never left the thinking (cut off by the token
limit, or never closed it): it is wrong with status ``truncated``. An attempt
with nothing to read (no box, no ``Answer:`` line; for GPQA no option) is wrong
with status ``unparsed``. Both are counted by the caller; no answer is ever
guessed (no default letter).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reverse_align.formatting import last_boxed

ANSWER_MARKER = "<|im_start|>answer"
INTEGER, MATH, CHOICE = "integer", "math", "choice"
KINDS = (INTEGER, MATH, CHOICE)
# status of a graded response
OK, TRUNCATED, UNPARSED = "ok", "truncated", "unparsed"
LETTERS = "ABCD"

_ANSWER_LINE = re.compile(r"answer\s*[:：]\s*(.+)", re.IGNORECASE)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
_LETTER = re.compile(r"^\(?([A-D])\)?(?:[.:)]|\s|$)")


@dataclass(frozen=True)
class Graded:
    extracted: str | None  # the answer read from the response (None: nothing readable)
    correct: bool
    status: str  # OK, TRUNCATED or UNPARSED


def attempt_part(response: str, marker_required: bool = True) -> str | None:
    """The text after the last answer marker; None when there is none (still thinking).

    ``marker_required=False`` reads the whole response when the marker is absent
    (a model never trained on the s1 format).
    """
    at = response.rfind(ANSWER_MARKER)
    if at < 0:
        return None if marker_required else response
    return response[at + len(ANSWER_MARKER) :].lstrip("\n")


def extract_answer(attempt: str) -> str | None:
    """The last box, else the last ``Answer:`` line (markdown bold and a trailing period dropped)."""
    boxed = last_boxed(attempt)
    if boxed:
        return boxed
    lines = _ANSWER_LINE.findall(attempt.replace("**", ""))
    if lines:
        answer = lines[-1].strip().strip("$").strip()
        return answer.rstrip(".").strip() or None
    return None


def _plain(text: str) -> str:
    """Drop LaTeX wrappers that do not change a value: $, \\text{}, \\left/\\right, thousands separators."""
    previous = None
    while previous != text:
        previous, text = text, _TEXT_WRAPPER.sub(r"\1", text)
    for token in ("$", "\\left", "\\right", "\\!", "\\,", "{,}", "\\%", "^\\circ", "^{\\circ}"):
        text = text.replace(token, "")
    return text.strip()


def integer_value(answer: str) -> int | None:
    """The integer an answer states (``033``, ``33.0``, ``1,000``, ``\\text{33}``); None if it is not one."""
    text = _plain(answer).replace(",", "").replace(" ", "")
    match = re.fullmatch(r"([-+]?\d+)(?:\.0*)?", text)
    return int(match.group(1)) if match else None


def math_equal(gold: str, answer: str) -> bool:
    """math-verify equivalence of two LaTeX answers (gold first, as math_verify.verify wants)."""
    from math_verify import parse, verify

    gold_parsed, answer_parsed = parse(f"${gold}$"), parse(f"${answer}$")
    if not gold_parsed or not answer_parsed:
        return _plain(gold) == _plain(answer)
    return bool(verify(gold_parsed, answer_parsed))


def _normalized_option(text: str) -> str:
    return " ".join(_plain(text).lower().rstrip(".").split())


def choice_letter(answer: str, choices: list[str]) -> str | None:
    """The option an answer names: its letter (``B``, ``(B)``, ``B) text``), or an option's exact text."""
    text = _plain(answer).strip()
    match = _LETTER.match(text)
    if match:
        return match.group(1)
    wanted = _normalized_option(text)
    for letter, choice in zip(LETTERS, choices):
        if wanted and wanted == _normalized_option(choice):
            return letter
    return None


def grade(
    kind: str, response: str, gold: str, choices: list[str] | None = None, marker_required: bool = True
) -> Graded:
    """Grade one response of a benchmark of ``kind`` against ``gold`` (GPQA: the gold letter)."""
    if kind not in KINDS:
        raise ValueError(f"unknown grading kind {kind!r}; expected one of {KINDS}")
    attempt = attempt_part(response, marker_required)
    if attempt is None:
        return Graded(None, False, TRUNCATED)
    answer = extract_answer(attempt)
    if answer is None:
        return Graded(None, False, UNPARSED)
    if kind == INTEGER:
        value, gold_value = integer_value(answer), integer_value(str(gold))
        return Graded(answer, value is not None and value == gold_value, OK)
    if kind == MATH:
        return Graded(answer, math_equal(str(gold), answer), OK)
    letter = choice_letter(answer, choices or [])
    if letter is None:
        return Graded(answer, False, UNPARSED)
    return Graded(letter, letter == gold, OK)
