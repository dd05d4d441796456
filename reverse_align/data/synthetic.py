"""A synthetic bidirectional reasoning world with an exact reverse.

Forward: a start value is pushed through a few arithmetic operations; compute
the result. Reverse: given the operations and the result, recover the start,
by undoing the operations in reverse order. Both come with step-by-step
traces and a ``\\boxed{}`` answer, like s1K's think/answer format, so the same
training, probing and grading code serves real and synthetic data.

Questions are written in a fixed phrasing so that :func:`parse_question`
recovers the problem from the text alone: that is how :func:`invert` builds a
reverse from nothing but a forward record, and how tests recompute answers.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from reverse_align.config import SyntheticConfig
from reverse_align.data.schema import FORWARD, REVERSE, Record
from reverse_align.errors import UserError

SOURCE = "synthetic"

_WORDS = {"+": "add {}", "-": "subtract {}", "*": "multiply by {}"}
_UNDO = {"+": "-", "-": "+", "*": "/"}
_OP_PATTERN = re.compile(r"(add|subtract|multiply by) (\d+)")
_WORD_TO_OP = {"add": "+", "subtract": "-", "multiply by": "*"}


@dataclass(frozen=True)
class Problem:
    start: int
    ops: tuple[tuple[str, int], ...]

    def values(self) -> list[int]:
        """The start and every intermediate value, in forward order."""
        values = [self.start]
        for op, operand in self.ops:
            values.append(apply(values[-1], op, operand))
        return values

    @property
    def result(self) -> int:
        return self.values()[-1]


def apply(value: int, op: str, operand: int) -> int:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    if op == "/":
        if value % operand:
            raise ValueError(f"{value} / {operand} is not exact")
        return value // operand
    raise ValueError(f"unknown op {op!r}")


def fact(value: int, op: str, operand: int) -> str:
    """One arithmetic step as it appears in traces and in the pretraining corpus."""
    return f"{value} {op} {operand} = {apply(value, op, operand)}"


def describe_ops(ops: tuple[tuple[str, int], ...]) -> str:
    return ", then ".join(_WORDS[op].format(operand) for op, operand in ops)


def forward_plan(problem: Problem) -> str:
    """The forward question without its question sentence: what pretraining's worked examples say."""
    return f"Start with {problem.start}. {describe_ops(problem.ops).capitalize()}."


def forward_question(problem: Problem) -> str:
    return f"{forward_plan(problem)} What is the final number?"


def reverse_question(problem: Problem) -> str:
    return (
        f"A number was changed in order: {describe_ops(problem.ops)}. "
        f"The final number is {problem.result}. What was the starting number?"
    )


def forward_steps(problem: Problem) -> list[str]:
    values = problem.values()
    return [fact(values[i], op, operand) for i, (op, operand) in enumerate(problem.ops)]


def undo_steps(problem: Problem) -> list[str]:
    """The reverse trace: the operations undone from the result back to the start."""
    values = problem.values()
    return [fact(values[i + 1], _UNDO[op], operand) for i, (op, operand) in reversed(list(enumerate(problem.ops)))]


def forward_record(problem: Problem, pair_id: str) -> Record:
    steps = forward_steps(problem)
    return Record(
        id=f"{pair_id}-f",
        pair_id=pair_id,
        direction=FORWARD,
        question=forward_question(problem),
        thinking="\n".join(steps),
        attempt=f"The final number is \\boxed{{{problem.result}}}.",
        gold=str(problem.result),
        source=SOURCE,
    )


def reverse_record(problem: Problem, pair_id: str) -> Record:
    steps = undo_steps(problem)
    return Record(
        id=f"{pair_id}-r",
        pair_id=pair_id,
        direction=REVERSE,
        question=reverse_question(problem),
        thinking="\n".join(steps),
        attempt=f"The starting number is \\boxed{{{problem.start}}}.",
        gold=str(problem.start),
        source=SOURCE,
    )


def parse_question(question: str) -> tuple[str, Problem]:
    """Recover (direction, problem) from a synthetic question's text."""
    ops = tuple((_WORD_TO_OP[word], int(n)) for word, n in _OP_PATTERN.findall(question.lower()))
    forward = re.match(r"Start with (\d+)\.", question)
    if forward and ops:
        return FORWARD, Problem(int(forward.group(1)), ops)
    reverse = re.search(r"The final number is (\d+)\. What was the starting number\?", question)
    if reverse and ops:
        value = int(reverse.group(1))
        for op, operand in reversed(ops):
            value = apply(value, _UNDO[op], operand)
        return REVERSE, Problem(value, ops)
    raise ValueError(f"not a synthetic question: {question!r}")


def solve(question: str) -> int:
    """The exact answer of a synthetic question, recomputed from its text."""
    direction, problem = parse_question(question)
    return problem.result if direction == FORWARD else problem.start


