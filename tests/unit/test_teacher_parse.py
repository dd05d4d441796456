"""The teacher's answers, as real servers format them, read back or rejected with a reason."""

import pytest

from reverse_align.data import teacher_parse as tp
from reverse_align.data.teacher import REVERSE_TEMPLATE, SOLUTION_TEMPLATE, fill, forward_answer, load_templates
from reverse_align.config import InvertConfig
from reverse_align.data.schema import Record
from reverse_align.errors import UserError

OLD = "Find any quadruple of positive integers (a, b, c, d) satisfying a^3 + b^4 + c^5 = d^11 and abc < 10^5."
NEW_Q = "The quadruples (128, 32, 16, 4) and (160, 16, 8, 4) satisfy which equation?"
NEW_A = "a^3 + b^4 + c^5 = 4^{11}, with abc < 10^5."


@pytest.mark.parametrize(
    "text",
    [
        f"- New Question: {NEW_Q}\n- New Answer: {NEW_A}",
        f"New Question: {NEW_Q}\nNew Answer: {NEW_A}",
        f"**New Question:** {NEW_Q}\n\n**New Answer:** {NEW_A}",
        f"- **New Question**: {NEW_Q}\n- **New Answer**: {NEW_A}",
        f"### New Question\n{NEW_Q}\n\n### New Answer\n{NEW_A}\n\n---",
        f"Sure! Here is the exercise.\n\n1. New question: {NEW_Q}\n2. New answer: {NEW_A}",
        f"* NEW QUESTION: \"{NEW_Q}\"\n* NEW ANSWER: {NEW_A}",
        # The format echoed first, then the real thing.
        f"Expected output:\n- New Question:\n- New Answer:\n\n- New Question: {NEW_Q}\n- New Answer: {NEW_A}",
        # Both on one line.
        f"New Question: {NEW_Q} New Answer: {NEW_A}",
        # Reasoning in <think> tags inside the content.
        f"<think>Swap the roles.</think>\n- New Question: {NEW_Q}\n- New Answer: {NEW_A}",
    ],
)
def test_reverse_markers_in_every_dress(text):
    question, answer = tp.parse_reverse(tp.Answer(text), OLD)
    assert question == NEW_Q
    assert answer == NEW_A


def test_reverse_answer_keeps_multiline_text():
    text = f"- New Question:\n{NEW_Q}\n- New Answer:\nFirst line.\n\nSecond line with $x^2$."
    assert tp.parse_reverse(tp.Answer(text), OLD) == (NEW_Q, "First line.\n\nSecond line with $x^2$.")


@pytest.mark.parametrize(
    "answer, reason",
    [
        (tp.Answer(""), tp.EMPTY_RESPONSE),
        (tp.Answer("", reasoning="long thoughts only"), tp.EMPTY_RESPONSE),
        (tp.Answer("<think>never closed, ran out"), tp.EMPTY_RESPONSE),
        (tp.Answer("What a lovely question about reflection."), tp.UNPARSEABLE),
        (tp.Answer(f"New Question: {NEW_Q}"), tp.UNPARSEABLE),
        (tp.Answer(f"- New Question:\n- New Answer: {NEW_A}"), tp.EMPTY_NEW_QUESTION),
        (tp.Answer(f"- New Question: {NEW_Q}\n- New Answer:   "), tp.EMPTY_NEW_ANSWER),
        (tp.Answer(f"- New Question: {OLD.upper()}\n- New Answer: {NEW_A}"), tp.SAME_QUESTION),
        (tp.Answer(f"- New Question: {NEW_Q}\n- New Answer: a^3", finish_reason="length"), tp.TRUNCATED),
        (tp.Answer("", finish_reason="content_filter"), tp.CONTENT_FILTER),
        (tp.Answer("", refusal="I can't help with that."), tp.CONTENT_FILTER),
    ],
)
def test_reverse_rejections_have_reasons(answer, reason):
    with pytest.raises(tp.Rejected) as caught:
        tp.parse_reverse(answer, OLD)
    assert caught.value.reason == reason
    assert reason in tp.REASONS


@pytest.mark.parametrize(
    "answer, thinking",
    [
        # DeepSeek API / vLLM reasoning parser
        (tp.Answer("So the start is \\boxed{42}.", reasoning="undo the steps"), "undo the steps"),
        # reasoning inside <think> tags
        (tp.Answer("<think>\nundo the steps\n</think>\n\nSo the start is \\boxed{42}."), "undo the steps"),
        # R1 distill: the opening tag was in the prompt
        (tp.Answer("undo the steps\n</think>\nSo the start is \\boxed{42}."), "undo the steps"),
        # no reasoning at all
        (tp.Answer("So the start is \\boxed{42}."), ""),
    ],
)
def test_solution_from_all_three_server_styles(answer, thinking):
    solution = tp.parse_solution(answer)
    assert solution == tp.Solution(thinking=thinking, attempt="So the start is \\boxed{42}.", gold="42")


