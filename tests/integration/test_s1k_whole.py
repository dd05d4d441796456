"""D_s1k stays whole: an s1K-1.1-shaped file through `data` and `invert` against the loopback teacher.

The rows are synthetic-world problems dressed in s1K-1.1's real columns, so the
fake teacher (tests/fake_teacher.py) can answer them. The file holds what a
real run meets: reverse answers without a box, a reversal the parser rejects,
an over-long DeepSeek trace with a short Gemini one, a row where both traces
are too long, a row whose answer alone is too long, and an over-long reverse.
Run with ``-s`` to see the table of counts.
"""

import json

import mlflow
from conftest import SESSION_DIR
from fake_teacher import REVERSE, SOLUTION, FakeTeacher

from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.data import synthetic
from reverse_align.data.invert import run_invert
from reverse_align.data.s1k import S1K_11_COLUMNS
from reverse_align.data.schema import FORWARD
from reverse_align.data.stage import run_data
from reverse_align.formatting import ANSWER_MARKER
from reverse_align.train.mixes import composition, compose_mix

SECRET = "sk-test-s1k-whole"
LONG = " ".join(["Let me reconsider every operation once more."] * 60)  # far over micro's 256 tokens


def s1k_row(record, **changes) -> dict:
    row = {
        "solution": f"Undo the operations in turn: the start is \\boxed{{{record.gold}}}.",
        "question": record.question,
        "cot_type": "math",
        "source_type": "synthetic/world",
        "metadata": "{}",
        "gemini_thinking_trajectory": "Gemini: " + record.thinking,
        "gemini_attempt": record.attempt,
        "deepseek_thinking_trajectory": record.thinking,
        "deepseek_attempt": record.attempt,
        "gemini_grade": "Yes",
        "gemini_grade_reason": "",
        "deepseek_grade": "Yes",
        "deepseek_grade_reason": "",
    }
    assert set(row) == set(S1K_11_COLUMNS)
    return {**row, **changes}


def artifact(run_id, path):
    return [json.loads(line) for line in mlflow.artifacts.load_text(f"runs:/{run_id}/{path}").splitlines()]


