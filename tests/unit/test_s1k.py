import json

import pandas as pd
import pytest

from reverse_align.data.s1k import S1K_11_COLUMNS, load_s1k
from reverse_align.errors import UserError


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


def words(text):
    return len(text.split())


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
    assert stats == {"rows": 2, "deepseek": 1, "gemini_fallback": 1, "gemini": 0}


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