def invert(record: Record) -> Record:
    """The exact reverse of a forward synthetic record (the `invert` stage's synthetic teacher)."""
    if record.direction != FORWARD:
        raise UserError(f"record {record.id}: only forward records can be inverted")
    try:
        _, problem = parse_question(record.question)
    except ValueError:
        raise UserError(f"record {record.id}: not a synthetic question") from None
    return reverse_record(problem, record.pair_id)


def sample_problem(rng: random.Random, cfg: SyntheticConfig) -> Problem:
    """Rejection-sample a problem whose every value stays in [0, max_value]."""
    while True:
        start = rng.randint(0, cfg.max_value)
        ops = []
        value = start
        for _ in range(rng.randint(cfg.min_steps, cfg.max_steps)):
            op = rng.choice("+-*")
            operand = rng.randint(2, cfg.max_multiplier) if op == "*" else rng.randint(1, cfg.max_addend)
            value = apply(value, op, operand)
            ops.append((op, operand))
        problem = Problem(start, tuple(ops))
        if all(0 <= v <= cfg.max_value for v in problem.values()):
            return problem


def transfer_question(problem: Problem, step: int) -> str:
    return (
        f"{forward_plan(problem)} The final number is {problem.result}. "
        f"What was the number after step {step}?"
    )


def transfer_record(problem: Problem, step: int, pair_id: str) -> Record:
    """A missing value in the middle: start, operations and result given, the value after ``step`` asked.

    Two routes reach it: ``step`` operations forward from the start (the forward
    skill) or the remaining ones undone from the result (the reverse skill); the
    question trains neither SFT mix. The reference trace takes the shorter route
    (on a tie: forward from an even start, undone from an odd one), and ``direction``
    names it.
    """
    values = problem.values()
    forward_route, undo_route = step, len(problem.ops) - step
    if forward_route < undo_route or (forward_route == undo_route and problem.start % 2 == 0):
        direction, steps = FORWARD, forward_steps(Problem(problem.start, problem.ops[:step]))
    else:
        direction, steps = REVERSE, undo_steps(Problem(values[step], problem.ops[step:]))
    return Record(
        id=f"{pair_id}-t",
        pair_id=pair_id,
        direction=direction,
        question=transfer_question(problem, step),
        thinking="\n".join(steps),
        attempt=f"The number after step {step} is \\boxed{{{values[step]}}}.",
        gold=str(values[step]),
        source=SOURCE,
    )


@dataclass(frozen=True)
class TransferProblem:
    problem: Problem
    step: int  # the value after this many operations is asked, 1 <= step < len(ops)


@dataclass
class World:
    train: list[Problem]
    test: list[Problem]
    transfer: list[TransferProblem]

    def records(self, split: str, direction: str) -> list[Record]:
        problems = self.train if split == "train" else self.test
        make = forward_record if direction == FORWARD else reverse_record
        return [make(p, f"syn-{split}-{i:05d}") for i, p in enumerate(problems)]

    def transfer_records(self) -> list[Record]:
        return [transfer_record(t.problem, t.step, f"syn-transfer-{i:05d}") for i, t in enumerate(self.transfer)]

    def held_out(self) -> list[Problem]:
        """Every chain whose steps give a held-out answer away: the test problems, the transfer
        problems, and each transfer problem's route to its asked value (when two steps or more)."""
        problems = list(self.test)
        for t in self.transfer:
            values = t.problem.values()
            problems.append(t.problem)
            problems += [
                route
                for route in (Problem(t.problem.start, t.problem.ops[: t.step]), Problem(values[t.step], t.problem.ops[t.step :]))
                if len(route.ops) >= 2
            ]
        return problems


def make_world(cfg: SyntheticConfig, seed: int) -> World:
    """Deterministic under the seed. Held-out problems (test, then transfer) are drawn first; a
    training problem is never one of them nor contains one's chain (forward or undone)."""
    rng = random.Random(seed)
    budget = (cfg.n_train + cfg.n_test + cfg.n_transfer) * 100

    def draw(accept) -> Problem:
        nonlocal budget
        while budget > 0:
            budget -= 1
            problem = sample_problem(rng, cfg)
            if accept(problem):
                return problem
        raise UserError(
            "synthetic world too small for the problems asked; raise synthetic.max_value or max_steps"
        )

    taken: set[Problem] = set()
    test = []
    for _ in range(cfg.n_test):
        test.append(draw(lambda p: p not in taken))
        taken.add(test[-1])
    transfer = []
    for _ in range(cfg.n_transfer):
        problem = draw(lambda p: p not in taken and len(p.ops) >= 2)
        taken.add(problem)
        transfer.append(TransferProblem(problem, rng.randint(1, len(problem.ops) - 1)))
    world = World(train=[], test=test, transfer=transfer)
    guard = HeldOut(world.held_out())
    for _ in range(cfg.n_train):
        world.train.append(draw(lambda p: p not in taken and not guard.leaks(problem_text(p))))
        taken.add(world.train[-1])
    return world


