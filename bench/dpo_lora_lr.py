"""Which DPO learning rate moves a paper-shape LoRA as far as full fine-tuning moves the model at 5e-7?

A.4.2's DPO rate (5e-7) is the released script's, which ran *full-parameter* DPO
(PROTOCOL §7: its LoRA flags were ignored). The paper presets train a LoRA (the
SFT adapter for Table 3, a fresh one for Table 4): at a full-FT rate a LoRA
barely moves. This measures, on one small real-shape model in one run, how far
DPO moves the policy away from its reference after the paper's schedule (beta
0.6, cosine, 200 optimizer steps of 4 pairs, AdamW) for

- ``full``: every parameter trained at 5e-7, reference = a frozen copy of the start
  (what the released script ran);
- ``lora``: the adapter of the paper's LoRA shape trained at each rate of ``--rates``,
  reference = the start (trl's frozen ``ref`` copy of the SFT adapter, or the base
  with adapters disabled), exactly as the ``dpo`` stage builds it.

in both modes of the study: ``continuation`` (Table 3: from an SFT model; the
LoRA continues its SFT adapter, full FT starts from that adapter merged in) and
``direct`` (Table 4: from the base; a fresh LoRA).

The model is a Qwen2 built in code from a config (random init, no download) with
the tiny world's tokenizer; the "SFT" is ``--sft_steps`` of LoRA SFT at A.4.1's
3e-4 on the mixed set so the continuation starts from a trained adapter (B != 0).
The LoRA shape is the paper's scaled to the model: rank r = hidden * 256/3584
(7B: r=256 on hidden 3,584), alpha = 2r (A.4.1's alpha/r = 2), all seven
projections, lm_head trained in full (modules_to_save, as the study does).

Measured after training, on 64 fixed training pairs, trl's own evaluation:
``margin`` = beta * (log-ratio(y+) - log-ratio(y-)) (trl's rewards/margins,
log-ratio = policy - reference sequence log-prob), and ``shift`` = mean
|log-ratio| of y+ and y- (how far the policy moved at all). The printed
"matching rate" is the LoRA rate whose margin is nearest to full FT's at 5e-7
(geometric interpolation between the grid rates that bracket it).

Limits: a random-init model of hidden 256-512 is not Qwen2.5-7B; LoRA's reach per
step depends on the width (A's init scale is 1/sqrt(hidden)), so ``--hidden``
can be run at two sizes to see the trend. One seed.

Usage: OMP_NUM_THREADS=1 python bench/dpo_lora_lr.py [--hidden 256] [--layers 2] [--steps 200]
       [--rates 5e-7,5e-6,5e-5,1e-4,5e-4] [--modes continuation,direct]
The default grid leaves a 10x gap above 5e-7, across which the interpolation misplaces the matching
rate (1.5e-6 / 3.8e-6); the paper presets' 3e-6 comes from ``--rates 5e-7,1e-6,2e-6,3e-6,5e-6``
(2.6e-6 / 4.4e-6; README "Deviations from the paper").
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

FULL_FT_RATE = 5e-7  # A.4.2 (the released script's full-parameter DPO)
PAPER_HIDDEN, PAPER_RANK = 3584, 256  # Qwen2.5-7B, A.4.1
SFT_RATE = 3e-4  # A.4.1
MODES = ("continuation", "direct")


def bench_config(work: Path, hidden: int, steps: int, batch: int):
    """paper-7b's DPO section on the bench model (CPU: float32, one process, no DeepSpeed)."""
    from reverse_align.config import load_config

    rank = max(4, round(hidden * PAPER_RANK / PAPER_HIDDEN))
    return load_config(
        "paper-7b",
        [f"model.name={work / 'base'}", "model.dtype=float32", "model.attn_implementation=sdpa",
         "model.gradient_checkpointing=false", "model.max_length=256",
         f"lora.r={rank}", f"lora.alpha={2 * rank}",
         f"dpo.max_steps={steps}", f"dpo.per_device_batch_size={batch}", "dpo.gradient_accumulation_steps=1",
         "dpo.bf16=false", "dpo.num_processes=1", "dpo.deepspeed=", "dpo.save_every_steps=0",
         "dpo.max_prompt_length=128", "dpo.max_length=256", "dpo.logging_steps=1000"],
    )  # fmt: skip


