"""Ray, the engine that runs `main`'s stages and the sweep's workers: joining a cluster or starting one here.

`main` (``--ray_address``) and the sweep's workers run as Ray core tasks, each asking for the CPUs and
GPUs its config needs; Ray places them and sets each task's ``CUDA_VISIBLE_DEVICES`` to the GPUs it
got, which the stage's own torchrun inherits. Where the cluster is:

- ``--ray_address auto`` (the cluster `ray start` runs on this machine) or ``ray://host:10001`` (Ray
  Client, ``pip install 'ray[client]'``), or ``RAY_ADDRESS``: join it. Every node needs this project
  installed and a tracking store it can reach (an MLflow server, not a sqlite file on the driver).
- neither: a local cluster of this machine's cores and GPUs, started for the call and shut down after it.

A task carries what the stages read from the environment (:func:`stage_env`: MLflow's store and
experiment, the parent run, the cache, the hubs' offline switches, the teacher's keys) and the driver's
working directory, and puts them back as they were when it ends: Ray reuses a worker process for the
next CPU task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from reverse_align.errors import UserError

# Ray restarts a task whose worker process or node was lost this many times; an exception raised by
# the stage itself is never retried (the stage returns it, see scheduler._stage_task).
LOST_WORKER_RETRIES = 2
# The local cluster's shared-memory object store: stages pass run ids, not tensors (Ray's minimum is 75 MiB).
OBJECT_STORE_BYTES = 100 * 1024**2
# Environment the stages read, forwarded to every task (names and prefixes).
FORWARDED_ENV = (
    "MLFLOW_", "REVERSE_ALIGN_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "DO_NOT_TRACK",
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "DEEPSEEK_API_KEY",
)  # fmt: skip


def address(given: str = "") -> str:
    """The cluster to join: ``given``, else ``RAY_ADDRESS``, else empty (start one here)."""
    return str(given or os.environ.get("RAY_ADDRESS", "")).strip()


def connect(given: str = "", num_cpus: int | None = None, num_gpus: float | None = None) -> bool:
    """Join the cluster at ``given`` / ``RAY_ADDRESS``, or start a local one; True if this call started Ray.

    Inside a Ray task (a stage of `main` that starts sweep workers) Ray is already up: nothing to do.
    ``num_cpus``, ``num_gpus``: a local cluster's logical resources (tests); None: this machine's cores and
    the GPUs CUDA shows.
    """
    import ray

    if ray.is_initialized():
        return False
    where = address(given)
    quiet = {"log_to_driver": True, "logging_level": logging.WARNING}
    if where:
        _require_listening(where)
        try:
            ray.init(address=where, **quiet)
        except (ImportError, ValueError, ConnectionError, SystemExit) as exc:  # Ray Client missing; nobody there
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"--ray_address {where}: cannot join a Ray cluster there ({first})") from None
        return True
    # Ray starts its workers at niceness 15 (RAY_worker_niceness), under every other process of the machine:
    # on 2 shared cores that made the micro main 1.9x slower than the process pool before it. The stages
    # are this command's work, so they run at its priority, as the pool's workers did.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # "local": never join another user's `ray start` cluster found in /tmp/ray by accident.
    ray.init(
        address="local", num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        # The workers import what this process imports (a checkout before an installed copy; tests' doubles).
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())}},
        **quiet,
    )  # fmt: skip
    return True


def _require_listening(where: str, timeout_s: float = 5.0) -> None:
    """A ``host:port`` or ``ray://host:port`` address that nobody listens on: bad input now, not Ray's
    minutes of retrying (``auto`` is Ray's to find)."""
    import socket

    host, _, port = where.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"--ray_address {where}: no Ray cluster listens there ({exc})") from None


def disconnect(started: bool) -> None:
    """Shut Ray down if :func:`connect` started it here (a joined cluster goes on; only this driver leaves)."""
    import ray

    if started and ray.is_initialized():
        ray.shutdown()


def largest_node() -> tuple[float, float]:
    """(CPUs, GPUs) of the largest alive node: no single task can ask for more."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return max((n.get("CPU", 0.0) for n in nodes), default=0.0), max((n.get("GPU", 0.0) for n in nodes), default=0.0)


def require_reachable_store(tracking_uri: str) -> None:
    """A cluster of several nodes cannot share a sqlite or file store on the driver's disk."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    on_this_disk = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    if len(nodes) > 1 and on_this_disk:
        raise UserError(
            f"the Ray cluster has {len(nodes)} nodes and MLFLOW_TRACKING_URI={tracking_uri} is a file on this one; "
            "serve it (mlflow server) and set MLFLOW_TRACKING_URI=http://<host>:<port>"
        )


def task(function, cpus: float, gpus: float):
    """``function`` as a Ray task asking for ``cpus`` CPUs and ``gpus`` GPUs, retried only when its worker is lost.

    A GPU task gets a worker process of its own (``max_calls=1``, Ray's default for GPU functions), so the
    GPU memory of a finished stage goes back with its process; CPU tasks reuse workers (no torch import each).
    """
    import ray

    own_process = {"num_gpus": 1, "max_calls": 1} if gpus else {}
    remote = ray.remote(max_retries=LOST_WORKER_RETRIES, retry_exceptions=False, **own_process)(function)
    return remote.options(num_cpus=cpus, num_gpus=gpus)


def stage_env() -> dict[str, str]:
    """The driver's environment that stages read, to carry into a task."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


@contextlib.contextmanager
def carried(env: dict[str, str], cwd: str, gpus: float) -> Iterator[None]:
    """Inside a task: the driver's stage environment and working directory, restored afterwards.

    A task that asked for no GPU sees none (Ray leaves CUDA_VISIBLE_DEVICES alone then), so a CPU stage
    never takes a GPU another stage was given.
    """
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    for key in [k for k in os.environ if k.startswith(FORWARDED_ENV)]:
        del os.environ[key]
    os.environ.update(env)
    if not gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    with contextlib.suppress(OSError):
        os.chdir(cwd)  # absent on another node: the worker's own
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        with contextlib.suppress(OSError):
            os.chdir(saved_cwd)
