"""Run a study's stages as a dependency graph, several at once when `main.jobs` > 1.

A :class:`Job` is one stage call (``module:function`` with a config and keyword
arguments). Arguments that are :class:`Ref`\\ s name another job and become its
run id once that job is done, which is also what orders the graph. A job whose
FINISHED run already exists (``find``) is reused, not rerun.

With one job at a time, stages run in this process and print to the console.
With more, each runs in a worker process (spawned, so no torch state is
forked) with ``cores // jobs`` torch threads, and writes its output to
``<log_dir>/<key>.log``; the console gets one line per stage started or done.
After a failure no new stage starts; the running ones finish (so a rerun
reuses them), then the first failure is raised naming its stage.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reverse_align.errors import UserError


@dataclass(frozen=True)
class Ref:
    """The run id of another job once it is done, put into ``template``."""

    key: str
    template: str = "{}"

    def resolve(self, done: dict[str, str]) -> str:
        return self.template.format(done[self.key])


@dataclass
class Job:
    key: str  # what the study calls it: "sft.reverse.seed0"
    target: str  # "module:function"; called as function(cfg, **args) and returning a run id
    cfg: Any
    args: dict[str, Any] = field(default_factory=dict)
    # The job's existing FINISHED run, if any: called with the run ids of the jobs done so far.
    find: Callable[[dict[str, str]], str | None] | None = None
    # Jobs that must be done first besides those its args refer to.
    after: tuple[str, ...] = ()

    @property
    def needs(self) -> set[str]:
        return {v.key for v in self.args.values() if isinstance(v, Ref)} | set(self.after)

    def resolved_args(self, done: dict[str, str]) -> dict[str, Any]:
        return {k: v.resolve(done) if isinstance(v, Ref) else v for k, v in self.args.items()}


class StageFailed(Exception):
    """A stage ended with an error other than bad input; its log holds the traceback."""


@dataclass
class Outcome:
    run_id: str
    seconds: float
    reused: bool


def resolve(target: str):
    """The function a ``module:function`` string names."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def call(target: str, cfg, args: dict) -> str:
    return str(resolve(target)(cfg, **args))


def _in_worker(target: str, cfg, args: dict, log_path: str, threads: int) -> tuple[str, float]:
    """Body of a worker process: the stage with its output in its log file."""
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    with open(log_path, "a", buffering=1) as log, _redirected(log):
        try:
            return call(target, cfg, args), time.perf_counter() - started
        except UserError:
            raise
        except BaseException as exc:
            traceback.print_exc()
            raise StageFailed(f"{type(exc).__name__}: {exc}".splitlines()[0][:500]) from None


@contextlib.contextmanager
def _redirected(log):
    """stdout and stderr into ``log`` at the file-descriptor level (tqdm, C extensions and children too)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _set_worker_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)


def run_graph(
    jobs: list[Job],
    parallel: int,
    log_dir: Path,
    on_done: Callable[[str, Outcome], None],
    rerun: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Outcome]:
    """Run every job once its needs are done; returns each job's outcome. Raises the first failure."""
    keys = [job.key for job in jobs]
    unknown = {n for job in jobs for n in job.needs if n not in keys}
    if unknown or len(set(keys)) != len(keys):
        raise ValueError(f"bad job graph: unknown needs {sorted(unknown)} or duplicate keys")
    pending = list(jobs)
    done: dict[str, str] = {}
    outcomes: dict[str, Outcome] = {}
    failure: tuple[str, BaseException] | None = None
    log_dir.mkdir(parents=True, exist_ok=True)

    def log_of(key: str) -> Path:
        return log_dir / f"{key}.log"

    threads = max(1, (os.cpu_count() or 1) // parallel)

    def finish(key: str, outcome: Outcome) -> None:
        done[key] = outcome.run_id
        outcomes[key] = outcome
        on_done(key, outcome)

    def ready() -> list[Job]:
        return [job for job in pending if job.needs <= done.keys()]

    def take_reusable() -> None:
        """Reuse every ready job that has a finished run, until none is left (reuse may unlock more)."""
        progress = True
        while progress and not rerun:
            progress = False
            for job in ready():
                found = job.find(done) if job.find else None
                if found:
                    pending.remove(job)
                    say(f"[main] {job.key}: reusing finished run {found}")
                    finish(job.key, Outcome(found, 0.0, True))
                    progress = True

    if parallel <= 1:
        while pending and failure is None:
            take_reusable()
            if not pending:
                break
            job = ready()[0]
            pending.remove(job)
            say(f"[main] {job.key}: running")
            started = time.perf_counter()
            try:
                run_id = call(job.target, job.cfg, job.resolved_args(done))
            except BaseException as exc:
                failure = (job.key, exc)
                break
            finish(job.key, Outcome(run_id, time.perf_counter() - started, False))
            say(f"[main] {job.key}: done in {outcomes[job.key].seconds:.0f} s (run {run_id})")
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        running: dict[Future, Job] = {}
        with ProcessPoolExecutor(parallel, context, initializer=_set_worker_threads, initargs=(threads,)) as pool:
            while (pending or running) and not (failure and not running):
                if failure is None:
                    take_reusable()
                    for job in ready()[: parallel - len(running)]:
                        pending.remove(job)
                        log = log_of(job.key)
                        say(f"[main] {job.key}: running ({threads} thread{'s' * (threads > 1)}, log {log})")
                        future = pool.submit(_in_worker, job.target, job.cfg, job.resolved_args(done), str(log), threads)
                        running[future] = job
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = running.pop(future)
                    try:
                        run_id, seconds = future.result()
                    except BaseException as exc:
                        if failure is None:
                            failure = (job.key, exc)
                        say(f"[main] {job.key}: failed ({log_of(job.key)})")
                        continue
                    finish(job.key, Outcome(run_id, seconds, False))
                    say(f"[main] {job.key}: done in {seconds:.0f} s (run {run_id})")
    if failure is not None:
        key, exc = failure
        if isinstance(exc, UserError):
            raise UserError(f"stage {key}: {exc}") from None
        if isinstance(exc, StageFailed):
            raise StageFailed(f"stage {key}: {exc} (log: {log_of(key)})") from None
        raise exc
    return outcomes