def pairs_dataset(cfg, n_forward: int):
    from reverse_align.data import synthetic
    from reverse_align.train.preferences import preference_dataset, preference_pairs

    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    forward = world.records("train", "forward")[:n_forward]
    reverse = [synthetic.invert(f) for f in forward]
    return preference_dataset(preference_pairs(forward, reverse)), forward, reverse


def build(work: Path, cfg, hidden: int, layers: int, sft_steps: int, records) -> dict:
    """Random Qwen2 base, an SFT LoRA trained briefly at A.4.1's rate, and that adapter merged (for full FT)."""
    import torch
    from peft import get_peft_model

    from reverse_align.config import load_config
    from reverse_align.formatting import chat_messages
    from reverse_align.train.common import peft_lora_config
    from reverse_align.train.pretrain import build_model, build_tokenizer

    tokenizer = build_tokenizer(cfg.__class__())  # the tiny world's tokenizer (default config = tiny)
    # The tiny base's own builder at the bench's shape (untied lm_head, seed 0), random init.
    shape = load_config("tiny", [
        f"pretrain.hidden_size={hidden}", f"pretrain.intermediate_size={int(hidden * 2.75)}",
        f"pretrain.num_layers={layers}", f"pretrain.num_heads={max(2, hidden // 64)}",
        f"pretrain.num_kv_heads={max(1, hidden // 256)}", "pretrain.max_position_embeddings=512", "pretrain.seed=0",
    ])  # fmt: skip
    model = build_model(shape, tokenizer)
    model.save_pretrained(work / "base")
    tokenizer.save_pretrained(work / "base")
    peft_model = get_peft_model(model, peft_lora_config(cfg.lora))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=SFT_RATE, betas=(0.9, 0.95))
    texts = [tokenizer.apply_chat_template(chat_messages(r), tokenize=False) for r in records]
    generator = torch.Generator().manual_seed(0)
    losses = []
    peft_model.train()
    for _ in range(sft_steps):
        batch = [texts[i] for i in torch.randint(len(texts), (8,), generator=generator).tolist()]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = peft_model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    peft_model.save_pretrained(work / "sft_adapter")
    peft_model.merge_and_unload().save_pretrained(work / "sft_merged")
    tokenizer.save_pretrained(work / "sft_merged")
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "sft_loss": (losses[0], sum(losses[-10:]) / len(losses[-10:])) if losses else (float("nan"),) * 2,
    }


def run_dpo(work: Path, cfg, mode: str, kind: str, rate: float, dataset, eval_dataset) -> dict:
    """One DPO run; returns trl's evaluation of the moved policy against its reference."""
    import torch
    from transformers import PrinterCallback
    from trl import DPOTrainer

    from reverse_align.models import load_model, load_tokenizer
    from reverse_align.train import dpo

    cfg.dpo.learning_rate = rate
    tokenizer = load_tokenizer(cfg)
    args = dpo.dpo_arguments(cfg, work / f"out-{mode}-{kind}-{rate:g}")
    args.per_device_eval_batch_size = 8
    torch.manual_seed(1)
    if kind == "full":
        start = str(work / ("sft_merged" if mode == "continuation" else "base"))
        model, ref, peft_config = load_model(cfg, start), load_model(cfg, start).eval(), None
    else:  # as the dpo stage builds it (train/dpo.py): trl adds the frozen "ref" copy, or disables the fresh LoRA
        model, peft_config = dpo.policy_model(cfg, str(work / "sft_adapter") if mode == "continuation" else None)
        ref = None
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=peft_config)  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # the figures are printed below, one line a run
    if kind == "lora" and mode == "continuation":
        assert dpo.reference_adapter_is_frozen_copy(trainer.model)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    started = time.process_time()
    trainer.train()
    seconds = time.process_time() - started
    metrics = trainer.evaluate()
    beta = cfg.dpo.beta
    chosen, rejected = metrics["eval_rewards/chosen"] / beta, metrics["eval_rewards/rejected"] / beta
    return {
        "mode": mode, "kind": kind, "rate": rate, "trainable": trainable, "cpu_s": seconds,
        "margin": metrics["eval_rewards/margins"], "accuracy": metrics["eval_rewards/accuracies"],
        "shift": (abs(chosen) + abs(rejected)) / 2, "loss": metrics["eval_loss"],
    }


