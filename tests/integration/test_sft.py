"""The `sft` stage on the micro world against a real sqlite MLflow store.

Covers: the loss mask (labels inspected), token truncation, padding-free
exactness, one run with per-epoch adapter checkpoints + final adapter + MLflow
model that load on the base, crash-and-resume into the same run with no
duplicated steps, a 2-process CPU run, and bad input.
"""

from __future__ import annotations

import shutil

import mlflow
import pytest
from transformers import TrainerCallback

from conftest import run_cli
from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.errors import UserError
from reverse_align.formatting import ANSWER_MARKER, chat_messages, prompt_messages, record_assistant_turn
from reverse_align.train import common
from reverse_align.train.sft import TAG_STOPPED_AT_STEP, build_dataset, build_trainer, load_mix, run_sft

# micro: 64 pairs, batch 8 -> 8 optimizer steps per epoch on the forward mix.
STEPS_PER_EPOCH = 8


def micro(*overrides: str):
    return load_config("micro", ["sft.exact_match_limit=8", "eval.max_new_tokens=48", *overrides])


def test_loss_is_on_the_assistant_turn_only(micro_invert, tmp_path):
    records = load_mix(micro_invert, "mixed", seed=0)[:8]
    trainer, tokenizer, _, _ = build_trainer(micro(), records, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    # Padding-free: one flattened row, a sequence starts where position_ids is 0.
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    starts = [i for i, p in enumerate(batch["position_ids"][0].tolist()) if p == 0] + [len(ids)]
    by_question = {r.question: r for r in records}
    assert len(starts) - 1 == len(records)
    for begin, end in zip(starts, starts[1:]):
        seq, lab = ids[begin:end], labels[begin:end]
        text = tokenizer.decode(seq)
        record = next(r for q, r in by_question.items() if q in text)
        n_prompt = next(i for i, label in enumerate(lab) if label != -100)
        assert all(label != -100 for label in lab[n_prompt:])
        prompt = tokenizer.apply_chat_template(prompt_messages(record.question), tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(seq[:n_prompt]) == prompt
        # The trained tokens are exactly the s1-format assistant turn and its end-of-turn.
        assert tokenizer.decode(lab[n_prompt:]) == record_assistant_turn(record) + "<|im_end|>\n"
        assert record_assistant_turn(record).startswith("<|im_start|>think\n")
        assert "\n<|im_start|>answer\n" in record_assistant_turn(record)


def test_long_examples_lose_thinking_never_the_answer(micro_invert, tmp_path):
    import dataclasses

    from reverse_align.models import load_tokenizer

    tokenizer = load_tokenizer(micro())
    records = load_mix(micro_invert, "mixed", seed=0)

    def tokens(record):
        return len(tokenizer.apply_chat_template(chat_messages(record), tokenize=True, return_dict=True)["input_ids"])

    full = [tokens(r) for r in records]
    without_thinking = [tokens(dataclasses.replace(r, thinking="")) for r in records]
    limit = max(without_thinking) - 1  # the longest question + answer alone no longer fits
    dataset, stats = build_dataset(tokenizer, records, limit)
    assert max(len(row) for row in dataset["input_ids"]) <= limit
    assert stats["dropped"] == sum(n > limit for n in without_thinking) > 0
    assert stats["thinking_cut"] == sum(f > limit >= n for f, n in zip(full, without_thinking)) > 0
    assert stats["examples"] == len(records) - stats["dropped"] == len(dataset)
    # Every kept example still ends with its whole answer and end-of-turn.
    kept = [r for r, n in zip(records, without_thinking) if n <= limit]
    for record, ids in zip(kept, dataset["input_ids"]):
        assert tokenizer.decode(ids).endswith(ANSWER_MARKER + record.attempt + "<|im_end|>\n")


def test_padding_free_loss_equals_padded_loss(micro_invert, tmp_path):
    records = load_mix(micro_invert, "mixed", seed=0)[:8]
    losses = {}
    for padding_free in (True, False):
        trainer, *_ = build_trainer(micro(f"sft.padding_free={padding_free}"), records, tmp_path / str(padding_free))
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])
        assert ("attention_mask" in batch) is not padding_free
        losses[padding_free] = trainer.compute_loss(trainer.model, batch).item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


@pytest.fixture(scope="module")
def forward_run(micro_invert) -> str:
    """An uninterrupted 2-epoch forward SFT on micro that keeps its per-epoch adapters."""
    return run_sft(micro("sft.epochs=2", "checkpoints.keep_adapters=all"), data_run_id=micro_invert, mix="forward")


