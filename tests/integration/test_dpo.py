"""The `dpo` stage on the micro world against a real sqlite MLflow store.

The SFT model is a real micro SFT run (``micro_sft``). Its log-probs are
computed independently of the trainer: a fresh base model plus the adapter
downloaded from the SFT run. Covers: reference = SFT model at step 0 and after
training (log-probs and bit-equal weights), direct DPO's reference = base, the
prompt/completion format, one stage run's metrics/checkpoints/adapter/model,
kill-and-resume into the same run, two CPU processes, and bad input.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.data.invert import load_run_records
from reverse_align.errors import UserError
from reverse_align.train import common, dpo
from reverse_align.train.preferences import preference_dataset, preference_pairs

TOL = 1e-5


def micro_cfg(*overrides: str):
    return load_config("micro", ["dpo.learning_rate=5e-3", "dpo.per_device_batch_size=4", *overrides])


@pytest.fixture(scope="module")
def sft_adapter(micro_sft, tmp_path_factory) -> str:
    """The real SFT run's final adapter (LoRA layers + the trained lm_head copy), downloaded."""
    return tracking.download_artifact(micro_sft, tracking.ARTIFACT_ADAPTER, str(tmp_path_factory.mktemp("sft")))


@pytest.fixture(scope="session")
def micro_pairs(micro_invert):
    forward = load_run_records(micro_invert, tracking.ARTIFACT_FORWARD)
    reverse = load_run_records(micro_invert, tracking.ARTIFACT_REVERSE)
    return preference_pairs(forward, reverse)[::8]  # 16 pairs, both directions