def matching_rate(target: float, lora: list[dict]) -> str:
    """The rate whose margin equals ``target``, interpolated in log-rate and margin between grid neighbours."""
    points = sorted((r["rate"], r["margin"]) for r in lora)
    for (r0, m0), (r1, m1) in zip(points, points[1:]):
        if min(m0, m1) <= target <= max(m0, m1) and m0 != m1:
            t = (target - m0) / (m1 - m0)
            return f"{math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0))):.2g}"
    if points and target < points[0][1]:
        return f"< {points[0][0]:g}"
    return f"> {points[-1][0]:g} (grid too low)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (A.4.2: 200)")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step (A.4.2: 1 x accumulation 4)")
    parser.add_argument("--sft_steps", type=int, default=150)
    parser.add_argument("--pairs", type=int, default=400, help="forward items (each gives 2 pairs)")
    parser.add_argument("--rates", default="5e-7,5e-6,5e-5,1e-4,5e-4")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rates = [float(r) for r in args.rates.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = bench_config(work, args.hidden, args.steps, args.batch)
        dataset, forward, reverse = pairs_dataset(cfg, args.pairs)
        eval_dataset = dataset.shuffle(seed=0).select(range(min(64, len(dataset))))
        built = build(work, cfg, args.hidden, args.layers, args.sft_steps, forward + reverse)
        print(
            f"model: Qwen2 hidden {args.hidden}, {args.layers} layers, vocab {cfg.pretrain.vocab_size}-ish, "
            f"{built['parameters'] / 1e6:.2f}M parameters, random init; LoRA r={cfg.lora.r} alpha={cfg.lora.alpha} "
            f"(paper r/hidden = {PAPER_RANK}/{PAPER_HIDDEN}, alpha/r = 2) + lm_head in full; SFT {args.sft_steps} "
            f"steps at {SFT_RATE:g}: loss {built['sft_loss'][0]:.3f} -> {built['sft_loss'][1]:.3f}"
        )
        print(
            f"DPO: beta {cfg.dpo.beta}, {cfg.dpo.lr_scheduler}, {args.steps} steps x {args.batch} pairs "
            f"({len(dataset)} pairs), {cfg.dpo.optim}; measured on {len(eval_dataset)} training pairs"
        )
        results = []
        for mode in modes:
            runs = [("full", FULL_FT_RATE)] + [("lora", r) for r in rates]
            for kind, rate in runs:
                result = run_dpo(work, cfg, mode, kind, rate, dataset, eval_dataset)
                results.append(result)
                print(
                    f"{mode:12s} {kind:4s} lr {rate:7.0e}  margin {result['margin']:+.4f}  shift {result['shift']:.4f}  "
                    f"reward acc {result['accuracy']:.2f}  loss {result['loss']:.4f}  trainable "
                    f"{result['trainable'] / 1e6:.2f}M  {result['cpu_s']:.0f} CPU s",
                    flush=True,
                )
        for mode in modes:
            full = next(r for r in results if r["mode"] == mode and r["kind"] == "full")
            lora = [r for r in results if r["mode"] == mode and r["kind"] == "lora"]
            at_full_rate = next((r for r in lora if r["rate"] == FULL_FT_RATE), None)
            ratio = f"; LoRA at {FULL_FT_RATE:g} reaches {at_full_rate['margin'] / full['margin']:.2f}x its margin" if (
                at_full_rate and full["margin"]
            ) else ""
            print(
                f"{mode}: full FT at {FULL_FT_RATE:g} margin {full['margin']:+.4f}{ratio}; "
                f"LoRA rate with the same margin: {matching_rate(full['margin'], lora)}"
            )


if __name__ == "__main__":
    main()
