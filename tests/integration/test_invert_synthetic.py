import json

import mlflow

from reverse_align import tracking
from reverse_align.data import synthetic


def _records(run_id, path):
    return [json.loads(line) for line in mlflow.artifacts.load_text(f"runs:/{run_id}/{path}").splitlines()]


def test_synthetic_inversion_is_exact_and_tagged(micro_invert, micro_data, client):
    run = client.get_run(micro_invert)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_STAGE] == "invert"
    assert run.data.tags[tracking.tag_upstream("data")] == micro_data
    forward = _records(micro_invert, tracking.ARTIFACT_FORWARD)
    reverse = _records(micro_invert, tracking.ARTIFACT_REVERSE)
    assert len(forward) == len(reverse) == 64
    assert run.data.metrics[tracking.METRIC_INVERT_ACCEPTED] == 64
    assert run.data.metrics[tracking.METRIC_INVERT_REJECTED] == 0
    for f, r in zip(forward, reverse):
        assert r["pair_id"] == f["pair_id"] and r["direction"] == "reverse"
        # Recompute: the reverse's answer is the forward's start, and solving it from its text agrees.
        assert synthetic.solve(r["question"]) == int(r["gold"]) == synthetic.parse_question(f["question"])[1].start
    probe = _records(micro_invert, tracking.ARTIFACT_PROBE)
    assert sum(p["direction"] == "forward" for p in probe) == sum(p["direction"] == "reverse" for p in probe) == 8
    names = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert {"forward", "reverse", "probe", "test_forward", "test_reverse", "test_transfer"} <= names


def test_synthetic_inversion_of_the_whole_tiny_world_recomputes():
    """The tiny preset's 1,000 forward items: every reverse checked by solving it from its text alone."""
    from reverse_align.config import load_config
    from reverse_align.data.invert import invert_synthetic
    from reverse_align.data.schema import FORWARD

    cfg = load_config("tiny")
    forward = synthetic.make_world(cfg.synthetic, cfg.data.seed).records("train", FORWARD)
    reverses, rejected = invert_synthetic(forward)
    assert len(forward) == len(reverses) == 1000 and rejected == []
    for f, r in zip(forward, reverses):
        start = synthetic.parse_question(f.question)[1].start
        assert r.pair_id == f.pair_id and synthetic.solve(r.question) == int(r.gold) == start


def test_a_stage_takes_its_upstream_runs_preset_and_refuses_another(micro_data, client, capsys):
    from reverse_align import cli

    # No --preset: the micro data run's preset (the tiny default would find no micro-sized base).
    assert cli.main(["invert", "--data_run_id", micro_data]) == 0
    runs = client.search_runs(
        [client.get_run(micro_data).info.experiment_id],
        f"tags.`{tracking.tag_upstream('data')}` = '{micro_data}' and tags.`{tracking.TAG_STAGE}` = 'invert'",
        order_by=["attributes.start_time DESC"],
    )
    assert runs[0].data.tags[tracking.TAG_PRESET] == "micro"
    capsys.readouterr()
    assert cli.main(["invert", "--data_run_id", micro_data, "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --preset tiny: --data_run_id {micro_data} ran with preset micro; drop --preset or pass --preset micro"
    assert cli.main(["invert", "--data_run_id", micro_data, "--preset", "micro"]) == 0