def sequence_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the completion tokens (chosen half, rejected half), as trl sums them.

    Through trl's fused LM head, like trl's own policy and reference forwards,
    so the comparison tests which weights are used, not float32 rounding of a
    different log-softmax kernel (sums of ~50 tokens differ by ~2e-5 there).
    """
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True
        )
    return out.log_probs.sum(dim=1).chunk(2)


def first_batch(trainer, n: int = 8):
    rows = [trainer.train_dataset[i] for i in range(n)]
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    return trainer.data_collator([{k: row[k] for k in keys} for row in rows])


def sft_model(cfg, adapter_dir):
    from peft import PeftModel

    from reverse_align.models import load_model

    from trl.trainer.utils import add_fused_lm_head

    base = load_model(cfg)
    add_fused_lm_head(base)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def make_trainer(cfg, adapter_dir, pairs, tokenizer, tmp_path):
    model, peft_config = dpo.policy_model(cfg, adapter_dir)
    args = dpo.dpo_arguments(cfg, tmp_path / "out")
    return dpo.build_trainer(model, peft_config, preference_dataset(pairs), tokenizer, args)


def assert_close(actual, expected, what):
    diff = (actual - expected).abs().max().item()
    assert diff <= TOL, f"{what}: max |diff| {diff:.3g} > {TOL}"


def test_reference_is_the_sft_model_before_and_after_training(sft_adapter, micro_pairs, tmp_path):
    from reverse_align.models import load_tokenizer

    cfg = micro_cfg("dpo.max_steps=3", "dpo.save_every_steps=0")
    tokenizer = load_tokenizer(cfg)
    trainer = make_trainer(cfg, sft_adapter, micro_pairs, tokenizer, tmp_path)
    policy = trainer.model
    assert dpo.reference_adapter_is_frozen_copy(policy)
    batch = first_batch(trainer)
    sft_chosen, sft_rejected = sequence_logps(sft_model(cfg, sft_adapter), batch)

    # The SFT model differs from the base model, so "reference = base" would fail below.
    with policy.disable_adapter():
        base_chosen, _ = sequence_logps(policy, batch)
    assert (base_chosen - sft_chosen).abs().max() > 1e-2

    # Step 0: policy and reference (trl's own reference path) equal the SFT model.
    policy.eval()
    pol_chosen, pol_rejected = sequence_logps(policy, batch)
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(policy, batch)
    assert_close(pol_chosen, sft_chosen, "policy chosen, step 0")
    assert_close(pol_rejected, sft_rejected, "policy rejected, step 0")
    assert_close(ref_chosen, sft_chosen, "reference chosen, step 0")
    assert_close(ref_rejected, sft_rejected, "reference rejected, step 0")

    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "rewards/margins" in entry]
    # The first logged step is computed before the first update: rewards and margins are 0.
    assert abs(logs[0]["rewards/chosen"]) <= TOL and abs(logs[0]["rewards/margins"]) <= TOL

    # After training: the reference is still the SFT model, the policy moved.
    policy.eval()
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(policy, batch)
    assert_close(ref_chosen, sft_chosen, "reference chosen, after training")
    assert_close(ref_rejected, sft_rejected, "reference rejected, after training")
    pol_chosen, pol_rejected = sequence_logps(policy, batch)
    assert (pol_chosen - sft_chosen).abs().max() > 1e-3
    # Weights: every "ref" tensor is still bit-equal to the saved SFT adapter; "default" tensors changed.
    saved = load_file(f"{sft_adapter}/adapter_model.safetensors")
    ref = get_peft_model_state_dict(policy, adapter_name=dpo.REFERENCE_ADAPTER)
    trained = get_peft_model_state_dict(policy, adapter_name=dpo.POLICY_ADAPTER)
    assert ref.keys() == saved.keys() == trained.keys()
    assert all(torch.equal(ref[k], saved[k]) for k in saved)
    assert sum(not torch.equal(trained[k], saved[k]) for k in saved) == len(saved)


def test_precomputed_reference_is_the_sft_model(sft_adapter, micro_pairs, tmp_path):
    from reverse_align.models import load_tokenizer

    cfg = micro_cfg("dpo.precompute_ref_log_probs=true")
    trainer = make_trainer(cfg, sft_adapter, micro_pairs, load_tokenizer(cfg), tmp_path)
    batch = first_batch(trainer)
    sft_chosen, sft_rejected = sequence_logps(sft_model(cfg, sft_adapter), batch)
    rows = trainer.train_dataset[: len(sft_chosen)]
    assert_close(torch.tensor(rows["ref_chosen_logps"]), sft_chosen, "precomputed reference chosen")
    assert_close(torch.tensor(rows["ref_rejected_logps"]), sft_rejected, "precomputed reference rejected")


def test_direct_dpo_reference_is_the_base_model(micro_base, micro_pairs, tmp_path):
    from reverse_align.models import load_model, load_tokenizer

    cfg = micro_cfg()
    trainer = make_trainer(cfg, None, micro_pairs, load_tokenizer(cfg), tmp_path)
    assert set(trainer.model.peft_config) == {dpo.POLICY_ADAPTER}  # one fresh adapter, no copy
    batch = first_batch(trainer)
    from trl.trainer.utils import add_fused_lm_head

    base = load_model(cfg).eval()
    add_fused_lm_head(base)
    base_chosen, base_rejected = sequence_logps(base, batch)
    trainer.model.eval()
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    pol_chosen, _ = sequence_logps(trainer.model, batch)
    assert_close(ref_chosen, base_chosen, "reference chosen")
    assert_close(ref_rejected, base_rejected, "reference rejected")
    assert_close(pol_chosen, base_chosen, "policy chosen, step 0 (LoRA B = 0)")


def test_prompt_once_and_completions_in_the_sft_format(micro_base, micro_pairs, tmp_path):
    from reverse_align.models import load_tokenizer

    cfg = micro_cfg()
    tokenizer = load_tokenizer(cfg)
    trainer = make_trainer(cfg, None, micro_pairs, tokenizer, tmp_path)
    for row, pair in zip(trainer.train_dataset, micro_pairs):
        question = pair["prompt"][0]["content"]
        prompt = tokenizer.decode(row["prompt_ids"])
        assert prompt == tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
        # The question is in the prompt only; each completion is the assistant turn as SFT trains it.
        for key in ("chosen", "rejected"):
            completion = tokenizer.decode(row[f"{key}_ids"])
            assert completion == pair[key][0]["content"] + "<|im_end|>\n"
            assert (prompt + completion).count(question) == 1


# ---------------------------------------------------------------- the stage


def _steps(client, run_id: str, key: str = "loss") -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, tracking.metric_train(key))]


@pytest.fixture(scope="module")
def dpo_run(micro_sft, micro_invert) -> str:
    """An uninterrupted 4-step DPO over the SFT run (checkpoints at steps 2 and 4; the store keeps the last)."""
    return dpo.run_dpo(micro_cfg("checkpoints.keep_adapters=last"), sft_run_id=micro_sft, data_run_id=micro_invert)


def test_one_run_logs_dpo_metrics_checkpoints_adapter_and_model(dpo_run, micro_sft, micro_invert, client, tmp_path):
    run = client.get_run(dpo_run)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_STAGE] == "dpo"
    assert run.data.tags[tracking.tag_upstream("sft")] == micro_sft
    assert run.data.tags[tracking.tag_upstream("invert")] == micro_invert
    assert run.data.params["dpo.reference"] == "sft" and run.data.params["sft.mix"] == "forward"
    assert run.data.params["dpo.beta"] == "0.6" and run.data.params["dpo.direction"] == "both"
    assert run.data.metrics["dpo/pairs"] == 128 and run.data.metrics["dpo/global_steps"] == 4
    for key in tracking.DPO_TRAIN_METRICS:
        assert _steps(client, dpo_run, key) == [1, 2, 3, 4], key
    # Step 1 is computed before the first update: policy = reference = SFT model, so rewards are 0.
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(client.get_metric_history(dpo_run, tracking.metric_train(key))[0].value) <= TOL, key

    adapter_files = {"adapter_config.json", "adapter_model.safetensors"}
    for path in ("checkpoints/step-4", "adapter"):
        assert {a.path.split("/")[-1] for a in client.list_artifacts(dpo_run, path)} == adapter_files
    # checkpoints.keep_adapters=last: step 2's adapter was deleted when step 4's was logged; no trainer state left.
    assert [a.path for a in client.list_artifacts(dpo_run, tracking.ARTIFACT_CHECKPOINTS)] == ["checkpoints/step-4"]
    assert client.list_artifacts(dpo_run, tracking.ARTIFACT_RESUME) == []
    # The result is one adapter (the policy) on the original base: same tensors as the SFT adapter, new values.
    final = load_file(tracking.download_artifact(dpo_run, "adapter/adapter_model.safetensors", str(tmp_path)))
    sft = load_file(tracking.download_artifact(micro_sft, "adapter/adapter_model.safetensors", str(tmp_path / "s")))
    assert final.keys() == sft.keys()
    assert any(not torch.equal(final[k], sft[k]) for k in sft)
    import mlflow

    pipeline = mlflow.transformers.load_model(f"runs:/{dpo_run}/{tracking.ARTIFACT_MODEL}")
    assert list(pipeline.model.peft_config) == ["default"]


class CrashAtStep:
    """A real exception inside the real trainer at a given optimizer step (the 'kill')."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class _Crash(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise RuntimeError(f"killed at step {step}")

        return _Crash()


