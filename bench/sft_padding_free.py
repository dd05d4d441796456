"""Padding-free batching versus plain padding (to the longest sequence of each batch) in the SFT stage.

Goal (issue 4): padding-free is >= 1.5x the tokens/second of plain padding on
a length distribution shaped like s1K's: a long tail, longest/median ~5.
Every mode trains the same examples in the same order through the stage's own
trainer (reverse_align.train.sft.build_trainer), each in a fresh child process
so peak memory is measured separately. Tokens/second counts real tokens only.

Three modes: plain padding (sdpa); padding-free with transformers' sdpa, which
keeps the sequences apart with a (batch tokens)^2 block-diagonal mask; and
padding-free with ``sdpa_varlen`` (reverse_align.attention, the tiny presets'
setting), which attends within each sequence only, as flash-attn does on a GPU.

The model is the tiny preset's architecture with random weights (speed does not
depend on the weights), so no registered model or store is needed.

Usage: python bench/sft_padding_free.py [--examples 256] [--batch 16] [--median 88] [--hidden 512]
"""

import argparse
import multiprocessing
import os
import random
import resource
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def s1k_like_lengths(n: int, median: int, seed: int = 0) -> list[int]:
    """Lognormal token counts (s1K's traces are roughly lognormal), scaled so max/median ~= 5."""
    rng = random.Random(seed)
    raw = sorted(rng.lognormvariate(0.0, 0.67) for _ in range(n))
    mid = raw[n // 2]
    return [max(8, int(median * x / mid)) for x in raw]


def make_records(tokenizer, lengths: list[int], seed: int = 0):
    """Synthetic-world records whose thinking is padded out with arithmetic lines to the target length."""
    from reverse_align.data.schema import Record

    rng = random.Random(seed)
    records = []
    for i, target in enumerate(lengths):
        lines = []
        while len(tokenizer("\n".join(lines), add_special_tokens=False)["input_ids"]) < target:
            a, b = rng.randint(0, 50), rng.randint(1, 9)
            lines.append(f"{a} + {b} = {a + b}")
        records.append(
            Record(
                id=f"b{i}", pair_id=f"b{i}", direction="forward",
                question=f"Start with {i % 50}. Add 3. What is the final number?",
                thinking="\n".join(lines), attempt="The final number is \\boxed{3}.", gold="3", source="bench",
            )  # fmt: skip
        )
    rng.shuffle(records)
    return records


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


# name -> (attention implementation, padding_free)
MODES = {
    "padding": ("sdpa", False),
    "padding-free sdpa": ("sdpa", True),
    "padding-free sdpa_varlen": ("sdpa_varlen", True),
}


def measure(mode: str, model_dir: str, lengths: list[int], batch: int, queue) -> None:
    import torch

    from reverse_align.config import load_config
    from reverse_align.train.sft import build_trainer

    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    cfg = load_config(
        "tiny",
        [
            f"model.name={model_dir}", "model.max_length=4096", "sft.epochs=1", f"sft.per_device_batch_size={batch}",
            "sft.save_every_epochs=0", f"model.attn_implementation={MODES[mode][0]}",
            f"sft.padding_free={MODES[mode][1]}", "sft.logging_steps=1000",
        ],
    )  # fmt: skip
    from reverse_align.models import load_tokenizer

    records = make_records(load_tokenizer(cfg, model_dir), lengths)
    with tempfile.TemporaryDirectory() as out:
        trainer, _, _, stats = build_trainer(cfg, records, out)
        real_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        before = rss_kb()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        gpu_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    queue.put(
        {
            "mode": mode, "tokens_per_second": real_tokens / seconds, "seconds": seconds, "tokens": real_tokens,
            "steps": trainer.state.global_step, "peak_rss_mb": peak_kb / 1024, "train_rss_growth_mb": (peak_kb - before) / 1024,
            "gpu_peak_mb": gpu_peak / 2**20,
        }
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--median", type=int, default=88, help="median thinking tokens (longest + prompt stays within 512 positions)")
    parser.add_argument("--hidden", type=int, default=0, help="model width (0 = the tiny preset's)")
    args = parser.parse_args()

    from reverse_align.config import load_config
    from reverse_align.train.pretrain import build_model, build_tokenizer

    # A wider model has an LLM's FLOP mix (linear layers dominate attention); the tiny one is attention-bound.
    width = [f"pretrain.hidden_size={args.hidden}", f"pretrain.intermediate_size={4 * args.hidden}"] if args.hidden else []
    cfg = load_config("tiny", width)
    lengths = s1k_like_lengths(args.examples, args.median)
    print(
        f"{args.examples} examples, batch {args.batch}; thinking tokens: median {lengths[len(lengths) // 2]}, "
        f"max {max(lengths)} (max/median {max(lengths) / lengths[len(lengths) // 2]:.1f}); "
        f"model hidden {cfg.pretrain.hidden_size} x {cfg.pretrain.num_layers} layers"
    )
    context = multiprocessing.get_context("spawn")
    results = {}
    with tempfile.TemporaryDirectory() as model_dir:
        tokenizer = build_tokenizer(cfg)
        build_model(cfg, tokenizer).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        for mode in MODES:
            queue = context.Queue()
            process = context.Process(target=measure, args=(mode, model_dir, lengths, args.batch, queue))
            process.start()
            results[mode] = queue.get()
            process.join()
    for mode, r in results.items():
        print(
            f"{mode:>24}: {r['tokens_per_second']:8.0f} tokens/s ({r['tokens']} tokens, {r['steps']} steps, "
            f"{r['seconds']:.1f}s); peak RSS {r['peak_rss_mb']:.0f} MB (+{r['train_rss_growth_mb']:.0f} MB while training)"
            + (f", GPU peak {r['gpu_peak_mb']:.0f} MB" if r["gpu_peak_mb"] else "")
        )
    padded = results["padding"]
    for mode in list(MODES)[1:]:
        ratio = results[mode]["tokens_per_second"] / padded["tokens_per_second"]
        memory = results[mode]["train_rss_growth_mb"] / max(1.0, padded["train_rss_growth_mb"])
        print(f"{mode} / padding: {ratio:.2f}x tokens per second, {memory:.2f}x training memory growth")
    print("goal: padding-free sdpa_varlen / padding >= 1.5x tokens per second")


if __name__ == "__main__":
    main()
