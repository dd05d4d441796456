"""Grading on hand-written responses (issue 12): every benchmark reads answers through eval/grading.py."""

import pytest

from reverse_align.eval.grading import CHOICE, INTEGER, MATH, OK, TRUNCATED, UNPARSED, grade

THINK = "Let me work this out.\nFirst, 2 + 2 = 4, so maybe \\boxed{4} is wrong.\n"


def respond(attempt: str) -> str:
    """A response in the s1 format: thinking, the answer marker, the attempt."""
    return f"{THINK}<|im_start|>answer\n{attempt}"


@pytest.mark.parametrize(
    "gold, attempt",
    [
        ("\\frac{1}{2}", "The answer is \\boxed{0.5}."),
        ("0.5", "So \\boxed{\\dfrac{1}{2}}"),
        ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\dfrac{\\sqrt3}{2}}"),
        ("10", "The length is \\boxed{10\\text{ cm}}."),
        ("(1,3]", "\\boxed{(1, 3]}"),
        ("3", "\\boxed{x=3}"),
        ("90^\\circ", "\\boxed{90}"),
        ("\\frac{1}{2}", "Answer: 1/2"),
    ],
)
def test_math_equivalent_forms_are_correct(gold, attempt):
    graded = grade(MATH, respond(attempt), gold)
    assert graded.status == OK and graded.correct, graded


@pytest.mark.parametrize(
    "gold, attempt",
    [
        ("(1,3]", "\\boxed{[1,3]}"),
        ("3", "\\boxed{x=4}"),
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
        ("2", "\\boxed{-2}"),
    ],
)
def test_math_different_answers_are_wrong(gold, attempt):
    graded = grade(MATH, respond(attempt), gold)
    assert graded.status == OK and not graded.correct, graded


def test_last_box_of_the_attempt_counts_not_the_thinking():
    # The thinking boxes 4; the attempt boxes 7 then 9: the last box of the attempt is the answer.
    graded = grade(INTEGER, respond("First \\boxed{7}, no: \\boxed{9}."), "9")
    assert (graded.extracted, graded.correct) == ("9", True)
    assert not grade(INTEGER, respond("\\boxed{9}"), "4").correct


@pytest.mark.parametrize(
    "gold, attempt", [("33", "\\boxed{033}"), ("033", "\\boxed{33}"), ("7", "\\boxed{007}"), ("204", "Answer: $204$")]
)
def test_aime_compares_integer_values(gold, attempt):
    assert grade(INTEGER, respond(attempt), gold).correct


def test_aime_non_integer_answer_is_wrong_not_unparsed():
    graded = grade(INTEGER, respond("\\boxed{\\frac{33}{2}}"), "33")
    assert (graded.status, graded.correct, graded.extracted) == (OK, False, "\\frac{33}{2}")


CHOICES = ["Helium", "Neon", "Argon", "Krypton"]


@pytest.mark.parametrize(
    "attempt", ["Answer: C", "\\boxed{C}", "\\boxed{(C)}", "Answer: (C) Argon", "\\boxed{\\text{C}}"]
)
def test_gpqa_letter(attempt):
    graded = grade(CHOICE, respond(attempt), "C", CHOICES)
    assert (graded.extracted, graded.correct) == ("C", True)


@pytest.mark.parametrize("attempt", ["Answer: Argon", "\\boxed{\\text{argon}}", "Answer: argon."])
def test_gpqa_answer_given_as_option_text_counts(attempt):
    graded = grade(CHOICE, respond(attempt), "C", CHOICES)
    assert (graded.extracted, graded.correct, graded.status) == ("C", True, OK)


def test_gpqa_unreadable_answer_is_unparsed_never_a_default_letter():
    graded = grade(CHOICE, respond("Answer: Xenon"), "A", CHOICES)
    assert (graded.extracted, graded.correct, graded.status) == ("Xenon", False, UNPARSED)
    # gold A and an empty attempt: no default "A" is ever assumed
    graded = grade(CHOICE, respond("I am not sure."), "A", CHOICES)
    assert (graded.correct, graded.status) == (False, UNPARSED)


@pytest.mark.parametrize("kind, gold", [(INTEGER, "4"), (MATH, "4"), (CHOICE, "A")])
def test_cut_off_inside_the_thinking_is_wrong_even_with_a_box_in_it(kind, gold):
    # No answer marker: the response never left the thinking. The box in the thinking is not an answer.
    graded = grade(kind, THINK + "Now 4 * 3 = ", gold, CHOICES)
    assert (graded.extracted, graded.correct, graded.status) == (None, False, TRUNCATED)


def test_marker_optional_reads_whole_response():
    graded = grade(INTEGER, "The sum is \\boxed{4}.", "4", marker_required=False)
    assert graded.correct and graded.status == OK


@pytest.mark.parametrize("attempt", ["", "The final number is", "The final number is \\boxed{1", "I give up."])
def test_unparseable_attempt_is_wrong_and_unparsed(attempt):
    graded = grade(INTEGER, respond(attempt), "1")
    assert (graded.extracted, graded.correct, graded.status) == (None, False, UNPARSED)


def test_answer_after_the_last_marker_when_the_model_repeats_it():
    response = respond("\\boxed{1}") + "\n<|im_start|>answer\n\\boxed{2}"
    assert grade(INTEGER, response, "2").correct
