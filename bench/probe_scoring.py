"""ALP probe scoring: batched + adapter swap versus reloading per checkpoint and scoring item by item.

What is measured: 100 probe items (50 forward problems of the tiny world and
their exact reverses; each item scores y+ and y-, so 200 sequences) on 7
checkpoints. The model is a randomly initialised Qwen2 of the ``tiny`` preset's
shape (its own tokenizer, built locally; no pretraining, no download), saved to
disk; the 7 checkpoints are random LoRA adapters of the tiny preset's LoRA config
(r=64 on every projection, lm_head as a trained copy), non-zero, saved in PEFT
format. Random weights score like trained ones: the cost is the forward passes.

- ``ours``: :class:`reverse_align.probe.alp.CheckpointScorer` as the tiny preset
  configures it: the base loaded once; each checkpoint's LoRA tensors copied into
  the one adapter slot and merged into the base weights while it is scored (the
  exact base weights put back after); y+ and y- of an item in one row behind their
  shared question; rows sorted by length in right-padded batches of
  ``probe.batch_tokens`` tokens, one forward pass per batch, logits only from the
  first response position on, log-probs gathered for all tokens at once.
- ``reload+per-item``: per checkpoint, the base model and adapter loaded from
  disk (``PeftModel.from_pretrained``), the probe tokenized, one forward pass per
  sequence, the log-probs taken with one ``.item()`` per token (the released
  analysis, PROTOCOL §7).
- ``reload+per-item vectorised``: the same, but each sequence's log-probs summed
  in one tensor op (a fairer baseline: what remains is the reloading and batch 1).

All three run in this one process, one after the other, ``--rounds`` times, at the
same number of torch threads (``--threads``; default torch's own, every core);
each figure is the best round. Wall and process CPU time are both printed: the
machine is shared, so wall time moves with others' load, and with more than one
thread CPU time also counts the threads' waiting. The results must agree within
1e-5 (checked).

Where the time goes: the arithmetic of one checkpoint, counted by torch's
``FlopCounterMode`` (matmuls and attention, as the kernels run them: a masked
attention computes its whole square), the rate each variant reaches, and this
machine's float32 matmul rate at the same threads (a 2048^3 matmul), measured in
this run. ``ours`` at that rate with no overhead at all bounds the speed-up.

Usage: python bench/probe_scoring.py [--items 100] [--checkpoints 7] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def build(work: Path, n_checkpoints: int, cfg):
    """A random tiny-shaped base model + tokenizer and ``n_checkpoints`` random LoRA adapters, on disk."""
    import torch
    from peft import get_peft_model

    from reverse_align.train.common import peft_lora_config
    from reverse_align.train.pretrain import build_model, build_tokenizer

    tokenizer = build_tokenizer(cfg)
    base = work / "base"
    build_model(cfg, tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    adapters = []
    for index in range(n_checkpoints):
        torch.manual_seed(100 + index)
        from transformers import AutoModelForCausalLM

        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), peft_lora_config(cfg.lora))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name or "modules_to_save" in name:
                    param.add_(torch.randn_like(param) * 0.02)
        path = work / f"checkpoint-{index + 1}"
        model.save_pretrained(path)
        adapters.append(str(path))
    return str(base), tokenizer, adapters


def probe(cfg, n_items: int):
    from reverse_align.data import synthetic
    from reverse_align.probe.alp import probe_items

    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    forward = world.records("train", "forward")[: n_items // 2]
    return probe_items(forward + [synthetic.invert(r) for r in forward])


def ours(cfg, base, tokenizer, items, adapters):
    from reverse_align.models import load_model
    from reverse_align.probe.alp import CheckpointScorer

    scorer = CheckpointScorer.from_config(cfg.probe, load_model(cfg, base), tokenizer, items)
    return [scorer.score_adapter(a) for a in adapters]


def reloading(cfg, base, tokenizer, items, adapters, per_token_item: bool):
    import torch
    from peft import PeftModel

    from reverse_align.models import load_model
    from reverse_align.probe.alp import encode_items

    results = []
    for adapter in adapters:
        model = PeftModel.from_pretrained(load_model(cfg, base), adapter).eval()
        values = []
        for seq in encode_items(tokenizer, items, cfg.probe.max_response_tokens):
            with torch.inference_mode():
                logps = torch.log_softmax(model(torch.tensor([seq.input_ids])).logits[0].float(), -1)
            targets = seq.input_ids[seq.response_start :]
            rows = logps[seq.response_start - 1 : len(seq.input_ids) - 1]
            if per_token_item:
                total = 0.0
                for t, token in enumerate(targets):
                    total += rows[t, token].item()
                values.append(total / len(targets))
            else:
                values.append(rows.gather(-1, torch.tensor(targets).unsqueeze(-1)).double().mean().item())
        results.append((values[0::2], values[1::2]))
    return results


def flops_per_checkpoint(fn) -> float:
    """Floating-point operations of ``fn`` (matmuls and attention), counted by torch, not timed."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    # torch counts the CUDA attention kernels only; the CPU one does the same two matmuls
    counter = FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    )
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_rate() -> float:
    """This machine's float32 matmul rate (FLOP/s) at the current torch threads: best of 5 2048^3 products."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--checkpoints", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for every variant (0: torch's default)")
    args = parser.parse_args()

    import torch

    from reverse_align.config import load_config
    from reverse_align.models import load_model
    from reverse_align.probe.alp import encode_items

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config("tiny")
    cfg.model.attn_implementation = "sdpa"  # padded batches: sdpa_varlen hands them to sdpa anyway
    with tempfile.TemporaryDirectory() as tmp:
        base, tokenizer, adapters = build(Path(tmp), args.checkpoints, cfg)
        items = probe(cfg, args.items)
        lengths = sorted(len(s.input_ids) for s in encode_items(tokenizer, items, cfg.probe.max_response_tokens))
        n_params = sum(p.numel() for p in load_model(cfg, base).parameters())
        variants = {
            "ours (batched, adapter swap)": lambda: ours(cfg, base, tokenizer, items, adapters),
            "reload + per item, .item() per token": lambda: reloading(cfg, base, tokenizer, items, adapters, True),
            "reload + per item, vectorised": lambda: reloading(cfg, base, tokenizer, items, adapters, False),
        }
        best: dict[str, tuple[float, float]] = {}
        outputs = {}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                out, wall, cpu = timed(fn)
                outputs[name] = out
                prev = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(prev[0], wall), min(prev[1], cpu))
        # One checkpoint each: the arithmetic is the same for every checkpoint.
        work = {
            "ours (batched, adapter swap)": flops_per_checkpoint(
                lambda: ours(cfg, base, tokenizer, items, adapters[:1])
            ),
            "reload + per item, .item() per token": flops_per_checkpoint(
                lambda: reloading(cfg, base, tokenizer, items, adapters[:1], False)
            ),
        }
        work["reload + per item, vectorised"] = work["reload + per item, .item() per token"]
        peak = matmul_rate()
    fast = [(s.positive, s.negative) for s in outputs["ours (batched, adapter swap)"]]
    worst = max(
        abs(a - b)
        for name, out in outputs.items()
        if name.startswith("reload")
        for (pos, neg), (ref_pos, ref_neg) in zip(fast, out)
        for a, b in zip(pos + neg, ref_pos + ref_neg)
    )
    assert worst <= 1e-5, f"variants disagree by {worst:.3g}"
    print(
        f"{len(items)} items ({2 * len(items)} sequences, {lengths[0]}-{lengths[-1]} tokens) x {len(adapters)} checkpoints;"
        f" random Qwen2 of the tiny shape ({n_params / 1e6:.2f}M parameters), LoRA r={cfg.lora.r}; {torch.get_num_threads()} torch thread(s);"
        f" best of {args.rounds} rounds; max |difference| between variants {worst:.2g}"
    )
    ours_wall, ours_cpu = best["ours (batched, adapter swap)"]
    for name, (wall, cpu) in best.items():
        print(
            f"  {name:40s} cpu {cpu:7.2f} s   wall {wall:7.2f} s   speed-up (cpu) {cpu / ours_cpu:5.1f}x   (wall) {wall / ours_wall:5.1f}x"
            f"   {work[name] / 1e9:5.1f} GFLOP a checkpoint at {work[name] * len(adapters) / wall / 1e9:5.1f} GFLOP/s"
        )
    floor = work["ours (batched, adapter swap)"] * len(adapters) / peak
    baseline_wall = min(best[name][0] for name in best if name.startswith("reload"))
    print(
        f"this machine's float32 matmul: {peak / 1e9:.0f} GFLOP/s; ours at that rate with no overhead would take {floor:.2f} s,"
        f" a speed-up of at most {baseline_wall / floor:.1f}x over the faster baseline"
    )


if __name__ == "__main__":
    main()
