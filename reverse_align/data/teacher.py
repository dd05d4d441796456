"""The teacher path of the `invert` stage: two prompts per forward item (PROTOCOL §1).

Step 1 fills the reverse template (appendix A.1, ``templates/reverse.v1.txt``)
with the forward question and its answer; the teacher returns ``New Question``
/ ``New Answer``. Step 2 fills the solution template with the new question; its
reasoning becomes the reverse record's ``thinking``, its answer the ``attempt``
and the last ``\\boxed{}`` of that answer the ``gold`` (null when there is none:
the answer is kept, see ``teacher_parse.parse_solution``).

Dependable on a paid, rate-limited API:
- ``invert.concurrency`` workers, each taking one item through both steps;
  retries, backoff and the spend cap live in :mod:`teacher_client`.
- A journal, ``<cache_dir>/invert/<run_id>/journal.jsonl``: every answer is
  appended and flushed as it arrives, so a run killed at any moment loses at
  most the requests in flight. Rerunning with ``--run_id`` (or, without it,
  rerunning the same data run + teacher + limit: the newest unfinished such
  run is found and continued) asks only for the steps the journal lacks.
  A lock file keeps two processes from writing one journal.
- Each answer's journal entry holds the model the endpoint reported serving
  (the completion's ``model``); the run's tag ``reverse_align.invert.served_models``
  counts them, and a model other than ``invert.expected_teacher_model`` is warned
  about (at its first answer and at the end) and tagged as a mismatch: an alias
  such as ``deepseek-reasoner`` can move to another model than the paper's R1.
- Answers are judged from the journal (:mod:`teacher_parse`), so a resumed run
  and an uninterrupted one produce the same records from the same answers.
- The spend cap (``invert.max_requests`` / ``invert.max_tokens_total``) counts
  the whole run, journal included. When reached, no new request is sent, the
  requests in flight finish and are journaled, the metrics are logged and the
  run ends FAILED with a one-line error saying how to continue (raise the cap,
  rerun with ``--run_id``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reverse_align import tracking
from reverse_align.config import Config, InvertConfig
from reverse_align.data.schema import REVERSE, Record
from reverse_align.data.teacher_client import (
    Endpoint,
    RequestRefused,
    RetriesExhausted,
    SpendCapReached,
    TeacherClient,
    Usage,
    redact,
    resolve_endpoint,
)
from reverse_align.data.teacher_parse import (
    REASONS,
    REQUEST_REFUSED,
    RETRIES_EXHAUSTED,
    Answer,
    Rejected,
    parse_reverse,
    parse_solution,
)
from reverse_align.errors import UserError

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
REVERSE_TEMPLATE = TEMPLATE_DIR / "reverse.v1.txt"
SOLUTION_TEMPLATE = TEMPLATE_DIR / "solution.v1.txt"
STEP_REVERSE = "reverse"
STEP_SOLUTION = "solution"
# 2: the header holds temperature and max_completion_tokens too.
JOURNAL_VERSION = 2
SPEND_CAP = "spend cap"
# An answer whose response named no model.
UNREPORTED = "(not reported)"

# ---------------------------------------------------------------- templates


@dataclass(frozen=True)
class Templates:
    reverse: str
    solution: str

    def digests(self) -> dict[str, str]:
        return {
            "reverse_template_sha256": hashlib.sha256(self.reverse.encode()).hexdigest(),
            "solution_template_sha256": hashlib.sha256(self.solution.encode()).hexdigest(),
        }


def _read_template(path_text: str, default: Path, field: str, placeholders: tuple[str, ...]) -> str:
    path = Path(path_text) if path_text else default
    if not path.is_file():
        raise UserError(f"invert.{field}: template file {path} not found")
    text = path.read_text()
    missing = [p for p in placeholders if "{" + p + "}" not in text]
    if missing:
        raise UserError(f"invert.{field}: {path} lacks the placeholder(s) {', '.join('{' + p + '}' for p in missing)}")
    return text


def load_templates(cfg: InvertConfig) -> Templates:
    """The paper's templates (appendix A.1) unless invert.reverse_template / solution_template name others."""
    return Templates(
        reverse=_read_template(cfg.reverse_template, REVERSE_TEMPLATE, "reverse_template", ("question", "answer")),
        solution=_read_template(cfg.solution_template, SOLUTION_TEMPLATE, "solution_template", ("question",)),
    )


def fill(template: str, **values: str) -> str:
    # Not str.format: the templates hold literal braces (\boxed{}).
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def forward_answer(record: Record) -> str:
    """The "Answer" of step 1: the reference solution (as in A.5's example), else its final answer, else the attempt."""
    return (record.solution or "").strip() or (record.gold or "").strip() or record.attempt.strip()


