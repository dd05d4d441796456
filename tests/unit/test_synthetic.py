from reverse_align.config import SyntheticConfig
from reverse_align.data import synthetic
from reverse_align.data.schema import FORWARD, REVERSE
from reverse_align.formatting import last_boxed

CFG = SyntheticConfig(n_train=300, n_test=60, n_transfer=60)


def test_world_is_deterministic_under_seed():
    a = synthetic.make_world(CFG, seed=3)
    b = synthetic.make_world(CFG, seed=3)
    c = synthetic.make_world(CFG, seed=4)
    assert a.train == b.train and a.test == b.test
    assert a.train != c.train


def test_sizes_ranges_and_held_out_split():
    world = synthetic.make_world(CFG, seed=0)
    assert len(world.train) == 300 and len(world.test) == 60
    assert not set(world.train) & set(world.test)
    for problem in world.train + world.test:
        assert CFG.min_steps <= len(problem.ops) <= CFG.max_steps
        assert all(0 <= v <= CFG.max_value for v in problem.values())


def test_reverse_is_exact_and_recomputable():
    world = synthetic.make_world(CFG, seed=0)
    for fwd, rev in zip(world.records("train", FORWARD), world.records("train", REVERSE)):
        assert fwd.pair_id == rev.pair_id and rev.direction == REVERSE
        assert synthetic.invert(fwd) == rev
        assert synthetic.solve(fwd.question) == int(fwd.gold) == int(last_boxed(fwd.attempt))
        assert synthetic.solve(rev.question) == int(rev.gold) == int(last_boxed(rev.attempt))
        # The reverse answer is the forward start; the reverse question states the forward result.
        assert f"Start with {rev.gold}." in fwd.question
        assert f"The final number is {fwd.gold}." in rev.question


def test_trace_format_matches_s1k_style():
    record = synthetic.forward_record(synthetic.Problem(7, (("+", 5), ("*", 3), ("-", 4))), "p")
    assert record.question == "Start with 7. Add 5, then multiply by 3, then subtract 4. What is the final number?"
    assert record.thinking == "7 + 5 = 12\n12 * 3 = 36\n36 - 4 = 32"
    assert record.attempt == "The final number is \\boxed{32}."
    reverse = synthetic.reverse_record(synthetic.Problem(7, (("+", 5), ("*", 3), ("-", 4))), "p")
    assert reverse.thinking == "32 + 4 = 36\n36 / 3 = 12\n12 - 5 = 7"
    assert reverse.gold == "7"


def test_pretraining_facts_cover_both_directions_but_no_questions():
    facts = synthetic.pretraining_facts(CFG)
    assert "12 * 3 = 36" in facts and "36 / 3 = 12" in facts
    assert "7 + 5 = 12" in facts and "12 - 5 = 7" in facts
    assert not any("Start with" in f or "?" in f for f in facts)


def test_pretraining_walks_chain_valid_steps_inside_the_world():
    import random

    rng = random.Random(0)
    facts = set(synthetic.pretraining_facts(CFG))
    for _ in range(200):
        walk = synthetic.random_walk(rng, CFG, 8)
        assert len(walk) == 8 and set(walk) <= facts
        results = [int(line.rsplit("= ", 1)[1]) for line in walk]
        starts = [int(line.split(" ", 1)[0]) for line in walk]
        assert starts[1:] == results[:-1]


HELD = synthetic.Problem(7, (("+", 5), ("*", 3)))  # 7 + 5 = 12, 12 * 3 = 36


def _hows(document):
    return sorted(o.how for o in synthetic.leakage([document], [HELD]))


def test_leakage_finds_a_chain_anywhere_in_a_walk_and_its_undo_chain():
    assert _hows("3 + 4 = 7\n7 + 5 = 12\n12 * 3 = 36\n36 - 1 = 35\n") == ["forward chain"]
    assert _hows("36 / 3 = 12\n12 - 5 = 7\n") == ["undo chain"]
    # The steps apart, or one of them alone, give nothing away: single steps are the world's facts.
    assert _hows("7 + 5 = 12\n12 - 1 = 11\n12 * 3 = 36\n") == []


def test_leakage_finds_a_held_out_problem_opening_a_longer_worked_example():
    longer = synthetic.Problem(7, (("+", 5), ("*", 3), ("-", 4)))
    text = "\n".join([synthetic.forward_plan(longer), *synthetic.forward_steps(longer)])
    assert _hows(text) == ["forward chain", "plan prefix"]
    # Same plan, different second operation: no overlap.
    other = synthetic.Problem(7, (("+", 5), ("*", 2), ("-", 4)))
    assert _hows("\n".join([synthetic.forward_plan(other), *synthetic.forward_steps(other)])) == []


def test_transfer_asks_a_middle_value_that_both_routes_reach():
    world = synthetic.make_world(CFG, seed=0)
    records = world.transfer_records()
    assert len(records) == CFG.n_transfer
    routes = {FORWARD: 0, REVERSE: 0}
    for t, record in zip(world.transfer, records):
        values = t.problem.values()
        assert 1 <= t.step < len(t.problem.ops)
        assert record.gold == str(values[t.step]) == last_boxed(record.attempt)
        lines = record.thinking.split("\n")
        if record.direction == FORWARD:
            assert lines == synthetic.forward_steps(synthetic.Problem(t.problem.start, t.problem.ops[: t.step]))
        else:
            assert lines == synthetic.undo_steps(synthetic.Problem(values[t.step], t.problem.ops[t.step :]))
        assert int(lines[-1].rsplit("= ", 1)[1]) == values[t.step]
        assert record.question.startswith(synthetic.forward_plan(t.problem))
        assert f"The final number is {t.problem.result}." in record.question
        routes[record.direction] += 1
    assert min(routes.values()) > CFG.n_transfer / 4  # the reference route is not one direction's


def test_held_out_problems_are_disjoint_from_training_and_no_training_chain_contains_one():
    world = synthetic.make_world(CFG, seed=0)
    transfer = [t.problem for t in world.transfer]
    assert not set(world.train) & (set(world.test) | set(transfer)) and not set(world.test) & set(transfer)
    texts = [synthetic.problem_text(p) for p in world.train]
    assert synthetic.leakage(texts, world.held_out()) == []
    # The check is not vacuous: held-out problems' own texts are found.
    assert {o.problem for o in synthetic.leakage([synthetic.problem_text(p) for p in world.test], world.test)} == set(
        range(len(world.test))
    )
