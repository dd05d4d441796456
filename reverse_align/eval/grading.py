"""Grading: read a response's final answer and compare it with the gold one. Every benchmark uses this.

A response is the assistant turn after the prompt's think marker (s1 format,
formatting.py): ``{thinking}\\n<|im_start|>answer\\n{attempt}``. The answer is
read from the attempt only, after the *last* answer marker, by the first of
these rules that gives an answer of the benchmark's kind (the rule is
``Graded.extracted_by``, a column of ``eval/samples/<benchmark>.json``):

1. ``boxed``: the last ``\\boxed{}`` / ``\\fbox{}`` (s1; lm-eval's ``aime`` and
   ``minerva_math`` read the last box too);
2. ``answer_colon``: the last ``Answer:`` line (simple-evals' ``Answer\\s*:``
   patterns, which the GPQA prompt asks for in the last line; markdown bold,
   ``$`` and a trailing period dropped; minerva's ``Final Answer: The final
   answer is X. I hope it is correct.`` reads X);
3. ``the_answer_is``: the last "the (final) answer is X" (lm-eval's gpqa
   ``strict-match`` filter, minerva's answer sentence);
4. ``last_line``: the attempt's last line when it is the bare answer and
   nothing else (an integer; a letter or an option's text; for MATH a lone
   ``$...$`` / ``\\[...\\]`` span or a spaceless expression), which is what lm-eval's
   ``aime`` grades when a short answer has no box;
5. ``option_letter`` (GPQA only): the last ``(X)`` (lm-eval's gpqa
   ``flexible-extract`` filter, ``multi_choice_regex`` with ``(\\([A-Z]\\))``), else the
   last ``: X`` with X standing alone (that filter's fallback).

Then, by kind:

- ``integer`` (AIME, the synthetic world): equal integer values (``033`` = ``33``);
- ``math`` (MATH500): math-verify equivalence (``\\frac{1}{2}`` = ``0.5``, units, intervals, ``x=3`` = ``3``);
- ``choice`` (GPQA): the option letter, or an option's text given instead of its letter.

A response with no answer marker never left the thinking (cut off by the token
limit, or never closed it): it is wrong with status ``truncated``. An attempt
with nothing to read (no rule applies; for GPQA no option) is wrong with
status ``unparsed``, ``extracted_by`` ``none``. Both are counted by the caller;
no answer is ever guessed (no default letter).

Where we grade differently from the references, deliberately (the agreement
table tests/data/grading_agreement.yaml lists each case; ``python
bench/grading_agreement.py`` prints the counts):

- only the attempt is read, never the thinking: lm-eval and simple-evals search
  the whole response, so a box or ``Answer:`` inside the thinking of a truncated
  response counts for them, an exploratory one can beat the final one for
  simple-evals (its ``re.search`` takes the *first* ``Answer:``);
- the *last* stated answer counts (the prompt asks for it in the last line);
- AIME answers are compared as integers: ``033`` is ``33`` (lm-eval's ``aime``
  compares normalised strings and marks ``033`` wrong);
- an option's text counts only as the whole stated answer, not when it is merely
  mentioned (lm-eval's fallback takes the last option text anywhere), and a
  ``: X`` letter must stand alone (lm-eval's ``:[\\s]*(A|B|C|D)`` reads ``: Because``
  as B);
- MATH equivalence is math-verify's on the extracted answer, not minerva's
  string normalisation (stricter in places, e.g. ``\\text{}`` units) nor
  simple-evals' LLM equality check.
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
# which rule read the answer (Graded.extracted_by), in the order they are tried
BOXED, ANSWER_COLON, THE_ANSWER_IS, LAST_LINE, OPTION_LETTER, NO_RULE = (
    "boxed", "answer_colon", "the_answer_is", "last_line", "option_letter", "none"
)  # fmt: skip
EXTRACTION_RULES = (BOXED, ANSWER_COLON, THE_ANSWER_IS, LAST_LINE, OPTION_LETTER, NO_RULE)

_ANSWER_LINE = re.compile(r"answer\s*[:：]\s*(.+)", re.IGNORECASE)
_THE_ANSWER_IS = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\b\s*[:：]?\s*([^\n]+)", re.IGNORECASE)
# minerva_math's answer sentence ends so; what follows the answer is not part of it
_HOPE = re.compile(r"\s*I hope it is correct\.?\s*$", re.IGNORECASE)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
_LETTER = re.compile(r"^\(?([A-D])\)?(?:[.:)]|\s|$)")
# a letter alone on a line: "C", "(C)", "C." (not "A" opening a sentence)
_BARE_LETTER = re.compile(r"^\(?([A-D])\)?\.?$")
_PAREN_LETTER = re.compile(r"\(([A-D])\)")
_COLON_LETTER = re.compile(r"[:：]\s*\(?([A-D])\)?(?![\w])")
_MATH_SPAN = re.compile(r"^(?:\$\$?([^$]+)\$\$?|\\\[(.+?)\\\]|\\\((.+?)\\\))$")
# a number, interval, fraction or root written without spaces ("-3", "(1,3]", "\frac{1}{2}")
_SPACELESS_MATH = re.compile(r"^[-+]?(?:\d|\.\d|\(|\[|\\[dt]?frac|\\sqrt|\\pi|\\infty)\S*$")
# lines that only open or close a display ("\[", "\]", "$$"): the answer is the line inside
_DISPLAY_FENCE = re.compile(r"^\s*(?:\\\[|\\\]|\$\$)\s*$")


@dataclass(frozen=True)
class Graded:
    extracted: str | None  # the answer read from the response (None: nothing readable)
    correct: bool
    status: str  # OK, TRUNCATED or UNPARSED
    extracted_by: str = NO_RULE  # the rule of EXTRACTION_RULES that read ``extracted``


def attempt_part(response: str, marker_required: bool = True) -> str | None:
    """The text after the last answer marker; None when there is none (still thinking).

    ``marker_required=False`` reads the whole response when the marker is absent
    (a model never trained on the s1 format).
    """
    at = response.rfind(ANSWER_MARKER)
    if at < 0:
        return None if marker_required else response
    return response[at + len(ANSWER_MARKER) :].lstrip("\n")


def _clean(text: str) -> str | None:
    """A stated answer without its wrapping: ``$``, markdown bold, a trailing period."""
    answer = text.replace("**", "").strip().strip("$").strip()
    return answer.rstrip(".").strip().strip("$").strip() or None


def _the_answer_is(text: str) -> str | None:
    found = _THE_ANSWER_IS.findall(text.replace("**", ""))
    return _clean(_HOPE.sub("", found[-1])) if found else None


def _answer_colon(attempt: str) -> str | None:
    lines = _ANSWER_LINE.findall(attempt.replace("**", ""))
    if not lines:
        return None
    line = _HOPE.sub("", lines[-1])
    # "Final Answer: The final answer is $X$." (minerva's few-shot form) states X
    return _the_answer_is(line) or _clean(line)


def _last_line(attempt: str) -> str | None:
    lines = [line for line in attempt.replace("**", "").splitlines() if line.strip() and not _DISPLAY_FENCE.match(line)]
    return lines[-1].strip() if lines else None


def _bare_answer(line: str, kind: str, choices: list[str]) -> str | None:
    """``line`` when it is nothing but an answer of ``kind`` (the ``last_line`` rule); else None."""
    if kind == INTEGER:
        text = line.rstrip(".").strip().strip("$")
        return text if integer_value(text) is not None else None
    if kind == CHOICE:
        text = _plain(line)
        if _BARE_LETTER.match(text) or any(_normalized_option(text) == _normalized_option(c) for c in choices):
            return text
        return None
    span = _MATH_SPAN.match(line.rstrip(".").strip())
    if span:
        return next(g for g in span.groups() if g is not None).strip().rstrip(".").strip() or None
    text = line.rstrip(".").strip()
    return text if _SPACELESS_MATH.match(text) else None


def _option_letter(attempt: str) -> str | None:
    found = _PAREN_LETTER.findall(attempt) or _COLON_LETTER.findall(attempt.replace("**", ""))
    return found[-1] if found else None


def _candidates(attempt: str, kind: str, choices: list[str]):
    """(rule, answer text) for each rule that reads something, in the order they are tried."""
    yield BOXED, last_boxed(attempt)
    yield ANSWER_COLON, _answer_colon(attempt)
    yield THE_ANSWER_IS, _the_answer_is(attempt)
    line = _last_line(attempt)
    yield LAST_LINE, _bare_answer(line, kind, choices) if line else None
    if kind == CHOICE:
        yield OPTION_LETTER, _option_letter(attempt)


def _readable(answer: str, kind: str, choices: list[str]) -> bool:
    if kind == INTEGER:
        return integer_value(answer) is not None
    if kind == CHOICE:
        return choice_letter(answer, choices) is not None
    return True


def extract(attempt: str, kind: str = MATH, choices: list[str] | None = None) -> tuple[str | None, str]:
    """(answer, rule): the first rule's answer that is readable as ``kind``; when none is, the first
    answer read at all (graded wrong, or unparsed for GPQA); ``(None, NO_RULE)`` when nothing is."""
    choices = choices or []
    first = None
    for rule, answer in _candidates(attempt, kind, choices):
        if not answer:
            continue
        if _readable(answer, kind, choices):
            return answer, rule
        first = first or (answer, rule)
    return first or (None, NO_RULE)


def extract_answer(attempt: str, kind: str = MATH, choices: list[str] | None = None) -> str | None:
    """The answer ``extract`` reads (the last box, else the last ``Answer:`` line, else ...)."""
    return extract(attempt, kind, choices)[0]


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
    answer, rule = extract(attempt, kind, choices)
    if answer is None:
        return Graded(None, False, UNPARSED)
    if kind == INTEGER:
        value, gold_value = integer_value(answer), integer_value(str(gold))
        return Graded(answer, value is not None and value == gold_value, OK, rule)
    if kind == MATH:
        return Graded(answer, math_equal(str(gold), answer), OK, rule)
    letter = choice_letter(answer, choices or [])
    if letter is None:
        return Graded(answer, False, UNPARSED, rule)
    return Graded(letter, letter == gold, OK, rule)
