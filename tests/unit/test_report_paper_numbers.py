"""reverse_align/report/paper_numbers.yaml holds PROTOCOL.md §6 exactly, each benchmark by name."""

import re

import pytest

from reverse_align.errors import UserError
from reverse_align.report import paper

# PROTOCOL.md §6, verbatim.
SECTION_6 = """
Table 1 (SFT; AIME / MATH / GPQA / avg):
3B: s1k 3.3/45.2/29.3/25.9; r1k 6.7/43.4/32.2/27.5; 0.5k 0.0/43.6/29.8/24.47; D 0.0/43.0/26.2/23.1.
7B: s1k 16.7/77.0/34.0/42.6; r1k 20.0/77.4/42.4/46.6; 0.5k 13.3/71.8/35.8/40.3; D 6.7/56.0/31.8/31.5.
14B: s1k 20.0/83.2/48.4/50.6; r1k 33.3/86.0/53.0/57.4; D 30.0/81.6/49.1/53.6.
Teacher table (SFT on D_s1k, AIME / GPQA / MATH / avg): 7B Gemini 13.3/33.5/77.4/41.43,
7B R1 16.7/34.0/77.0/42.60; 14B Gemini 16.7/47.2/83.0/48.93, 14B R1 20.0/48.4/83.2/50.60.
DPO on SFT models (AIME / MATH / GPQA / avg, change vs SFT): s1k-7B 13.3/71.8/35.9/40.3 (−2.3);
r1k-7B 16.7/75.4/39.4/43.8 (−2.8); D-7B 16.7/64.2/34.8/38.6 (+7.1); D-14B 40.0/81.2/46.4/55.9 (+2.3).
Direct DPO, no SFT (AIME / GPQA / MATH / avg): 7B 10.0/34.6/59.0/34.53; 14B 20.0/40.2/72.0/44.07.
"""
ROWS = {"s1k": "forward", "r1k": "reverse", "0.5k": "mixed_half", "D": "mixed"}
TABLE_1 = ("aime24", "math500", "gpqa", "average")
AIME_GPQA_MATH = ("aime24", "gpqa", "math500", "average")
NUM = r"(\d+\.\d+)/(\d+\.\d+)/(\d+\.\d+)/(\d+\.\d+)"


def expected() -> list[tuple[str, str, str, str, float]]:
    """(size, table, row, benchmark, value) for every number of §6, read from the text."""
    lines = SECTION_6.strip().splitlines()
    out = []
    for line in lines[1:4]:
        size, rest = line.split(":", 1)
        for name, *values in re.findall(r"(s1k|r1k|0\.5k|D) " + NUM, rest):
            out += [(size.lower(), "sft", ROWS[name], b, float(v)) for b, v in zip(TABLE_1, values)]
    teacher = " ".join(lines[4:6])
    for size, name, *values in re.findall(r"(\d+B) (Gemini|R1) " + NUM, teacher):
        out += [(size.lower(), "teacher", name.lower(), b, float(v)) for b, v in zip(AIME_GPQA_MATH, values)]
    dpo = " ".join(lines[6:8])
    for name, size, *values, change in re.findall(r"(s1k|r1k|D)-(\d+B) " + NUM + r" \(([−+][\d.]+)\)", dpo):
        row = ROWS[name]
        out += [(size.lower(), "dpo", row, b, float(v)) for b, v in zip(TABLE_1, values)]
        out.append((size.lower(), "dpo", row, "average_change", float(change.replace("−", "-"))))
    for size, *values in re.findall(r"(\d+B) " + NUM, lines[8]):
        out += [(size.lower(), "direct", "direct", b, float(v)) for b, v in zip(AIME_GPQA_MATH, values)]
    return out


def test_every_published_number_matches_the_text():
    cells = expected()
    assert len(cells) == 4 * 11 + 4 * 4 + 5 * 4 + 4 * 2  # 11 Table 1 rows, 4 teacher, 4 DPO (+change), 2 direct
    for size, table, row, benchmark, value in cells:
        assert paper.published(size, table, row, benchmark) == pytest.approx(value), (size, table, row, benchmark)
    # Nothing in the file that the text does not have.
    stored = sum(len(v) for s in paper.numbers().values() for t in s.values() for v in t.values())
    assert stored == len(cells)


def test_spot_values_by_benchmark_name():
    # The direct-DPO row prints AIME / GPQA / MATH: GPQA is the second number, MATH500 the third.
    assert paper.published("7b", "direct", "direct", "gpqa") == 34.6
    assert paper.published("7b", "direct", "direct", "math500") == 59.0
    assert paper.published("14b", "sft", "mixed_half", "aime24") is None  # no 0.5k row for 14B
    assert paper.published("3b", "sft", "mixed_half", "average") == 24.47


def test_size_from_preset_or_field():
    assert paper.size_for("paper-7b") == "7b"
    assert paper.size_for("paper-14b") == "14b"
    assert paper.size_for("configs/paper-3b.yaml") == "3b"
    assert paper.size_for("tiny") is None and paper.size_for("micro") is None
    assert paper.size_for("paper-7b", "none") is None
    assert paper.size_for("my-preset", "14b") == "14b"
    with pytest.raises(UserError, match="paper_size"):
        paper.size_for("tiny", "70b")
