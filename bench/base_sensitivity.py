"""How much does the tiny study's reading depend on the base model? Pretrain N bases (pretrain.seed
0..N-1, one world), LoRA-SFT each on the forward and on the reverse mix with the preset's recipe
(the `sft` stage's own trl trainer), and grade greedy answers on the held-out forward and reverse
tests. Each base runs twice in the same invocation: with the default CPU kernels and under
ATEN_CPU_CAPABILITY=avx2 (another kernel path, standing in for another machine kind). Prints, per
kernel path, every base's cells, their mean and sd over bases, the 95% t-interval of the mean, and
whether the avx2 means fall inside the default run's intervals.

Usage: python bench/base_sensitivity.py [--preset tiny] [--bases 5] [--kernels default,avx2]
                                        [--jobs 2] [--set section.key=value ...] [--json out.json]
Each (kernel, base) cell is its own process with one torch thread (`--jobs` of them at once), against
a throwaway MLflow store; nothing is registered in yours.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The two cells the instrument must read the same everywhere, and the two cross cells.
CELLS = [("forward", "forward"), ("reverse", "reverse"), ("forward", "reverse"), ("reverse", "forward")]
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def cell_name(mix: str, test: str) -> str:
    return f"{mix}_sft/{test}_test"


_LINE = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")


def error_kinds(records, answers) -> dict[str, float]:
    """Where greedy traces go wrong, as fractions of the problems: a step that computes wrongly from its own
    operands (arithmetic), one whose operands are not the problem's (copy), a boxed answer other than the
    trace's last result (answer), no trace lines at all (format)."""
    from reverse_align.data import synthetic
    from reverse_align.data.schema import FORWARD
    from reverse_align.formatting import last_boxed

    counts = {"arithmetic": 0, "copy": 0, "answer": 0, "format": 0}
    for record, answer in zip(records, answers):
        direction, problem = synthetic.parse_question(record.question)
        expected = synthetic.forward_steps(problem) if direction == FORWARD else synthetic.undo_steps(problem)
        thinking = answer.split("<|im_start|>answer")[0]
        lines = [m.groups() for line in thinking.splitlines() if (m := _LINE.match(line.strip()))]
        if not lines:
            counts["format"] += 1
            continue
        wrong_math = any(synthetic.apply(int(a), op, int(b)) != int(c) for a, op, b, c in lines if op != "/" or int(a) % int(b) == 0)
        wanted = [tuple(_LINE.match(e).groups()[:3]) for e in expected]
        counts["arithmetic"] += wrong_math
        counts["copy"] += [line[:3] for line in lines] != wanted and not wrong_math
        counts["answer"] += (last_boxed(answer) or "").strip() != lines[-1][3]
    return {k: 100 * v / max(1, len(records)) for k, v in counts.items()}


