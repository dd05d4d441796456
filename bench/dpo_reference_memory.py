"""Peak memory of DPO over an SFT adapter: trl's frozen `ref` adapter vs a separately loaded reference model.

Both variants train the same SFT LoRA adapter with trl's DPOTrainer for a few
steps on the tiny world's preference pairs; only the reference differs:

- `ref-adapter` (what the `dpo` stage does): one base model holding the policy
  adapter and trl's frozen copy `ref` (reverse_align.train.dpo.policy_model).
- `separate`: the policy as above without the copy, plus `ref_model` = a second
  base model with the SFT adapter merged in (what tools that load a reference
  model do; trl takes a plain model there, not a PeftModel).

The model is a Qwen2 with the tiny world's tokenizer and a larger hidden size,
randomly initialised (no download), so that weights dominate the memory.
Each variant runs in its own subprocess. Measured (Linux /proc):

- training memory: the peak resident set (VmRSS: heap and the weights, which
  transformers may keep as mmapped safetensors pages) during
  ``trainer.train()``, sampled every 5 ms by a thread, minus VmRSS just before
  the first model was loaded (imports, tokenizer, data). Freed loader buffers
  are returned to the OS (malloc_trim) before training, so the figure is
  weights + adapters + optimizer + activations. This is the headline ratio;
  the issue's goal: ref-adapter / separate <= 0.6.
- whole-process peak RSS (ru_maxrss), which also counts imports and the
  transient copies made while loading, for context.

Usage: python bench/dpo_reference_memory.py [--hidden 2048] [--layers 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
VARIANTS = ("ref-adapter", "separate")


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class PeakSampler:
    """Max of VmRSS, sampled every ``interval`` seconds on a thread, while active."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def release_freed_memory() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_config(work: Path):
    """The tiny preset pointed at the bench model (LoRA r=16 on all linear layers, lm_head via modules_to_save).

    Per-device batch 1 as in the paper (A.4.2): one chosen + one rejected sequence per forward.
    """
    from reverse_align.config import load_config

    return load_config(
        "tiny",
        [f"model.name={work / 'base'}", "dpo.per_device_batch_size=1", "dpo.gradient_accumulation_steps=1",
         "dpo.save_every_steps=0", "dpo.learning_rate=1e-4"],
    )  # fmt: skip


def build(work: Path, hidden: int, layers: int) -> None:
    """Random Qwen2 base model + a perturbed SFT-like adapter, saved under ``work``."""
    import torch
    from peft import get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from reverse_align.config import load_config
    from reverse_align.train.common import peft_lora_config
    from reverse_align.train.pretrain import build_tokenizer

    tokenizer = build_tokenizer(load_config("tiny"))
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(work / "base")
    tokenizer.save_pretrained(work / "base")
    peft_model = get_peft_model(model, peft_lora_config(bench_config(work).lora))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.01)
    peft_model.save_pretrained(work / "sft_adapter")
    n = sum(p.numel() for p in model.parameters())
    print(f"bench model: Qwen2, hidden {hidden}, {layers} layers, {n / 1e6:.1f}M parameters ({n * 4 / 2**20:.0f} MiB fp32)")


def run_variant(variant: str, work: Path, steps: int) -> dict:
    """One DPO training run in this process; returns memory figures."""
    from peft import PeftModel

    from reverse_align.data import synthetic
    from reverse_align.models import load_model, load_tokenizer
    from reverse_align.train import dpo
    from reverse_align.train.preferences import preference_dataset, preference_pairs

    cfg = bench_config(work)
    cfg.dpo.max_steps = steps
    tokenizer = load_tokenizer(cfg)
    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    forward = world.records("train", "forward")[:32]
    pairs = preference_pairs(forward, [synthetic.invert(f) for f in forward])
    dataset = preference_dataset(pairs)
    args = dpo.dpo_arguments(cfg, work / f"out-{variant}")
    before_models = rss_mb()

    from trl import DPOTrainer

    if variant == "ref-adapter":
        model, _ = dpo.policy_model(cfg, str(work / "sft_adapter"))
        trainer = dpo.build_trainer(model, None, dataset, tokenizer, args)
        assert dpo.reference_adapter_is_frozen_copy(trainer.model)
    else:
        model = PeftModel.from_pretrained(load_model(cfg), str(work / "sft_adapter"), is_trainable=True)
        # trl takes a plain model as ref_model: the SFT model merged into a second copy of the base.
        ref_model = PeftModel.from_pretrained(load_model(cfg), str(work / "sft_adapter")).merge_and_unload().eval()
        for param in ref_model.parameters():
            param.requires_grad_(False)
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer)
        assert "ref" not in trainer.model.peft_config
    release_freed_memory()
    built = rss_mb()
    with PeakSampler() as sampler:
        trainer.train()
    return {"variant": variant, "peak_mb": peak_rss_mb(), "added_mb": sampler.peak - before_models,
            "models_mb": built - before_models}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, Path(args.work), args.steps)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work, args.hidden, args.layers)
        results = {}
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--work", str(work), "--steps", str(args.steps)],
                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"},
            )  # fmt: skip
            if out.returncode != 0:
                sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    for r in results.values():
        print(f"{r['variant']:12s} training memory {r['added_mb']:6.0f} MiB (models before step 1: {r['models_mb']:6.0f} MiB); whole-process peak RSS {r['peak_mb']:6.0f} MiB")
    a, s = results["ref-adapter"], results["separate"]
    print(f"ratio ref-adapter / separate: training memory {a['added_mb'] / s['added_mb']:.2f}x (goal <= 0.6x); "
          f"whole-process peak RSS {a['peak_mb'] / s['peak_mb']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
