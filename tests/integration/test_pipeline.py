"""`main` chains every stage of the study on a preset and reuses finished runs the second time."""

import json

import pytest
from report_store import metric, parse, pct, table

from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.errors import UserError
from reverse_align.pipeline import log_dir, run_main

OVERRIDES = ["data.seed=7", "pretrain.steps=5", "pretrain.registered_model=reverse-align-tiny-base-pipeline",
             "sft.exact_match_limit=0", "eval.max_new_tokens=16", "probe.sft_epochs=2", "probe.dpo_epochs=1",
             "sweep.grid_step=0.35"]  # fmt: skip
TRAINED = {f"sft.{m}.seed{s}" for m in ("forward", "reverse", "mixed", "mixed_half") for s in (0, 1)} | {
    f"dpo.{on}.seed{s}" for on in ("forward", "reverse", "mixed", "direct") for s in (0, 1)
}
STUDY = {"pretrain", "data", "invert", "sweep", "eval.base", "report"} | TRAINED | {f"eval.{k}" for k in TRAINED} | {
    f"probe.{on}" for on in ("forward", "reverse", "mixed")
}


@pytest.fixture()
def study_experiment(monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "reverse-align-pipeline")


def stage_map(client, run_id: str) -> dict:
    with open(client.download_artifacts(run_id, tracking.ARTIFACT_MAIN_STAGES)) as f:
        return json.load(f)


def test_main_runs_the_whole_study_side_by_side_then_reuses_it(micro_base, client, capsys, study_experiment):
    cfg = load_config("micro", [*OVERRIDES, "main.jobs=2"])
    first = run_main(cfg, seeds="2")
    parent = client.get_run(first)
    assert parent.info.status == "FINISHED"
    record = stage_map(client, first)
    assert set(record["runs"]) == STUDY
    assert record["seeds"] == [0, 1] and not record["reused"][1:]
    # Every stage ran as a Ray task on this machine's one node, with no GPU (micro trains on CPU threads).
    placement = record["placement"]
    ran = (set(record["runs"]) | {"promote"}) - set(record["reused"])
    assert set(placement) == ran and len({p["node"] for p in placement.values()}) == 1
    assert {p["gpus"] for p in placement.values()} == {""}
    tags = {k.removeprefix(tracking.TAG_UPSTREAM_PREFIX): v for k, v in parent.data.tags.items() if k.startswith(tracking.TAG_UPSTREAM_PREFIX)}
    assert tags == record["runs"]
    pretrain = record["runs"]["pretrain"]
    assert client.get_run(pretrain).data.tags[tracking.TAG_STAGE] == "pretrain"
    children = {k: v for k, v in record["runs"].items() if k != "pretrain"}
    for key, run_id in children.items():
        child = client.get_run(run_id)
        assert child.info.status == "FINISHED", key
        assert child.data.tags["mlflow.parentRunId"] == first, key
        # Lineage down to the weights: every run carries the tiny base model's pretrain run.
        assert child.data.tags[tracking.tag_upstream("pretrain")] == pretrain, key
        assert record["seconds"][key] > 0, key
    runs = record["runs"]
    assert client.get_run(runs["dpo.mixed.seed0"]).data.tags[tracking.tag_upstream("sft")] == runs["sft.mixed.seed0"]
    assert tracking.tag_upstream("sft") not in client.get_run(runs["dpo.direct.seed0"]).data.tags
    assert client.get_run(runs["sweep"]).data.tags[tracking.tag_upstream("sft")] == runs["sft.mixed.seed0"]
    for key in TRAINED:  # each adapter run carries its evaluation, which promote ranks
        trained, evaluation = client.get_run(runs[key]), client.get_run(runs[f"eval.{key}"])
        assert trained.data.tags[tracking.TAG_EVAL_RUN] == runs[f"eval.{key}"]
        assert trained.data.metrics[tracking.METRIC_EVAL_AVERAGE] == evaluation.data.metrics[tracking.METRIC_EVAL_AVERAGE]
        assert evaluation.data.tags[tracking.tag_upstream(key.split(".")[0])] == runs[key]
    champion = record["champion"]
    assert client.get_run(runs["sft.reverse.seed1"]).data.params["sft.seed"] == "1"
    assert client.get_run(runs["dpo.mixed.seed1"]).data.params["dpo.seed"] == "1"
    assert champion["alias"] == tracking.ALIAS_CHAMPION and champion["run_id"] in {runs[k] for k in TRAINED}
    # The MLflow UI lists each run by what it is.
    names = {key: client.get_run(run_id).info.run_name for key, run_id in children.items()}
    assert {k: names[k] for k in ("data", "invert", "sft.mixed_half.seed0", "dpo.reverse.seed0", "dpo.direct.seed0",
                                  "eval.base", "eval.dpo.mixed.seed0", "probe.reverse", "sweep")} == {
        "data": "data-synthetic", "invert": "invert-synthetic", "sft.mixed_half.seed0": "sft-mixed_half",
        "dpo.reverse.seed0": "dpo-beta0.6-on-sft-reverse", "dpo.direct.seed0": "dpo-beta0.6-direct",
        "eval.base": "eval-base", "eval.dpo.mixed.seed0": "eval-dpo-beta0.6-on-sft-mixed",
        "probe.reverse": "probe-reverse", "sweep": "sweep-beta-on-sft-mixed",
    }  # fmt: skip
    assert parent.info.run_name == "main-micro"
    logs = {a.path for a in client.list_artifacts(first, tracking.ARTIFACT_MAIN_LOGS)}
    assert f"{tracking.ARTIFACT_MAIN_LOGS}/sft.forward.seed0.log" in logs
    assert not log_dir(first).exists()  # logged to the run, so not left on disk

    # The report, written by main's last stage, holds exactly the metrics of the runs it names.
    report_run = client.get_run(runs["report"])
    assert report_run.data.tags[tracking.tag_upstream("main")] == first
    with open(client.download_artifacts(runs["report"], tracking.ARTIFACT_REPORT)) as f:
        text = f.read()
    columns = ["synthetic_forward", "synthetic_reverse", "synthetic_transfer", "average"]
    accuracy = {key: client.get_run(run_id).data.metrics for key, run_id in runs.items() if key.startswith("eval.")}
    sft, dpo = table(text, "Table 1"), table(text, "Table 3")
    for column in columns:
        assert parse(sft["base (no SFT)"][column])["mean"] == f"{100 * accuracy['eval.base'][metric(column)]:.1f}"
        for mix, label in {"forward": "forward (s1k)", "reverse": "reverse (r1k)", "mixed_half": "mixed_half (0.5k)"}.items():
            got = parse(sft[label][column])
            assert (got["mean"], got["sd"]) == pct(accuracy[f"eval.sft.{mix}.seed{s}"][metric(column)] for s in (0, 1))
        got = parse(dpo["DPO on mixed (D)"][column])
        assert (got["mean"], got["sd"]) == pct(accuracy[f"eval.dpo.mixed.seed{s}"][metric(column)] for s in (0, 1))
    for key in ("sweep", "probe.mixed", "eval.sft.reverse.seed1"):
        assert runs[key] in text
    assert client.get_run(first).data.tags[tracking.TAG_NOTE].startswith("# reverse-align report: micro")

    capsys.readouterr()
    second = run_main(cfg, seeds="0,1")
    assert "reusing finished run" in capsys.readouterr().out
    again = stage_map(client, second)
    assert {k: v for k, v in again["runs"].items() if k != "report"} == {k: v for k, v in runs.items() if k != "report"}
    assert set(again["reused"]) == STUDY - {"report"}  # all but promote and report, which always run

    # A changed SFT setting reruns SFT and what depends on it, never the data or the (paid) inversion.
    changed = load_config("micro", [*OVERRIDES, "sft.learning_rate=1e-4"])
    rerun = stage_map(client, run_main(changed, seeds="2"))["runs"]
    kept = {k for k in STUDY if rerun[k] == runs[k]}
    assert kept == {"pretrain", "data", "invert", "eval.base"} | {f"{e}dpo.direct.seed{s}" for e in ("", "eval.") for s in (0, 1)}
    assert client.get_run(rerun["sft.forward.seed0"]).data.params["sft.learning_rate"] == "0.0001"