def test_killed_run_resumes_into_the_same_run(dpo_run, micro_sft, micro_invert, client):
    import shutil

    cfg = micro_cfg()
    with pytest.raises(RuntimeError, match="killed at step 3"):
        dpo.run_dpo(cfg, sft_run_id=micro_sft, data_run_id=micro_invert, callbacks=[CrashAtStep(3)])
    killed = client.search_runs(
        [client.get_experiment_by_name("reverse-align").experiment_id],
        f"tags.`{tracking.TAG_STAGE}` = 'dpo' and attributes.status = 'FAILED'",
        order_by=["attributes.start_time DESC"],
    )[0]
    run_id = killed.info.run_id
    # The killed run keeps its newest trainer state and the adapter it points to.
    assert [a.path for a in client.list_artifacts(run_id, tracking.ARTIFACT_RESUME)] == ["resume/checkpoint-2"]
    assert [a.path for a in client.list_artifacts(run_id, tracking.ARTIFACT_CHECKPOINTS)] == ["checkpoints/step-2"]
    output_dir = common.run_output_dir(run_id)
    # Under DeepSpeed (ZeRO-3 on GPUs) a checkpoint needs DeepSpeed's global_step<n>/ shards, which the store
    # lacks: a local one that has them is used, one without them and the store's copy are refused in one line.
    assert common.resume_checkpoint(output_dir, run_id) == str(output_dir / "checkpoint-2")
    with pytest.raises(UserError, match=r"checkpoint-2\) is in the MLflow store only.*global_step<n>/.*no --run_id"):
        common.resume_checkpoint(output_dir, run_id, deepspeed=True)
    (output_dir / "checkpoint-2" / "global_step2").mkdir()
    assert common.resume_checkpoint(output_dir, run_id, deepspeed=True) == str(output_dir / "checkpoint-2")
    shutil.rmtree(output_dir)  # resume from the checkpoint logged to MLflow
    with pytest.raises(UserError) as refused:
        common.resume_checkpoint(output_dir, run_id, deepspeed=True)
    assert "\n" not in str(refused.value) and not list(output_dir.glob("checkpoint-*"))
    assert dpo.run_dpo(cfg, sft_run_id=micro_sft, data_run_id=micro_invert, run_id=run_id) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_RESUMED_FROM_STEP] == "2"
    assert _steps(client, run_id) == [1, 2, 3, 4]
    # Same reference, data order and RNG after the resume: the last margin matches the uninterrupted run.
    resumed = client.get_metric_history(run_id, tracking.metric_train("rewards/margins"))[-1].value
    uninterrupted = client.get_metric_history(dpo_run, tracking.metric_train("rewards/margins"))[-1].value
    assert resumed == pytest.approx(uninterrupted, rel=1e-3, abs=1e-5)
    # Finished (defaults): nothing of its checkpoints left beyond adapter/.
    assert client.list_artifacts(run_id, tracking.ARTIFACT_RESUME) == []
    assert client.list_artifacts(run_id, tracking.ARTIFACT_CHECKPOINTS) == []