# ---------------------------------------------------------------- journal


def journal_dir(run_id: str) -> Path:
    from reverse_align.models import cache_dir

    return cache_dir() / "invert" / run_id


def journal_path(run_id: str) -> Path:
    return journal_dir(run_id) / "journal.jsonl"


_LOCKS: dict[str, Any] = {}


def lock_journal(run_id: str) -> None:
    """Hold the journal of ``run_id`` for this process (released by the OS on exit or kill)."""
    import fcntl

    if run_id in _LOCKS:
        return
    directory = journal_dir(run_id)
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / "lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"invert run {run_id} is being written by another process (lock {directory / 'lock'})") from None
    _LOCKS[run_id] = handle


def unlock_journal(run_id: str) -> None:
    handle = _LOCKS.pop(run_id, None)
    if handle is not None:
        handle.close()


def journal_locked(run_id: str) -> bool:
    import fcntl

    path = journal_dir(run_id) / "lock"
    if run_id in _LOCKS or not path.exists():
        return run_id in _LOCKS
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


class Journal:
    """Append-only JSON lines: a header, then one entry per answered (or given-up) request.

    Entry kinds: ``answer`` (the teacher's text), ``refused`` (a 4xx for that
    request: final), ``failed`` (retries exhausted or spend cap: asked again on
    resume). Each records how many requests it took.
    """

    def __init__(self, path: Path, header: dict, entries: list[dict]):
        self.path = path
        self.header = header
        self.final: dict[tuple[str, str], dict] = {}
        self.failed: dict[tuple[str, str], dict] = {}
        self.entries = 0
        self.spent = Usage()  # every request the journal records, superseded failures included
        self.served: collections.Counter[str] = collections.Counter()  # answers per model the endpoint reported
        self._handle = None
        for entry in entries:
            self._index(entry)

    def _index(self, entry: dict) -> None:
        self.entries += 1
        self.spent.requests += entry.get("requests", 0)
        self.spent.retries += max(0, entry.get("requests", 0) - 1)
        self.spent.prompt_tokens += entry.get("prompt_tokens", 0)
        self.spent.completion_tokens += entry.get("completion_tokens", 0)
        key = (entry["item"], entry["step"])
        if entry["kind"] == "answer":
            self.served[entry.get("model") or UNREPORTED] += 1
        if entry["kind"] == "failed":
            self.failed[key] = entry
        else:
            self.final[key] = entry
            self.failed.pop(key, None)

    @classmethod
    def open(cls, path: Path, header: dict) -> "Journal":
        """Open (creating it if new) and check it was written for the same teacher and templates."""
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = []
        found_header = None
        if path.exists():
            raw = path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                # Killed in the middle of a line: drop the torn tail before appending after it.
                raw = raw[: raw.rfind(b"\n") + 1]
                with path.open("r+b") as fh:
                    fh.truncate(len(raw))
            for number, line in enumerate(raw.decode().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path} line {number}: malformed journal entry ({exc.msg})") from None
                if entry.get("kind") == "header":
                    found_header = entry
                else:
                    entries.append(entry)
        if found_header is not None:
            changed = [k for k in header if k != "created" and found_header.get(k) != header[k]]
            if changed:
                raise UserError(
                    f"{path}: this run's journal was written with a different {', '.join(changed)}; "
                    "start a new invert run (without --run_id) for a different teacher or templates"
                )
        journal = cls(path, found_header or header, entries)
        journal._handle = path.open("a")
        if found_header is None:
            journal._write(header)
        return journal

    def _write(self, entry: dict) -> None:
        self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._handle.flush()

    def append(self, entry: dict) -> None:
        self._write(entry)
        self._index(entry)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def usage(self) -> Usage:
        """A fresh copy of what the journal records as spent."""
        return dataclasses.replace(self.spent)

    def item_done(self, record: Record) -> bool:
        """True when no request is left for this item (answered and judged, or refused)."""
        reverse = self.final.get((record.id, STEP_REVERSE))
        if reverse is None:
            return False
        if reverse["kind"] != "answer":
            return True
        try:
            parse_reverse(_answer(reverse), record.question)
        except Rejected:
            return True
        return (record.id, STEP_SOLUTION) in self.final


def _answer(entry: dict) -> Answer:
    return Answer(
        content=entry.get("content", ""),
        reasoning=entry.get("reasoning", ""),
        finish_reason=entry.get("finish_reason", ""),
        refusal=entry.get("refusal", ""),
    )


# ---------------------------------------------------------------- asking


