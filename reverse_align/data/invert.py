"""The `invert` stage: the reverse of every forward item of a data run.

``teacher: synthetic`` uses the synthetic world's exact inverse (no API);
any other teacher is an OpenAI-compatible model prompted with the paper's two
templates (appendix A.1), see :mod:`reverse_align.data.teacher`.

D_s1k stays whole: ``data/forward.jsonl`` is every forward item of the data run
(after ``--limit``), whether or not its inversion was accepted; ``data/reverse.jsonl``
holds the accepted reverses (gold null when the answer has no box), each over
``model.max_length`` tokens handled by the length rule (``data.lengths``: thinking
cut, or dropped and listed in ``data/rejected.jsonl`` as ``too_long``).
``data/probe.jsonl`` is the ``data.probe_size`` shortest forward items *that have an
accepted reverse*, plus those reverses (50 + 50 whenever 50 pairs exist). Each is
also an ``mlflow.data`` input; the run is tagged with the data run. Counts:
``invert/pairs``, ``invert/gold_null``, ``invert/thinking_cut``,
``invert/rejected/too_long``.
"""

from __future__ import annotations

import tempfile

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.data import lengths as length_rule
from reverse_align.data import synthetic
from reverse_align.data.schema import FORWARD, Record, read_jsonl
from reverse_align.data.stage import log_records, select_probe
from reverse_align.errors import UserError

STAGE = "invert"
# invert/rejected/too_long: a reverse whose question + answer alone exceed model.max_length tokens.
REJECTED_TOO_LONG = "too_long"


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


def apply_length_rule(reverses: list[Record], measure, max_length: int) -> tuple[list[Record], list[dict], int]:
    """(reverses that fit, rejections of those dropped, how many had their thinking cut)."""
    kept, dropped, cut = [], [], 0
    for reverse in reverses:
        fitted, outcome = length_rule.fit(reverse, measure, max_length)
        if fitted is None:
            dropped.append({"id": reverse.id, "pair_id": reverse.pair_id, "question": reverse.question,
                            "reason": REJECTED_TOO_LONG, "detail": length_rule.RULE})  # fmt: skip
            continue
        cut += outcome == length_rule.THINKING_CUT
        kept.append(fitted)
    return kept, dropped, cut


def probe_pairs(forward: list[Record], reverses: list[Record], tokenizer, size: int) -> list[Record]:
    """The ``size`` shortest forward items with an accepted reverse (§3.2), then their reverses."""
    by_pair = {r.pair_id: r for r in reverses}
    chosen = select_probe([f for f in forward if f.pair_id in by_pair], tokenizer, size)
    return chosen + [by_pair[f.pair_id] for f in chosen]


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
    if cfg.invert.teacher != synthetic.SOURCE:
        run_id = _teacher_run_to_resume(cfg, data_run_id, limit, run_id, api_key)
    elif run_id:
        from reverse_align.data.teacher import check_resumable

        check_resumable(run_id, data_run_id, cfg, limit)
    forward = [r for r in load_run_records(data_run_id, tracking.ARTIFACT_FORWARD) if r.direction == FORWARD]
    if limit:
        try:
            forward = forward[: int(limit)] if int(limit) > 0 else forward
        except ValueError:
            raise UserError(f"--limit {limit!r}: expected an integer") from None
    params = {"invert.limit": limit or "0"}
    with tracking.stage_run(STAGE, cfg, upstream={"data": data_run_id}, params=params, run_id=run_id or None) as run:
        if cfg.invert.teacher == synthetic.SOURCE:
            if data_run.data.params.get("data.source") != synthetic.SOURCE:
                raise UserError(f"--teacher synthetic needs a synthetic data run; {data_run_id} is {data_run.data.params.get('data.source')}")
            reverses, rejected = invert_synthetic(forward)
            usage = {"requested": 0, "prompt_tokens": 0, "completion_tokens": 0}
        else:
            from reverse_align.data.teacher import invert_with_teacher

            reverses, rejected, usage = invert_with_teacher(cfg, forward, api_key=api_key, run=run)
        from reverse_align.models import load_tokenizer

        tokenizer = load_tokenizer(cfg)
        mlflow.set_tag(tracking.TAG_LENGTH_RULE, length_rule.RULE)
        reverses, too_long, thinking_cut = apply_length_rule(
            reverses, length_rule.TokenizerLengths(tokenizer), cfg.model.max_length
        )
        rejected = rejected + too_long
        probe = probe_pairs(forward, reverses, tokenizer, cfg.data.probe_size)
        log_records(forward, tracking.ARTIFACT_FORWARD, "forward", "training")
        log_records(reverses, tracking.ARTIFACT_REVERSE, "reverse", "training")
        log_records(probe, tracking.ARTIFACT_PROBE, "probe", "probe")
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
                tracking.METRIC_INVERT_PAIRS: len(reverses),
                tracking.METRIC_INVERT_GOLD_NULL: sum(r.gold is None for r in reverses),
                tracking.METRIC_INVERT_THINKING_CUT: thinking_cut,
                tracking.metric_invert_rejected(REJECTED_TOO_LONG): len(too_long),
            }
        )
        truncated = sum(row["reason"] == "truncated" for row in rejected)
        print(
            f"invert run {run.info.run_id}: {len(forward)} forward items, {len(reverses)} pairs "
            f"({sum(r.gold is None for r in reverses)} with gold null, {thinking_cut} thinking cut), "
            f"{len(rejected)} rejected ({truncated} truncated at invert.max_completion_tokens, {len(too_long)} too long); "
            f"probe {len(probe) // 2} + {len(probe) // 2}"
        )
        return run.info.run_id
