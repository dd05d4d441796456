"""`main`'s scheduler on a real local Ray cluster: dependencies, side-by-side stages, GPUs, reuse, and
failures that stop the chain."""

import pytest

from reverse_align import cluster
from reverse_align.errors import UserError
from reverse_align.scheduler import Job, Ref, StageFailed, run_graph

ECHO = "stage_doubles:echo"


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    """One local Ray cluster for the module: 4 CPUs and 8 logical GPUs (this machine has none)."""
    started = cluster.connect(num_cpus=4, num_gpus=8)
    yield
    cluster.disconnect(started)


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


def test_two_4_gpu_stages_run_at_once_on_disjoint_gpus_and_a_third_waits(tmp_path):
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    jobs = [Job(f"sft.{n}", "stage_doubles:hold_gpus", str(meeting), {"name": n}, gpus=4) for n in "abc"]
    jobs.append(Job("data", ECHO, 0.0, {"name": "data"}))  # no GPU: sees none
    outcomes = run_graph(jobs, 4, tmp_path / "logs", lambda *_: None, say=lambda _: None)
    spans = {}
    for key, outcome in outcomes.items():
        if key.startswith("sft."):
            name, devices, start, end = outcome.run_id.split("@")
            spans[name] = (set(devices.split(",")), float(start), float(end))
            assert outcome.devices == devices  # what Ray gave the task is what the stage saw
    assert outcomes["data"].devices == ""
    first, second, third = sorted(spans.values(), key=lambda span: span[1])
    assert all(len(devices) == 4 for devices, _, _ in spans.values())
    assert first[0] | second[0] == {str(i) for i in range(8)}  # disjoint halves of the 8 GPUs
    assert second[1] < first[2] and first[1] < second[2]  # they overlapped (each waited for the other)
    gone_first = min(first, second, key=lambda span: span[2])
    assert third[1] >= gone_first[2] and third[0] in (first[0], second[0])  # waited, then took freed GPUs


def test_a_stage_needing_more_gpus_than_any_node_is_refused_in_one_line(tmp_path):
    jobs = [Job("data", ECHO, 0.0, {"name": "data"}), Job("sft.a", ECHO, 0.0, {"name": "a"}, gpus=16)]
    with pytest.raises(UserError, match=r"^stage sft\.a: needs 16 GPUs and the largest node of the Ray cluster has 8$"):
        run_graph(jobs, 2, tmp_path, lambda *_: None, say=lambda _: None)


def test_ray_reruns_a_stage_whose_worker_died_but_never_one_that_raised(tmp_path):
    jobs = [Job("sft.a", "stage_doubles:die_once", str(tmp_path), {"name": "a"}),
            Job("sft.b", "stage_doubles:bad_input_counted", str(tmp_path), {"name": "b"})]  # fmt: skip
    with pytest.raises(UserError, match=r"^stage sft\.b: --beta -1: must be positive$"):
        run_graph(jobs, 2, tmp_path / "logs", lambda *_: None, say=lambda _: None)
    assert len((tmp_path / "b").read_text().split()) == 1  # bad input: once
    dead, alive = (tmp_path / "a").read_text().split()  # the lost worker, then its rerun in another process
    assert dead != alive
    outcome = run_graph(jobs[:1], 1, tmp_path / "logs", lambda *_: None, say=lambda _: None)["sft.a"]
    assert outcome.run_id == f"a@{(tmp_path / 'a').read_text().split()[-1]}"


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


def test_each_stage_asks_for_the_gpus_its_config_trains_on():
    from reverse_align.config import load_config
    from reverse_align.pipeline import plan

    def gpus(cfg) -> dict:
        return {job.key: job.gpus for job in plan(cfg, [0], "parent")}

    paper = gpus(load_config("paper-7b"))  # sft and dpo on 4 processes
    assert {k: paper[k] for k in ("sft.reverse.seed0", "dpo.direct.seed0", "probe.mixed", "eval.base", "sweep")} == {
        "sft.reverse.seed0": 4, "dpo.direct.seed0": 4, "probe.mixed": 4, "eval.base": 1, "sweep": 4,
    }  # fmt: skip
    assert all(paper[k] == 0 for k in ("data", "invert", "promote", "report"))
    assert gpus(load_config("paper-14b"))["sft.forward.seed0"] == 8
    assert gpus(load_config("paper-7b", ["sweep.workers=2"]))["sweep"] == 0  # each worker task asks for its own
    assert set(gpus(load_config("micro")).values()) == {0}  # tiny presets: CPU threads only


def test_a_ray_address_nobody_listens_on_is_bad_input_in_one_line():
    import socket

    from conftest import run_cli

    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("main", "--preset", "micro", "--ray_address", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --ray_address 127.0.0.1:{port}: no Ray cluster listens there ([Errno 111] Connection refused)"
    ]
