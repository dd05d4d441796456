"""The `invert` stage: the reverse of every forward item of a data run.

``teacher: synthetic`` uses the synthetic world's exact inverse (no API);
any other teacher is an OpenAI-compatible model prompted with the paper's two
templates (appendix A.1), see :mod:`reverse_align.data.teacher`.

Logs ``data/forward.jsonl`` (the forward items that got a reverse),
``data/reverse.jsonl`` and ``data/probe.jsonl`` (probe forward items plus their
reverses), each also as an ``mlflow.data`` input, tagged with the data run.
"""

from __future__ import annotations

import tempfile

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.data import synthetic
from reverse_align.data.schema import FORWARD, Record, read_jsonl
from reverse_align.data.stage import log_records
from reverse_align.errors import UserError

STAGE = "invert"


def load_run_records(run_id: str, artifact_path: str) -> list[Record]:
    with tempfile.TemporaryDirectory() as tmp:
        return read_jsonl(tracking.download_artifact(run_id, artifact_path, tmp))


def invert_synthetic(forward: list[Record]) -> tuple[list[Record], list[dict]]:
    """Exact inverses; each is checked by recomputing its answer from the question."""
    reverses, rejected = [], []
    for record in forward:
        reverse = synthetic.invert(record)
        if synthetic.solve(reverse.question) != int(reverse.gold):
            rejected.append({"id": record.id, "reason": "recomputed_answer_mismatch"})
            continue
        reverses.append(reverse)
    return reverses, rejected


def _teacher_run_to_resume(cfg: Config, data_run_id: str, limit: str, run_id: str, api_key: str) -> str:
    """The run to continue: ``--run_id``, else the newest unfinished one of the same inputs; locked for us.

    Key and templates are checked first, so that a missing key starts no run.
    """
    from reverse_align.data import teacher

    teacher.resolve_endpoint(cfg.invert, api_key)
    teacher.load_templates(cfg.invert)
    if run_id:
        teacher.check_resumable(run_id, data_run_id, cfg, limit)
    else:
        run_id = teacher.find_unfinished_run(data_run_id, cfg, limit) or ""
        if run_id:
            print(f"resuming unfinished invert run {run_id} (journal {teacher.journal_path(run_id)})")
    if run_id:
        # Before the run is reopened: a run another process is writing must not be touched (or failed) by us.
        teacher.lock_journal(run_id)
    return run_id


def run_invert(cfg: Config, data_run_id: str = "", limit: str = "", api_key: str = "", run_id: str = "") -> str:
    import mlflow

    tracking.setup()
    data_run = tracking.require_run(data_run_id, "data", "data_run_id")
    forward = [r for r in load_run_records(data_run_id, tracking.ARTIFACT_FORWARD) if r.direction == FORWARD]
    probe = load_run_records(data_run_id, tracking.ARTIFACT_PROBE)
    if limit:
        try:
            forward = forward[: int(limit)] if int(limit) > 0 else forward
        except ValueError:
            raise UserError(f"--limit {limit!r}: expected an integer") from None
    params = {"invert.limit": limit or "0"}
    if cfg.invert.teacher != synthetic.SOURCE:
        run_id = _teacher_run_to_resume(cfg, data_run_id, limit, run_id, api_key)
    with tracking.stage_run(STAGE, cfg, upstream={"data": data_run_id}, params=params, run_id=run_id or None) as run:
        if cfg.invert.teacher == synthetic.SOURCE:
            if data_run.data.params.get("data.source") != synthetic.SOURCE:
                raise UserError(f"--teacher synthetic needs a synthetic data run; {data_run_id} is {data_run.data.params.get('data.source')}")
            reverses, rejected = invert_synthetic(forward)
            usage = {"requested": 0, "prompt_tokens": 0, "completion_tokens": 0}
        else:
            from reverse_align.data.teacher import invert_with_teacher

            reverses, rejected, usage = invert_with_teacher(cfg, forward, api_key=api_key, run=run)
        paired_ids = {r.pair_id for r in reverses}
        paired_forward = [r for r in forward if r.pair_id in paired_ids]
        by_pair = {r.pair_id: r for r in reverses}
        probe_pairs = [r for r in probe if r.pair_id in by_pair]
        probe_records = probe_pairs + [by_pair[r.pair_id] for r in probe_pairs]
        log_records(paired_forward, tracking.ARTIFACT_FORWARD, "forward", "training")
        log_records(reverses, tracking.ARTIFACT_REVERSE, "reverse", "training")
        log_records(probe_records, tracking.ARTIFACT_PROBE, "probe", "probe")
        if rejected:
            tracking.log_jsonl(rejected, tracking.ARTIFACT_REJECTED)
        # Held-out tests (synthetic) travel with the pairs so later stages need only this run.
        names = {a.path for a in mlflow.MlflowClient().list_artifacts(data_run_id, "data")}
        for test_artifact in tracking.SYNTHETIC_TESTS.values():
            if test_artifact in names:
                tests = load_run_records(data_run_id, test_artifact)
                log_records(tests, test_artifact, test_artifact.split("/")[-1].removesuffix(".jsonl"), "evaluation")
        mlflow.log_metrics(
            {
                tracking.METRIC_INVERT_REQUESTED: usage["requested"],
                tracking.METRIC_INVERT_ACCEPTED: len(reverses),
                tracking.METRIC_INVERT_REJECTED: len(rejected),
                tracking.METRIC_INVERT_PROMPT_TOKENS: usage["prompt_tokens"],
                tracking.METRIC_INVERT_COMPLETION_TOKENS: usage["completion_tokens"],
            }
        )
        print(f"invert run {run.info.run_id}: {len(reverses)} reverses, {len(rejected)} rejected")
        return run.info.run_id
