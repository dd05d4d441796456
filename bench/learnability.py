"""Is the tiny world learnable? Held-out forward exact-match of the tiny base
model before and after a plain fine-tune on forward problems, under a
wall-clock budget (issue: >= 40% within 2 minutes, from near 0%).

Usage: python bench/learnability.py [--preset tiny] [--seconds 120] [--model DIR]
Needs the preset's registered base model (`reverse-align pretrain --preset tiny`)
unless --model points at a saved one.
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--model", default="")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    from reverse_align.config import load_config
    from reverse_align.data import synthetic
    from reverse_align.data.schema import FORWARD
    from reverse_align.eval.generation import greedy_accuracy
    from reverse_align.models import load_model, load_tokenizer
    from reverse_align.train.quick_finetune import finetune

    cfg = load_config(args.preset)
    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    train, test = world.records("train", FORWARD), world.records("test", FORWARD)
    model, tokenizer = load_model(cfg, args.model or None), load_tokenizer(cfg, args.model or None)
    before = greedy_accuracy(model, tokenizer, test)
    stats = finetune(model, tokenizer, train, seconds=args.seconds, lr=args.lr)
    after = greedy_accuracy(model, tokenizer, test)
    print(
        f"preset {args.preset}: held-out forward exact match {before:.1%} -> {after:.1%} "
        f"after {stats['seconds']:.0f}s of training ({stats['steps']} steps, {stats['examples']} examples, "
        f"final loss {stats['loss']:.3f}); {len(test)} test problems"
    )


if __name__ == "__main__":
    main()
