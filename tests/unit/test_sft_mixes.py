"""The four Table 1 mixes: which records, how many per direction, seeded order."""

import pytest

from reverse_align.data.schema import Record
from reverse_align.errors import UserError
from reverse_align.train.mixes import MIXES, composition, compose_mix


def _record(i: int, direction: str) -> Record:
    return Record(
        id=f"p{i}-{direction[0]}", pair_id=f"p{i}", direction=direction, question=f"q{i}{direction}",
        thinking="t", attempt="a", gold="1", source="test",
    )  # fmt: skip


FORWARD = [_record(i, "forward") for i in range(10)]
# One forward item (p9) has no reverse: it belongs to no pair.
REVERSE = [_record(i, "reverse") for i in range(9)]


@pytest.mark.parametrize(
    "mix, n_forward, n_reverse, pairs",
    # forward is D_s1k whole: p9, whose inversion was not accepted, is in it too.
    [("forward", 10, 0, 10), ("reverse", 0, 9, 9), ("mixed", 9, 9, 9), ("mixed_half", 4, 4, 4)],
)
def test_counts_per_direction(mix, n_forward, n_reverse, pairs):
    records = compose_mix(FORWARD, REVERSE, mix, seed=0)
    info = composition(records, mix, seed=0)
    assert (info["forward"], info["reverse"], info["pairs"], info["examples"]) == (
        n_forward, n_reverse, pairs, n_forward + n_reverse,
    )  # fmt: skip
    assert info["order"] == [r.id for r in records]


def test_mixed_half_is_a_seeded_sample_of_half_the_pairs_both_directions():
    halves = {}
    for seed in range(6):
        records = compose_mix(FORWARD, REVERSE, "mixed_half", seed=seed)
        pairs = {r.pair_id for r in records}
        assert len(pairs) == 4 and sorted(r.id for r in records) == sorted(f"{p}-{d}" for p in pairs for d in "fr")
        assert "p9" not in pairs  # only accepted pairs
        halves[seed] = pairs
    assert halves[0] == {r.pair_id for r in compose_mix(FORWARD, REVERSE, "mixed_half", seed=0)}
    # Not the first half in file order, and not the same half for every seed.
    assert len({frozenset(h) for h in halves.values()}) > 1
    assert any(h != {"p0", "p1", "p2", "p3"} for h in halves.values())


def test_mixed_holds_both_directions_of_every_pair():
    records = compose_mix(FORWARD, REVERSE, "mixed", seed=0)
    assert {r.id for r in records} == {r.id for r in FORWARD[:9] + REVERSE}


def test_order_is_seeded():
    first = [r.id for r in compose_mix(FORWARD, REVERSE, "mixed", seed=1)]
    assert first == [r.id for r in compose_mix(FORWARD, REVERSE, "mixed", seed=1)]
    assert first != [r.id for r in compose_mix(FORWARD, REVERSE, "mixed", seed=2)]
    assert first != sorted(first)


def test_unknown_mix_names_the_valid_ones():
    with pytest.raises(UserError, match="--mix 'both'.*forward, reverse, mixed, mixed_half"):
        compose_mix(FORWARD, REVERSE, "both", seed=0)
    assert MIXES == ("forward", "reverse", "mixed", "mixed_half")
