"""Stand-ins for stage functions (``function(cfg, **args) -> run id``) to test the scheduler's graph logic."""

import os
import time

from reverse_align.errors import UserError


def echo(cfg, **args) -> str:
    """``<name>(<args>)@<pid>@<start>@<end>``, after holding the CPU-free wait ``cfg`` seconds."""
    start = time.time()
    time.sleep(float(cfg))
    inputs = ",".join(f"{k}={v.split('@')[0]}" for k, v in sorted(args.items()) if k != "name")
    return f"{args.get('name', '')}({inputs})@{os.getpid()}@{start}@{time.time()}"


def bad_input(cfg, **args) -> str:
    raise UserError("--beta -1: must be positive")


def crash(cfg, **args) -> str:
    raise RuntimeError("out of memory")


def meet(cfg, **args) -> str:
    """Arrive in directory ``cfg`` and wait (at most 120 s) until ``args['others']`` have arrived too:
    only jobs that run at the same time all return."""
    from pathlib import Path

    place = Path(cfg)
    (place / args["name"]).touch()
    deadline = time.time() + float(args.get("patience", 120))
    while not all((place / other).exists() for other in args["others"].split(",")):
        if time.time() > deadline:
            raise TimeoutError(f"{args['name']} waited alone")
        time.sleep(0.05)
    return f"{args['name']}@{os.getpid()}"