async def _ask(client: TeacherClient, journal: Journal, item: str, step: str, prompt: str) -> dict:
    base = {"item": item, "step": step, "time": round(time.time(), 3)}
    try:
        reply = await client.complete(prompt)
    except RequestRefused as exc:
        entry = {**base, "kind": "refused", "status": exc.status, "message": exc.message, "requests": exc.requests}
    except RetriesExhausted as exc:
        entry = {**base, "kind": "failed", "error": exc.what, "requests": exc.requests}
    except SpendCapReached as exc:
        if exc.requests:  # attempts already made for this request still count in the run's spend
            journal.append({**base, "kind": "failed", "error": SPEND_CAP, "requests": exc.requests})
        raise
    else:
        expected = client.cfg.expected_teacher_model
        if expected and reply.model != expected and reply.model not in journal.served:
            print(
                f"warning: the teacher endpoint answered as model {reply.model or UNREPORTED!r}, not "
                f"invert.expected_teacher_model {expected!r} (every answer's model is in the journal)",
                file=sys.stderr,
            )
        entry = {
            **base,
            "kind": "answer",
            "content": reply.answer.content,
            "reasoning": reply.answer.reasoning,
            "finish_reason": reply.answer.finish_reason,
            "refusal": reply.answer.refusal,
            "model": reply.model,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "requests": reply.requests,
        }
    journal.append(entry)
    return entry


async def _invert_item(client: TeacherClient, journal: Journal, templates: Templates, record: Record) -> None:
    reverse = journal.final.get((record.id, STEP_REVERSE))
    if reverse is None:
        prompt = fill(templates.reverse, question=record.question, answer=forward_answer(record))
        reverse = await _ask(client, journal, record.id, STEP_REVERSE, prompt)
    if reverse["kind"] != "answer":
        return
    try:
        new_question, _ = parse_reverse(_answer(reverse), record.question)
    except Rejected:
        return
    if (record.id, STEP_SOLUTION) not in journal.final:
        await _ask(client, journal, record.id, STEP_SOLUTION, fill(templates.solution, question=new_question))


