"""DPO: the reference is the SFT model, before and after training; the stage logs what it should.

The SFT model here is an adapter made in the test (peft on the micro base,
weights perturbed so it differs from the base) until real SFT runs exist.
Log-probs of the SFT model are computed independently: a fresh base model plus
the saved adapter, a plain forward with full logits (not trl's fused head).
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.data.invert import load_run_records
from reverse_align.train import common, dpo
from reverse_align.train.preferences import preference_dataset, preference_pairs

TOL = 1e-5


def micro_cfg(*overrides: str):
    return load_config("micro", ["dpo.learning_rate=5e-3", "dpo.per_device_batch_size=4", *overrides])


@pytest.fixture(scope="session")
def sft_like_adapter(micro_base, tmp_path_factory) -> str:
    """A LoRA adapter on the micro base with non-zero, random A and B (so it is not the base model)."""
    from peft import get_peft_model

    from reverse_align.models import load_model

    cfg = micro_cfg()
    torch.manual_seed(1)
    model = get_peft_model(load_model(cfg), common.peft_lora_config(cfg.lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.05)
            elif "modules_to_save" in name:  # the trained lm_head copy SFT saves in the adapter
                param.add_(torch.randn_like(param) * 0.05)
    out = tmp_path_factory.mktemp("sft_like") / "adapter"
    model.save_pretrained(out, safe_serialization=True)
    return str(out)


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
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True)
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


def test_reference_is_the_sft_model_before_and_after_training(sft_like_adapter, micro_pairs, tmp_path):
    from reverse_align.models import load_tokenizer

    cfg = micro_cfg("dpo.max_steps=3", "dpo.save_every_steps=0")
    tokenizer = load_tokenizer(cfg)
    trainer = make_trainer(cfg, sft_like_adapter, micro_pairs, tokenizer, tmp_path)
    policy = trainer.model
    assert dpo.reference_adapter_is_frozen_copy(policy)
    batch = first_batch(trainer)
    sft_chosen, sft_rejected = sequence_logps(sft_model(cfg, sft_like_adapter), batch)

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
    saved = load_file(f"{sft_like_adapter}/adapter_model.safetensors")
    ref = get_peft_model_state_dict(policy, adapter_name=dpo.REFERENCE_ADAPTER)
    trained = get_peft_model_state_dict(policy, adapter_name=dpo.POLICY_ADAPTER)
    assert ref.keys() == saved.keys() == trained.keys()
    assert all(torch.equal(ref[k], saved[k]) for k in saved)
    assert sum(not torch.equal(trained[k], saved[k]) for k in saved) == len(saved)


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
