import pytest

from reverse_align.config import CONFIG_DIR, load_config
from reverse_align.errors import UserError

PRESETS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def test_every_preset_file_loads():
    assert {"tiny", "micro", "paper-3b", "paper-7b", "paper-14b"} <= set(PRESETS)
    for name in PRESETS:
        cfg = load_config(name)
        assert cfg.preset == name
        assert cfg.model.name


def test_misspelled_key_names_the_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: tiny\nsft:\n  learnig_rate: 1.0e-3\n")
    with pytest.raises(UserError) as err:
        load_config(str(bad))
    message = str(err.value)
    assert "sft.learnig_rate" in message
    assert "learning_rate" in message and "epochs" in message and "warmup_ratio" in message


def test_unknown_section_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  epochs: 3\n")
    with pytest.raises(UserError, match="valid sections: extends, model, data"):
        load_config(str(bad))


def test_overrides_are_typed_and_strict():
    cfg = load_config("tiny", ["sft.learning_rate=1e-4", "sft.epochs=2", "lora.target_modules=q_proj,v_proj", "sft.bf16=true"])
    assert cfg.sft.learning_rate == pytest.approx(1e-4)
    assert cfg.sft.epochs == 2
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.sft.bf16 is True
    with pytest.raises(UserError, match="valid keys of sft"):
        load_config("tiny", ["sft.lr=1e-4"])
    with pytest.raises(UserError, match="expected an integer"):
        load_config("tiny", ["sft.per_device_batch_size=two"])
    with pytest.raises(UserError, match="section.key=value"):
        load_config("tiny", ["epochs=3"])


def test_unknown_preset_lists_presets():
    with pytest.raises(UserError, match="valid presets: .*paper-7b.*tiny"):
        load_config("paper-70b")


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads 3e-4 as a string; the config must still see a number.
    f = tmp_path / "p.yaml"
    f.write_text("extends: tiny\nsft:\n  learning_rate: 3e-4\n")
    assert load_config(str(f)).sft.learning_rate == pytest.approx(3e-4)


def test_flat_params_cover_every_field():
    flat = load_config("tiny").flat()
    assert flat["sft.learning_rate"] == pytest.approx(2e-3)
    assert flat["model.name"] == "tiny-base"
    assert "dpo.beta" in flat and "synthetic.max_value" in flat


def test_stage_config_hash_follows_what_the_stage_depends_on():
    from reverse_align.tracking import config_hash

    base = load_config("tiny")
    assert config_hash(base, "sft") == config_hash(load_config("tiny"), "sft")
    lr = load_config("tiny", ["sft.learning_rate=1e-4"])
    assert config_hash(lr, "sft") != config_hash(base, "sft")
    assert config_hash(lr, "invert") == config_hash(base, "invert") and config_hash(lr, "data") == config_hash(base, "data")
    # Operational teacher settings never rerun a paid inversion; what the teacher is asked does.
    assert config_hash(load_config("tiny", ["invert.concurrency=2"]), "invert") == config_hash(base, "invert")
    assert config_hash(load_config("tiny", ["invert.temperature=0.1"]), "invert") != config_hash(base, "invert")
    assert config_hash(load_config("tiny", ["pretrain.steps=10"]), "data") != config_hash(base, "data")


def test_seed_flag_of_training_stages_seeds_training_only(monkeypatch):
    """`sft --seed 1` sets sft.seed (not data.seed, which names the world and the tiny base model)."""
    import reverse_align.train.dpo as dpo
    import reverse_align.train.sft as sft
    from reverse_align import cli

    seen = {}
    monkeypatch.setattr(sft, "run_sft", lambda cfg, **kw: seen.update(sft=cfg))
    monkeypatch.setattr(dpo, "run_dpo", lambda cfg, **kw: seen.update(dpo=cfg))
    assert cli.main(["sft", "--preset", "tiny", "--seed", "1", "--data_run_id", "x"]) == 0
    assert cli.main(["dpo", "--preset", "tiny", "--seed", "3", "--data_run_id", "x"]) == 0
    assert (seen["sft"].sft.seed, seen["sft"].data.seed) == (1, 0)
    assert (seen["dpo"].dpo.seed, seen["dpo"].data.seed) == (3, 0)
    assert sft.sft_args(seen["sft"], "/tmp/unused").seed == 1
