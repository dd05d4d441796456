"""The four SFT training sets of Table 1 (PROTOCOL §1, "Mixes"), built from an invert run.

- ``forward``    D_s1k: every forward item of the invert run (all 1,000 in the paper,
  whether or not the inversion of an item was accepted).
- ``reverse``    D_r1k: every accepted reverse item.
- ``mixed``      D = D_s1k ∪ D_r1k over the accepted pairs: both directions of each.
- ``mixed_half`` D_0.5k: a sample of half the accepted pairs drawn under the seed
  (``sft.seed``), both directions: 500 + their own 500 in the paper.

The result is shuffled with the same seeded RNG, so a mix is the same list in the
same order for a given invert run and seed; :func:`composition` describes it for the log.
"""

from __future__ import annotations

import random

from reverse_align import tracking
from reverse_align.data.schema import FORWARD, REVERSE, Record
from reverse_align.errors import UserError

MIXES = ("forward", "reverse", "mixed", "mixed_half")


def paired(forward: list[Record], reverse: list[Record]) -> list[tuple[Record, Record]]:
    """(forward, reverse) per pair id, in the forward set's order; unpaired items are left out."""
    reverse_by_pair = {r.pair_id: r for r in reverse if r.direction == REVERSE}
    return [(f, reverse_by_pair[f.pair_id]) for f in forward if f.direction == FORWARD and f.pair_id in reverse_by_pair]


def compose_mix(forward: list[Record], reverse: list[Record], mix: str, seed: int) -> list[Record]:
    """The training records of ``mix``, shuffled under ``seed``."""
    if mix not in MIXES:
        raise UserError(f"--mix {mix!r}: expected one of {', '.join(MIXES)}")
    rng = random.Random(seed)
    if mix == "forward":
        records = [f for f in forward if f.direction == FORWARD]
        if not records:
            raise UserError("the invert run has no forward items to train on")
    else:
        pairs = paired(forward, reverse)
        if not pairs:
            raise UserError("the invert run has no forward/reverse pairs to train on")
        if mix == "reverse":
            records = [r for _, r in pairs]
        else:
            chosen = rng.sample(pairs, len(pairs) // 2) if mix == "mixed_half" else pairs
            records = [record for pair in chosen for record in pair]
    rng.shuffle(records)
    return records


def composition(records: list[Record], mix: str, seed: int) -> dict:
    """What went into a mix: counts per direction, the pair ids, the training order."""
    return {
        "mix": mix,
        "seed": seed,
        "examples": len(records),
        "forward": sum(r.direction == FORWARD for r in records),
        "reverse": sum(r.direction == REVERSE for r in records),
        "pairs": len({r.pair_id for r in records}),
        "pair_ids": sorted({r.pair_id for r in records}),
        "order": [r.id for r in records],
    }


# Which pairs of an invert run a training stage draws from (sft.train_set, dpo.train_set):
# every pair (Tables 1-2), or the probe set's 50 + 50 (§3.2, the ALP experiment: D_f, D_r, D_m).
TRAIN_SETS = ("all", "probe")


def train_set_artifacts(train_set: str) -> tuple[str, str]:
    """(forward, reverse) artifacts of an invert run that hold ``train_set``'s records."""
    if train_set == "all":
        return tracking.ARTIFACT_FORWARD, tracking.ARTIFACT_REVERSE
    if train_set == "probe":
        # The invert run's probe file holds the probe's forward items and their reverses.
        return tracking.ARTIFACT_PROBE, tracking.ARTIFACT_PROBE
    raise UserError(f"train_set {train_set!r}: expected one of {', '.join(TRAIN_SETS)}")
