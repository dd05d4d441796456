"""The probe's training schedule and the train_set hook of sft/dpo (no model needed)."""

import pytest

from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.errors import UserError
from reverse_align.probe import figures
from reverse_align.probe.stage import training_config
from reverse_align.train.mixes import train_set_artifacts


def test_train_set_artifacts():
    assert train_set_artifacts("all") == (tracking.ARTIFACT_FORWARD, tracking.ARTIFACT_REVERSE)
    assert train_set_artifacts("probe") == (tracking.ARTIFACT_PROBE, tracking.ARTIFACT_PROBE)
    with pytest.raises(UserError, match="expected one of all, probe"):
        train_set_artifacts("everything")


def test_training_config_follows_the_probe_schedule_on_the_probe_set():
    cfg = load_config("paper-7b")
    out = training_config(cfg, n_pairs=50)
    assert (out.sft.epochs, out.sft.save_every_epochs, out.sft.train_set) == (12, 2, "probe")
    assert (out.dpo.beta, out.dpo.save_every_epochs, out.dpo.train_set) == (0.2, 1, "probe")
    # 50 pairs over 4 processes x batch 1 = 13 batches each, accumulation 4 -> 4 optimizer steps an epoch, 7 epochs.
    assert out.dpo.max_steps == 7 * 4
    # The probe scores every checkpoint of its runs: they keep them (a preset's default keeps the newest).
    assert (cfg.checkpoints.keep_adapters, out.checkpoints.keep_adapters) == ("last", "all")
    # The caller's config is untouched and the training runs hash differently from Table 1's.
    assert cfg.sft.train_set == "all" and cfg.dpo.beta == 0.6
    assert tracking.config_hash(out, "sft") != tracking.config_hash(cfg, "sft")


def test_tiny_dpo_epochs_in_steps():
    out = training_config(load_config("tiny"), n_pairs=100)
    assert out.dpo.max_steps == 7 * 13  # batch 8: 13 batches an epoch


def test_bad_schedule_is_a_user_error():
    with pytest.raises(UserError, match="probe.sft_eval_every"):
        training_config(load_config("tiny", ["probe.sft_eval_every=0"]), n_pairs=10)


def test_figure2_has_the_papers_five_curves():
    curves = figures.figure2_curves({"forward": "F", "reverse": "R", "mixed": "M"})
    assert [(c.label, c.run_id, c.test, c.in_distribution) for c in curves] == [
        ("(D_f, T_f)", "F", "forward", True),
        ("(D_r, T_r)", "R", "reverse", True),
        ("(D_m, T_m)", "M", "mixed", True),
        ("(D_f, T_r)", "F", "reverse", False),
        ("(D_r, T_f)", "R", "forward", False),
    ]
