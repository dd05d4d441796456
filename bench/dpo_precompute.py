"""DPO step time with and without `precompute_ref_log_probs` (reference = trl's frozen `ref` adapter).

Both variants train the same SFT-like LoRA adapter (random Qwen2 from
bench/dpo_reference_memory.py's builder, no download) on the tiny world's
preference pairs, for exactly one epoch (steps x batch = pairs), so the
precompute pass covers what training uses and no more. Each variant runs in its
own subprocess, one after the other, in one invocation.

Measured per optimizer step (steps 2..N; step 1 warms up), from a
TrainerCallback's on_step_begin/on_step_end: the median CPU time of the process
(time.process_time, one torch thread) and the median wall time. CPU time is the
headline: the machine is shared, and wall time moves with other people's load.
Also the one-off trainer construction (tokenisation, and for precompute the
reference pass over the dataset) and the total. Variants alternate for
``--rounds`` rounds; each figure is the best round. Also checks the variants
agree: the loss of step 1 (policy = reference there, so log 2) and of the last.

Usage: python bench/dpo_precompute.py [--hidden 512] [--layers 4] [--steps 8] [--batch 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
VARIANTS = ("on-the-fly", "precomputed")


def run_variant(variant: str, work: Path, steps: int, batch: int) -> dict:
    from transformers import TrainerCallback

    from dpo_reference_memory import bench_config
    from reverse_align.data import synthetic
    from reverse_align.models import load_tokenizer
    from reverse_align.train import dpo
    from reverse_align.train.preferences import preference_dataset, preference_pairs

    cfg = bench_config(work)
    cfg.dpo.max_steps = steps
    cfg.dpo.per_device_batch_size = batch
    cfg.dpo.precompute_ref_log_probs = variant == "precomputed"
    tokenizer = load_tokenizer(cfg)
    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    n_forward = steps * batch // 2  # one epoch: each forward item gives a forward and a reverse pair
    forward = world.records("train", "forward")[:n_forward]
    dataset = preference_dataset(preference_pairs(forward, [synthetic.invert(f) for f in forward]))

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

            self.cpu_seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)
            self.cpu_seconds.append(time.process_time() - self.cpu_started)

    timer = StepTimer()
    started, cpu_started = time.perf_counter(), time.process_time()
    model, _ = dpo.policy_model(cfg, str(work / "sft_adapter"))
    args = dpo.dpo_arguments(cfg, work / f"out-{variant}")
    trainer = dpo.build_trainer(model, None, dataset, tokenizer, args, callbacks=[timer])
    setup, setup_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.train()
    train, train_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "variant": variant, "pairs": len(dataset), "setup_s": setup, "train_s": train, "setup_cpu_s": setup_cpu,
        "train_cpu_s": train_cpu, "step_s": statistics.median(timer.seconds[1:]),
        "step_cpu_s": statistics.median(timer.cpu_seconds[1:]), "first_loss": losses[0], "last_loss": losses[-1],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, Path(args.work), args.steps, args.batch)))
        return

    from dpo_reference_memory import build

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work, args.hidden, args.layers)
        rounds: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                command = [sys.executable, __file__, "--variant", variant, "--work", str(work),
                           "--steps", str(args.steps), "--batch", str(args.batch)]  # fmt: skip
                env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
                out = subprocess.run(command, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
                rounds[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {
        v: {**runs[0], **{k: min(r[k] for r in runs) for k in runs[0] if k.endswith("_s")}} for v, runs in rounds.items()
    }
    for r in best.values():
        print(
            f"{r['variant']:12s} {r['pairs']} pairs, batch {args.batch}: median step {r['step_cpu_s']:.3f} CPU-s "
            f"({r['step_s']:.3f} s wall); setup {r['setup_cpu_s']:.1f} CPU-s; train {r['train_cpu_s']:.1f} CPU-s; "
            f"loss step 1 {r['first_loss']:.6f}, last {r['last_loss']:.6f}"
        )
    fly, pre = best["on-the-fly"], best["precomputed"]
    total = (pre["setup_cpu_s"] + pre["train_cpu_s"]) / (fly["setup_cpu_s"] + fly["train_cpu_s"])
    print(
        f"ratio precomputed / on-the-fly: step time {pre['step_cpu_s'] / fly['step_cpu_s']:.2f}x CPU "
        f"({pre['step_s'] / fly['step_s']:.2f}x wall); setup + one epoch {total:.2f}x CPU"
    )


if __name__ == "__main__":
    main()