def _steps(client, run_id: str, key: str = "loss") -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, tracking.metric_train(key))]


def test_one_run_logs_curves_checkpoints_adapter_and_model(forward_run, micro_invert, client, tmp_path):
    run = client.get_run(forward_run)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_STAGE] == "sft"
    assert run.data.tags[tracking.tag_upstream("invert")] == micro_invert
    assert run.data.params["sft.mix"] == "forward"
    assert (run.data.params["mix.forward"], run.data.params["mix.reverse"], run.data.params["mix.pairs"]) == ("64", "0", "64")
    composition = mlflow.artifacts.load_dict(f"runs:/{forward_run}/{tracking.ARTIFACT_MIX}")
    assert len(composition["order"]) == 64 and len(composition["pair_ids"]) == 64
    # One run: curves at every optimizer step, each step once.
    assert _steps(client, forward_run) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert _steps(client, forward_run, "learning_rate") == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert run.data.metrics[tracking.metric_train("epoch")] == 2
    assert run.data.metrics[tracking.metric_train("tokens_per_second")] > 0
    assert run.data.metrics["sft/global_steps"] == 2 * STEPS_PER_EPOCH
    for direction in ("forward", "reverse", "transfer"):
        assert 0 <= run.data.metrics[tracking.metric_sft_exact_match(direction)] <= 1
        assert tracking.metric_sft_exact_match(direction, base=True) in run.data.metrics
    # A PEFT adapter per epoch (checkpoints.keep_adapters=all) and the final one, adapter files only (no base
    # weights); no trainer state once finished (checkpoints.keep_resume=none).
    adapter_files = {"adapter_config.json", "adapter_model.safetensors"}
    for path in ("checkpoints/epoch-1", "checkpoints/epoch-2", "adapter"):
        assert {a.path.split("/")[-1] for a in client.list_artifacts(forward_run, path)} == adapter_files
    assert client.list_artifacts(forward_run, tracking.ARTIFACT_RESUME) == []

    from peft import PeftModel
    from safetensors import safe_open

    from reverse_align.models import load_model, resolve_base_model

    adapter_dir = mlflow.artifacts.download_artifacts(run_id=forward_run, artifact_path="adapter", dst_path=str(tmp_path))
    with safe_open(f"{adapter_dir}/adapter_model.safetensors", "pt") as f:
        names = list(f.keys())
    assert any("lora_A" in n and "q_proj" in n for n in names)
    assert not any("embed_tokens" in n or "layernorm" in n for n in names)
    cfg = micro()
    peft_model = PeftModel.from_pretrained(load_model(cfg), adapter_dir)
    pipeline = mlflow.transformers.load_model(f"runs:/{forward_run}/{tracking.ARTIFACT_MODEL}")
    assert isinstance(pipeline.model, PeftModel)
    assert pipeline.model.peft_config["default"].base_model_name_or_path == resolve_base_model(cfg)
    import torch

    ids = torch.tensor([[1, 5, 9, 12, 30]])
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, pipeline.model(input_ids=ids).logits, atol=1e-5)
        # The adapter changed the model.
        with peft_model.disable_adapter():
            base_logits = peft_model(input_ids=ids).logits
        assert not torch.allclose(base_logits, peft_model(input_ids=ids).logits, atol=1e-4)


class StoreAtEachSave(TrainerCallback):
    """What the run's store holds under resume/ and checkpoints/ right after each checkpoint is logged."""

    def __init__(self, client):
        self.client, self.seen = client, []

    def on_save(self, args, state, control, **kwargs):
        run_id = mlflow.active_run().info.run_id
        folders = (tracking.ARTIFACT_RESUME, tracking.ARTIFACT_CHECKPOINTS)
        self.seen.append([sorted(a.path for a in self.client.list_artifacts(run_id, f)) for f in folders])


def test_the_store_keeps_only_the_newest_resume_state_and_none_once_finished(micro_invert, client):
    """Defaults (checkpoints.keep_*: none): one trainer state and its adapter while training, adapter/ at the end."""
    store = StoreAtEachSave(client)
    run_id = run_sft(micro("sft.epochs=3", "sft.exact_match_limit=0"), micro_invert, "forward", callbacks=[store])
    steps = [STEPS_PER_EPOCH * epoch for epoch in (1, 2, 3)]
    assert store.seen == [[[f"resume/checkpoint-{s}"], [f"checkpoints/epoch-{s // STEPS_PER_EPOCH}"]] for s in steps]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert tracking.ARTIFACT_ADAPTER in top and not top & {tracking.ARTIFACT_RESUME, tracking.ARTIFACT_CHECKPOINTS}


