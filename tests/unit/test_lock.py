"""requirements-lock.txt (`make lock`) against pyproject.toml: every requirement locked, pinned and hashed.

A dependency added to pyproject.toml without `make lock` would install unpinned or not at all from
`make setup`; a torch other than the local CPU wheel would pull a multi-GB CUDA build.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from reverse_align import environment

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (the lock is for 3.11)

ROOT = Path(__file__).resolve().parents[2]
# sha256 of torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl (/opt/wheels on this project's machines).
TORCH_SHA = "6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b"


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256, ...])} of a `uv pip compile --generate-hashes` file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?==(\S+)", line):
            name = canonicalize_name(match.group(1))
            assert name not in entries, f"{name} locked twice"
            entries[name] = (match.group(3), [])
        elif match := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line):
            entries[name][1].append(match.group(1))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"unexpected lock line: {line!r}")
    return entries


def test_every_locked_package_is_pinned_with_hashes():
    entries = locked(ROOT / environment.LOCK_FILE)
    assert len(entries) > 100
    assert all(hashes for _, hashes in entries.values()), [n for n, (_, h) in entries.items() if not h]
    assert not any(name.startswith("nvidia-") or name == "triton" for name in entries)  # no CUDA build
    assert entries["torch"] == ("2.13.0+cpu", [TORCH_SHA])
    pip = locked(ROOT / "requirements-pip.txt")
    assert list(pip) == ["pip"] and pip["pip"][1]


def test_every_pyproject_requirement_is_in_the_lock_at_a_version_it_allows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entries = locked(ROOT / environment.LOCK_FILE)
    wanted = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]
    assert {"ray", "psutil"} <= {canonicalize_name(r.name) for r in wanted}
    for requirement in wanted:
        version, _ = entries[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(Version(version), prereleases=True), (requirement, version)


def test_lock_sha256_names_the_file(tmp_path):
    assert environment.lock_sha256() == hashlib.sha256((ROOT / environment.LOCK_FILE).read_bytes()).hexdigest()
    (tmp_path / "lock.txt").write_text("torch==2.13.0+cpu\n")
    assert environment.lock_sha256(str(tmp_path / "lock.txt")) == hashlib.sha256(b"torch==2.13.0+cpu\n").hexdigest()
    assert environment.lock_sha256(str(tmp_path / "absent.txt")) == environment.NO_LOCK
