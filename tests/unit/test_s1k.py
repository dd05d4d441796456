import json

import pandas as pd
import pytest

from reverse_align.data.s1k import S1K_11_COLUMNS, final_answer, load_s1k
from reverse_align.errors import UserError
from reverse_align.formatting import chat_messages


def row(i, deepseek_len=10):
    return {
        "solution": f"{i}",
        "question": f"What is {i}+0?",
        "cot_type": "math",
        "source_type": "test",
        "metadata": "{}",
        "gemini_thinking_trajectory": "gemini thinks",
        "gemini_attempt": f"gemini says \\boxed{{{i}}}",
        "deepseek_thinking_trajectory": "deep " * deepseek_len,
        "deepseek_attempt": f"deepseek says \\boxed{{{i}}}",
        "gemini_grade": "Yes",
        "gemini_grade_reason": "ok",
        "deepseek_grade": "Yes",
        "deepseek_grade_reason": "ok",
    }


class Words:
    """Lengths in words of the whole chat (question + assistant turn), a stand-in for a tokenizer."""

    def example(self, record):
        return sum(len(m["content"].split()) for m in chat_messages(record))

    def text(self, text):
        return len(text.split())

    def prefix(self, text, tokens):
        return " ".join(text.split()[:tokens])


words = Words()


def write(tmp_path, rows, name="s1k.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_real_columns_deepseek_by_default(tmp_path):
    path = write(tmp_path, [row(i) for i in range(3)])
    assert set(row(0)) == set(S1K_11_COLUMNS) and len(S1K_11_COLUMNS) == 13
    records, stats = load_s1k(str(path), words, max_length=1000)
    assert len(records) == 3 and stats["deepseek"] == 3
    r = records[1]
    assert r.direction == "forward" and r.gold == "1" and r.question == "What is 1+0?"
    assert r.thinking.startswith("deep") and "deepseek says" in r.attempt
    assert r.pair_id == "s1k-00001" and r.id == "s1k-00001-f"


def test_gemini_fallback_when_deepseek_too_long(tmp_path):
    path = write(tmp_path, [row(0, deepseek_len=5), row(1, deepseek_len=500)])
    records, stats = load_s1k(str(path), words, max_length=100)
    assert [r.source for r in records] == ["s1k:deepseek", "s1k:gemini_fallback"]
    assert records[1].thinking == "gemini thinks"
    assert stats == {"rows": 2, "deepseek": 1, "gemini_fallback": 1, "gemini": 0, "gold_null": 0, "thinking_cut": 0, "dropped": 0}


def test_fallback_counts_the_chat_not_the_trace(tmp_path):
    # 96 words of trace fit 100 alone, but not with the question, the attempt and the s1 markers around them
    # (3 + 96 + 3 + 2 = 104 words).
    path = write(tmp_path, [row(0, deepseek_len=96)])
    records, stats = load_s1k(str(path), words, max_length=100)
    assert records[0].source == "s1k:gemini_fallback" and stats["gemini_fallback"] == 1
    records, stats = load_s1k(str(path), words, max_length=104)
    assert records[0].source == "s1k:deepseek" and stats["deepseek"] == 1


def test_both_traces_too_long_cut_the_thinking_never_the_answer_or_drop(tmp_path):
    both_long = {**row(0, deepseek_len=500), "gemini_thinking_trajectory": "g " * 300}
    answer_too_long = {**row(1, deepseek_len=500), "gemini_thinking_trajectory": "g " * 300, "gemini_attempt": "a " * 200}
    path = write(tmp_path, [both_long, answer_too_long, row(2)])
    records, stats = load_s1k(str(path), words, max_length=100)
    assert [r.pair_id for r in records] == ["s1k-00000", "s1k-00002"]
    cut = records[0]
    assert cut.source == "s1k:gemini_fallback" and cut.attempt == "gemini says \\boxed{0}"
    assert words.example(cut) == 100 and cut.thinking == " ".join(["g"] * words.text(cut.thinking))
    assert (stats["thinking_cut"], stats["dropped"], stats["gemini_fallback"], stats["deepseek"]) == (1, 1, 1, 1)


@pytest.mark.parametrize(
    "solution, gold",
    [
        ("So $x = 3$, and the answer is \\boxed{3}. Check: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("109", "109"),
        ("1. Expand the product. 2. " + "Then argue by induction on n. " * 10, None),
        (None, None),
    ],
)
def test_gold_is_the_final_answer_and_the_solution_is_kept(tmp_path, solution, gold):
    assert final_answer(solution) == gold
    path = write(tmp_path, [{**row(0), "solution": solution}])
    (record,), stats = load_s1k(str(path), words, max_length=1000)
    assert record.gold == gold and record.solution == solution and stats["gold_null"] == (gold is None)


def test_parquet_and_limit(tmp_path):
    path = tmp_path / "s1k.parquet"
    pd.DataFrame([row(i) for i in range(5)]).to_parquet(path)
    records, _ = load_s1k(str(path), words, max_length=1000, limit=2)
    assert [r.gold for r in records] == ["0", "1"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no rows"),
        ('{"question": "q"}\n', "line 1: missing column"),
        (json.dumps(row(0)) + "\n{not json\n", "line 2: malformed JSON"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as err:
        load_s1k(str(path), words, max_length=100)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_column_on_a_later_line(tmp_path):
    bad = row(1)
    del bad["deepseek_attempt"]
    path = write(tmp_path, [row(0), bad])
    with pytest.raises(UserError, match=r"line 2: missing column\(s\) deepseek_attempt"):
        load_s1k(str(path), words, max_length=100)