def test_bad_checkpoints_setting_is_one_line(micro_invert):
    with pytest.raises(UserError, match="^checkpoints.keep_adapters 'some': expected one of all, last, none$"):
        run_sft(micro("checkpoints.keep_adapters=some"), data_run_id=micro_invert, mix="forward")


class CrashAtStep(TrainerCallback):
    """A real exception inside the real trainer at a given optimizer step (the 'kill')."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")


def test_killed_run_resumes_into_the_same_run_without_duplicated_steps(forward_run, micro_invert, client):
    cfg = micro("sft.epochs=2", "sft.exact_match_limit=0")
    stop = STEPS_PER_EPOCH + 3  # past the epoch-1 checkpoint
    with pytest.raises(RuntimeError, match=f"killed at step {stop}"):
        run_sft(cfg, data_run_id=micro_invert, mix="forward", callbacks=[CrashAtStep(stop)])
    killed = client.search_runs(
        [client.get_experiment_by_name("reverse-align").experiment_id],
        f"tags.`{tracking.TAG_STAGE}` = 'sft' and attributes.status = 'FAILED'",
        order_by=["attributes.start_time DESC"],
    )[0]
    run_id = killed.info.run_id
    # The crash comes after step `stop`'s update but before its log line.
    assert _steps(client, run_id) == list(range(1, stop))
    # The killed run keeps its newest trainer state and adapter in the store.
    assert [a.path for a in client.list_artifacts(run_id, tracking.ARTIFACT_RESUME)] == [
        f"resume/checkpoint-{STEPS_PER_EPOCH}"
    ]
    assert [a.path for a in client.list_artifacts(run_id, tracking.ARTIFACT_CHECKPOINTS)] == ["checkpoints/epoch-1"]
    # The machine is gone too: resume from the checkpoint logged to MLflow.
    shutil.rmtree(common.run_output_dir(run_id))

    assert run_sft(cfg, data_run_id=micro_invert, mix="forward", run_id=run_id) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_STOPPED_AT_STEP] == str(stop - 1)
    assert run.data.tags[tracking.TAG_RESUMED_FROM_STEP] == str(STEPS_PER_EPOCH)
    uninterrupted = client.get_run(forward_run).data.metrics["sft/global_steps"]
    assert run.data.metrics["sft/global_steps"] == uninterrupted == 2 * STEPS_PER_EPOCH
    assert _steps(client, run_id) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert _steps(client, run_id, "learning_rate") == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    # Same data order and RNG after the resume: the final loss matches the uninterrupted run.
    final = client.get_metric_history(run_id, tracking.metric_train("loss"))[-1].value
    reference = client.get_metric_history(forward_run, tracking.metric_train("loss"))[-1].value
    assert final == pytest.approx(reference, rel=1e-3)
    # Finished: the resumed run's trainer states and adapter checkpoints are gone from the store.
    assert client.list_artifacts(run_id, tracking.ARTIFACT_RESUME) == []
    assert client.list_artifacts(run_id, tracking.ARTIFACT_CHECKPOINTS) == []


def test_two_cpu_processes_take_the_arithmetic_number_of_steps_logged_once(micro_invert, client):
    run_id = run_sft(
        micro("sft.num_processes=2", "sft.exact_match_limit=0"), data_run_id=micro_invert, mix="reverse"
    )
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # 64 examples / (batch 8 x 2 processes) = 4 optimizer steps per epoch.
    assert run.data.metrics["sft/global_steps"] == 64 // (8 * 2)
    assert _steps(client, run_id) == [1, 2, 3, 4]
    # Defaults: the finished run holds no checkpoints/ (its adapter/ is epoch 1's).
    assert client.list_artifacts(run_id, "checkpoints") == []
    runs = client.search_runs(
        [client.get_experiment_by_name("reverse-align").experiment_id], f"params.`sft.num_processes` = '2'"
    )
    assert [r.info.run_id for r in runs] == [run_id]


def test_bad_mix_and_bad_upstream_are_one_line_errors(micro_invert, micro_data):
    result = run_cli("sft", "--preset", "micro", "--data_run_id", micro_invert, "--mix", "both")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --mix 'both': expected one of forward, reverse, mixed, mixed_half"
    ]
    with pytest.raises(UserError, match=f"^--data_run_id {micro_data}: is a data run, expected invert$"):
        run_sft(micro(), data_run_id=micro_data, mix="forward")
