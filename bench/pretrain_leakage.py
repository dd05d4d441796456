"""How many held-out problems the pretraining stream of a preset gives away (issue 10: must be 0).

Replays every row `pretrain` trains on (steps x batch) and counts, with `synthetic.leakage`, the
held-out problems whose forward or undo chain appears in a row or whose plan opens a worked
example, by where (walk or worked example) and how. Works on older checkouts too (those have no
transfer family: there the held-out problems are the test set).

Usage: python bench/pretrain_leakage.py [--preset tiny]
"""

import argparse
import collections


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()

    from reverse_align.config import load_config
    from reverse_align.data import synthetic
    from reverse_align.train.pretrain import pretraining_documents

    cfg = load_config(args.preset)
    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    held_out = world.held_out() if hasattr(world, "held_out") else world.test
    documents = list(pretraining_documents(cfg))
    overlaps = synthetic.leakage(documents, held_out)
    n_test = len(world.test)
    leaked_test = {o.problem for o in overlaps if o.problem < n_test}
    two_step = sum(len(p.ops) == 2 for p in world.test)
    print(f"{args.preset}: {len(documents):,} pretraining rows ({cfg.pretrain.steps} steps x {cfg.pretrain.batch_size}); "
          f"{len(held_out)} held-out problems, {n_test} of them forward/reverse test problems ({two_step} two-step)")
    print(f"held-out problems given away: {len({o.problem for o in overlaps})}; test problems: {len(leaked_test)}")
    by_kind = collections.defaultdict(set)
    for o in overlaps:
        where = "worked example" if documents[o.document].startswith("Start with") else "walk"
        by_kind[(where, o.how)].add(o.problem)
    for (where, how), problems in sorted(by_kind.items()):
        tests = [p for p in problems if p < n_test]
        print(f"  {where}, {how}: {len(problems)} held-out problems "
              f"({len(tests)} test, {sum(len(world.test[p].ops) == 2 for p in tests)} of them two-step)")


if __name__ == "__main__":
    main()
