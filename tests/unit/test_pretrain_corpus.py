from reverse_align.config import load_config
from reverse_align.data import synthetic
from reverse_align.train.pretrain import build_tokenizer, fact_batches


def _rows(copy_fraction):
    cfg = load_config("micro", [f"pretrain.copy_fraction={copy_fraction}", "pretrain.batch_size=32"])
    tokenizer = build_tokenizer(cfg)
    input_ids, labels = next(fact_batches(cfg, tokenizer, synthetic.pretraining_facts(cfg.synthetic)))
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