def test_s1k_file_through_data_and_invert_keeps_every_forward_item(micro_base, client):
    cfg = load_config("micro")
    world = synthetic.make_world(cfg.synthetic, cfg.data.seed).records("train", FORWARD)[:12]
    rows = [s1k_row(r) for r in world]
    rows[4] = s1k_row(world[4], deepseek_thinking_trajectory=LONG)  # DeepSeek too long, Gemini short
    rows[5] = s1k_row(world[5], deepseek_thinking_trajectory=LONG, gemini_thinking_trajectory=LONG)  # both too long
    rows[6] = s1k_row(world[6], deepseek_thinking_trajectory=LONG, gemini_thinking_trajectory=LONG, gemini_attempt=LONG)
    rows[7] = s1k_row(world[7], solution="A proof: " + LONG)  # no box, long: gold null
    path = SESSION_DIR / "s1K-1.1-shaped.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    data_run = run_data(load_config("micro", [f"data.source={path}", "data.probe_size=4"]))
    forward = artifact(data_run, tracking.ARTIFACT_FORWARD)
    metrics = client.get_run(data_run).data.metrics
    by_pair = {f["pair_id"]: f for f in forward}
    assert len(forward) == 11 and "s1K-1.1-shaped-00006" not in by_pair  # answer alone too long: dropped
    assert by_pair["s1K-1.1-shaped-00004"]["source"].endswith("gemini_fallback")
    cut = by_pair["s1K-1.1-shaped-00005"]
    assert cut["source"].endswith("gemini_fallback") and cut["attempt"] == world[5].attempt
    assert 0 < len(cut["thinking"]) < len(LONG) and LONG.startswith(cut["thinking"])
    assert by_pair["s1K-1.1-shaped-00000"]["gold"] == world[0].gold  # the boxed final answer, not the solution
    assert by_pair["s1K-1.1-shaped-00000"]["solution"].startswith("Undo the operations")
    assert by_pair["s1K-1.1-shaped-00007"]["gold"] is None

    questions = [r.question for r in world]
    with FakeTeacher(api_key=SECRET) as server:
        server.script(questions[1], SOLUTION, "no_boxed")
        server.script(questions[2], SOLUTION, "no_boxed")
        server.script(questions[3], REVERSE, "malformed")
        server.script(questions[8], SOLUTION, "long_reasoning")
        invert_cfg = load_config(
            "micro", ["invert.teacher=fake-r1", f"invert.base_url={server.base_url}", "data.probe_size=4"]
        )
        invert_run = run_invert(invert_cfg, data_run_id=data_run, api_key=SECRET)

    run = client.get_run(invert_run)
    whole = artifact(invert_run, tracking.ARTIFACT_FORWARD)
    reverse = artifact(invert_run, tracking.ARTIFACT_REVERSE)
    rejected = artifact(invert_run, tracking.ARTIFACT_REJECTED)
    probe = artifact(invert_run, tracking.ARTIFACT_PROBE)
    assert [f["id"] for f in whole] == [f["id"] for f in forward]  # D_s1k whole, rejected reversal included
    assert {r["pair_id"]: r["reason"] for r in rejected} == {"s1K-1.1-shaped-00003": "unparseable"}
    gold_null = {r["pair_id"] for r in reverse if r["gold"] is None}
    assert gold_null == {"s1K-1.1-shaped-00001", "s1K-1.1-shaped-00002"}
    long_reverse = next(r for r in reverse if r["pair_id"] == "s1K-1.1-shaped-00008")
    assert long_reverse["attempt"].endswith(f"\\boxed{{{synthetic.solve(long_reverse['question'])}}}.")
    assert run.data.tags[tracking.TAG_LENGTH_RULE].startswith("over model.max_length tokens")
    # Probe: the 4 shortest forward items that have a reverse, and those 4 reverses.
    paired_ids = {r["pair_id"] for r in reverse}
    assert len(probe) == 8 and {p["pair_id"] for p in probe} <= paired_ids
    assert sum(p["direction"] == "reverse" for p in probe) == 4

    invert_metrics = run.data.metrics
    assert invert_metrics[tracking.METRIC_INVERT_PAIRS] == len(reverse) == 10
    assert invert_metrics[tracking.METRIC_INVERT_GOLD_NULL] == 2
    assert invert_metrics[tracking.METRIC_INVERT_THINKING_CUT] == 1

    from reverse_align.data.schema import Record

    records = {name: [Record.from_dict(r) for r in rows] for name, rows in (("f", whole), ("r", reverse))}
    mixes = {mix: composition(compose_mix(records["f"], records["r"], mix, 0), mix, 0) for mix in ("forward", "reverse", "mixed", "mixed_half")}
    assert (mixes["forward"]["examples"], mixes["mixed"]["pairs"], mixes["mixed_half"]["pairs"]) == (11, 10, 5)

    table = [
        ("s1K rows in the file", len(rows)),
        ("forward items (data run; = the forward mix)", metrics["data/forward_count"]),
        ("  DeepSeek trace", metrics["data/deepseek"]),
        ("  Gemini fallback (DeepSeek over max_length)", metrics["data/gemini_fallback"]),
        ("  thinking cut to fit (both traces too long)", metrics["data/thinking_cut"]),
        ("  dropped (question + answer over max_length)", metrics["data/dropped"]),
        ("  gold null (no box, long solution)", metrics["data/gold_null"]),
        ("reversals rejected (invert)", invert_metrics[tracking.METRIC_INVERT_REJECTED]),
        ("pairs (accepted reverses)", invert_metrics[tracking.METRIC_INVERT_PAIRS]),
        ("  reverse gold null (answer without a box)", invert_metrics[tracking.METRIC_INVERT_GOLD_NULL]),
        ("  reverse thinking cut to fit", invert_metrics[tracking.METRIC_INVERT_THINKING_CUT]),
        ("  reverse dropped (too long)", invert_metrics[tracking.metric_invert_rejected("too_long")]),
        ("mix examples forward / reverse / mixed / mixed_half",
         " / ".join(str(mixes[m]["examples"]) for m in ("forward", "reverse", "mixed", "mixed_half"))),
        ("probe forward + reverse", f"{len(probe) // 2} + {len(probe) // 2}"),
    ]  # fmt: skip
    table = [(name, int(value) if isinstance(value, float) else value) for name, value in table]
    print("\n" + "\n".join(f"| {name:<52} | {value!s:>14} |" for name, value in table))
    assert [v for _, v in table[:12]] == [12, 11, 9, 2, 1, 1, 1, 1, 10, 2, 1, 0]
    assert ANSWER_MARKER not in cut["thinking"]