def worker(preset: str, overrides: list[str], seed: int) -> dict:
    """One base: pretrain, fact accuracy, forward and reverse SFT, greedy accuracy on both tests."""
    import mlflow
    import torch

    from reverse_align.config import load_config
    from reverse_align.data import synthetic
    from reverse_align.data.schema import FORWARD, REVERSE
    from reverse_align.eval.generation import exact_match, greedy_answers
    from reverse_align.models import load_tokenizer
    from reverse_align.train import common, pretrain, sft
    from reverse_align.train.mixes import compose_mix

    torch.set_num_threads(1)
    cfg = load_config(preset, [*overrides, f"pretrain.seed={seed}", "sft.save_every_epochs=0", "sft.exact_match_limit=0"])
    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    result: dict = {"seed": seed, "kernel": os.environ.get("ATEN_CPU_CAPABILITY", "default"),
                    "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        started = time.perf_counter()
        tokenizer = pretrain.build_tokenizer(cfg)
        model = pretrain.build_model(cfg, tokenizer)
        stats = pretrain.pretrain(cfg, model, tokenizer, log_every=10**9)
        result["pretrain_seconds"] = time.perf_counter() - started
        result["pretrain_loss"] = stats["pretrain/final_loss"]
        result["fact_accuracy"] = pretrain.fact_accuracy(model, tokenizer, synthetic.pretraining_facts(cfg.synthetic))
        base_dir = Path(tmp) / "base"
        model.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
        tests = {FORWARD: world.records("test", FORWARD), REVERSE: world.records("test", REVERSE)}
        train = {FORWARD: world.records("train", FORWARD), REVERSE: world.records("train", REVERSE)}
        for mix in (FORWARD, REVERSE):
            started = time.perf_counter()
            records = compose_mix(train[FORWARD], train[REVERSE], mix, cfg.sft.seed)
            out = Path(tmp) / mix
            trainer, _, _, _ = sft.build_trainer(cfg, records, out, base_path=str(base_dir))
            trainer.train()
            adapter = common.save_final_adapter(trainer, out)
            tuned = common.load_adapter_model(cfg, str(base_dir), adapter)
            tok = load_tokenizer(cfg, str(base_dir))
            for test, records_ in tests.items():
                answers = greedy_answers(tuned, tok, [r.question for r in records_], cfg.eval.max_new_tokens, 100)
                result[cell_name(mix, test)] = 100 * sum(exact_match(a, r.gold) for a, r in zip(answers, records_)) / len(records_)
                if mix == test:
                    result[f"{mix}_errors"] = error_kinds(records_, answers)
            result[f"{mix}_sft_seconds"] = time.perf_counter() - started
    return result


def run_cell(preset: str, overrides: list[str], seed: int, kernel: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
               "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("ATEN_CPU_CAPABILITY", None)
        if kernel != "default":
            env["ATEN_CPU_CAPABILITY"] = kernel
        command = [sys.executable, __file__, "--worker", "--preset", preset, "--seed", str(seed)]
        for o in overrides:
            command += ["--set", o]
        done = subprocess.run(command, check=False, cwd=tmp, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"base {seed} ({kernel}) failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def summarise(rows: list[dict]) -> dict:
    out = {}
    for mix, test in CELLS:
        values = [r[cell_name(mix, test)] for r in rows]
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        half = T95.get(len(values) - 1, 1.96) * sd / len(values) ** 0.5
        out[cell_name(mix, test)] = {"values": values, "mean": mean, "sd": sd, "ci": (mean - half, mean + half)}
    out["fact_accuracy"] = [r["fact_accuracy"] for r in rows]
    return out


def errors_text(r: dict) -> str:
    return "  ".join(f"{mix[0]}:" + "/".join(f"{r[f'{mix}_errors'][k]:.0f}" for k in ("arithmetic", "copy", "answer", "format"))
                     for mix in ("forward", "reverse"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--bases", default="5", help="a count (pretrain.seed 0..N-1) or a list of seeds: 1,2 (one seed: 2,)")
    parser.add_argument("--kernels", default="default,avx2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--json", default="")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.preset, args.overrides, args.seed)))
        return

    kernels = args.kernels.split(",")
    seeds = [int(b) for b in args.bases.split(",") if b] if "," in args.bases else list(range(int(args.bases)))
    jobs = [(k, s) for k in kernels for s in seeds]
    started = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_cell(args.preset, args.overrides, job[1], job[0]), jobs))
    wall = time.perf_counter() - started
    by_kernel = {k: [r for (kk, _), r in zip(jobs, results) if kk == k] for k in kernels}
    summaries = {k: summarise(rows) for k, rows in by_kernel.items()}

    print(f"preset {args.preset} {' '.join(args.overrides)}: {len(seeds)} bases (pretrain.seed {','.join(map(str, seeds))}) "
          f"x kernels {kernels}, {wall:.0f} s wall, {args.jobs} at once, 1 torch thread each")
    for kernel, rows in by_kernel.items():
        print(f"\n{kernel} kernels (torch reports {rows[0]['torch_cpu_capability']}):")
        print("  base  facts  " + "  ".join(f"{cell_name(m, t):>24}" for m, t in CELLS)
              + "  pretrain_s  sft_s  errors % (arithmetic/copy/answer/format)")
        for r in rows:
            print(f"  {r['seed']:>4}  {r['fact_accuracy']:.3f}  " + "  ".join(f"{r[cell_name(m, t)]:>24.1f}" for m, t in CELLS)
                  + f"  {r['pretrain_seconds']:>10.0f}  {r['forward_sft_seconds'] + r['reverse_sft_seconds']:>5.0f}  {errors_text(r)}")
        s = summaries[kernel]
        print("  mean         " + "  ".join(f"{s[cell_name(m, t)]['mean']:>24.1f}" for m, t in CELLS))
        print("  sd           " + "  ".join(f"{s[cell_name(m, t)]['sd']:>24.1f}" for m, t in CELLS))
        print("  95% of mean  " + "  ".join(f"{'%.1f-%.1f' % s[cell_name(m, t)]['ci']:>24}" for m, t in CELLS))
    if len(kernels) > 1:
        reference = summaries[kernels[0]]
        for kernel in kernels[1:]:
            if by_kernel[kernel][0]["torch_cpu_capability"] == by_kernel[kernels[0]][0]["torch_cpu_capability"]:
                # e.g. an AVX2-only CPU: ATEN_CPU_CAPABILITY=avx2 is its default path, not another machine kind.
                print(f"{kernel}: the same kernel path as {kernels[0]} on this CPU "
                      f"({by_kernel[kernel][0]['torch_cpu_capability']}); the comparison below shows no other machine")
            for mix, test in CELLS[:2]:
                name = cell_name(mix, test)
                low, high = reference[name]["ci"]
                mean = summaries[kernel][name]["mean"]
                verdict = "inside" if low <= mean <= high else "OUTSIDE"
                print(f"{kernel} {name} mean {mean:.1f}: {verdict} the {kernels[0]} 95% interval {low:.1f}-{high:.1f}")
    for mix, test in CELLS[:2]:
        name = cell_name(mix, test)
        worst = max(summaries[k][name]["sd"] for k in kernels)
        print(f"{name}: largest sd over bases {worst:.1f} points (target <= 5)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "summaries": summaries, "wall_s": wall}, indent=1))


if __name__ == "__main__":
    main()
