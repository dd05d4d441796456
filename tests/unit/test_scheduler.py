"""`main`'s scheduler: dependencies, side-by-side stages, reuse, and failures that stop the chain."""

import pytest

from reverse_align.errors import UserError
from reverse_align.scheduler import Job, Ref, StageFailed, run_graph

ECHO = "stage_doubles:echo"


def graph(wait: float = 0.0, failing: str | None = None, target: str = "stage_doubles:bad_input") -> list[Job]:
    return [
        Job("data", ECHO, wait, {"name": "data"}),
        Job("sft.a", ECHO, wait, {"name": "sft.a", "data": Ref("data")}),
        Job("sft.b", target if failing == "sft.b" else ECHO, wait, {"name": "sft.b", "data": Ref("data")}),
        Job("dpo.b", ECHO, wait, {"name": "dpo.b", "sft": Ref("sft.b"), "where": Ref("data", "id={}")}),
        Job("report", ECHO, 0.0, {"name": "report"}, after=("sft.a", "dpo.b")),
    ]


@pytest.mark.parametrize("parallel", [1, 2])
def test_every_stage_gets_the_run_ids_of_its_inputs(parallel, tmp_path):
    seen = []
    outcomes = run_graph(graph(), parallel, tmp_path, lambda key, outcome: seen.append(key), say=lambda _: None)
    names = {key: o.run_id.split("@")[0] for key, o in outcomes.items()}
    assert names == {
        "data": "data()", "sft.a": "sft.a(data=data())", "sft.b": "sft.b(data=data())",
        "dpo.b": "dpo.b(sft=sft.b(data=data()),where=id=data())", "report": "report()",
    }  # fmt: skip
    assert seen.index("data") < seen.index("sft.b") < seen.index("dpo.b") < seen.index("report")
    assert seen[-1] == "report" and not any(o.reused for o in outcomes.values())


def test_two_jobs_run_side_by_side_in_two_worker_processes(tmp_path):
    meeting = str(tmp_path)
    jobs = [Job("sft.a", "stage_doubles:meet", meeting, {"name": "a", "others": "b"}),
            Job("sft.b", "stage_doubles:meet", meeting, {"name": "b", "others": "a"})]  # fmt: skip
    outcomes = run_graph(jobs, 2, tmp_path / "logs", lambda *_: None, say=lambda _: None)
    pids = {outcome.run_id.split("@")[1] for outcome in outcomes.values()}
    assert len(pids) == 2  # each waited for the other: they ran at once, in two processes
    assert (tmp_path / "logs" / "sft.a.log").is_file()
    with pytest.raises(StageFailed, match="TimeoutError: a waited alone"):  # one at a time, they cannot meet
        run_graph([Job("sft.a", "stage_doubles:meet", meeting, {"name": "a", "others": "c", "patience": "1"})], 2, tmp_path / "logs",
                  lambda *_: None, say=lambda _: None)  # fmt: skip


def test_a_finished_run_is_reused_and_unlocks_what_needs_it(tmp_path):
    jobs = graph()
    jobs[0].find = lambda done: "data-run-7"
    jobs[2].find = lambda done: f"sft-on-{done['data']}"
    outcomes = run_graph(jobs, 1, tmp_path, lambda *_: None, say=lambda _: None)
    assert outcomes["data"].reused and outcomes["sft.b"].reused and not outcomes["sft.a"].reused
    assert outcomes["sft.b"].run_id == "sft-on-data-run-7"
    assert outcomes["dpo.b"].run_id.startswith("dpo.b(sft=sft-on-data-run-7,where=id=data-run-7)")
    forced = run_graph(jobs, 1, tmp_path, lambda *_: None, rerun=True, say=lambda _: None)
    assert not any(o.reused for o in forced.values())


@pytest.mark.parametrize("parallel", [1, 2])
def test_bad_input_stops_the_chain_naming_the_stage(parallel, tmp_path):
    finished = []
    with pytest.raises(UserError, match=r"^stage sft\.b: --beta -1: must be positive$"):
        run_graph(graph(failing="sft.b"), parallel, tmp_path, lambda key, _: finished.append(key), say=lambda _: None)
    assert "dpo.b" not in finished and "report" not in finished
    assert "data" in finished