async def ask_teacher(
    cfg: InvertConfig, endpoint: Endpoint, templates: Templates, forward: list[Record], journal: Journal, progress=None
) -> Usage:
    """Send every request the journal lacks; returns the run's usage (journal included).

    Stops sending when the spend cap is reached (``usage.spend_cap_reached()``).
    """
    usage = journal.usage()
    usage.max_requests, usage.max_tokens_total = cfg.max_requests, cfg.max_tokens_total
    todo = collections.deque(r for r in forward if not journal.item_done(r))
    if not todo:
        return usage
    client = TeacherClient(cfg, endpoint, usage)
    stop = asyncio.Event()

    async def worker() -> None:
        while todo and not stop.is_set():
            record = todo.popleft()
            try:
                await _invert_item(client, journal, templates, record)
            except SpendCapReached:
                stop.set()
                return
            if progress is not None:
                progress.update(1)
                progress.set_postfix(requests=usage.requests, refresh=False)

    tasks = [asyncio.create_task(worker()) for _ in range(max(1, min(cfg.concurrency, len(todo))))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        await client.close()
    return usage


# ---------------------------------------------------------------- judging


@dataclass
class Outcome:
    reverses: list[Record]
    rejected: list[dict]
    pending: list[str]  # forward ids with a request still to send (spend cap)
    served: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # answers per model


def judge(forward: list[Record], journal: Journal, source: str) -> Outcome:
    """Reverse records and rejections from the journal's answers, in forward order."""
    outcome = Outcome([], [], [], collections.Counter(journal.served))
    for record in forward:
        row = {"id": record.id, "pair_id": record.pair_id, "question": record.question}
        new_question = None
        try:
            for step in (STEP_REVERSE, STEP_SOLUTION):
                row["step"] = step
                entry = journal.final.get((record.id, step))
                if entry is None:
                    failed = journal.failed.get((record.id, step))
                    if failed is None or failed.get("error") == SPEND_CAP:
                        outcome.pending.append(record.id)
                        break
                    raise Rejected(RETRIES_EXHAUSTED, failed.get("error", ""))
                if entry["kind"] == "refused":
                    raise Rejected(REQUEST_REFUSED, f"HTTP {entry.get('status')}: {entry.get('message', '')}"[:300])
                if step == STEP_REVERSE:
                    new_question, _ = parse_reverse(_answer(entry), record.question)
                    row["new_question"] = new_question
                else:
                    solution = parse_solution(_answer(entry))
                    outcome.reverses.append(
                        Record(
                            id=f"{record.pair_id}-r",
                            pair_id=record.pair_id,
                            direction=REVERSE,
                            question=new_question,
                            thinking=solution.thinking,
                            attempt=solution.attempt,
                            gold=solution.gold,
                            source=source,
                        )
                    )
        except Rejected as rejection:
            outcome.rejected.append({**row, "reason": rejection.reason, "detail": rejection.detail})
    return outcome


# ---------------------------------------------------------------- the stage


def journal_header(cfg: InvertConfig, endpoint: Endpoint, templates: Templates) -> dict:
    """Every setting that shapes an answer: a journal is only continued under the same ones."""
    return {
        "kind": "header",
        "version": JOURNAL_VERSION,
        "teacher": cfg.teacher,
        "base_url": endpoint.base_url or "",
        **templates.digests(),
        "temperature": cfg.temperature,
        "max_completion_tokens": cfg.max_completion_tokens,
        "created": round(time.time(), 3),
    }


def run_teacher(
    cfg: InvertConfig, forward: list[Record], endpoint: Endpoint, path: Path, progress: bool = True
) -> tuple[Outcome, Usage]:
    """Ask, journal and judge, without MLflow (the stage, the benchmark and tests call this)."""
    templates = load_templates(cfg)
    journal = Journal.open(path, journal_header(cfg, endpoint, templates))
    bar = None
    try:
        if progress:
            from tqdm.auto import tqdm

            done = sum(journal.item_done(r) for r in forward)
            bar = tqdm(total=len(forward), initial=done, desc=f"invert {cfg.teacher}", unit="item", file=sys.stderr, mininterval=1.0)
        usage = asyncio.run(ask_teacher(cfg, endpoint, templates, forward, journal, bar))
    finally:
        if bar is not None:
            bar.close()
        journal.close()
    return judge(forward, journal, f"teacher:{cfg.teacher}"), usage


def cost_usd(cfg: InvertConfig, usage: Usage) -> float:
    return (usage.prompt_tokens * cfg.price_prompt_per_million + usage.completion_tokens * cfg.price_completion_per_million) / 1e6


def invert_with_teacher(cfg: Config, forward: list[Record], api_key: str = "", run=None) -> tuple[list[Record], list[dict], dict]:
    """The stage's teacher path inside the active run: journal, metrics beyond INTERFACE.md's five, artifacts."""
    import mlflow

    endpoint = resolve_endpoint(cfg.invert, api_key)
    run_id = run.info.run_id
    lock_journal(run_id)
    path = journal_path(run_id)
    try:
        templates = load_templates(cfg.invert)
        _log_templates(run_id, templates)
        try:
            outcome, usage = run_teacher(cfg.invert, forward, endpoint, path)
        except UserError as exc:
            raise UserError(redact(str(exc), endpoint.api_key)) from None
        except Exception as exc:
            # The run's error tag and the console get str(exc): never with the key in it.
            if endpoint.api_key in str(exc):
                raise RuntimeError(f"{type(exc).__name__}: {redact(str(exc), endpoint.api_key)}") from None
            raise
        reasons = collections.Counter(row["reason"] for row in outcome.rejected)
        metrics = {tracking.metric_invert_rejected(reason): reasons.get(reason, 0) for reason in REASONS}
        metrics.update(
            {
                tracking.METRIC_INVERT_COST: cost_usd(cfg.invert, usage),
                tracking.METRIC_INVERT_RETRIES: usage.retries,
                tracking.METRIC_INVERT_PENDING: len(outcome.pending),
                tracking.METRIC_INVERT_NO_REASONING: sum(not r.thinking for r in outcome.reverses),
            }
        )
        mlflow.log_metrics(metrics)
        _record_served_models(cfg.invert, outcome.served)
        if path.exists():
            mlflow.log_artifact(str(path), artifact_path=os.path.dirname(tracking.ARTIFACT_INVERT_JOURNAL))
        if outcome.pending:
            mlflow.log_metrics(
                {
                    tracking.METRIC_INVERT_REQUESTED: usage.requests,
                    tracking.METRIC_INVERT_ACCEPTED: len(outcome.reverses),
                    tracking.METRIC_INVERT_REJECTED: len(outcome.rejected),
                    tracking.METRIC_INVERT_PROMPT_TOKENS: usage.prompt_tokens,
                    tracking.METRIC_INVERT_COMPLETION_TOKENS: usage.completion_tokens,
                }
            )
            cap = f"invert.max_requests={cfg.invert.max_requests}" if cfg.invert.max_requests else ""
            if cfg.invert.max_tokens_total:
                cap = ", ".join(filter(None, [cap, f"invert.max_tokens_total={cfg.invert.max_tokens_total}"]))
            raise UserError(
                f"spend cap reached ({cap}; {usage.requests} requests, "
                f"{usage.prompt_tokens + usage.completion_tokens} tokens): {len(outcome.pending)} of {len(forward)} "
                f"items not done; to finish, rerun with --run_id {run_id} and a higher cap"
            )
        usage_dict = {
            "requested": usage.requests,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
        }
        return outcome.reverses, outcome.rejected, usage_dict
    finally:
        unlock_journal(run_id)


def served_mismatch(cfg: InvertConfig, served: collections.Counter) -> dict[str, int]:
    """Answers per reported model that is not ``invert.expected_teacher_model`` (empty when unset)."""
    expected = cfg.expected_teacher_model
    return {model: n for model, n in served.items() if expected and model != expected}


def _record_served_models(cfg: InvertConfig, served: collections.Counter) -> None:
    """The models the endpoint reported, on the run (a tag: a resumed run adds answers), and a warning
    naming every one that is not the expected teacher."""
    import mlflow

    text = ", ".join(f"{model} ({n})" for model, n in served.most_common())
    wrong = served_mismatch(cfg, served)
    tags = {tracking.TAG_INVERT_SERVED_MODELS: text or "none"}
    if cfg.expected_teacher_model:
        tags[tracking.TAG_INVERT_TEACHER_MISMATCH] = str(bool(wrong)).lower()
    mlflow.set_tags(tags)
    if wrong:
        answers = sum(wrong.values())
        print(
            f"warning: {answers} of {sum(served.values())} teacher answers came from "
            f"{', '.join(sorted(wrong))}, not invert.expected_teacher_model {cfg.expected_teacher_model!r} "
            f"(--teacher {cfg.teacher!r} at {cfg.base_url or 'the default endpoint'}): the reverses are another "
            "teacher's than the forward traces'",
            file=sys.stderr,
        )


def _log_templates(run_id: str, templates: Templates) -> None:
    import mlflow

    mlflow.log_text(templates.reverse, f"{tracking.ARTIFACT_INVERT_TEMPLATES}/reverse.txt")
    mlflow.log_text(templates.solution, f"{tracking.ARTIFACT_INVERT_TEMPLATES}/solution.txt")
    existing = mlflow.MlflowClient().get_run(run_id).data.params
    fresh = {f"invert.{k}": v for k, v in templates.digests().items() if f"invert.{k}" not in existing}
    if fresh:
        mlflow.log_params(fresh)


# ---------------------------------------------------------------- resuming


def find_unfinished_run(data_run_id: str, cfg: Config, limit: str) -> str | None:
    """The newest unfinished invert run of this data run, teacher, endpoint and limit with a journal here."""
    import mlflow

    client = mlflow.MlflowClient(tracking.tracking_uri())
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    if experiment is None:
        return None
    query = (
        f"tags.`{tracking.TAG_STAGE}` = 'invert' and tags.`{tracking.tag_upstream('data')}` = '{data_run_id}' "
        f"and params.`invert.teacher` = '{_quote(cfg.invert.teacher)}'"
    )
    runs = client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50)
    for run in runs:
        params = run.data.params
        if run.info.status == "FINISHED" or run.data.tags.get(tracking.TAG_CONFIG_HASH) != tracking.config_hash(cfg, "invert"):
            continue
        if params.get("invert.limit", "0") != (limit or "0") or params.get("invert.base_url", "") != cfg.invert.base_url:
            continue
        if journal_path(run.info.run_id).exists() and not journal_locked(run.info.run_id):
            return run.info.run_id
    return None


def check_resumable(run_id: str, data_run_id: str, cfg: Config, limit: str) -> None:
    """An explicit --run_id must be an invert run of the same data run, config (teacher, endpoint, templates,
    temperature, token cap, ...: tracking.STAGE_CONFIG_SECTIONS) and limit."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.MlflowClient(tracking.tracking_uri()).get_run(run_id)
    except MlflowException:
        raise UserError(f"--run_id {run_id}: no such run in {tracking.tracking_uri()}") from None
    tags, params = run.data.tags, run.data.params
    if tags.get(tracking.TAG_STAGE) != "invert":
        raise UserError(f"--run_id {run_id}: is a {tags.get(tracking.TAG_STAGE) or 'non-reverse-align'} run, expected invert")
    tracking.require_same_inputs(run, "invert", cfg, {"data": data_run_id})
    if params.get("invert.limit", limit or "0") != (limit or "0"):
        raise UserError(f"--run_id {run_id}: was started with --limit {params['invert.limit']}, not {limit or '0'}")


def _quote(text: str) -> str:
    return text.replace("'", "\\'")