def problem_text(problem: Problem) -> str:
    """A problem's plan, forward steps and undo steps, as the leakage check reads documents."""
    return "\n".join([forward_plan(problem), *forward_steps(problem), "", *undo_steps(problem)])


def pretraining_facts(cfg: SyntheticConfig) -> list[str]:
    """Every single step of the world, forward and undone: the building blocks, not the question format."""
    facts = []
    for value in range(cfg.max_value + 1):
        for operand in range(1, cfg.max_addend + 1):
            if value + operand <= cfg.max_value:
                facts.append(fact(value, "+", operand))
            if value - operand >= 0:
                facts.append(fact(value, "-", operand))
        for operand in range(2, cfg.max_multiplier + 1):
            if value * operand <= cfg.max_value:
                facts.append(fact(value, "*", operand))
                facts.append(fact(value * operand, "/", operand))
    return facts


def valid_steps(value: int, cfg: SyntheticConfig) -> list[tuple[str, int]]:
    """Every single step (forward or undo) that keeps ``value`` inside the world."""
    steps = [("+", k) for k in range(1, cfg.max_addend + 1) if value + k <= cfg.max_value]
    steps += [("-", k) for k in range(1, cfg.max_addend + 1) if value - k >= 0]
    steps += [("*", m) for m in range(2, cfg.max_multiplier + 1) if value * m <= cfg.max_value]
    steps += [("/", m) for m in range(2, cfg.max_multiplier + 1) if value % m == 0 and value > 0]
    return steps


def worked_example(rng: random.Random, cfg: SyntheticConfig, exclude: set[Problem], guard: HeldOut) -> str:
    """A forward problem outside ``exclude`` that gives no held-out answer away, in words, then its steps."""
    while True:
        problem = sample_problem(rng, cfg)
        text = "\n".join([forward_plan(problem), *forward_steps(problem)])
        if problem not in exclude and not guard.leaks(text):
            return text


def random_walk(rng: random.Random, cfg: SyntheticConfig, length: int) -> list[str]:
    """Chained single steps, each starting from the previous result.

    Pretraining on walks teaches the steps and carrying a result to the next
    line, the building blocks of both directions' traces, without ever showing
    a question.
    """
    value = rng.randint(0, cfg.max_value)
    lines = []
    for _ in range(length):
        op, operand = rng.choice(valid_steps(value, cfg))
        lines.append(fact(value, op, operand))
        value = apply(value, op, operand)
    return lines


# ---------------------------------------------------------------- leakage

_STEP_LINE = re.compile(r"^\d+ [-+*/] \d+ = \d+$")


@dataclass(frozen=True)
class Overlap:
    problem: int  # index into the held-out problems
    document: int  # index into the documents
    how: str  # "forward chain", "undo chain" or "plan prefix"


class HeldOut:
    """The chains and plans that give held-out problems' answers away (see :func:`leakage`)."""

    def __init__(self, held_out: list[Problem]):
        self.chains: dict[tuple[str, ...], list[tuple[int, str]]] = {}
        self.plans: dict[Problem, list[int]] = {}
        for index, problem in enumerate(held_out):
            if len(problem.ops) < 2:
                continue  # a single step is a fact of the world, in every pretraining corpus by design
            self.chains.setdefault(tuple(forward_steps(problem)), []).append((index, "forward chain"))
            self.chains.setdefault(tuple(undo_steps(problem)), []).append((index, "undo chain"))
            self.plans.setdefault(problem, []).append(index)
        self.lengths = sorted({len(chain) for chain in self.chains})

    def overlaps(self, document: str) -> list[tuple[int, str]]:
        """(held-out index, how) for each give-away in one document."""
        found = []
        lines = document.split("\n")
        for i, line in enumerate(lines):
            if line.startswith("Start with "):
                try:
                    _, plan = parse_question(line)
                except ValueError:
                    continue
                for n in range(1, len(plan.ops) + 1):
                    found += [(index, "plan prefix") for index in self.plans.get(Problem(plan.start, plan.ops[:n]), ())]
            elif _STEP_LINE.match(line):
                for n in self.lengths:
                    found += self.chains.get(tuple(lines[i : i + n]), [])
        return found

    def leaks(self, document: str) -> bool:
        return bool(self.overlaps(document))


def leakage(documents, held_out: list[Problem]) -> list[Overlap]:
    """Every place a document gives away a held-out problem's answer.

    A document is text, lines separated by newlines (a pretraining row). It
    leaks a problem when its lines contain, contiguously, the problem's forward
    chain (start to result) or its undo chain (result back to start) -- whether
    as a whole walk, inside a longer walk or as the opening of a longer worked
    example -- or when a "Start with ..." plan line opens with the problem's
    start and operations. Single steps are the world's building blocks and
    never count: every held-out problem has at least two.
    """
    guard = HeldOut(held_out)
    return [
        Overlap(index, doc_index, how)
        for doc_index, document in enumerate(documents)
        for index, how in guard.overlaps(document)
    ]