def test_a_failure_names_its_stage_and_the_rerun_continues_from_it(micro_base, client, study_experiment):
    # One stage at a time (in this process); beta_low > beta_high: the sweep refuses.
    cfg = load_config("micro", [*OVERRIDES, "main.jobs=1", "sweep.beta_low=0.9"])
    with pytest.raises(UserError, match=r"^stage sweep: sweep beta range"):
        run_main(cfg)
    failed = client.search_runs(
        [client.get_experiment_by_name("reverse-align-pipeline").experiment_id],
        f"tags.`{tracking.TAG_STAGE}` = 'main' and attributes.status = 'FAILED'",
    )[0]
    assert failed.data.tags[tracking.TAG_ERROR].startswith("UserError: stage sweep")
    done = stage_map(client, failed.info.run_id)["runs"]
    assert {"data", "invert", "sft.mixed.seed0"} <= set(done) and "sweep" not in done
    # Fixed (a two-point grid), the rerun continues from the failed stage: what was done is reused.
    fixed = load_config("micro", [*OVERRIDES, "main.jobs=1", "sweep.grid_step=0.7"])
    record = stage_map(client, run_main(fixed))
    assert {k for k in done if k != "pretrain"} <= set(record["reused"])
    assert "sweep" not in record["reused"] and set(record["runs"]) == {k for k in STUDY if not k.endswith("seed1")}

    # An evaluation decoded before eval/decoding.py (no eval.generation.* params: on the hf backend it took the
    # checkpoint's generation_config) is redone, not reused; the same run with them is reused.
    from mlflow.entities import Param

    from reverse_align.pipeline import plan

    runs = record["runs"]
    old = client.get_run(runs["eval.base"])
    stale = client.create_run(old.info.experiment_id, tags={k: v for k, v in old.data.tags.items()})
    params = [Param(k, v) for k, v in old.data.params.items() if not k.startswith(tracking.PARAM_EVAL_GENERATION)]
    assert len(params) < len(old.data.params)
    client.log_batch(stale.info.run_id, params=params)
    client.set_terminated(stale.info.run_id)
    client.delete_run(old.info.run_id)
    job = next(j for j in plan(fixed, [0], parent_id=failed.info.run_id) if j.key == "eval.base")
    assert job.find({"data": runs["data"]}) is None
    client.restore_run(old.info.run_id)
    assert job.find({"data": runs["data"]}) == old.info.run_id
