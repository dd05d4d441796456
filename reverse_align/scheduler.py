"""Run a study's stages as a dependency graph on Ray, several at once when `main.jobs` > 1.

A :class:`Job` is one stage call (``module:function`` with a config and keyword
arguments). Arguments that are :class:`Ref`\\ s name another job and become its
run id once that job is done, which is also what orders the graph. A job whose
FINISHED run already exists (``find``) is reused, not rerun.

Every other job is a Ray task (:mod:`reverse_align.cluster`: a local cluster of
this machine, or one joined with ``--ray_address``) asking for its CPUs (``cpus``,
default the largest node's cores // ``parallel``: its torch threads) and GPUs
(``gpus``: Ray gives the task those devices in ``CUDA_VISIBLE_DEVICES``, which the
stage's torchrun inherits; a task without GPUs sees none). At most ``parallel``
tasks are in flight; one that needs more GPUs than any node has fails as bad
input. A task writes its stage's output to ``<log_dir>/<key>.log`` on the node
that ran it and logs that file to ``log_run`` (``main/logs/``) from there; with
``parallel`` 1 it also goes to the console (through Ray's worker output). The
console gets one line per stage started or done. After a failure no new stage
starts; the running ones finish (so a rerun reuses them), then the first failure
is raised naming its stage: a UserError as a UserError, anything else as
StageFailed naming the log. Ray reruns a task only when its worker or node was
lost, never for an error the stage raised.

One executor for every ``parallel``: with 1 the stages run one after another in
Ray workers too, so they get the same GPU devices, logs and thread settings as
side by side (debugging a stage in this process: ``reverse-align <stage>``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reverse_align import cluster
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
    # GPUs the stage's processes use (Ray sets its CUDA_VISIBLE_DEVICES to that many); 0: CPU only, sees none.
    gpus: float = 0.0
    # CPUs (torch threads) the stage takes; 0: an equal share, the largest node's cores // parallel.
    cpus: float = 0.0

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
    node: str = ""  # the Ray node (IP) that ran it; empty when reused
    devices: str = ""  # its CUDA_VISIBLE_DEVICES there ("" = no GPU)


def resolve(target: str):
    """The function a ``module:function`` string names."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def call(target: str, cfg, args: dict) -> str:
    return str(resolve(target)(cfg, **args))


