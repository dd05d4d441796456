"""paper-7b's numbers reach the trainers: preset -> trl SFTConfig / DPOConfig -> optimizer and scheduler.

Built on CPU without a GPU: the hardware-dependent part (processes, DeepSpeed) is
``train.common.device_training_args``, so ``num_processes=1`` here (4 would start a
process group). bf16 is accepted on CPU. 8-bit AdamW needs bitsandbytes (the ``gpu``
extra): where it is missing, the test checks that the trainer would refuse to start
rather than fall back, and reads the betas/lr through the same path with AdamW.
"""

import dataclasses
import importlib.util

import pytest
import torch
import transformers

from reverse_align.config import load_config
from reverse_align.train.dpo import dpo_arguments
from reverse_align.train.sft import sft_args

STEPS = 1000


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    cfg = load_config("paper-7b", ["sft.num_processes=1"])
    return sft_args(cfg, tmp_path_factory.mktemp("sft"))


def test_sft_arguments_hold_a41(args):
    assert (args.learning_rate, args.num_train_epochs) == (3e-4, 10)
    assert args.lr_scheduler_type == transformers.SchedulerType.COSINE_WITH_RESTARTS
    assert args.weight_decay == 1e-6 and (args.adam_beta1, args.adam_beta2) == (0.9, 0.95)
    assert args.max_grad_norm == 1.0 and args.optim == transformers.training_args.OptimizerNames.ADAMW_8BIT
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 1)
    assert args.bf16 is True and args.fp16 is False
    # Warmup 0.05 is a ratio of the run (transformers 5), not 0 steps.
    assert args.get_warmup_steps(STEPS) == 50


def test_optimizer_gets_betas_lr_and_8bit(args):
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ImportError, match="bitsandbytes"):
            transformers.Trainer.get_optimizer_cls_and_kwargs(args)
    else:
        cls, _ = transformers.Trainer.get_optimizer_cls_and_kwargs(args)
        assert "8bit" in cls.__name__
    plain = dataclasses.replace(args, optim="adamw_torch")
    _, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(plain)
    assert kwargs["betas"] == (0.9, 0.95) and kwargs["lr"] == 3e-4


def test_scheduler_warms_up_then_cosine_to_zero(args):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = transformers.get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(STEPS), num_training_steps=STEPS,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )  # fmt: skip
    lrs = []
    for _ in range(STEPS):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0 and lrs[25] == pytest.approx(1.5e-4) and lrs[50] == pytest.approx(3e-4)
    assert lrs[525] == pytest.approx(1.5e-4, rel=1e-2) and lrs[-1] < 1e-6  # one cosine cycle after warmup


def test_dpo_arguments_hold_a42(tmp_path):
    d = dpo_arguments(load_config("paper-7b", ["dpo.num_processes=1"]), tmp_path)
    # learning rate: 3e-6, not A.4.2's full fine-tuning 5e-7 (a LoRA: README "Deviations from the paper")
    assert (d.beta, d.learning_rate, d.max_steps) == (0.6, 3e-6, 200)
    assert d.lr_scheduler_type == transformers.SchedulerType.COSINE
    assert (d.per_device_train_batch_size, d.gradient_accumulation_steps, d.max_length) == (1, 4, 20000)
    assert d.bf16 is True


def test_deepspeed_only_with_several_processes_on_gpus(monkeypatch):
    from reverse_align.train.common import device_training_args, uses_deepspeed

    zero3 = "configs/deepspeed/zero3.json"
    assert not uses_deepspeed(4, zero3)  # this machine has no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert uses_deepspeed(4, zero3) and not uses_deepspeed(1, zero3) and not uses_deepspeed(4, "")
    assert device_training_args(4, zero3, False)["deepspeed"].endswith(zero3)
    assert "deepspeed" not in device_training_args(1, zero3, False)