def test_solution_gold_is_the_last_boxed_with_nested_braces():
    solution = tp.parse_solution(tp.Answer("First \\boxed{1}, finally \\boxed{\\frac{1}{2}}."))
    assert solution.gold == "\\frac{1}{2}"


@pytest.mark.parametrize("text", ["The equation is $a^3 + b^4 + c^5 = 4^{11}$.", "The answer is \\boxed{}."])
def test_solution_without_a_box_is_kept_with_gold_null(text):
    # A.5's reverse answer is an equation: the template asks for a box only for a single number.
    solution = tp.parse_solution(tp.Answer(text, reasoning="r"))
    assert solution == tp.Solution(thinking="r", attempt=text, gold=None)


@pytest.mark.parametrize(
    "answer, reason",
    [
        (tp.Answer("", reasoning="thinking..."), tp.EMPTY_RESPONSE),
        (tp.Answer("The answer is \\boxed{4", finish_reason="length"), tp.TRUNCATED),
    ],
)
def test_solution_rejections(answer, reason):
    with pytest.raises(tp.Rejected) as caught:
        tp.parse_solution(answer)
    assert caught.value.reason == reason


def test_shipped_templates_are_the_papers_and_fill_literally():
    templates = load_templates(InvertConfig())
    assert "You are an AI model tasked with generating a reflective thinking exercise." in templates.reverse
    assert "- New Question:\n- New Answer:" in templates.reverse
    assert "Ensure your answer is absolutely correct and standard." in templates.solution
    prompt = fill(templates.solution, question="What is {x}?")
    assert "- Question: What is {x}?" in prompt and "\\boxed{}" in prompt
    record = Record("p-f", "p", "forward", "Q?", "t", "attempt text", "gold text", "s")
    assert forward_answer(record) == "gold text"
    assert forward_answer(Record("p-f", "p", "forward", "Q?", "t", "attempt text", None, "s")) == "attempt text"
    assert REVERSE_TEMPLATE.name == "reverse.v1.txt" and SOLUTION_TEMPLATE.name == "solution.v1.txt"


def test_template_override_must_exist_and_have_placeholders(tmp_path):
    with pytest.raises(UserError, match="invert.reverse_template: template file .* not found"):
        load_templates(InvertConfig(reverse_template=str(tmp_path / "missing.txt")))
    bad = tmp_path / "bad.txt"
    bad.write_text("Question: {question}")
    with pytest.raises(UserError, match=r"lacks the placeholder\(s\) \{answer\}"):
        load_templates(InvertConfig(reverse_template=str(bad)))
    good = tmp_path / "good.txt"
    good.write_text("Solve: {question}")
    assert load_templates(InvertConfig(solution_template=str(good))).solution == "Solve: {question}"


# -- endpoint and Retry-After (reverse_align.data.teacher_client) ---------------------------------


@pytest.fixture()
def clean_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "DEEPSEEK_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_endpoint_from_parameters_then_environment(clean_env):
    from reverse_align.data.teacher_client import DEEPSEEK_BASE_URL, resolve_endpoint

    clean_env.setenv("OPENAI_API_KEY", "sk-openai")
    clean_env.setenv("OPENAI_BASE_URL", "http://vllm:8000/v1")
    assert resolve_endpoint(InvertConfig()) == resolve_endpoint(InvertConfig(base_url="http://vllm:8000/v1"))
    assert resolve_endpoint(InvertConfig()).api_key == "sk-openai"
    assert resolve_endpoint(InvertConfig(), api_key="sk-param").api_key == "sk-param"
    clean_env.setenv("DEEPSEEK_API_KEY", "sk-deepseek")
    deepseek = resolve_endpoint(InvertConfig(base_url="https://api.deepseek.com"))
    assert deepseek.api_key == "sk-deepseek"  # a DeepSeek endpoint prefers its own key
    clean_env.delenv("OPENAI_API_KEY")
    clean_env.delenv("OPENAI_BASE_URL")
    only_deepseek = resolve_endpoint(InvertConfig())
    assert only_deepseek.base_url == DEEPSEEK_BASE_URL and only_deepseek.api_key == "sk-deepseek"
    assert "sk-deepseek" not in repr(only_deepseek)


def test_retry_after_in_milliseconds_seconds_or_a_date():
    import email.utils
    import time

    from reverse_align.data.teacher_client import retry_after_seconds

    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds({"retry-after": date}) <= 30
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
