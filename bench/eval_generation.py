"""`evaluate` generation throughput: prompts batched (eval.batch_size) versus one prompt at a time.

Both variants run the real path of the stage (reverse_align.eval.stage.run_lm_eval: lm-eval's
simple_evaluate over the shipped synthetic_forward task, the HFLM over the base model with an
adapter attached) on the same held-out synthetic questions, one after the other in this process.
The model is bench/dpo_reference_memory.py's random Qwen2 (no download): it never writes the end
token, so every answer runs the full ``--new-tokens`` and both variants generate the same number
of tokens. Each variant runs ``--rounds`` times alternating; the best round counts (the machine
is shared). Also checks the two variants produce the same (greedy) responses.

Usage: python bench/eval_generation.py [--questions 64] [--new-tokens 64] [--batch 32] [--hidden 256] [--rounds 2]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import logging

    import torch
    from dpo_reference_memory import bench_config, build

    from reverse_align.data import synthetic
    from reverse_align.eval import benchmarks
    from reverse_align.eval.lm import build_lm
    from reverse_align.eval.stage import run_lm_eval

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    torch.set_num_threads(1)  # both variants on one core: the ratio is batching, not threads
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work, args.hidden, args.layers)
        cfg = bench_config(work)
        cfg.eval.max_new_tokens = args.new_tokens
        world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
        records = world.records("test", "forward")[: args.questions]
        docs = [benchmarks._doc(r.id, r.question, r.gold, "integer", cfg.eval) for r in records]
        benchmarks.write_docs(docs, work / "synthetic_forward.jsonl")

        best: dict[int, float] = {}
        responses: dict[int, list[str]] = {}
        for round_index in range(args.rounds):
            for batch in (args.batch, 1):
                cfg.eval.batch_size = batch
                lm = build_lm(cfg, str(work / "base"), str(work / "sft_adapter"))
                start = time.perf_counter()
                output = run_lm_eval(cfg, lm, ["synthetic_forward"], work)
                seconds = time.perf_counter() - start
                best[batch] = min(best.get(batch, float("inf")), seconds)
                samples = sorted(output["samples"]["synthetic_forward"], key=lambda s: s["doc_id"])
                responses[batch] = [s["filtered_resps"][0] for s in samples]
                print(f"round {round_index + 1}: batch {batch:3d}: {seconds:7.2f} s")
        tokens = args.questions * args.new_tokens
        for batch in (args.batch, 1):
            print(
                f"batch {batch:3d}: best {best[batch]:7.2f} s, {args.questions / best[batch]:6.2f} questions/s, ~{tokens / best[batch]:7.0f} new tokens/s"
            )
        print(f"batched / one at a time: {best[1] / best[args.batch]:.2f}x questions/s")
        same = sum(a == b for a, b in zip(responses[args.batch], responses[1]))
        print(f"identical greedy responses: {same}/{args.questions}")


if __name__ == "__main__":
    main()
