"""The first stages against a real sqlite MLflow store: tags, params, artifacts, lineage, failures."""

import json

import mlflow

from conftest import run_cli
from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.models import find_tiny_base, resolve_base_model


def test_pretrain_registers_a_loadable_qwen2_model(micro_base, client):
    run = client.get_run(micro_base)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_STAGE] == "pretrain"
    assert run.data.tags[tracking.TAG_PRESET] == "micro"
    assert run.data.metrics["pretrain/loss"] > 0
    import torch

    # Which machine trained it: runs of one commit and seed differ across CPU kinds.
    hardware = run.data.tags[tracking.TAG_HARDWARE]
    assert hardware.startswith("cpu ") and f"{torch.backends.cpu.get_cpu_capability()})" in hardware
    assert hardware.endswith(f"torch {torch.__version__}")
    cfg = load_config("micro")
    version = find_tiny_base(cfg)
    assert version.run_id == micro_base and version.name == "reverse-align-tiny-base-micro"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base_model(cfg)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "qwen2"
    assert model.config.tie_word_embeddings is False
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # Digits are single tokens, as in Qwen.
    assert tokenizer.tokenize("123") == ["1", "2", "3"]


def test_pretrain_reuses_the_registered_model(micro_base, client):
    result = run_cli("pretrain", "--preset", "micro")
    assert result.returncode == 0, result.stderr
    runs = client.search_runs(
        [client.get_experiment_by_name("reverse-align").experiment_id],
        f"tags.`{tracking.TAG_STAGE}` = 'pretrain' and tags.`reverse_align.reused` != ''",
    )
    assert runs and runs[0].data.tags[tracking.tag_upstream("pretrain")] == micro_base
    assert len(client.search_model_versions("name = 'reverse-align-tiny-base-micro'")) == 1


def test_data_run_logs_records_params_and_dataset_inputs(micro_data, client, tmp_path):
    run = client.get_run(micro_data)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_STAGE] == "data"
    assert run.data.params["synthetic.n_train"] == "64"
    assert run.data.params["sft.learning_rate"] == "0.002"
    assert run.data.metrics["data/forward_count"] == 64
    artifacts = {a.path for a in client.list_artifacts(micro_data, "data")}
    assert {"data/forward.jsonl", "data/probe.jsonl", "data/test_forward.jsonl", "data/test_reverse.jsonl"} <= artifacts
    # The transfer family: the same record schema, the integer answer boxed in the attempt and as gold.
    transfer = [json.loads(line) for line in mlflow.artifacts.load_text(f"runs:/{micro_data}/{tracking.ARTIFACT_TEST_TRANSFER}").splitlines()]
    assert len(transfer) == 16 and run.data.metrics["data/transfer_count"] == 16
    for row in transfer:
        assert set(row) == {"id", "pair_id", "direction", "question", "thinking", "attempt", "gold", "source"}
        assert row["direction"] in ("forward", "reverse") and row["source"] == "synthetic"
        assert f"\\boxed{{{int(row['gold'])}}}" in row["attempt"]
    config_yaml = mlflow.artifacts.load_text(f"runs:/{micro_data}/config.yaml")
    assert "n_train: 64" in config_yaml
    forward = [json.loads(line) for line in mlflow.artifacts.load_text(f"runs:/{micro_data}/data/forward.jsonl").splitlines()]
    probe = [json.loads(line) for line in mlflow.artifacts.load_text(f"runs:/{micro_data}/data/probe.jsonl").splitlines()]
    assert len(forward) == 64 and len(probe) == 8
    assert set(forward[0]) == {"id", "pair_id", "direction", "question", "thinking", "attempt", "gold", "source"}
    # The probe set is the forward items with the fewest tokens of the preset model.
    from reverse_align.data.schema import Record
    from reverse_align.data.stage import example_tokens
    from reverse_align.models import load_tokenizer

    tokenizer = load_tokenizer(load_config("micro"))
    ranked = sorted(forward, key=lambda f: (example_tokens(tokenizer, Record(**f)), f["id"]))
    assert [p["id"] for p in probe] == [f["id"] for f in ranked[:8]]
    assert example_tokens(tokenizer, Record(**ranked[8])) >= max(example_tokens(tokenizer, Record(**p)) for p in probe)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert {"forward", "probe", "test_forward", "test_reverse", "test_transfer"} <= set(inputs)
    assert json.loads(inputs["forward"].dataset.profile)["num_rows"] == 64


def test_bad_source_file_exits_2_with_one_line_and_failed_run(micro_base, client, tmp_path):
    bad = tmp_path / "s1k.jsonl"
    bad.write_text('{"question": "q"}\n')
    result = run_cli("data", "--preset", "micro", "--source", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{bad} line 1" in lines[0]
    assert "Traceback" not in result.stderr
    failed = client.search_runs(
        [client.get_experiment_by_name("reverse-align").experiment_id], "attributes.status = 'FAILED'"
    )
    assert any(str(bad) in r.data.tags.get(tracking.TAG_ERROR, "") for r in failed)


def test_misspelled_override_and_flag_exit_2():
    result = run_cli("data", "--preset", "micro", "--set", "synthetic.n_trian=5")
    assert result.returncode == 2
    assert "valid keys of synthetic: n_train, n_test" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("data", "--preset", "micro", "--sorce", "x")
    assert result.returncode == 2 and "unrecognized arguments: --sorce" in result.stderr


def test_missing_base_model_says_what_to_run(tmp_path):
    result = run_cli("data", "--preset", "micro", "--set", "pretrain.hidden_size=48")
    assert result.returncode == 2
    assert "run: reverse-align pretrain --preset micro" in result.stderr
