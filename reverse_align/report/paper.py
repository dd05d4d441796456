"""PROTOCOL §6's published numbers (paper_numbers.yaml), by model size, table, row and benchmark."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml

from reverse_align.errors import UserError

NUMBERS_FILE = Path(__file__).with_name("paper_numbers.yaml")
NO_PAPER = "none"


@functools.cache
def numbers() -> dict:
    """``{size: {table: {row: {benchmark or "average": percent}}}}`` (tables sft, teacher, dpo, direct)."""
    return yaml.safe_load(NUMBERS_FILE.read_text())


def size_for(preset: str, paper_size: str = "") -> str | None:
    """The model size whose published numbers go beside the cells: ``report.paper_size``, else from the
    preset name (``paper-7b`` -> ``7b``); None for ``none`` or a preset without a size (tiny, micro)."""
    if paper_size == NO_PAPER:
        return None
    if not paper_size:
        found = re.search(r"paper-(\d+b)\b", Path(preset).stem)
        paper_size = found.group(1) if found else ""
    if not paper_size:
        return None
    if paper_size not in numbers():
        raise UserError(f"report.paper_size {paper_size!r}: the paper has {', '.join(numbers())} (or none)")
    return paper_size


def published(size: str | None, table: str, row: str, benchmark: str) -> float | None:
    """The published percent for this cell, or None (no size, or the paper has no such cell)."""
    if size is None:
        return None
    return numbers()[size].get(table, {}).get(row, {}).get(benchmark)
