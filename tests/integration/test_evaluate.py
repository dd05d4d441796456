"""`evaluate` end to end on the micro model: synthetic sets of a run, local AIME/MATH/GPQA files, the judge.

The micro model's answers are mostly wrong; these tests pin the pipeline: what is
asked, how many answers are graded, the metric and artifact names, the lineage,
one-line failures, and that a judged rerun sends no request.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from fake_teacher import FakeTeacher

from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.eval.benchmarks import GPQA_OPTIONS
from reverse_align.eval.grading import EXTRACTION_RULES
from reverse_align.eval.stage import run_evaluate

SYNTHETIC = ["synthetic_forward", "synthetic_reverse"]


def micro(*overrides: str):
    return load_config("micro", ["eval.max_new_tokens=24", "eval.batch_size=8", *overrides])


def artifact_json(client, run_id: str, path: str):
    with open(client.download_artifacts(run_id, path)) as fh:
        return json.load(fh)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def local_sources(tmp_path_factory):
    """Three rows of each dataset with its real field names (aime24_nofigures, MATH-500, GPQA diamond)."""
    root = tmp_path_factory.mktemp("benchmarks")
    aime = [
        {"id": f"2024-I-{i}", "problem": f"Find {i} + 1.", "solution": "...", "answer": f"{i + 1:03d}", "url": ""}
        for i in range(3)
    ]
    math = [
        {"problem": "What is 1/2 as a decimal?", "solution": "...", "answer": "0.5", "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"},
        {"problem": "Solve x - 3 = 0.", "solution": "...", "answer": "3", "subject": "Algebra", "level": 1, "unique_id": "test/algebra/2.json"},
        {"problem": "Write (1,3] as an interval.", "solution": "...", "answer": "(1,3]", "subject": "Algebra", "level": 2, "unique_id": "test/algebra/3.json"},
    ]  # fmt: skip
    gpqa = [
        {"Question": f"Which noble gas is number {i}?", "Correct Answer": "Argon", "Incorrect Answer 1": "Neon",
         "Incorrect Answer 2": "Helium", "Incorrect Answer 3": "Krypton", "Record ID": f"rec{i}", "Subdomain": "Chemistry"}
        for i in range(3)
    ]  # fmt: skip
    return {
        "aime24": write_jsonl(root / "aime24_nofigures.jsonl", aime),
        "math500": write_jsonl(root / "math500.jsonl", math),
        "gpqa": write_jsonl(root / "gpqa_diamond.jsonl", gpqa),
    }


def test_synthetic_benchmarks_on_an_sft_run(micro_sft, micro_invert, client):
    run_id = run_evaluate(micro("eval.limit=5", f"eval.benchmarks={','.join(SYNTHETIC)}"), run_id=micro_sft)
    run = client.get_run(run_id)
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert tags[tracking.TAG_STAGE] == "evaluate" and run.info.status == "FINISHED"
    assert tags[tracking.tag_upstream("sft")] == micro_sft
    assert tags[tracking.tag_upstream("invert")] == micro_invert  # found through the SFT run's own tag
    assert params[tracking.PARAM_EVAL_FORMAT] == "s1"
    for name in SYNTHETIC:
        acc = metrics[tracking.metric_eval_accuracy(name)]
        assert metrics[tracking.metric_eval(name, "questions")] == 5 == metrics[tracking.metric_eval(name, "answers")]
        assert (
            0.0
            <= metrics[tracking.metric_eval(name, "ci_low")]
            <= acc
            <= metrics[tracking.metric_eval(name, "ci_high")]
            <= 1.0
        )
        assert metrics[tracking.metric_eval(name, "ci_high")] > metrics[tracking.metric_eval(name, "ci_low")]
        assert len(params[f"{tracking.PARAM_EVAL_TASK_SHA}.{name}"]) == 12
        table = artifact_json(client, run_id, f"{tracking.ARTIFACT_EVAL_SAMPLES}/{name}.json")
        rows = [dict(zip(table["columns"], row)) for row in table["data"]]
        columns = {"id", "response", "extracted", "extracted_by", "gold", "correct", "status"}
        assert len(rows) == 5 and columns <= set(rows[0])
        # the rule that read each answer, so unparsed rows can be audited: none exactly when nothing was read
        assert {r["extracted_by"] for r in rows} <= set(EXTRACTION_RULES)
        assert all((r["extracted_by"] == "none") == (r["extracted"] is None) for r in rows)
        assert acc == pytest.approx(sum(r["correct"] for r in rows) / 5)
        assert metrics[tracking.metric_eval(name, "unparsed")] == sum(r["status"] != "ok" for r in rows)
    average = sum(metrics[tracking.metric_eval_accuracy(n)] for n in SYNTHETIC) / 2
    assert metrics[tracking.METRIC_EVAL_AVERAGE] == pytest.approx(average)
    lm_eval_results = artifact_json(client, run_id, tracking.ARTIFACT_EVAL_RESULTS)
    # lm-eval's own aggregate (same grading, through the shipped task's process_results) agrees with ours.
    for name in SYNTHETIC:
        assert lm_eval_results["results"][name]["accuracy,all"] == pytest.approx(
            metrics[tracking.metric_eval_accuracy(name)]
        )


def test_aime_math_gpqa_end_to_end_on_local_files(micro_base, local_sources, client):
    cfg = micro(
        "eval.benchmarks=aime24,math500,gpqa", "eval.limit=2", "eval.samples=2", "eval.temperature=1.0",
        *(f"eval.{name}_source={path}" for name, path in local_sources.items()),
    )  # fmt: skip
    run_id = run_evaluate(cfg)  # the base model: no adapter
    run = client.get_run(run_id)
    metrics = run.data.metrics
    # Plain chat, the answer read from the whole response: no answer of the base counts as truncated.
    assert run.data.params[tracking.PARAM_EVAL_FORMAT] == "chat"
    sampling = {k: run.data.params[f"{tracking.PARAM_EVAL_GENERATION}.{k}"] for k in
                ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")}  # fmt: skip
    assert sampling == {"do_sample": "True", "temperature": "1.0", "top_p": str(cfg.eval.top_p), "top_k": "0",
                        "repetition_penalty": "1.0"}  # fmt: skip
    for name in ("aime24", "math500", "gpqa"):
        assert metrics[tracking.metric_eval(name, "truncated")] == 0
        assert metrics[tracking.metric_eval(name, "questions")] == 2
        assert metrics[tracking.metric_eval(name, "answers")] == 4  # two samples per question
        assert tracking.metric_eval(name, "ci_low") in metrics
    gpqa = artifact_json(client, run_id, f"{tracking.ARTIFACT_EVAL_SAMPLES}/gpqa.json")
    golds = {row[gpqa["columns"].index("gold")] for row in gpqa["data"]}
    assert golds <= set("ABCD")
    aime = artifact_json(client, run_id, f"{tracking.ARTIFACT_EVAL_SAMPLES}/aime24.json")
    assert {row[aime["columns"].index("gold")] for row in aime["data"]} == {"001", "002"}
    assert run.data.tags.get(tracking.tag_upstream("pretrain")) == micro_base


def test_gpqa_shuffle_is_fixed_by_seed_and_moves_the_answer():
    from reverse_align.eval.benchmarks import gpqa_doc

    cfg = load_config("micro").eval
    row = {"Question": "Q", **{f: f for f in GPQA_OPTIONS}}
    golds = {gpqa_doc(0, {**row, "Record ID": f"r{i}"}, cfg)["gold"] for i in range(20)}
    assert len(golds) > 1  # the correct answer is not always first
    assert gpqa_doc(0, {**row, "Record ID": "r1"}, cfg) == gpqa_doc(5, {**row, "Record ID": "r1"}, cfg)


def test_missing_data_is_one_line_exit_2(micro_base, micro_data, tmp_path):
    missing = run_cli(
        "evaluate",
        "--preset",
        "micro",
        "--benchmarks",
        "math500",
        "--set",
        f"eval.math500_source={tmp_path}/nope.jsonl",
    )
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "nope.jsonl: file not found" in missing.stderr
    # The default HF id with the hub offline (tests set HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1).
    offline = run_cli("evaluate", "--preset", "micro", "--benchmarks", "aime24")
    assert offline.returncode == 2 and offline.stderr.strip().count("\n") == 0, offline.stderr
    assert "simplescaling/aime24_nofigures" in offline.stderr and "hub" in offline.stderr
    # A data run without the transfer set (as made before the transfer family existed): a copy of
    # micro_data's runs is not possible, so one more data run loses the artifact in the local store.
    from urllib.parse import urlparse

    import mlflow

    from reverse_align.config import load_config
    from reverse_align.data.stage import run_data

    old = run_data(load_config("micro"))
    artifacts = urlparse(mlflow.MlflowClient().get_run(old).info.artifact_uri).path
    (Path(artifacts) / tracking.ARTIFACT_TEST_TRANSFER).unlink()
    transfer = run_cli("evaluate", "--preset", "micro", "--benchmarks", "synthetic_transfer", "--data_run_id", old)
    assert transfer.returncode == 2 and transfer.stderr.strip().count("\n") == 0
    assert "synthetic_transfer" in transfer.stderr and tracking.ARTIFACT_TEST_TRANSFER in transfer.stderr
    # The base model with a synthetic benchmark and no data run.
    no_data = run_cli("evaluate", "--preset", "micro", "--benchmarks", "synthetic_forward")
    assert no_data.returncode == 2 and "--data_run_id" in no_data.stderr


def test_judge_verdicts_are_cached_so_a_rerun_sends_no_request(micro_base, micro_data, client, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeTeacher() as server:
        cfg = micro(
            "eval.limit=3",
            "eval.benchmarks=synthetic_forward",
            "eval.judge=judge-model",
            f"eval.judge_base_url={server.base_url}",
        )
        first = run_evaluate(cfg, data_run_id=micro_data)
        asked = len(server.requests)
        # One verdict per answer: the base model is read whole (chat format), so none is truncated unasked.
        assert asked == 3
        second = run_evaluate(cfg, data_run_id=micro_data)
        assert len(server.requests) == asked  # every verdict came from the cache
    for run_id in (first, second):
        metrics = client.get_run(run_id).data.metrics
        assert tracking.metric_eval("synthetic_forward", "accuracy_rules") in metrics
    assert client.get_run(first).data.metrics == client.get_run(second).data.metrics


def test_prompt_is_the_training_prompt_and_the_answer_marker_survives_decoding(micro_base, tmp_path):
    from reverse_align.data import synthetic
    from reverse_align.eval import benchmarks
    from reverse_align.eval.generation import generation_prompt
    from reverse_align.eval.grading import ANSWER_MARKER
    from reverse_align.eval.lm import build_lm
    from reverse_align.eval.stage import run_lm_eval
    from reverse_align.models import resolve_base_model

    cfg = micro("eval.max_new_tokens=4")
    record = synthetic.make_world(cfg.synthetic, cfg.data.seed).records("test", "forward")[0]
    benchmarks.write_docs(
        [benchmarks._doc(record.id, record.question, record.gold, "integer", cfg.eval)],
        tmp_path / "synthetic_forward.jsonl",
    )
    lm = build_lm(cfg, resolve_base_model(cfg), None)
    sample = run_lm_eval(cfg, lm, ["synthetic_forward"], tmp_path)["samples"]["synthetic_forward"][0]
    # lm-eval's chat-templated context is the prompt SFT trained on, ending in the think marker.
    assert sample["arguments"][0][0] == generation_prompt(lm.tokenizer, record.question)
    ids = lm.tokenizer("so 5\n" + ANSWER_MARKER + "\n\\boxed{5}", add_special_tokens=False)["input_ids"]
    assert ANSWER_MARKER in lm.tok_decode(ids)  # HFLM's default decoding would drop <|im_start|>


def test_base_and_direct_dpo_are_prompted_and_graded_in_plain_chat(micro_base, micro_sft, client, tmp_path):
    """The format a model was trained on: s1 for SFT (and DPO over it), plain chat for the base and direct DPO."""
    import dataclasses

    from reverse_align.data import synthetic
    from reverse_align.eval import benchmarks
    from reverse_align.eval.lm import build_lm
    from reverse_align.eval.stage import answer_format, run_lm_eval
    from reverse_align.eval.tasks.hooks import process_results
    from reverse_align.formatting import THINK_MARKER
    from reverse_align.models import resolve_base_model

    cfg = micro("eval.max_new_tokens=4")
    experiment = client.create_experiment("eval-formats")
    direct, continued = (client.create_run(experiment, tags={tracking.TAG_STAGE: "dpo"}) for _ in range(2))
    client.log_param(direct.info.run_id, "dpo.reference", "base")
    client.log_param(continued.info.run_id, "dpo.reference", "sft")
    formats = {
        "base": answer_format(cfg, None),
        "sft": answer_format(cfg, client.get_run(micro_sft)),
        "dpo over sft": answer_format(cfg, client.get_run(continued.info.run_id)),
        "direct dpo": answer_format(cfg, client.get_run(direct.info.run_id)),
    }
    assert {k: (f.name, f.gen_prefix, f.marker_required) for k, f in formats.items()} == {
        "base": ("chat", None, False),
        "sft": ("s1", THINK_MARKER, True),
        "dpo over sft": ("s1", THINK_MARKER, True),
        "direct dpo": ("chat", None, False),
    }

    # A response without the answer marker, as an instruct model writes one: read whole in chat format,
    # truncated (never left the thinking) in s1 format.
    record = synthetic.make_world(cfg.synthetic, cfg.data.seed).records("test", "forward")[0]
    unmarked = f"Working backwards, the starting number is \\boxed{{{record.gold}}}."
    graded = {}
    for key in ("base", "sft"):
        doc_cfg = dataclasses.replace(cfg.eval, answer_marker_required=formats[key].marker_required)
        doc = benchmarks._doc(record.id, record.question, record.gold, "integer", doc_cfg)
        graded[key] = process_results(doc, [unmarked])
    assert graded == {"base": {"accuracy": 1.0, "unparsed": 0.0}, "sft": {"accuracy": 0.0, "unparsed": 1.0}}

    # The chat-format prompt is the bare chat template: the assistant turn opens without the think marker.
    benchmarks.write_docs(
        [benchmarks._doc(record.id, record.question, record.gold, "integer", cfg.eval)],
        tmp_path / "synthetic_forward.jsonl",
    )
    lm = build_lm(cfg, resolve_base_model(cfg), None)
    sample = run_lm_eval(cfg, lm, ["synthetic_forward"], tmp_path, formats["base"])["samples"]["synthetic_forward"][0]
    chat = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": record.question}], tokenize=False, add_generation_prompt=True
    )
    assert sample["arguments"][0][0] == chat and not chat.endswith(THINK_MARKER)


def test_the_checkpoints_generation_config_does_not_leak_into_greedy_answers(micro_base, tmp_path):
    """A base whose generation_config.json holds chat defaults answers exactly as the same weights without them."""
    import shutil

    from transformers import GenerationConfig

    from reverse_align.data import synthetic
    from reverse_align.eval import benchmarks, decoding
    from reverse_align.eval.lm import build_lm
    from reverse_align.eval.stage import run_lm_eval
    from reverse_align.models import resolve_base_model

    cfg = micro("eval.max_new_tokens=16")
    clean_path = resolve_base_model(cfg)
    dirty_path = tmp_path / "dirty-base"
    shutil.copytree(clean_path, dirty_path)
    ids = GenerationConfig.from_pretrained(clean_path).to_diff_dict()
    ids = {k: ids[k] for k in decoding.TOKEN_ID_FIELDS if ids.get(k) is not None}
    # Qwen2.5-7B-Instruct's chat defaults, and a rule no greedy answer of a small vocabulary survives.
    chat_defaults = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    GenerationConfig(**ids, **chat_defaults, no_repeat_ngram_size=1).save_pretrained(dirty_path)
    records = synthetic.make_world(cfg.synthetic, cfg.data.seed).records("test", "forward")[:3]
    benchmarks.write_docs(
        [benchmarks._doc(r.id, r.question, r.gold, "integer", cfg.eval) for r in records],
        tmp_path / "synthetic_forward.jsonl",
    )

    def responses(path, undo_cleaning: bool = False) -> list[str]:
        lm = build_lm(cfg, str(path), None)
        if undo_cleaning:  # what HFLM would decode with had build_lm kept the checkpoint's config
            lm.model.generation_config = GenerationConfig.from_pretrained(path)
        samples = run_lm_eval(cfg, lm, ["synthetic_forward"], tmp_path)["samples"]["synthetic_forward"]
        return [s["resps"][0][0] for s in sorted(samples, key=lambda s: s["doc_id"])]

    clean = responses(clean_path)
    assert responses(dirty_path) == clean
    assert responses(dirty_path, undo_cleaning=True) != clean  # the settings change answers: the test can fail


def test_generation_settings_are_logged_and_new_tokens_capped_to_the_models_positions(
    micro_base, micro_data, client, capsys
):
    from reverse_align.models import load_tokenizer

    positions = load_config("micro").pretrain.max_position_embeddings  # the micro base's config
    cfg = micro("eval.limit=2", "eval.benchmarks=synthetic_forward", f"eval.max_prompt_tokens={positions - 10}")
    run_id = run_evaluate(cfg, data_run_id=micro_data)
    err = capsys.readouterr().err
    assert err.count("warning: eval.max_prompt_tokens") == 1 and "capped at 10 new tokens" in err
    params = client.get_run(run_id).data.params
    prefix = tracking.PARAM_EVAL_GENERATION
    assert {k: v for k, v in params.items() if k.startswith(prefix + ".")} == {
        f"{prefix}.max_new_tokens": "10", f"{prefix}.do_sample": "False", f"{prefix}.temperature": "0.0",
        f"{prefix}.top_p": "1.0", f"{prefix}.top_k": "0", f"{prefix}.repetition_penalty": "1.0",
        f"{prefix}.model_max_positions": str(positions),
    }  # fmt: skip
    assert params["eval.max_new_tokens"] == "24"  # the preset's number stays as configured
    table = artifact_json(client, run_id, f"{tracking.ARTIFACT_EVAL_SAMPLES}/synthetic_forward.json")
    responses = [row[table["columns"].index("response")] for row in table["data"]]
    tokenizer = load_tokenizer(cfg)
    assert max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses) <= 10
