"""What the runs were computed with: the lock file's sha256, the library versions, torch's CPU kernel path.

``requirements-lock.txt`` (``make lock``; ``make setup`` installs from it) pins every package with its
hashes; its sha256 names one exact set of libraries. Every stage run is tagged with it
(``tracking.TAG_ENV_LOCK_SHA``, set by ``tracking.stage_run``) and the report prints it beside the
versions the report's own process imports.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path

LOCK_FILE = "requirements-lock.txt"
# The distributions the report's Environment section lists (their PyPI names), in this order.
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "mlflow", "lm-eval", "optuna", "ray")
# The tag's value where the checkout has no lock file (an installed wheel, an old checkout).
NO_LOCK = "none"


def lock_path() -> Path:
    """The lock file of the checkout this package is imported from (an editable install's repository)."""
    return Path(__file__).resolve().parents[1] / LOCK_FILE


@functools.cache
def lock_sha256(path: str = "") -> str:
    """sha256 (hex) of the lock file, or ``none`` when there is none."""
    target = Path(path) if path else lock_path()
    try:
        return hashlib.sha256(target.read_bytes()).hexdigest()
    except OSError:
        return NO_LOCK


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """``{"python": "3.11.7", "torch": "2.13.0+cpu", ...}``; a package that is not installed: ``not installed``."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def cpu_capability() -> str:
    """The CPU kernel path torch dispatches to (``AVX512``, ``AVX2``, ``DEFAULT``...)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())
