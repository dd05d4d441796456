"""The `probe` stage on the micro world: experiment mode (nested real sft + dpo on the probe set) and checkpoint mode."""

from __future__ import annotations

import pytest

from reverse_align import tracking
from reverse_align.config import load_config
from reverse_align.probe.stage import run_probe
from tests.conftest import run_cli

# A short schedule: SFT 2 epochs scored every epoch, DPO 2 epochs.
SCHEDULE = ["probe.sft_epochs=2", "probe.sft_eval_every=1", "probe.dpo_epochs=2", "dpo.learning_rate=5e-3"]


def load_json(run_id: str, artifact: str):
    import mlflow

    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact}")


def metric_steps(client, run_id: str, name: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, name)}


@pytest.fixture(scope="module")
def experiment_runs(micro_invert):
    cfg = load_config("micro", SCHEDULE)
    return {train_on: run_probe(cfg, data_run_id=micro_invert, train_on=train_on) for train_on in ("forward", "mixed")}


def test_experiment_trains_on_the_probe_set_in_nested_runs_and_logs_alp_per_epoch(
    client, micro_invert, experiment_runs
):
    probe_id = experiment_runs["forward"]
    run = client.get_run(probe_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_STAGE] == "probe"
    assert run.data.tags[tracking.tag_upstream("invert")] == micro_invert
    sft = client.get_run(run.data.tags[tracking.tag_upstream("sft")])
    dpo = client.get_run(run.data.tags[tracking.tag_upstream("dpo")])
    for child in (sft, dpo):
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == probe_id
    # SFT trained on D_f: the 8 forward probe items only, for probe.sft_epochs with a checkpoint each epoch.
    composition = load_json(sft.info.run_id, tracking.ARTIFACT_MIX)
    assert (composition["forward"], composition["reverse"]) == (8, 0)
    assert sft.data.params["sft.train_set"] == "probe" and sft.data.params["sft.epochs"] == "2"
    # DPO: reference = that SFT model, beta from probe.dpo_beta, forward pairs of the probe set, epoch checkpoints.
    assert dpo.data.tags[tracking.tag_upstream("sft")] == sft.info.run_id
    assert dpo.data.params["dpo.beta"] == "0.2" and dpo.data.params["dpo.direction"] == "forward"
    assert client.get_metric_history(dpo.info.run_id, tracking.METRIC_DPO_PAIRS)[0].value == 8
    # Every epoch's adapter was scored (steps 1 and 2 below), then deleted (checkpoints.keep_adapters: none).
    for child in (sft, dpo):
        top = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert tracking.ARTIFACT_ADAPTER in top and not top & {tracking.ARTIFACT_CHECKPOINTS, tracking.ARTIFACT_RESUME}
    # Every test set (in and out of distribution) at steps 0..2 of both phases, margin = pos - neg.
    for phase in tracking.ALP_PHASES:
        for test in tracking.ALP_TESTS:
            pos = metric_steps(client, probe_id, tracking.metric_alp(phase, "pos", test))
            neg = metric_steps(client, probe_id, tracking.metric_alp(phase, "neg", test))
            margin = metric_steps(client, probe_id, tracking.metric_alp(phase, "margin", test))
            assert sorted(pos) == [0, 1, 2]
            assert all(margin[s] == pytest.approx(pos[s] - neg[s]) for s in pos)
    # SFT on forward data raises ALP(y+) of forward questions; DPO starts where SFT ended.
    sft_pos = metric_steps(client, probe_id, tracking.metric_alp("sft", "pos", "forward"))
    dpo_pos = metric_steps(client, probe_id, tracking.metric_alp("dpo", "pos", "forward"))
    assert sft_pos[2] > sft_pos[0]
    assert dpo_pos[0] == pytest.approx(sft_pos[2], abs=1e-6)


def test_experiment_logs_the_item_table_and_five_curve_figures(client, experiment_runs):
    mixed_id = experiment_runs["mixed"]
    artifacts = {a.path for a in client.list_artifacts(mixed_id, "figures")}
    assert artifacts == set(tracking.ALP_FIGURES.values())
    table = load_json(mixed_id, tracking.ARTIFACT_ALP_ITEMS)
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    # 16 items (8 T_f + 8 T_r) x 3 checkpoints x 2 phases.
    assert len(rows) == 16 * 3 * 2
    pos = metric_steps(client, mixed_id, tracking.metric_alp("dpo", "pos", "mixed"))
    last = [r["pos"] for r in rows if r["phase"] == "dpo" and r["step"] == 2]
    assert sum(last) / len(last) == pytest.approx(pos[2])
    # The mixed run's DPO trained on both directions.
    dpo = client.get_run(client.get_run(mixed_id).data.tags[tracking.tag_upstream("dpo")])
    assert client.get_metric_history(dpo.info.run_id, tracking.METRIC_DPO_PAIRS)[0].value == 16


def test_figure_curves_are_read_from_the_logged_metrics(client, experiment_runs):
    from reverse_align.probe import figures

    curves = figures.figure2_curves(experiment_runs)
    # Forward and mixed runs exist: (D_f,T_f), (D_m,T_m), (D_f,T_r).
    assert [c.label for c in curves] == ["(D_f, T_f)", "(D_m, T_m)", "(D_f, T_r)"]
    fig = figures.draw(client, curves, "margin")
    sft_axis = fig.axes[0]
    line = sft_axis.get_lines()[0]
    logged = metric_steps(client, experiment_runs["forward"], tracking.metric_alp("sft", "margin", "forward"))
    assert list(line.get_xdata()) == sorted(logged)
    assert list(line.get_ydata()) == [logged[s] for s in sorted(logged)]


def test_checkpoint_mode_scores_every_checkpoint_of_an_sft_run(client, micro_sft, micro_invert):
    from reverse_align.errors import UserError
    from reverse_align.train.sft import run_sft

    # A run trained with the defaults keeps no checkpoints once finished: refused in one line naming the setting.
    with pytest.raises(UserError, match=r"has no checkpoints/<name>/ artifacts to score; .*checkpoints.keep_adapters=all"):
        run_probe(load_config("micro"), run_id=micro_sft)
    kept = run_sft(load_config("micro", ["sft.epochs=2", "checkpoints.keep_adapters=all"]), micro_invert, "forward")
    probe_id = run_probe(load_config("micro"), run_id=kept)
    run = client.get_run(probe_id)
    assert run.data.tags[tracking.tag_upstream("sft")] == kept
    assert run.data.tags[tracking.tag_upstream("invert")] == micro_invert
    checkpoints = [a.path.split("/")[-1] for a in client.list_artifacts(kept, tracking.ARTIFACT_CHECKPOINTS)]
    epochs = sorted(int(name.split("-")[1]) for name in checkpoints)
    assert epochs == [1, 2]
    pos = metric_steps(client, probe_id, tracking.metric_alp("sft", "pos", "forward"))
    assert sorted(pos) == [0, *epochs]
    assert {a.path for a in client.list_artifacts(probe_id, "figures")} == set(tracking.ALP_FIGURES.values())


def test_bad_input_exits_2_with_one_line(micro_invert, micro_data):
    result = run_cli("probe", "--preset", "micro", "--data_run_id", micro_invert, "--train_on", "sideways")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --train_on 'sideways': expected one of forward, reverse, mixed"
    ]
    result = run_cli("probe", "--preset", "micro", "--run_id", micro_data)
    assert result.returncode == 2 and "is a data run, expected sft or dpo" in result.stderr