def test_direct_dpo_one_direction_in_two_cpu_processes(micro_invert, client):
    run_id = dpo.run_dpo(
        micro_cfg("dpo.num_processes=2", "dpo.max_steps=2", "dpo.save_every_steps=0"),
        data_run_id=micro_invert,
        direction="reverse",
    )
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["dpo.reference"] == "base" and run.data.params["dpo.direction"] == "reverse"
    assert tracking.tag_upstream("sft") not in run.data.tags
    assert run.data.metrics["dpo/pairs"] == 64
    assert _steps(client, run_id) == [1, 2]
    first_margin = client.get_metric_history(run_id, tracking.metric_train("rewards/margins"))[0].value
    assert first_margin == pytest.approx(0, abs=TOL)


def test_bad_input_is_one_line_exit_2(micro_invert, micro_data, micro_sft):
    from conftest import run_cli

    from reverse_align.errors import UserError

    result = run_cli(
        "dpo", "--preset", "micro", "--sft_run_id", micro_sft, "--data_run_id", micro_invert, "--beta", "0"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: dpo.beta must be > 0, got 0.0"]
    cfg = micro_cfg()
    with pytest.raises(UserError, match=f"--sft_run_id {micro_invert}: is a invert run, expected sft"):
        dpo.run_dpo(cfg, sft_run_id=micro_invert, data_run_id=micro_invert)
    with pytest.raises(UserError, match="is a data run without reverses"):
        dpo.run_dpo(cfg, sft_run_id=micro_sft, data_run_id=micro_data)
    with pytest.raises(UserError, match="--direction 'sideways'"):
        dpo.run_dpo(cfg, sft_run_id=micro_sft, data_run_id=micro_invert, direction="sideways")
    with pytest.raises(UserError, match="dpo.beta must be > 0"):
        dpo.run_dpo(micro_cfg("dpo.beta=-0.1"), data_run_id=micro_invert)
    # An SFT adapter is only the SFT model on the base it was trained on.
    with pytest.raises(UserError, match="trained with pretrain.registered_model=reverse-align-tiny-base-micro"):
        dpo.run_dpo(load_config("tiny"), sft_run_id=micro_sft, data_run_id=micro_invert)


def test_the_trainer_receives_the_beta_asked_for(micro_sft, micro_invert, client):
    """PROTOCOL §7: the released script never passed beta. Checked where it counts: the trainer's own args."""
    from transformers import TrainerCallback

    received = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            received["beta"] = args.beta

    cfg = micro_cfg("dpo.max_steps=1", "dpo.save_every_steps=0")
    from reverse_align.config import set_field

    set_field(cfg, "dpo.beta", "0.25")  # what `--beta 0.25` does
    run_id = dpo.run_dpo(cfg, sft_run_id=micro_sft, data_run_id=micro_invert, callbacks=[Capture()])
    assert received["beta"] == 0.25
    assert client.get_run(run_id).data.params["dpo.beta"] == "0.25"


def test_a_saved_adapter_missing_a_tensor_is_refused(sft_adapter, tmp_path):
    import shutil

    from safetensors.torch import save_file

    cfg = micro_cfg()
    broken = tmp_path / "broken"
    shutil.copytree(sft_adapter, broken)
    tensors = load_file(f"{sft_adapter}/adapter_model.safetensors")
    dropped = next(k for k in sorted(tensors) if "lora_A" in k)  # peft itself only warns for these
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(broken / "adapter_model.safetensors"))
    common.load_adapter_model(cfg, None, sft_adapter)  # the real one passes
    with pytest.raises(RuntimeError, match="1 missing"):
        common.load_adapter_model(cfg, None, broken)
