"""The tiny study's SFT table from a tracking store: base and each mix on the forward, reverse and
transfer held-out problems (greedy exact match: the SFT run's quick check `sft/exact_match/<set>`,
else the `evaluate` score copied onto it, `eval/synthetic_<set>/accuracy`), mean and spread over the
FINISHED SFT runs of each mix (one per `sft.seed`), with the runs' seeds. (`main`'s report gives
the same table from its own runs; this reads any store.)

Only runs with the preset's SFT settings count (`reverse_align.config_hash` of `--preset` with
`--set` overrides, any `sft.seed` below 100): exploratory runs in the same store are left out.

Usage: python bench/sft_table.py --store sqlite:///mlflow.db [--preset tiny] [--set section.key=value ...]
"""

import argparse
import os
import statistics

SETS = ("forward", "reverse", "transfer")
MIXES = ("forward", "reverse", "mixed", "mixed_half")


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def score(run, test: str) -> float | None:
    from reverse_align import tracking

    metrics = run.data.metrics
    for key in (tracking.metric_sft_exact_match(test), tracking.metric_eval_accuracy(f"synthetic_{test}")):
        if key in metrics:
            return metrics[key]
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    import mlflow

    from reverse_align import tracking
    from reverse_align.config import load_config

    # The SFT settings of the preset, any training seed (sft.seed is part of the fingerprint).
    hashes = {tracking.config_hash(load_config(args.preset, [*args.set, f"sft.seed={n}"]), "sft") for n in range(100)}
    client = mlflow.MlflowClient(args.store)
    experiment = client.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", "reverse-align"))
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`{tracking.TAG_STAGE}` = 'sft' and attributes.status = 'FINISHED'"
    )
    runs = [r for r in runs if r.data.tags.get(tracking.TAG_CONFIG_HASH) in hashes]
    print(f"{len(runs)} FINISHED sft runs with the {args.preset} SFT settings (seeds 0-99); "
          "greedy exact match, mean ± sample std over seeds")
    print(f"| model | seeds | {' | '.join(SETS)} |")
    print(f"| --- | --- | {' | '.join('---' for _ in SETS)} |")
    base_evals = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{tracking.TAG_STAGE}` = 'evaluate' and params.`eval.run_id` = 'base' and attributes.status = 'FINISHED'",
    )
    base = {s: [r.data.metrics[key] for group, key in ((runs, tracking.metric_sft_exact_match(s, base=True)),
                                                        (base_evals, tracking.metric_eval_accuracy(f"synthetic_{s}")))
                for r in group if key in r.data.metrics] for s in SETS}
    print(f"| base | (all runs) | {' | '.join(cell(sorted(set(base[s]))) for s in SETS)} |")
    for mix in MIXES:
        mine = [r for r in runs if r.data.params.get("sft.mix") == mix]
        seeds = sorted(int(r.data.params.get("sft.seed", -1)) for r in mine)
        values = {s: [v for v in (score(r, s) for r in mine) if v is not None] for s in SETS}
        print(f"| {mix} | {','.join(map(str, seeds)) or '-'} | {' | '.join(cell(values[s]) for s in SETS)} |")


if __name__ == "__main__":
    main()
