import hashlib
import random
import re

import pytest

from reverse_align.config import load_config
from reverse_align.data import synthetic
from reverse_align.train.pretrain import build_tokenizer, fact_batches, pretraining_documents


def _rows(copy_fraction, narrated_fraction=0.0, batch_size=32, chat_fraction=0.0):
    cfg = load_config(
        "micro",
        [
            f"pretrain.copy_fraction={copy_fraction}",
            f"pretrain.narrated_fraction={narrated_fraction}",
            f"pretrain.chat_fraction={chat_fraction}",
            f"pretrain.batch_size={batch_size}",
        ],
    )
    tokenizer = build_tokenizer(cfg)
    input_ids, labels = next(fact_batches(cfg, tokenizer))
    texts = [tokenizer.decode([t for t, lab in zip(row, labs) if lab != -100]) for row, labs in zip(input_ids.tolist(), labels.tolist())]
    return cfg, texts


def test_copy_fraction_repeats_walks():
    cfg, texts = _rows(1.0)
    for text in texts:
        lines = text.strip("\n").split("\n")
        half = len(lines) // 2
        assert len(lines) == 2 * (cfg.pretrain.facts_per_sequence // 2)
        assert lines[:half] == lines[half:]


def test_no_copies_without_copy_fraction():
    _, texts = _rows(0.0)
    repeated = 0
    for text in texts:
        lines = text.strip("\n").split("\n")
        repeated += lines[: len(lines) // 2] == lines[len(lines) // 2 :]
    assert repeated == 0


def test_worked_examples_are_forward_plans_outside_the_world():
    cfg, texts = _rows(0.0, narrated_fraction=1.0, batch_size=64)
    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    world_problems = set(world.train) | set(world.test) | {t.problem for t in world.transfer}
    plans = 0
    for text in texts:
        lines = text.strip("\n").split("\n")
        assert lines[0].startswith("Start with ")
        for line in lines:
            if not line.startswith("Start with "):
                assert " = " in line  # a step, never a question, chat marker or answer sentence
                continue
            plans += 1
            direction, problem = synthetic.parse_question(line + " What is the final number?")
            assert direction == "forward" and problem not in world_problems
            steps = lines[lines.index(line) + 1 : lines.index(line) + 1 + len(problem.ops)]
            assert steps == synthetic.forward_steps(problem)
        assert "?" not in text and "boxed" not in text and "<|im_start|>" not in text
    assert plans == 64 * (cfg.pretrain.facts_per_sequence // 4)


def test_narrated_fraction_mixes_worked_examples_with_walks():
    _, texts = _rows(0.0, narrated_fraction=0.5, batch_size=200)
    narrated = sum(text.startswith("Start with ") for text in texts)
    assert 70 <= narrated <= 130


def test_chat_exchanges_are_single_steps_in_the_chat_template():
    cfg, texts = _rows(0.0, chat_fraction=1.0, batch_size=64)
    tokenizer = build_tokenizer(cfg)
    exchange = re.compile(
        r"<\|im_start\|>user\n(\d+) ([-+*/]) (\d+)<\|im_end\|>\n<\|im_start\|>assistant\n(\d+) ([-+*/]) (\d+) = (\d+)<\|im_end\|>\n"
    )
    for text in texts:
        turns = exchange.findall(text)
        assert len(turns) == cfg.pretrain.facts_per_sequence // 2 and "".join(exchange.split(text)[::8]) == ""
        for a, op, b, a2, op2, b2, result in turns:
            assert (a, op, b) == (a2, op2, b2)  # the assistant copies the user's operands
            assert synthetic.apply(int(a), op, int(b)) == int(result)
            assert 0 <= int(result) <= cfg.synthetic.max_value
    # The chat markers are the tokenizer's special tokens, as in SFT's template, not their characters.
    ids = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert "?" not in "".join(texts) and "Start with" not in "".join(texts)


def test_chat_fraction_zero_keeps_the_old_stream():
    """With chat_fraction 0 the stream is the one the earlier tiny bases were pretrained on (hash of its first
    20 steps at commit e435d66, tiny recipe with narrated_fraction 0.3): the new knob draws nothing then."""
    cfg = load_config("tiny", ["pretrain.chat_fraction=0.0", "pretrain.narrated_fraction=0.3"])
    documents = "".join(pretraining_documents(cfg, 20))
    assert hashlib.sha256(documents.encode()).hexdigest()[:16] == "f080782bdd66c81b"


@pytest.mark.parametrize("preset", ["micro", "tiny"])
def test_pretraining_stream_gives_no_held_out_answer_away(preset):
    """Replays the whole pretraining stream of the preset (every row of every step)."""
    cfg = load_config(preset)
    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    documents = list(pretraining_documents(cfg))
    assert len(documents) == cfg.pretrain.steps * cfg.pretrain.batch_size
    assert synthetic.leakage(documents, world.held_out()) == []
    # Without the reservation the same world's walks do give them away (the old tiny stream
    # leaked 146 of its 200 test problems), so the replay above can fail.
    rng = random.Random(0)
    walks = ["\n".join(synthetic.random_walk(rng, cfg.synthetic, 8)) for _ in range(len(documents) // 2)]
    assert len({o.problem for o in synthetic.leakage(walks, world.held_out())}) >= len(world.test) // 4
