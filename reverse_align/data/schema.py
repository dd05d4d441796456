"""The record schema shared by real and synthetic data (INTERFACE.md, "Records")."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from reverse_align.errors import UserError

FORWARD = "forward"
REVERSE = "reverse"
DIRECTIONS = (FORWARD, REVERSE)


@dataclass
class Record:
    id: str
    pair_id: str
    direction: str
    question: str
    thinking: str
    attempt: str
    gold: str | None
    source: str
    # s1K forward items: the reference worked solution, whose final answer is `gold`. Optional (not in
    # INTERFACE.md's record): the teacher is shown it as the forward "Answer" (appendix A.5).
    solution: str | None = None

    def to_dict(self) -> dict:
        """INTERFACE.md's fields, plus an optional field only when it is set."""
        return {k: v for k, v in asdict(self).items() if k not in OPTIONAL or v is not None}

    @classmethod
    def from_dict(cls, raw: dict, where: str = "record") -> "Record":
        missing = [name for name in FIELDS if name not in raw]
        if missing:
            raise UserError(f"{where}: missing field(s) {', '.join(missing)}")
        if raw["direction"] not in DIRECTIONS:
            raise UserError(f"{where}: direction must be forward or reverse, got {raw['direction']!r}")
        return cls(**{name: raw[name] for name in FIELDS}, **{name: raw[name] for name in OPTIONAL if name in raw})


OPTIONAL = ("solution",)
FIELDS = tuple(name for name in Record.__dataclass_fields__ if name not in OPTIONAL)


def write_jsonl(records: Iterable[Record | dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for record in records:
            row = record.to_dict() if isinstance(record, Record) else record
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[Record]:
    """Read records, failing with the file and line of the first bad one."""
    path = Path(path)
    records = []
    with path.open() as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {number}: malformed JSON ({exc.msg})") from None
            records.append(Record.from_dict(raw, f"{path} line {number}"))
    return records
