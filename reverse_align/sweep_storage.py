"""Where a sweep's Optuna study lives (``sweep.storage``), and what happens to a killed worker's trial.

- empty (default): ``sqlite:///<dir>/optuna.db`` beside the MLflow sqlite store
  (``./optuna.db`` when the store is not sqlite). Needs no server.
- an RDB URL (``postgresql://postgres@127.0.0.1:5432/test``, ``sqlite:///path``):
  Optuna's ``RDBStorage``; several machines can share it.
- ``journal:PATH``: Optuna's ``JournalStorage(JournalFileBackend(PATH))`` (the
  replacement of the deprecated journal file storage); one machine, a shared
  file system.

A worker killed mid-trial leaves the trial RUNNING. RDB storages (sqlite
included) keep a heartbeat: the worker writes it every ``heartbeat_interval``
seconds; any worker failing stale trials (``optuna.storages.fail_stale_trials``,
which ``study.optimize`` also calls) marks a trial FAIL once its heartbeat is
older than ``grace_period``, and ``RetryHeartbeatStaleTrialCallback`` enqueues
it again with the same beta (``max_retry`` times). Optuna's heartbeat exists
only for ``RDBStorage``: for a journal every trial records ``host:pid`` and a
worker fails (and retries) RUNNING trials of dead processes on its own host;
a trial of a dead worker on another host stays RUNNING until a worker on that
host starts (or forever).

Not offered: ``mlflow.optuna.MlflowStorage``. It keeps the study as an MLflow
run and each trial as a nested run of its own (here the trials are already the
dpo runs, so every trial would be two runs), has no heartbeat, and numbers
trials by the position of a ``trial_id`` metric in the study run's history.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.errors import UserError

JOURNAL_PREFIX = "journal:"
DEFAULT_FILE = "optuna.db"


def default_url() -> str:
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).parent / DEFAULT_FILE}"
    return f"sqlite:///{Path.cwd() / DEFAULT_FILE}"


def describe(cfg: Config) -> str:
    return cfg.sweep.storage or default_url()


def open_storage(cfg: Config):
    """The Optuna storage of ``sweep.storage``, with heartbeat and stale-trial retry where it has one."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    spec = cfg.sweep.storage or default_url()
    if spec.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend

        path = Path(spec.removeprefix(JOURNAL_PREFIX)).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in spec:
        raise UserError(f"--storage {spec!r}: expected an RDB URL (postgresql://..., sqlite:///...) or journal:PATH")
    s = cfg.sweep
    spec = _with_installed_driver(spec)
    # sqlite: wait for a writer of another worker instead of failing at once with "database is locked".
    engine_kwargs = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(
            spec,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=s.heartbeat_interval,
            grace_period=s.grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=s.max_retry) if s.max_retry else None,
        )
    except Exception as exc:  # noqa: BLE001 - sqlalchemy and drivers raise many types
        raise UserError(f"--storage {_redact(spec)}: cannot open ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 (a dependency) when psycopg is absent."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _redact(url: str) -> str:
    """A URL without its password (never in logs)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
    return url


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_local_trials(study, max_retry: int) -> list[int]:
    """Storages without heartbeat: FAIL (and retry) RUNNING trials whose worker process on this host is gone."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.storages._heartbeat import is_heartbeat_enabled
    from optuna.trial import TrialState

    if is_heartbeat_enabled(study._storage):
        return []
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker failed it first
        failed.append(trial.number)
        if max_retry:
            RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, study._storage.get_trial(trial._trial_id))
    return failed
