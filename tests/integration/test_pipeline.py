"""`main` chains every stage on a preset and reuses finished runs the second time."""

from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.pipeline import run_main


def test_main_runs_the_study_then_reuses_it(micro_base, client, capsys):
    overrides = ["data.seed=7", "pretrain.steps=5", "pretrain.registered_model=reverse-align-tiny-base-pipeline", "sft.exact_match_limit=0"]
    cfg = load_config("micro", overrides)
    first = run_main(cfg)
    parent = client.get_run(first)
    assert parent.info.status == "FINISHED"
    keys = {k.removeprefix(tracking.TAG_UPSTREAM_PREFIX) for k in parent.data.tags if k.startswith(tracking.TAG_UPSTREAM_PREFIX)}
    assert keys == {"pretrain", "data", "invert", "sft.forward", "sft.reverse", "sft.mixed", "sft.mixed_half",
                    "dpo.forward", "dpo.reverse", "dpo.mixed", "dpo.direct"}
    pretrain = parent.data.tags[tracking.tag_upstream("pretrain")]
    assert client.get_run(pretrain).data.tags[tracking.TAG_STAGE] == "pretrain"
    keys.discard("pretrain")
    children = {k: parent.data.tags[tracking.tag_upstream(k)] for k in keys}
    for key, run_id in children.items():
        child = client.get_run(run_id)
        assert child.info.status == "FINISHED", key
        assert child.data.tags["mlflow.parentRunId"] == first
        # Lineage down to the weights: every run carries the tiny base model's pretrain run.
        assert child.data.tags[tracking.tag_upstream("pretrain")] == pretrain, key
    assert client.get_run(children["dpo.mixed"]).data.tags[tracking.tag_upstream("sft")] == children["sft.mixed"]
    assert tracking.tag_upstream("sft") not in client.get_run(children["dpo.direct"]).data.tags
    # The MLflow UI lists each run by what it is.
    names = {key: client.get_run(run_id).info.run_name for key, run_id in children.items()}
    assert names == {
        "data": "data-synthetic", "invert": "invert-synthetic",
        "sft.forward": "sft-forward", "sft.reverse": "sft-reverse", "sft.mixed": "sft-mixed",
        "sft.mixed_half": "sft-mixed_half", "dpo.forward": "dpo-beta0.6-on-sft-forward",
        "dpo.reverse": "dpo-beta0.6-on-sft-reverse", "dpo.mixed": "dpo-beta0.6-on-sft-mixed", "dpo.direct": "dpo-beta0.6-direct",
    }  # fmt: skip
    assert parent.info.run_name == "main-micro"

    capsys.readouterr()
    second = client.get_run(run_main(cfg))
    assert "reusing finished run" in capsys.readouterr().out
    assert {k: second.data.tags[tracking.tag_upstream(k)] for k in keys} == children

    # A changed SFT setting reruns SFT and what depends on it, never the data or the (paid) inversion.
    changed = load_config("micro", [*overrides, "sft.learning_rate=1e-4"])
    third = client.get_run(run_main(changed))
    rerun = {k: third.data.tags[tracking.tag_upstream(k)] for k in keys}
    assert {k for k in keys if rerun[k] == children[k]} == {"data", "invert", "dpo.direct"}
    assert client.get_run(rerun["sft.forward"]).data.params["sft.learning_rate"] == "0.0001"
