"""The `promote` stage: the best adapter run -> a version of a registered model, alias moved only when it wins.

Two real micro adapter runs (an SFT run and a DPO run on it) carry a metric this
test logs itself (promote only reads metrics; the `evaluate` stage writes
``eval/average`` in a study). Each test registers under its own model name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, SESSION_DIR, run_cli

from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.registry import run_promote

METRIC = "eval/promote_test"


@pytest.fixture(scope="module")
def scored_runs(micro_sft, micro_invert):
    """{"worse": sft run with METRIC 0.25, "better": dpo run with METRIC 0.5}."""
    from reverse_align.train.dpo import run_dpo

    client = mlflow.MlflowClient(tracking.tracking_uri())
    cfg = load_config("micro", ["dpo.max_steps=2", "dpo.save_every_steps=0", "dpo.per_device_batch_size=4"])
    dpo_run = run_dpo(cfg, sft_run_id=micro_sft, data_run_id=micro_invert)
    client.log_metric(micro_sft, METRIC, 0.25)
    client.log_metric(dpo_run, METRIC, 0.5)
    return {"worse": micro_sft, "better": dpo_run}


def versions(client, name):
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def champion(client, name):
    return client.get_model_version_by_alias(name, tracking.ALIAS_CHAMPION)  # .version: int in MLflow 3


def test_promote_registers_the_best_and_moves_the_alias_only_when_it_wins(scored_runs, client, capsys):
    name = "adapter-alias-test"
    assert run_promote(None, metric=METRIC, model_name=name) == "1"
    (v1,) = versions(client, name)
    assert v1.run_id == scored_runs["better"] and str(champion(client, name).version) == "1"
    tags = v1.tags
    assert tags[tracking.TAG_SOURCE_RUN] == scored_runs["better"]
    assert (tags[tracking.TAG_STAGE], tags[tracking.TAG_PRESET], tags["sft.mix"]) == ("dpo", "micro", "forward")
    assert float(tags["dpo.beta"]) == load_config("micro").dpo.beta
    assert float(tags[tracking.TAG_METRIC_VALUE]) == 0.5 and tags[tracking.TAG_METRIC] == METRIC
    assert tags[tracking.TAG_BASE_MODEL].startswith("tiny-base")
    assert tags[tracking.tag_upstream("sft")] == scored_runs["worse"]

    # The same run again: no second version.
    assert run_promote(None, metric=METRIC, model_name=name) == "1"
    assert len(versions(client, name)) == 1

    # A worse run is registered but the alias stays; --force moves it without a third version.
    assert run_promote(None, metric=METRIC, model_name=name, run_id=scored_runs["worse"]) == "2"
    assert str(champion(client, name).version) == "1"
    assert "@champion stays version 1" in capsys.readouterr().out
    assert run_promote(None, metric=METRIC, model_name=name, run_id=scored_runs["worse"], force="true") == "2"
    assert str(champion(client, name).version) == "2"
    assert len(versions(client, name)) == 2

    # Without --force the better run takes the alias back.
    run_promote(None, metric=METRIC, model_name=name, stage="dpo")
    assert str(champion(client, name).version) == "1"


def test_run_without_metric_or_adapter_exits_2_and_registers_nothing(scored_runs, micro_invert, client):
    name = "adapter-refusal-test"
    no_metric = run_cli("promote", "--metric", "eval/never_logged", "--model_name", name)
    assert no_metric.returncode == 2
    (line,) = no_metric.stderr.strip().splitlines()
    assert line.startswith("error: no FINISHED adapter run") and "'eval/never_logged'" in line
    assert versions(client, name) == []

    # A FINISHED dpo-tagged run with the best score but no adapter: refused, not skipped for the next best.
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    bare = client.create_run(experiment.experiment_id, tags={tracking.TAG_STAGE: "dpo", tracking.TAG_PRESET: "micro"})
    client.log_metric(bare.info.run_id, METRIC, 0.9)
    client.set_terminated(bare.info.run_id, "FINISHED")
    try:
        by_id = run_cli("promote", "--metric", "eval/never_logged", "--model_name", name, "--run_id", scored_runs["better"])
        assert by_id.returncode == 2 and "has no metric 'eval/never_logged'" in by_id.stderr
        no_adapter = run_cli("promote", "--metric", METRIC, "--model_name", name)
        assert no_adapter.returncode == 2
        assert len(no_adapter.stderr.strip().splitlines()) == 1
        assert f"run {bare.info.run_id}" in no_adapter.stderr and "no logged adapter" in no_adapter.stderr
        assert versions(client, name) == []
    finally:
        client.delete_run(bare.info.run_id)


def test_champion_loads_by_name_in_a_fresh_process_without_a_base_copy(scored_runs, client, tmp_path):
    name = "adapter-load-test"
    run_promote(None, metric=METRIC, model_name=name)
    script = f"""
import json, mlflow
from reverse_align.registry import load_adapter
from reverse_align.eval.generation import greedy_answers
pipe = mlflow.transformers.load_model("models:/{name}@champion")
text = pipe("Start with 5.", max_new_tokens=12, do_sample=False)[0]["generated_text"]
model, tokenizer = load_adapter("models:/{name}@champion")
answer = greedy_answers(model, tokenizer, ["Start with 5. Add 3. What do you get?"], max_new_tokens=12)[0]
print(json.dumps({{"pipeline": type(pipe.model).__name__, "text": text, "helper": type(model).__name__,
                  "adapters": list(model.peft_config), "answer": answer}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=SESSION_DIR,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["pipeline"] == out["helper"] == "PeftModelForCausalLM"
    assert out["adapters"] == ["default"]
    assert out["text"].startswith("Start with 5.") and len(out["text"]) > len("Start with 5.")
    assert out["answer"] != ""

    # The registered model holds the adapter and a reference to the base directory, not the base weights.
    info = mlflow.models.get_model_info(f"models:/{name}@champion")
    flavor = info.flavors["transformers"]
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path)))
    files = {p.relative_to(local).as_posix(): p.stat().st_size for p in local.rglob("*") if p.is_file()}
    base = Path(flavor["local_base_model_path"])
    base_weights = (base / "model.safetensors").stat().st_size
    assert "peft/adapter_model.safetensors" in files
    assert not any(f.endswith("model.safetensors") and not f.startswith("peft/") for f in files)
    assert not any(size == base_weights for size in files.values())
