"""The tiny world is learnable: the issue's check, minutes long (run with -m slow)."""

import pytest

from reverse_align.config import load_config
from reverse_align.data import synthetic
from reverse_align.data.schema import FORWARD
from reverse_align.eval.generation import greedy_accuracy
from reverse_align.models import load_model, load_tokenizer
from reverse_align.train.pretrain import run_pretrain
from reverse_align.train.quick_finetune import finetune


@pytest.mark.slow
def test_tiny_base_learns_forward_problems_within_two_minutes():
    cfg = load_config("tiny")
    run_pretrain(cfg)
    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    test = world.records("test", FORWARD)
    model, tokenizer = load_model(cfg), load_tokenizer(cfg)
    assert greedy_accuracy(model, tokenizer, test) <= 0.02
    finetune(model, tokenizer, world.records("train", FORWARD), seconds=120)
    assert greedy_accuracy(model, tokenizer, test) >= 0.40
