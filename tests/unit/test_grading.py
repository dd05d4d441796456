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


# ---------------------------------------------------------------- issue 22: the references' answer forms


@pytest.mark.parametrize(
    "kind, gold, attempt, extracted, rule",
    [
        (INTEGER, "33", "So \\boxed{33}.", "33", "boxed"),
        (INTEGER, "33", "Answer: 33", "33", "answer_colon"),
        (INTEGER, "33", "The final answer is 33.", "33", "the_answer_is"),
        (INTEGER, "33", "Final Answer: The final answer is $33$. I hope it is correct.", "33", "answer_colon"),
        (INTEGER, "33", "Three cases give\n**33**", "33", "last_line"),
        (MATH, "\\frac{1}{2}", "It simplifies to\n\\[\n\\frac{1}{2}\n\\]", "\\frac{1}{2}", "last_line"),
        (MATH, "(1,3]", "The set is\n(1,3]", "(1,3]", "last_line"),
        (CHOICE, "C", "The answer is (C).", "C", "the_answer_is"),
        (CHOICE, "C", "Not (A), so (C) Argon.", "C", "option_letter"),
        (CHOICE, "C", "Final choice: C", "C", "option_letter"),
        (CHOICE, "C", "The heaviest light one.\nC", "C", "last_line"),
        (CHOICE, "C", "It must be the third one.\nArgon", "C", "last_line"),
    ],
)
def test_each_rule_reads_its_form_and_says_so(kind, gold, attempt, extracted, rule):
    graded = grade(kind, respond(attempt), gold, CHOICES)
    assert (graded.extracted, graded.correct, graded.status, graded.extracted_by) == (extracted, True, OK, rule)


@pytest.mark.parametrize(
    "kind, attempt",
    [
        (CHOICE, "A bit more thought would help."),  # a sentence opening with "A" is not option A
        (CHOICE, "Note: Both are inert."),  # ": B" of "Both" is not a letter
        (CHOICE, "Neon and Argon are both inert."),  # options mentioned, none stated
        (MATH, "I give up."),
        (MATH, "$x$ is even and $y$ is odd"),  # two spans on the last line are not one answer
        (INTEGER, "The final number is"),
    ],
)
def test_text_that_states_no_answer_stays_unparsed(kind, attempt):
    graded = grade(kind, respond(attempt), "C" if kind == CHOICE else "4", CHOICES)
    assert (graded.extracted, graded.correct, graded.status, graded.extracted_by) == (None, False, UNPARSED, "none")


def test_a_later_rule_rescues_an_answer_the_first_cannot_read():
    # GPQA: the Answer: line names no option, the parenthesised letter does
    graded = grade(CHOICE, respond("Answer: the heavier noble gas, (C)"), "C", CHOICES)
    assert (graded.extracted, graded.correct, graded.extracted_by) == ("C", True, "option_letter")
    # AIME: a non-integer box is still the answer when nothing else is an integer
    graded = grade(INTEGER, respond("\\boxed{x}\nAnswer: 33"), "33")
    assert (graded.extracted, graded.correct, graded.extracted_by) == ("33", True, "answer_colon")


def test_api_of_before_issue_22_still_works():
    from reverse_align.eval.grading import Graded, extract_answer

    assert Graded("4", True, OK).extracted_by == "none"  # three positional fields, as before
    assert extract_answer("So \\boxed{4} and Answer: 5") == "4"
    assert extract_answer("Answer: **5**.") == "5"
    graded = grade(INTEGER, "No marker here. Answer: 4", "4", marker_required=False)
    assert (graded.correct, graded.extracted_by) == (True, "answer_colon")
