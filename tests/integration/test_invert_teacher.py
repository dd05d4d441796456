"""The teacher path of `invert` against a real loopback Chat Completions server (tests/fake_teacher.py).

No patched client: the real ``openai`` client talks HTTP to 127.0.0.1. The fake
teacher answers the synthetic world exactly, so every accepted reverse is
checked by recomputing its answer from its question.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, SESSION_DIR, run_cli
from fake_teacher import REVERSE, SOLUTION, FakeTeacher, item_key

from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.data import synthetic
from reverse_align.data import teacher_parse as tp
from reverse_align.data.invert import run_invert
from reverse_align.data.schema import FORWARD
from reverse_align.data.teacher import journal_path, run_teacher
from reverse_align.data.teacher_client import Endpoint
from reverse_align.errors import UserError

SECRET = "sk-test-4f9c2e7a1b8d3-never-log-me"
FAST = ["invert.teacher=fake-r1", "invert.retry_base_delay=0.01", "invert.retry_max_delay=0.05", "invert.timeout=2"]


def _forward(n, start=0):
    cfg = load_config("micro")
    return synthetic.make_world(cfg.synthetic, cfg.data.seed).records("train", FORWARD)[start : start + n]


def _cfg(*overrides):
    return load_config("micro", [*FAST, *overrides])


def _assert_recomputed(reverses, forward):
    by_pair = {f.pair_id: f for f in forward}
    for r in reverses:
        assert r.direction == "reverse" and r.id == f"{r.pair_id}-r"
        start = synthetic.parse_question(by_pair[r.pair_id].question)[1].start
        assert synthetic.solve(r.question) == int(r.gold) == start


def test_every_server_behaviour_is_retried_or_rejected_with_its_reason(tmp_path):
    forward = _forward(14)
    q = [f.question for f in forward]
    scripts = {
        0: (REVERSE, "ok"),
        1: (SOLUTION, "think"),
        2: (SOLUTION, "plain"),
        3: (REVERSE, "429", "ok"),
        4: (SOLUTION, "500", "500", "ok"),
        5: (REVERSE, "stall", "ok"),
        6: (SOLUTION, "drop", "ok"),
        7: (SOLUTION, "bad_json", "ok"),
        8: (REVERSE, "malformed"),
        9: (REVERSE, "same_question"),
        10: (SOLUTION, "no_boxed"),
        11: (SOLUTION, "truncated"),
        12: (REVERSE, "400"),
        13: (REVERSE, "500", "500", "500"),
    }
    with FakeTeacher(latency=0.01, stall_seconds=3.0, retry_after="1") as server:
        for index, (step, *behaviours) in scripts.items():
            server.script(q[index], step, *behaviours)
        cfg = _cfg("invert.timeout=0.5", "invert.max_retries=2", "invert.concurrency=8")
        outcome, usage = run_teacher(cfg.invert, forward, Endpoint(server.base_url, SECRET), tmp_path / "j.jsonl", progress=False)

        accepted = {r.pair_id for r in outcome.reverses}
        assert accepted == {forward[i].pair_id for i in (*range(8), 10)}
        unboxed = [r for r in outcome.reverses if r.pair_id == forward[10].pair_id]
        assert unboxed[0].gold is None and unboxed[0].attempt.startswith("The starting number is")
        _assert_recomputed([r for r in outcome.reverses if r.gold is not None], forward)
        thinking = {r.pair_id: r.thinking for r in outcome.reverses}
        assert thinking[forward[0].pair_id].startswith("Undo each operation")  # reasoning_content
        assert thinking[forward[1].pair_id].startswith("Undo each operation")  # <think> tags
        assert thinking[forward[2].pair_id] == ""  # no reasoning anywhere
        assert "<think>" not in outcome.reverses[1].attempt

        reasons = {row["pair_id"]: row["reason"] for row in outcome.rejected}
        assert reasons == {
            forward[8].pair_id: tp.UNPARSEABLE,
            forward[9].pair_id: tp.SAME_QUESTION,
            forward[11].pair_id: tp.TRUNCATED,
            forward[12].pair_id: tp.REQUEST_REFUSED,
            forward[13].pair_id: tp.RETRIES_EXHAUSTED,
        }
        assert outcome.pending == []

        # Each retried step was asked exactly as often as its script says; nothing else twice.
        assert server.count(q[3], REVERSE) == 2 and server.count(q[4], SOLUTION) == 3
        assert server.count(q[5], REVERSE) == 2 and server.count(q[6], SOLUTION) == 2
        assert server.count(q[7], SOLUTION) == 2 and server.count(q[13], REVERSE) == 3  # 1 + max_retries
        assert server.count(q[12], REVERSE) == 1  # a 400 is not retried
        assert all(server.count(q[i], SOLUTION) == 0 for i in (8, 9, 12, 13))  # rejected at step 1: no step 2
        assert usage.requests == len(server.requests) == 14 * 2 - 4 + 1 + 2 + 1 + 1 + 1 + 2
        assert usage.retries == 8
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0

        # Retry-After honoured: the retry came at least 1 s after the 429.
        first, second = [r for r in server.requests if r.item == item_key(q[3]) and r.step == REVERSE]
        assert second.started - first.finished >= 1.0
        # The stalled request was abandoned at the 0.5 s timeout, not after the 3 s stall.
        stalled, retried = [r for r in server.requests if r.item == item_key(q[5]) and r.step == REVERSE]
        assert retried.started - stalled.started < 2.0
        assert all(r.authorization == f"Bearer {SECRET}" for r in server.requests)


def test_a_429_pauses_every_worker(tmp_path):
    forward = _forward(24)
    with FakeTeacher(latency=0.05, retry_after="1") as server:
        server.script(forward[0].question, REVERSE, "429")
        cfg = _cfg("invert.concurrency=6")
        outcome, _ = run_teacher(cfg.invert, forward, Endpoint(server.base_url, "k"), tmp_path / "j.jsonl", progress=False)
        assert len(outcome.reverses) == 24
        limited = next(r for r in server.requests if r.behaviour == "429")
        # Unpaused, 6 workers would send ~100 requests/s; none starts in the second the 429 asked for
        # (0.15 s of slack for replies already on their way when the 429 arrived).
        during = [r for r in server.requests if limited.finished + 0.15 < r.started < limited.finished + 0.95]
        assert during == []
        assert len([r for r in server.requests if r.started > limited.finished + 0.95]) > 6


def test_resume_asks_only_what_the_journal_lacks_and_retries_given_up_steps(tmp_path):
    forward = _forward(8)
    path = tmp_path / "j.jsonl"
    with FakeTeacher(latency=0.01) as server:
        server.script(forward[0].question, SOLUTION, "500", "500")
        cfg = _cfg("invert.max_retries=1", "invert.concurrency=3")
        first, _ = run_teacher(cfg.invert, forward[:5], Endpoint(server.base_url, "k"), path, progress=False)
        assert [row["reason"] for row in first.rejected] == [tp.RETRIES_EXHAUSTED]
        before = server.per_step()
        # Same journal, three more items: only the given-up step and the new items are asked.
        second, usage = run_teacher(cfg.invert, forward, Endpoint(server.base_url, "k"), path, progress=False)
        after = server.per_step()
        asked_again = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
        assert asked_again == {
            (item_key(forward[0].question), SOLUTION): 1,
            **{(item_key(f.question), step): 1 for f in forward[5:] for step in (REVERSE, SOLUTION)},
        }
        assert len(second.reverses) == 8 and second.rejected == []
        _assert_recomputed(second.reverses, forward)
        assert usage.requests == len(server.requests) == 2 * 8 + 2


def test_a_server_that_wants_max_completion_tokens_gets_it(tmp_path):
    forward = _forward(6)
    with FakeTeacher(refuse_max_tokens=True) as server:
        outcome, _ = run_teacher(_cfg("invert.concurrency=2").invert, forward, Endpoint(server.base_url, "k"), tmp_path / "j.jsonl", progress=False)
        assert len(outcome.reverses) == 6 and outcome.rejected == []
        assert 1 <= server.count(answered=False) <= 2  # one refusal per worker at most, then the other name


def test_a_line_torn_by_a_kill_is_dropped_and_the_journal_continues(tmp_path):
    forward = _forward(4)
    path = tmp_path / "j.jsonl"
    with FakeTeacher() as server:
        run_teacher(_cfg().invert, forward[:2], Endpoint(server.base_url, "k"), path, progress=False)
        with path.open("a") as fh:
            fh.write('{"item": "syn-train-00002-f", "step": "reverse", "kind": "ans')  # killed mid-write
        outcome, _ = run_teacher(_cfg().invert, forward, Endpoint(server.base_url, "k"), path, progress=False)
        assert len(outcome.reverses) == 4 and len(server.requests) == 8
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 8 and all(json.loads(line) for line in lines)


def test_spend_cap_stops_cleanly_and_a_higher_cap_finishes(micro_data, client):
    cfg = _cfg("invert.max_requests=9", "invert.concurrency=2")
    with FakeTeacher(latency=0.02) as server:
        cfg.invert.base_url = server.base_url
        with pytest.raises(UserError, match=r"spend cap reached \(invert.max_requests=9; 9 requests.*rerun with --run_id (\w+)") as caught:
            run_invert(cfg, data_run_id=micro_data, limit="10", api_key=SECRET)
        assert len(server.requests) == 9  # never one more than the cap
        run_id = caught.value.args[0].rsplit("--run_id ", 1)[1].split()[0]
        failed = client.get_run(run_id)
        assert failed.info.status == "FAILED" and "spend cap reached" in failed.data.tags[tracking.TAG_ERROR]
        assert failed.data.metrics[tracking.METRIC_INVERT_REQUESTED] == 9
        assert failed.data.metrics[tracking.METRIC_INVERT_PENDING] >= 5
        answered_before = server.per_step(answered_only=True)

        raised = _cfg("invert.max_requests=100", "invert.concurrency=2", f"invert.base_url={server.base_url}")
        assert run_invert(raised, data_run_id=micro_data, limit="10", api_key=SECRET, run_id=run_id) == run_id
        for key, count in server.per_step().items():
            assert count == 1, f"{key} requested {count} times"
        assert set(answered_before) <= set(server.per_step())
        done = client.get_run(run_id)
        assert done.info.status == "FINISHED"
        assert done.data.metrics[tracking.METRIC_INVERT_REQUESTED] == 20 == len(server.requests)
        assert done.data.metrics[tracking.METRIC_INVERT_ACCEPTED] == 10


def test_invert_stage_with_a_teacher_logs_records_metrics_and_rejections(micro_data, client):
    forward = _forward(12)
    cfg = _cfg("invert.concurrency=4")
    with FakeTeacher(latency=0.01, api_key=SECRET) as server:
        server.script(forward[1].question, REVERSE, "malformed")
        server.script(forward[2].question, SOLUTION, "no_boxed")
        server.script(forward[3].question, SOLUTION, "500", "ok")
        cfg.invert.base_url = server.base_url
        run_id = run_invert(cfg, data_run_id=micro_data, limit="12", api_key=SECRET)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags[tracking.tag_upstream("data")] == micro_data
        metrics = run.data.metrics
        assert metrics[tracking.METRIC_INVERT_REQUESTED] == len(server.requests) == 12 * 2 - 1 + 1
        assert metrics[tracking.METRIC_INVERT_ACCEPTED] == 11 and metrics[tracking.METRIC_INVERT_REJECTED] == 1
        assert metrics[tracking.metric_invert_rejected(tp.UNPARSEABLE)] == 1
        assert metrics[tracking.METRIC_INVERT_GOLD_NULL] == 1 and metrics[tracking.METRIC_INVERT_PAIRS] == 11
        assert metrics[tracking.metric_invert_rejected(tp.TRUNCATED)] == 0
        assert metrics[tracking.METRIC_INVERT_RETRIES] == 1
        tokens = metrics[tracking.METRIC_INVERT_PROMPT_TOKENS], metrics[tracking.METRIC_INVERT_COMPLETION_TOKENS]
        assert tokens[0] > 0 and tokens[1] > 0
        expected_cost = (tokens[0] * cfg.invert.price_prompt_per_million + tokens[1] * cfg.invert.price_completion_per_million) / 1e6
        assert metrics[tracking.METRIC_INVERT_COST] == pytest.approx(expected_cost)

        def artifact(path):
            return [json.loads(line) for line in mlflow.artifacts.load_text(f"runs:/{run_id}/{path}").splitlines()]

        reverse, whole = artifact(tracking.ARTIFACT_REVERSE), artifact(tracking.ARTIFACT_FORWARD)
        # D_s1k stays whole: the forward item whose reversal was rejected is still there.
        assert [f["pair_id"] for f in whole] == [f.pair_id for f in forward]
        paired = [f for f in whole if f["pair_id"] != forward[1].pair_id]
        assert [r["pair_id"] for r in reverse] == [f["pair_id"] for f in paired]
        assert len(reverse) == 11 and all(r["direction"] == "reverse" and r["thinking"] for r in reverse)
        for r, f in zip(reverse, paired):
            if f["pair_id"] == forward[2].pair_id:
                assert r["gold"] is None
                continue
            assert synthetic.solve(r["question"]) == int(r["gold"]) == synthetic.parse_question(f["question"])[1].start
        rejected = artifact(tracking.ARTIFACT_REJECTED)
        assert {(r["pair_id"], r["step"], r["reason"]) for r in rejected} == {(forward[1].pair_id, REVERSE, tp.UNPARSEABLE)}
        journal = artifact(tracking.ARTIFACT_INVERT_JOURNAL)
        assert journal[0]["kind"] == "header" and len(journal) == 1 + 12 * 2 - 1
        assert "You are an AI model tasked" in mlflow.artifacts.load_text(f"runs:/{run_id}/{tracking.ARTIFACT_INVERT_TEMPLATES}/reverse.txt")
        assert len(run.data.params["invert.reverse_template_sha256"]) == 64
        assert {d.dataset.name for d in run.inputs.dataset_inputs} >= {"forward", "reverse", "probe"}

        # Rerunning the finished run by id sends nothing and gives the same records.
        sent = len(server.requests)
        assert run_invert(cfg, data_run_id=micro_data, limit="12", api_key=SECRET, run_id=run_id) == run_id
        assert len(server.requests) == sent
        assert artifact(tracking.ARTIFACT_REVERSE) == reverse


def test_the_model_the_endpoint_serves_is_recorded_and_a_different_one_warned(micro_data, client, capsys):
    forward = _forward(3)
    cfg = _cfg("invert.expected_teacher_model=fake-r1")
    # An alias that moved on: asked for fake-r1, the endpoint answers as another model.
    with FakeTeacher(served_model="fake-r2-0528") as server:
        cfg.invert.base_url = server.base_url
        run_id = run_invert(cfg, data_run_id=micro_data, limit="3", api_key=SECRET)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["invert.expected_teacher_model"] == "fake-r1"
    assert run.data.tags[tracking.TAG_INVERT_SERVED_MODELS] == "fake-r2-0528 (6)"
    assert run.data.tags[tracking.TAG_INVERT_TEACHER_MISMATCH] == "true"
    journal = mlflow.artifacts.load_text(f"runs:/{run_id}/{tracking.ARTIFACT_INVERT_JOURNAL}").splitlines()
    answers = [json.loads(line) for line in journal[1:]]
    assert len(answers) == 6 and {a["model"] for a in answers} == {"fake-r2-0528"}
    err = capsys.readouterr().err
    assert err.count("warning: the teacher endpoint answered as model 'fake-r2-0528'") == 1  # at its first answer
    assert "warning: 6 of 6 teacher answers came from fake-r2-0528, not invert.expected_teacher_model 'fake-r1'" in err

    # The endpoint serves the expected model: recorded, no warning.
    with FakeTeacher() as server:
        cfg.invert.base_url = server.base_url
        run_id = run_invert(cfg, data_run_id=micro_data, limit="3", api_key=SECRET)
    tags = client.get_run(run_id).data.tags
    assert tags[tracking.TAG_INVERT_SERVED_MODELS] == "fake-r1 (6)" and tags[tracking.TAG_INVERT_TEACHER_MISMATCH] == "false"
    assert "warning" not in capsys.readouterr().err


def _journal_dirs() -> set[Path]:
    root = Path(os.environ["REVERSE_ALIGN_CACHE"]) / "invert"
    return set(root.iterdir()) if root.exists() else set()


def _answered(journal: Path) -> set[tuple[str, str]]:
    entries = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    return {(e["item"], e["step"]) for e in entries if e["kind"] != "header"}


def test_killed_run_resumes_without_asking_twice_and_the_key_is_nowhere(micro_data, client):
    limit = 24
    forward = {f.id: f for f in _forward(limit)}
    with FakeTeacher(latency=0.25, api_key=SECRET) as server:
        args = [
            "invert", "--preset", "micro", "--data_run_id", micro_data, "--teacher", "fake-r1",
            "--base_url", server.base_url, "--concurrency", "4", "--limit", str(limit), "--api_key", SECRET,
            "--set", "invert.retry_base_delay=0.01",
        ]  # fmt: skip
        before = _journal_dirs()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(
            [sys.executable, "-m", "reverse_align.cli", *args],
            cwd=SESSION_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.time() + 120
        journal = None
        while time.time() < deadline and process.poll() is None:
            new = [d / "journal.jsonl" for d in _journal_dirs() - before]
            if new and new[0].exists() and len(new[0].read_text().splitlines()) >= 1 + 8:
                journal = new[0]
                break
            time.sleep(0.05)
        assert journal is not None, f"the invert run never wrote 8 journal entries: {process.poll()}"
        process.send_signal(signal.SIGKILL)
        killed_out, killed_err = process.communicate(timeout=30)
        killed_at = time.time()
        run_id = journal.parent.name
        answered_at_kill = _answered(journal)
        sent_before = len(server.requests)
        assert 8 <= len(answered_at_kill) < 2 * limit
        assert client.get_run(run_id).info.status == "RUNNING"  # killed: nobody closed it

        # Rerun the same command without --run_id: it finds and continues the killed run.
        resumed = run_cli(*args)
        assert resumed.returncode == 0, resumed.stderr
        assert f"resuming unfinished invert run {run_id}" in resumed.stdout

        after = [r for r in server.requests if r.started >= killed_at]
        keys = {(fid, step): (item_key(f.question), step) for fid, f in forward.items() for step in (REVERSE, SOLUTION)}
        journaled = {keys[k] for k in answered_at_kill}
        duplicates = [r for r in after if (r.item, r.step) in journaled]
        per_step = server.per_step()
        run = client.get_run(run_id)
        figures = {
            "requests_before_kill": sent_before,
            "requests_after_resume": len(after),
            "steps_journaled_at_kill": len(answered_at_kill),
            "duplicates": len(duplicates),
            "in_flight_resent": sum(1 for k, n in per_step.items() if n > 1),
            "items_lost": limit - int(run.data.metrics[tracking.METRIC_INVERT_ACCEPTED] + run.data.metrics[tracking.METRIC_INVERT_REJECTED]),
        }
        print("kill-and-resume:", json.dumps(figures))
        assert figures["duplicates"] == 0 and figures["items_lost"] == 0
        assert run.info.status == "FINISHED" and run.data.metrics[tracking.METRIC_INVERT_ACCEPTED] == limit
        assert set(per_step) == set(keys.values())  # every step of every item was asked
        assert all(n <= 2 for n in per_step.values())  # at most once more: the ones in flight at the kill
        assert figures["in_flight_resent"] <= 4  # concurrency

        # The key reached the server, and nothing else: not the store, artifacts, journal, or output.
        assert all(r.authorization == f"Bearer {SECRET}" for r in server.requests)
        needle = SECRET.encode()
        for path in SESSION_DIR.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), f"API key found in {path}"
        for text in (killed_out, killed_err, resumed.stdout, resumed.stderr):
            assert SECRET not in text
        assert all(SECRET not in v for v in run.data.params.values())
        assert all(SECRET not in v for v in run.data.tags.values())


def test_a_wrong_key_is_one_error_line_without_the_key(micro_data, client):
    with FakeTeacher(api_key="sk-the-right-one") as server:
        base_url = server.base_url
        result = run_cli(
            "invert", "--preset", "micro", "--data_run_id", micro_data, "--teacher", "fake-r1",
            "--base_url", server.base_url, "--limit", "2", "--api_key", SECRET,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: teacher at http://127.0.0.1:") and "refused the API key (HTTP 401)" in lines[-1]
    assert SECRET not in result.stderr + result.stdout
    failed = client.search_runs(
        [client.get_experiment_by_name(tracking.experiment_name()).experiment_id],
        f"attributes.status = 'FAILED' and params.`invert.base_url` = '{base_url}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert "HTTP 401" in failed.data.tags[tracking.TAG_ERROR] and SECRET not in failed.data.tags[tracking.TAG_ERROR]


def test_no_key_anywhere_is_a_user_error(monkeypatch, micro_data):
    for name in ("OPENAI_API_KEY", "DEEPSEEK_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="no API key; pass --api_key or set OPENAI_API_KEY or DEEPSEEK_API_KEY"):
        run_invert(_cfg("invert.base_url=http://127.0.0.1:9/v1"), data_run_id=micro_data, limit="1")


def test_journal_path_is_keyed_by_run_id():
    assert journal_path("abc").parts[-3:] == ("invert", "abc", "journal.jsonl")
