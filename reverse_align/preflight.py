"""What a config needs from the machine, checked before any run starts.

A paper preset on a machine without its GPU stack used to stop deep inside a
library (DeepSpeed in ``TrainingArguments``, flash-attn at model load,
bitsandbytes at optimizer creation), one missing piece at a time, each as a
traceback. Here every need of the stage's config is checked at once, before an
MLflow run exists, and all that is missing is one ``error:`` line (exit 2)
naming, for each piece, what to install and the override that runs without it.

``model.attn_implementation: auto`` is resolved here too, so the run logs the
attention it actually used.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from reverse_align.config import Config
from reverse_align.errors import UserError

GPU_EXTRA = "pip install -e '.[gpu]'"
AUTO_ATTENTION = "auto"
FLASH_ATTENTION = "flash_attention_2"
# The config sections each stage trains with (stages that train nothing need nothing checked).
TRAINING_SECTIONS = {
    "sft": ("sft",),
    "dpo": ("dpo",),
    "main": ("sft", "dpo"),
    "probe": ("sft", "dpo"),
    "sweep": ("dpo",),
}
# Stages that load the base model (and so its dtype and attention).
MODEL_STAGES = {*TRAINING_SECTIONS, "evaluate"}


@dataclass(frozen=True)
class Machine:
    """What this machine offers: CUDA GPUs and the optional GPU packages."""

    gpus: int
    packages: frozenset[str] = field(default_factory=frozenset)

    @property
    def cuda(self) -> bool:
        return self.gpus > 0

    @classmethod
    def detect(cls) -> "Machine":
        import torch

        optional = ("deepspeed", "flash_attn", "bitsandbytes", "liger_kernel")
        installed = frozenset(name for name in optional if importlib.util.find_spec(name) is not None)
        return cls(gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0, packages=installed)


def resolve_attention(requested: str, machine: Machine) -> str:
    """``auto`` -> the fastest exact attention installed for padding-free batches.

    flash-attn's varlen kernel when it is installed on a GPU, else ``sdpa_varlen``
    (torch SDPA once per packed sequence: cuDNN on a GPU). Never SDPA with a block
    mask over a pack, which pays for the square of the batch's tokens. Padded batches
    and cached generation take transformers' own ``sdpa`` inside ``sdpa_varlen``.
    """
    from reverse_align import attention

    if requested != AUTO_ATTENTION:
        return requested
    if machine.cuda and "flash_attn" in machine.packages:
        return FLASH_ATTENTION
    return attention.NAME


def missing(cfg: Config, stage: str, machine: Machine) -> list[str]:
    """One phrase per missing piece: the setting that needs it, the install, the override without it."""
    problems: list[str] = []
    if stage in MODEL_STAGES and cfg.model.attn_implementation == FLASH_ATTENTION:
        if not machine.cuda:
            problems.append(
                "model.attn_implementation=flash_attention_2 needs a CUDA GPU; without: --set model.attn_implementation=auto"
            )
        elif "flash_attn" not in machine.packages:
            problems.append(
                "model.attn_implementation=flash_attention_2 needs flash-attn (pip install flash-attn "
                "--no-build-isolation); without: --set model.attn_implementation=auto"
            )
    if "sft" in TRAINING_SECTIONS.get(stage, ()) and cfg.sft.use_liger_kernel:
        if not machine.cuda or "liger_kernel" not in machine.packages:
            problems.append(
                f"sft.use_liger_kernel=true needs liger-kernel on a CUDA GPU ({GPU_EXTRA}); "
                "without: --set sft.use_liger_kernel=false"
            )
        if cfg.model.compile_layers:
            # dynamo fails inside Liger's RMSNorm (issue 15: AssertionError in overwrite_tensor_vt_proxy).
            problems.append(
                "model.compile_layers=true cannot be combined with sft.use_liger_kernel=true; "
                "without: --set model.compile_layers=false"
            )
    for section_name in TRAINING_SECTIONS.get(stage, ()):
        section = getattr(cfg, section_name)
        if section.bf16 and not machine.cuda:
            problems.append(
                f"{section_name}.bf16=true needs a CUDA GPU; without: --set {section_name}.bf16=false model.dtype=float32"
            )
        optim = getattr(section, "optim", "")
        if ("8bit" in optim or "paged" in optim) and "bitsandbytes" not in machine.packages:
            problems.append(
                f"{section_name}.optim={optim} needs bitsandbytes ({GPU_EXTRA}); without: --set {section_name}.optim=adamw_torch"
            )
        processes = section.num_processes
        if machine.cuda and processes > machine.gpus:
            problems.append(
                f"{section_name}.num_processes={processes} needs {processes} GPUs, this machine has {machine.gpus}; "
                f"without: --set {section_name}.num_processes={machine.gpus}"
            )
        # DeepSpeed is used for multi-GPU runs only (train/common.device_training_args); CPUs run DDP over gloo.
        if machine.cuda and processes > 1 and section.deepspeed and "deepspeed" not in machine.packages:
            problems.append(
                f"{section_name}.deepspeed (ZeRO-3 over {processes} processes) needs DeepSpeed ({GPU_EXTRA}); "
                f'without: --set {section_name}.deepspeed=""'
            )
    return problems


def check(cfg: Config, stage: str, machine: Machine | None = None) -> None:
    """Raise one ``UserError`` listing everything missing; resolve ``auto`` attention in ``cfg``."""
    if stage not in MODEL_STAGES:
        return
    machine = machine or Machine.detect()
    problems = missing(cfg, stage, machine)
    if problems:
        raise UserError(f"preset {cfg.preset!r} needs what this machine lacks: " + "; ".join(problems))
    cfg.model.attn_implementation = resolve_attention(cfg.model.attn_implementation, machine)
