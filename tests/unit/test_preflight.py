"""Preflight: a paper preset on a machine without its GPU stack is one line naming every missing piece."""

import pytest

from conftest import run_cli
from reverse_align.config import load_config
from reverse_align.errors import UserError
from reverse_align.preflight import Machine, check, missing

ALL_GPU_PACKAGES = frozenset({"deepspeed", "flash_attn", "bitsandbytes", "liger_kernel"})


def test_paper_preset_on_a_cpu_names_bf16_and_8bit_adam_with_their_overrides():
    problems = missing(load_config("paper-7b"), "sft", Machine(gpus=0))
    assert problems == [
        "sft.use_liger_kernel=true needs liger-kernel on a CUDA GPU (pip install -e '.[gpu]'); "
        "without: --set sft.use_liger_kernel=false",
        "sft.bf16=true needs a CUDA GPU; without: --set sft.bf16=false model.dtype=float32",
        "sft.optim=adamw_8bit needs bitsandbytes (pip install -e '.[gpu]'); without: --set sft.optim=adamw_torch",
    ]


def test_paper_preset_on_one_bare_gpu_names_processes_and_deepspeed():
    problems = missing(load_config("paper-7b"), "dpo", Machine(gpus=1))
    assert problems == [
        "dpo.num_processes=4 needs 4 GPUs, this machine has 1; without: --set dpo.num_processes=1",
        "dpo.deepspeed (ZeRO-3 over 4 processes) needs DeepSpeed (pip install -e '.[gpu]'); "
        'without: --set dpo.deepspeed=""',
    ]


def test_explicit_flash_attention_needs_flash_attn_and_a_gpu():
    cfg = load_config("paper-7b", ["model.attn_implementation=flash_attention_2"])
    on_gpu = missing(cfg, "evaluate", Machine(gpus=8, packages=ALL_GPU_PACKAGES - {"flash_attn"}))
    assert on_gpu == [
        "model.attn_implementation=flash_attention_2 needs flash-attn (pip install flash-attn --no-build-isolation); "
        "without: --set model.attn_implementation=auto"
    ]
    assert "needs a CUDA GPU" in missing(cfg, "evaluate", Machine(gpus=0))[0]


def test_main_checks_both_training_sections_and_all_at_once():
    problems = missing(load_config("paper-7b"), "main", Machine(gpus=0))
    assert [p.split("=")[0] for p in problems] == ["sft.use_liger_kernel", "sft.bf16", "sft.optim", "dpo.bf16"]


def test_a_full_gpu_machine_passes_and_auto_attention_picks_flash_attn():
    cfg = load_config("paper-14b")
    check(cfg, "sft", Machine(gpus=8, packages=ALL_GPU_PACKAGES))
    assert cfg.model.attn_implementation == "flash_attention_2"


def test_auto_attention_without_flash_attn_is_sdpa_varlen_never_a_block_mask():
    cfg = load_config("paper-7b", ["sft.num_processes=1", "sft.optim=adamw_torch"])
    check(cfg, "sft", Machine(gpus=1, packages=frozenset({"deepspeed", "liger_kernel"})))
    assert cfg.model.attn_implementation == "sdpa_varlen"


def test_tiny_needs_nothing_and_stages_that_train_nothing_are_not_checked():
    cfg = load_config("tiny")
    check(cfg, "sft", Machine(gpus=0))
    check(load_config("paper-7b"), "invert", Machine(gpus=0))
    with pytest.raises(UserError, match="preset 'paper-7b' needs what this machine lacks: sft.use_liger_kernel"):
        check(load_config("paper-7b"), "sft", Machine(gpus=0))


def test_cli_refuses_before_any_mlflow_run_exists(tmp_path):
    store = tmp_path / "mlflow.db"
    result = run_cli("sft", "--preset", "paper-7b", "--data_run_id", "abc", env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: preset 'paper-7b' needs what this machine lacks: ")
    assert "sft.bf16=true needs a CUDA GPU" in lines[0] and "bitsandbytes" in lines[0]
    assert not store.exists()


def test_compiled_layers_and_liger_are_refused_together():
    cfg = load_config("paper-7b", ["model.compile_layers=true"])
    problems = missing(cfg, "sft", Machine(gpus=4, packages=ALL_GPU_PACKAGES))
    assert problems == [
        "model.compile_layers=true cannot be combined with sft.use_liger_kernel=true; without: --set model.compile_layers=false"
    ]
