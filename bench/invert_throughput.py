"""Teacher-path throughput and kill-and-resume, against the loopback fake teacher.

Issue 3's targets: items/s at invert.concurrency 32 vs 1 against a server with
a fixed 100 ms latency, measured in one run (goal >= 20x); and a run killed
with SIGKILL part-way then started again: requests sent, duplicates (a step
asked again after its answer was journaled: must be 0), items lost (neither
accepted nor rejected at the end: must be 0).

The fake teacher (tests/fake_teacher.py) runs in its own process so that its
threads do not share a GIL with the client being measured. What is measured is
the stage's teacher path without MLflow: `reverse_align.data.teacher.run_teacher`
(async client, retries, journal appends, parsing, judging).

Usage: python bench/invert_throughput.py [--latency 0.1] [--items-1 20] [--items-32 640] [--kill-items 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def forward_items(n: int):
    from reverse_align.config import load_config
    from reverse_align.data import synthetic
    from reverse_align.data.schema import FORWARD

    cfg = load_config("tiny")
    cfg.synthetic.n_train = max(n, cfg.synthetic.n_train)
    return synthetic.make_world(cfg.synthetic, cfg.data.seed).records("train", FORWARD)[:n]


def invert_config(concurrency: int):
    from reverse_align.config import load_config

    return load_config(
        "tiny", ["invert.teacher=fake-r1", f"invert.concurrency={concurrency}", "invert.retry_base_delay=0.05", "invert.timeout=30"]
    ).invert


def run_worker(base_url: str, journal: str, items: int, concurrency: int) -> dict:
    from reverse_align.data.teacher import run_teacher
    from reverse_align.data.teacher_client import Endpoint

    forward = forward_items(items)
    start = time.perf_counter()
    outcome, usage = run_teacher(invert_config(concurrency), forward, Endpoint(base_url, "bench"), Path(journal), progress=False)
    seconds = time.perf_counter() - start
    from reverse_align.data import synthetic

    starts = {f.pair_id: synthetic.parse_question(f.question)[1].start for f in forward}
    return {
        "items": items,
        "seconds": seconds,
        "items_per_second": items / seconds,
        "accepted": len(outcome.reverses),
        # Solved from the reverse question's text alone, equal to the teacher's gold and the forward start.
        "recomputed_correct": sum(synthetic.solve(r.question) == int(r.gold) == starts[r.pair_id] for r in outcome.reverses),
        "rejected": len(outcome.rejected),
        "pending": len(outcome.pending),
        "requests": usage.requests,
    }


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_teacher.py"), "--latency", str(latency)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    return server, server.stdout.readline().strip()


def server_log(base_url: str) -> list[dict]:
    with urllib.request.urlopen(f"{base_url}/requests") as response:
        return json.loads(response.read())


def worker_process(base_url: str, journal: Path, items: int, concurrency: int) -> subprocess.Popen:
    args = ["--worker", "--base-url", base_url, "--journal", str(journal), "--items", str(items), "--concurrency", str(concurrency)]
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )


def journaled_steps(journal: Path) -> set[tuple[str, str]]:
    entries = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    return {(e["item"], e["step"]) for e in entries if e["kind"] != "header"}


def kill_and_resume(base_url: str, items: int, concurrency: int, kill_after: int, workdir: Path) -> dict:
    from fake_teacher import item_key

    journal = workdir / "kill" / "journal.jsonl"
    earlier = len(server_log(base_url))  # requests of the throughput runs, same items
    process = worker_process(base_url, journal, items, concurrency)
    while process.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) > kill_after:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = time.time()
    at_kill = journaled_steps(journal)
    sent_before = len(server_log(base_url)) - earlier
    resumed = worker_process(base_url, journal, items, concurrency)
    final = json.loads(resumed.communicate()[0].strip().splitlines()[-1])
    log = server_log(base_url)[earlier:]
    questions = {r.id: r.question for r in forward_items(items)}
    journaled = {(item_key(questions[item]), step) for item, step in at_kill}
    after = [r for r in log if r["started"] >= killed_at]
    counts: dict[tuple[str, str], int] = {}
    for r in log:
        counts[(r["item"], r["step"])] = counts.get((r["item"], r["step"]), 0) + 1
    return {
        "items": items,
        "steps_journaled_at_kill": len(at_kill),
        "requests_before_kill": sent_before,
        "requests_after_restart": len(after),
        "requests_total": len(log),
        "duplicates": sum(1 for r in after if (r["item"], r["step"]) in journaled),
        "in_flight_resent": sum(1 for n in counts.values() if n > 1),
        "items_lost": items - final["accepted"] - final["rejected"],
        "accepted": final["accepted"],
        "recomputed_correct": final["recomputed_correct"],
        "rejected": final["rejected"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--items-1", type=int, default=20, help="items at concurrency 1")
    parser.add_argument("--items-32", type=int, default=640, help="items at concurrency 32")
    parser.add_argument("--kill-items", type=int, default=1000, help="items of the kill-and-resume run (0 = skip)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--journal", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.base_url, args.journal, args.items, args.concurrency)), flush=True)
        return

    sys.path.insert(0, str(ROOT / "tests"))
    server, base_url = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            serial = run_worker(base_url, str(workdir / "c1.jsonl"), args.items_1, 1)
            parallel = run_worker(base_url, str(workdir / "c32.jsonl"), args.items_32, 32)
            ratio = parallel["items_per_second"] / serial["items_per_second"]
            print(
                f"throughput at {args.latency * 1000:.0f} ms latency (2 requests per item): "
                f"concurrency 1: {serial['items_per_second']:.2f} items/s ({serial['items']} items in {serial['seconds']:.1f}s); "
                f"concurrency 32: {parallel['items_per_second']:.2f} items/s ({parallel['items']} items in {parallel['seconds']:.1f}s); "
                f"ratio {ratio:.1f}x (goal >= 20x)"
            )
            if args.kill_items:
                figures = kill_and_resume(base_url, args.kill_items, 32, args.kill_items // 2, workdir)
                print("kill-and-resume (SIGKILL at half the journal, concurrency 32): " + json.dumps(figures))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
