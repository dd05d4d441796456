"""A rerun with --run_id continues only the run it was started as: same upstream runs, same config.

The runs to resume are stopped runs made through the real ``stage_run`` (tags, params,
config hash as the stages log them); the refusals go through the command line.
"""

import json

import pytest
from conftest import run_cli

from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.data.teacher import Journal, journal_header
from reverse_align.data.teacher_client import Endpoint
from reverse_align.errors import UserError


def stopped_run(stage: str, upstream: dict, params: dict, *overrides: str) -> str:
    """A FAILED run of ``stage`` as a killed one leaves it."""
    with pytest.raises(RuntimeError):
        with tracking.stage_run(stage, load_config("micro", list(overrides)), upstream=upstream, params=params) as run:
            run_id = run.info.run_id
            raise RuntimeError("killed")
    return run_id


def refused(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --run_id"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_sft_resume_refuses_a_changed_setting_seed_or_data_run(micro_invert, micro_data, client):
    run_id = stopped_run("sft", {"invert": micro_invert}, {"sft.mix": "forward", "sft.data_run_id": micro_invert})
    base = ["sft", "--preset", "micro", "--data_run_id", micro_invert, "--run_id", run_id]
    line = refused(run_cli(*base, "--set", "sft.learning_rate=0.01"), "sft.learning_rate=0.002, not 0.01")
    print("\nrefused:", line)
    refused(run_cli(*base, "--seed", "1"), "sft.seed=0, not 1")
    refused(run_cli(*base, "--set", "lora.r=8"), "lora.r=64, not 8")
    other = ["sft", "--preset", "micro", "--data_run_id", micro_invert.replace(micro_invert, micro_data), "--run_id", run_id]
    assert run_cli(*other).returncode == 2  # a data run is not an invert run: refused before the resume check
    assert client.get_run(run_id).info.status == "FAILED"  # a refusal leaves the run as it was


def test_dpo_resume_refuses_another_sft_run_or_beta(micro_invert, micro_sft):
    run_id = stopped_run("dpo", {"invert": micro_invert, "sft": micro_sft}, {"dpo.direction": "both"})
    base = ["dpo", "--preset", "micro", "--data_run_id", micro_invert, "--run_id", run_id]
    refused(run_cli(*base, "--sft_run_id", micro_sft, "--beta", "0.2"), "dpo.beta=0.6, not 0.2")
    refused(run_cli(*base), f"sft run {micro_sft}, not (none)")


def test_invert_resume_refuses_a_changed_answer_setting(micro_data):
    run_id = stopped_run("invert", {"data": micro_data}, {"invert.limit": "0"})
    base = ["invert", "--preset", "micro", "--data_run_id", micro_data, "--run_id", run_id]
    refused(run_cli(*base, "--set", "invert.temperature=1.0"), "invert.temperature=0.6, not 1.0")
    # Concurrency, timeouts and spend caps shape no answer: not part of the check.
    cfg = load_config("micro", ["invert.concurrency=2", "invert.max_requests=5"])
    from reverse_align.data.teacher import check_resumable

    check_resumable(run_id, micro_data, cfg, "")
    with pytest.raises(UserError, match="invert.max_completion_tokens=65536, not 100"):
        check_resumable(run_id, micro_data, load_config("micro", ["invert.max_completion_tokens=100"]), "")


def test_journal_header_holds_every_setting_that_shapes_an_answer(tmp_path):
    from reverse_align.data.teacher import load_templates

    cfg = load_config("micro", ["invert.teacher=fake-r1"]).invert
    header = journal_header(cfg, Endpoint("http://127.0.0.1:1/v1", "k"), load_templates(cfg))
    assert {"teacher", "base_url", "reverse_template_sha256", "solution_template_sha256", "temperature",
            "max_completion_tokens"} <= set(header)  # fmt: skip
    path = tmp_path / "journal.jsonl"
    Journal.open(path, header).close()
    for key, value in (("temperature", 1.0), ("max_completion_tokens", 100)):
        with pytest.raises(UserError, match=f"different {key}"):
            Journal.open(path, {**header, key: value})
    assert json.loads(path.read_text().splitlines()[0])["temperature"] == cfg.temperature
