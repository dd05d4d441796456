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


def hold_gpus(cfg, **args) -> str:
    """``<name>@<CUDA_VISIBLE_DEVICES>@<start>@<end>``: arrive in directory ``cfg``, wait (at most 120 s) until
    two jobs have arrived, hold one second more. The first two meet; a third arrives when they have gone."""
    from pathlib import Path

    start = time.time()
    place = Path(cfg)
    (place / args["name"]).touch()
    deadline = start + 120
    while len(list(place.iterdir())) < 2:
        if time.time() > deadline:
            raise TimeoutError(f"{args['name']} waited alone")
        time.sleep(0.05)
    time.sleep(1.0)
    return f"{args['name']}@{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}@{start}@{time.time()}"


def die_once(cfg, **args) -> str:
    """The first call kills its own process (a lost worker, not an error); the next returns ``<name>@<pid>``."""
    from pathlib import Path

    with open(Path(cfg) / args["name"], "a") as attempts:
        attempts.write(f"{os.getpid()}\n")
    if len((Path(cfg) / args["name"]).read_text().split()) == 1:
        os._exit(1)
    return f"{args['name']}@{os.getpid()}"


def bad_input_counted(cfg, **args) -> str:
    """Bad input, each call counted in ``<cfg>/<name>``."""
    from pathlib import Path

    with open(Path(cfg) / args["name"], "a") as attempts:
        attempts.write(f"{os.getpid()}\n")
    raise UserError("--beta -1: must be positive")