def _stage_task(spec: dict) -> dict:
    """Body of a Ray task: one stage, its output in its log file (logged to ``log_run``), its end as a dict.

    Never raises for the stage's own errors (they come back as ``status``), so Ray retries only lost workers.
    """
    import ray

    with cluster.carried(spec["env"], spec["cwd"], spec["gpus"]):
        import torch

        torch.set_num_threads(spec["threads"])
        result = {"node": ray.util.get_node_ip_address(), "pid": os.getpid(),
                  "devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "started": time.time()}  # fmt: skip
        log_path = Path(spec["log"])
        with contextlib.suppress(OSError):
            log_path.parent.mkdir(parents=True, exist_ok=True)
        if not log_path.parent.is_dir():  # the driver's folder cannot be made on this node
            import tempfile

            log_path = Path(tempfile.mkdtemp(prefix="reverse-align-logs-")) / log_path.name
        with open(log_path, "ab", buffering=0) as log, _output_to(log.fileno(), echo=spec["echo"]):
            try:
                result.update(status="done", run_id=call(spec["target"], spec["cfg"], spec["args"]))
            except UserError as exc:
                print(f"error: {exc}", file=sys.stderr)
                result.update(status="user_error", message=str(exc))
            except Exception as exc:  # noqa: BLE001 - any crash is the stage's, its traceback in the log
                traceback.print_exc()
                result.update(status="failed", message=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        result.update(ended=time.time(), log=str(log_path))
        if spec["log_run"]:
            import mlflow

            from reverse_align import tracking

            mlflow.MlflowClient(tracking.tracking_uri()).log_artifact(
                spec["log_run"], str(log_path), tracking.ARTIFACT_MAIN_LOGS
            )
    return result


@contextlib.contextmanager
def _output_to(fd: int, echo: bool):
    """stdout and stderr into ``fd`` at the file-descriptor level (tqdm, C extensions and children too);
    with ``echo`` also to where they went before (a Ray worker's output, which Ray shows on the driver)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    pump = None
    target = fd
    if echo:
        read_end, target = os.pipe()

        def copy() -> None:
            while chunk := os.read(read_end, 65536):
                os.write(fd, chunk)
                os.write(saved[0], chunk)
            os.close(read_end)

        pump = threading.Thread(target=copy, daemon=True)
        pump.start()
    os.dup2(target, 1)
    os.dup2(target, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        if pump is not None:
            os.close(target)  # the last write end: the pump reads to the end, then stops
            pump.join()
        os.close(saved[0])
        os.close(saved[1])


def run_graph(
    jobs: list[Job],
    parallel: int,
    log_dir: Path,
    on_done: Callable[[str, Outcome], None],
    rerun: bool = False,
    say: Callable[[str], None] = print,
    log_run: str | None = None,
    ray_address: str = "",
) -> dict[str, Outcome]:
    """Run every job once its needs are done; returns each job's outcome. Raises the first failure.

    Ray: the cluster :func:`cluster.connect` finds (one already up in this process, ``ray_address``,
    ``RAY_ADDRESS``), else a local one for this call.
    """
    keys = [job.key for job in jobs]
    unknown = {n for job in jobs for n in job.needs if n not in keys}
    if unknown or len(set(keys)) != len(keys):
        raise ValueError(f"bad job graph: unknown needs {sorted(unknown)} or duplicate keys")
    started_ray = cluster.connect(ray_address)
    try:
        return _run(jobs, parallel, log_dir, on_done, rerun, say, log_run)
    finally:
        cluster.disconnect(started_ray)


def _run(jobs, parallel, log_dir, on_done, rerun, say, log_run) -> dict[str, Outcome]:
    import ray

    pending = list(jobs)
    done: dict[str, str] = {}
    outcomes: dict[str, Outcome] = {}
    failure: tuple[str, BaseException] | None = None
    logs: dict[str, str] = {}
    log_dir.mkdir(parents=True, exist_ok=True)
    node_cpus, node_gpus = cluster.largest_node()
    share = max(1, int(node_cpus) // max(1, parallel))
    env, cwd = cluster.stage_env(), os.getcwd()

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

    def submit(job: Job):
        if job.gpus > node_gpus:
            raise UserError(f"needs {job.gpus:g} GPUs and the largest node of the Ray cluster has {node_gpus:g}")
        threads = int(job.cpus) or share
        logs[job.key] = str(log_dir / f"{job.key}.log")
        spec = {"target": job.target, "cfg": job.cfg, "args": job.resolved_args(done), "log": logs[job.key],
                "threads": threads, "gpus": job.gpus, "env": env, "cwd": cwd, "log_run": log_run,
                "echo": parallel <= 1}  # fmt: skip
        gpus = f", {job.gpus:g} GPU{'s' * (job.gpus != 1)}" if job.gpus else ""
        say(f"[main] {job.key}: running ({threads} thread{'s' * (threads > 1)}{gpus}, log {logs[job.key]})")
        return cluster.task(_stage_task, threads, job.gpus).remote(spec)

    running: dict[Any, Job] = {}
    try:
        while (pending or running) and not (failure and not running):
            if failure is None:
                take_reusable()
                for job in ready()[: max(1, parallel) - len(running)]:
                    pending.remove(job)
                    try:
                        running[submit(job)] = job
                    except UserError as exc:
                        failure = (job.key, exc)
                        break
            if not running:
                break
            finished, _ = ray.wait(list(running), num_returns=1)
            for ref in finished:
                job = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # its worker or node lost, retries spent
                    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                    result = {"status": "failed", "message": f"lost its Ray worker: {type(exc).__name__}: {first}"}
                if result["status"] != "done":
                    error = UserError if result["status"] == "user_error" else StageFailed
                    logs[job.key] = result.get("log", logs[job.key])
                    if failure is None:
                        failure = (job.key, error(result["message"]))
                    say(f"[main] {job.key}: failed ({logs[job.key]})")
                    continue
                seconds = result["ended"] - result["started"]
                finish(job.key, Outcome(result["run_id"], seconds, False, result["node"], result["devices"]))
                say(f"[main] {job.key}: done in {seconds:.0f} s (run {result['run_id']})")
    except KeyboardInterrupt:
        for ref in running:  # the stages end KILLED, as on Ctrl-C in one process
            ray.cancel(ref)
        raise
    if failure is not None:
        key, exc = failure
        if isinstance(exc, UserError):
            raise UserError(f"stage {key}: {exc}") from None
        raise StageFailed(f"stage {key}: {exc} (log: {logs.get(key, '')})") from None
    return outcomes