def test_a_crash_names_the_stage_and_its_log(tmp_path):
    with pytest.raises(StageFailed, match=r"stage sft\.b: RuntimeError: out of memory \(log: .*sft\.b\.log\)"):
        run_graph(graph(failing="sft.b", target="stage_doubles:crash"), 2, tmp_path, lambda *_: None, say=lambda _: None)
    assert "Traceback" in (tmp_path / "sft.b.log").read_text()


def test_seeds_are_a_count_or_a_list_and_make_one_grid_each():
    from reverse_align.config import load_config
    from reverse_align.pipeline import parse_seeds, plan

    cfg = load_config("tiny", ["sft.seed=4"])
    assert parse_seeds("", cfg) == [4] and parse_seeds("3", cfg) == [4, 5, 6] and parse_seeds("0,7", cfg) == [0, 7]
    for bad in ("two", "1,1", "-1,2", "0"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad, cfg)
    jobs = {job.key: job for job in plan(cfg, [0, 7], "parent")}
    assert jobs["sft.reverse.seed7"].cfg.sft.seed == 7 and jobs["dpo.direct.seed7"].cfg.dpo.seed == 7
    assert jobs["sft.reverse.seed7"].cfg.data == cfg.data and cfg.sft.seed == 4  # the preset itself untouched
    assert jobs["eval.dpo.mixed.seed7"].args["run_id"].key == "dpo.mixed.seed7"
    assert jobs["sweep"].args["sft_run_id"].key == "sft.mixed.seed0"  # one sweep and probe set per study
    assert sum(k.startswith("probe.") for k in jobs) == 3 and set(jobs["promote"].after) == {k for k in jobs if k.startswith("eval.")}


def test_a_study_over_several_bases_names_each_base_and_builds_it_first():
    from reverse_align.config import load_config
    from reverse_align.pipeline import parse_bases, plan

    cfg = load_config("micro")
    assert parse_bases("3", cfg) == [0, 1, 2] and parse_bases("4,7", cfg) == [4, 7] and parse_bases("", cfg) == [0]
    jobs = {job.key: job for job in plan(cfg, [0], "parent", bases=[0, 1])}
    assert {"pretrain.base0", "pretrain.base1", "eval.base.base0", "eval.base.base1"} <= set(jobs)
    assert "sft.forward.seed0" not in jobs
    for base in (0, 1):
        for key in (f"sft.forward.base{base}.seed0", f"dpo.direct.base{base}.seed0", f"eval.base.base{base}"):
            assert jobs[key].cfg.pretrain.seed == base, key
            assert f"pretrain.base{base}" in jobs[key].needs, key
        assert jobs[f"eval.dpo.reverse.base{base}.seed0"].args["run_id"].key == f"dpo.reverse.base{base}.seed0"
    # Shared: one world, one teacher; probe and sweep on the first base.
    assert jobs["sweep"].args["sft_run_id"].key == "sft.mixed.base0.seed0"
    assert jobs["probe.mixed"].cfg.pretrain.seed == 0 and jobs["data"].cfg.pretrain.seed == 0
    # One base: the keys a study always had.
    single = {job.key for job in plan(cfg, [0, 1], "parent")}
    assert {"pretrain", "eval.base", "sft.forward.seed1", "eval.dpo.direct.seed0"} <= single


@pytest.mark.parametrize("text", ["0", "1,1", "-1,2", "two"])
def test_bad_bases_are_refused_in_one_line(text):
    from reverse_align.config import load_config
    from reverse_align.errors import UserError
    from reverse_align.pipeline import parse_bases

    with pytest.raises(UserError, match=r"^--bases"):
        parse_bases(text, load_config("micro"))


def test_paper_presets_have_one_base():
    from reverse_align.config import load_config
    from reverse_align.errors import UserError
    from reverse_align.pipeline import parse_bases

    assert parse_bases("", load_config("paper-7b")) == [0]
    with pytest.raises(UserError, match="only tiny presets pretrain"):
        parse_bases("2", load_config("paper-7b"))
