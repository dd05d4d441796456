"""SFT and DPO throughput of the project's own trainers on a model of a real shape, and its MFU.

A randomly initialised model of a named shape (Qwen2.5-3B/7B/14B dimensions, or
the tiny preset's) is built in code (no download), given an s1K-like length mix
(lognormal, or the real token lengths of a file), and trained for a few steps
through ``reverse_align.train.sft.build_trainer`` and the DPO stage's
``policy_model`` / ``dpo_arguments`` / ``build_trainer`` with a preset's settings.
Speed does not depend on the weights.

It prints tokens/s over the steps after the first (cuDNN plans, allocator warm-up),
the model FLOPs of those tokens (formula printed), the fraction of the GPU's dense
bf16 peak (``--peak_tflops``, default 989 on an H100) and of a large matmul
measured in the same run, and peak memory. On a CPU it runs the same code on the
tiny shape, in float32, which is how the test suite keeps it from rotting.

Usage:
  python bench/gpu_sft_throughput.py --shape qwen2.5-7b --preset paper-7b --steps 20 --dpo_steps 5
  python bench/gpu_sft_throughput.py --shape tiny --preset tiny --steps 4 --dpo_steps 2   # CPU
  --set key=value ...  config overrides (e.g. sft.num_processes=1 sft.optim=adamw_torch)
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Qwen2.5 dimensions from the published configs (hidden, intermediate, layers, heads, kv heads, vocab, tied).
SHAPES = {
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "qwen2.5-14b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                        num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
}  # fmt: skip


def tiny_shape() -> dict:
    from reverse_align.config import load_config

    p = load_config("tiny").pretrain
    return dict(
        hidden_size=p.hidden_size, intermediate_size=p.intermediate_size, num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads, num_key_value_heads=p.num_kv_heads, vocab_size=p.vocab_size,
        tie_word_embeddings=False,
    )  # fmt: skip


def s1k_like_lengths(n: int, mean: int, seed: int = 0) -> list[int]:
    """Lognormal token counts with the given mean (s1K-1.1's R1 examples: ~9.3k tokens mean, long tail)."""
    rng = random.Random(seed)
    raw = [rng.lognormvariate(0.0, 0.67) for _ in range(n)]
    scale = mean / (sum(raw) / n)
    return [max(16, int(x * scale)) for x in raw]


def make_records(tokenizer, lengths: list[int]):
    """Records whose thinking is about ``length`` tokens of arithmetic lines (digits are one token each)."""
    from reverse_align.data.schema import Record

    line = "12 + 7 = 19"
    per_line = len(tokenizer(line + "\n", add_special_tokens=False)["input_ids"])
    records = []
    for i, length in enumerate(lengths):
        records.append(
            Record(
                id=f"b{i}", pair_id=f"b{i}", direction="forward",
                question=f"Start with {i % 50}. Add 3. What is the final number?",
                thinking="\n".join([line] * max(1, length // per_line)),
                attempt="The final number is \\boxed{3}.", gold="3", source="bench",
            )  # fmt: skip
        )
    return records


def matmul_tflops(device: str, dtype) -> float:
    """TFLOP/s of one large square matmul, the practical ceiling of this device and dtype."""
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    reps = 10
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e12


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def model_flops(shape: dict, dense_params: int, sequence_lengths: list[int]) -> float:
    """Training FLOPs of these sequences: 6·N·tokens for the weights plus 6·L·d·Σs² for causal attention.

    N counts every weight a token multiplies (all but the input embedding; lm_head included); the
    attention term is QKᵀ and PV (2 matmuls x 2 FLOPs per MAC), causal (halved), forward + backward (x3).
    Recomputation under gradient checkpointing is not counted, as MFU conventions go.
    """
    tokens = sum(sequence_lengths)
    attention = 6 * shape["num_hidden_layers"] * shape["hidden_size"] * sum(s * s for s in sequence_lengths)
    return 6 * dense_params * tokens + attention


class StepTimer:
    """Wall time and tokens seen (non-padding) of every optimizer step (a transformers callback)."""

    def __init__(self, device: str):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                sync(device)
                timer.begin = time.perf_counter()
                timer.tokens_before = state.num_input_tokens_seen

            def on_step_end(self, args, state, control, **kwargs):
                sync(device)
                timer.seconds.append(time.perf_counter() - timer.begin)
                timer.tokens.append(state.num_input_tokens_seen - timer.tokens_before)

        self.begin = 0.0
        self.tokens_before = 0
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.callback = _Callback()


def peak_memory_gib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def report(timer: StepTimer, sequence_lengths: list[int], shape, dense_params, peak, matmul, device) -> float:
    """Print SFT tokens/s and MFU over the steps after the first; returns tokens/s.

    The timed steps' FLOPs are the whole set's FLOPs scaled by their share of its tokens (exact for the
    weights, the set's mean for attention's s^2 term).
    """
    timed = list(zip(timer.seconds, timer.tokens))[1:] or list(zip(timer.seconds, timer.tokens))
    seconds = sum(s for s, _ in timed)
    tokens = sum(t for _, t in timed)
    flops = model_flops(shape, dense_params, sequence_lengths) * tokens / sum(sequence_lengths)
    achieved = flops / seconds / 1e12
    line = (
        f"sft: {len(timed)} timed steps, {tokens} tokens in {seconds:.2f}s = {tokens / seconds:,.0f} tokens/s; "
        f"{achieved:.3g} TFLOP/s = {achieved / matmul:.1%} of the measured matmul ({matmul:.3g} TFLOP/s)"
    )
    if peak:
        line += f", {achieved / peak:.1%} of the {peak:.0f} TFLOP/s dense peak"
    print(line + f"; peak memory {peak_memory_gib(device):.2f} GiB")
    return tokens / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="", help=f"tiny or one of {', '.join(SHAPES)} (default: 7b on a GPU, tiny on a CPU)")
    parser.add_argument("--preset", default="", help="settings to train with (default: paper-7b on a GPU, tiny on a CPU)")
    parser.add_argument("--steps", type=int, default=8, help="SFT optimizer steps (the first is not timed)")
    parser.add_argument("--dpo_steps", type=int, default=4, help="DPO optimizer steps (0 = skip DPO)")
    parser.add_argument("--mean_tokens", type=int, default=0, help="mean example length (default 9300 on a GPU, 96 on a CPU)")
    parser.add_argument("--lengths_file", default="", help="real token lengths, one integer a line (sampled in order)")
    parser.add_argument("--peak_tflops", type=float, default=-1, help="dense bf16 peak (default: 989 on an H100, none otherwise)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides section.key=value")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from reverse_align.config import load_config
    from reverse_align.train import dpo as dpo_stage
    from reverse_align.train.preferences import preference_dataset, preference_pairs
    from reverse_align.train.pretrain import build_tokenizer
    from reverse_align.train.sft import build_trainer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape_name = args.shape or ("qwen2.5-7b" if device == "cuda" else "tiny")
    shape = tiny_shape() if shape_name == "tiny" else SHAPES[shape_name]
    preset = args.preset or ("paper-7b" if device == "cuda" else "tiny")
    mean_tokens = args.mean_tokens or (9300 if device == "cuda" else 96)
    peak = args.peak_tflops
    if peak < 0:
        peak = 989.0 if device == "cuda" and "H100" in torch.cuda.get_device_name() else 0.0

    with tempfile.TemporaryDirectory() as model_dir, tempfile.TemporaryDirectory() as out:
        tokenizer = build_tokenizer(load_config("tiny"))  # local BPE; the model's vocabulary keeps the real size
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        config = Qwen2Config(**shape, max_position_embeddings=32768, dtype=dtype)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        embedding = model.get_input_embeddings().weight.numel()
        dense_params = sum(p.numel() for p in model.parameters()) - embedding
        if shape["tie_word_embeddings"]:
            dense_params += embedding  # the tied lm_head still multiplies every token
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        matmul = matmul_tflops(device, dtype)
        print(
            f"shape {shape_name}: {dense_params / 1e9:.3f}B dense params, {shape['num_hidden_layers']} layers x "
            f"{shape['hidden_size']}; preset {preset}; device {device}"
            + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")
        )
        print("FLOPs per step = 6 x dense params x tokens + 6 x layers x hidden x sum(seq_len^2)")

        overrides = [
            f"model.name={model_dir}", f"model.dtype={'bfloat16' if device == 'cuda' else 'float32'}",
            "sft.epochs=1", "sft.save_every_epochs=0", "sft.logging_steps=100000",
            "dpo.save_every_steps=0", "dpo.logging_steps=100000", f"dpo.max_steps={args.dpo_steps}",
            *(item for chunk in args.overrides for item in chunk.split()),
        ]  # fmt: skip
        cfg = load_config(preset, overrides)
        batch = cfg.sft.per_device_batch_size * cfg.sft.gradient_accumulation_steps
        if args.lengths_file:
            real = [int(x) for x in open(args.lengths_file).read().split()]
            lengths = [real[i % len(real)] for i in range(args.steps * batch)]
        else:
            lengths = s1k_like_lengths(args.steps * batch, mean_tokens)
        lengths = [min(n, cfg.model.max_length - 64) for n in lengths]

        timer = StepTimer(device)
        trainer, _, _, _ = build_trainer(cfg, make_records(tokenizer, lengths), f"{out}/sft", callbacks=[timer.callback])
        sequence_lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
        real = sum(sum(1 for t in ids if t != tokenizer.pad_token_id) for ids in trainer.train_dataset["input_ids"])
        print(
            f"{len(sequence_lengths)} examples, {len(set(sequence_lengths))} distinct lengths "
            f"(sft.sequence_length_multiple={cfg.sft.sequence_length_multiple}: +{sum(sequence_lengths) / real - 1:.2%} tokens)"
        )
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        sft_rate = report(timer, sequence_lengths, shape, dense_params, peak, matmul, device)
        epochs = load_config(preset).sft.epochs
        r1k_tokens = 1000 * mean_tokens * epochs
        print(f"r1k SFT ({epochs:g} epochs of 1,000 x {mean_tokens} tokens) at this rate: {r1k_tokens / sft_rate / 3600:.2f} h")
        del trainer
        if device == "cuda":
            torch.cuda.empty_cache()

        if args.dpo_steps > 0:
            dpo_batch = cfg.dpo.per_device_batch_size * cfg.dpo.gradient_accumulation_steps
            records = make_records(tokenizer, s1k_like_lengths(2 * args.dpo_steps * dpo_batch, mean_tokens, seed=1))
            forward = records[::2]
            reverse = [
                type(r)(**{**r.to_dict(), "id": f"{r.pair_id}-r", "direction": "reverse", "pair_id": f.pair_id})
                for f, r in zip(forward, records[1::2])
            ]
            pairs = preference_pairs(forward, reverse, "forward")
            timer = StepTimer(device)
            model, peft_config = dpo_stage.policy_model(cfg, None, model_dir)
            trainer = dpo_stage.build_trainer(
                model, peft_config, preference_dataset(pairs), tokenizer,
                dpo_stage.dpo_arguments(cfg, f"{out}/dpo"), [timer.callback],
            )  # fmt: skip
            pair_tokens = [
                2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])
                for row in trainer.train_dataset
            ]
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            trainer.train()
            steps = timer.seconds[1:] or timer.seconds
            per_second = dpo_batch * len(steps) / sum(steps)
            # Chosen + rejected through the policy (forward + backward) and the frozen reference (forward).
            print(
                f"dpo: {len(steps)} timed steps, {sum(steps) / len(steps):.2f} s/step, {per_second:.2f} pairs/s "
                f"(~{per_second * sum(pair_tokens) / len(pair_tokens):,.0f} policy tokens/s); "
                f"peak memory {peak_memory_gib(device):.2f} GiB"
            )

if __name__ == "__main__":
    main()
