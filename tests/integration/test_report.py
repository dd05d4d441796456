"""The `report` stage against studies logged straight into a real sqlite MLflow store (tests/report_store.py).

Every number of Table 1, the DPO table and the direct-DPO table is parsed back out of report.md and
compared with the metric the study's runs logged; missing runs render as `missing`; bad input exits 2.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import statistics
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from conftest import ROOT, run_cli
from report_store import PAPER, make_study, metric, parse, pct, png_bytes, section, table

from reverse_align import cli, environment, tracking
from reverse_align.config import load_config
from reverse_align.errors import UserError
from reverse_align.report import assets
from reverse_align.report.stage import note, run_report, study_preset


def cfg(preset: str = "tiny", *overrides: str):
    return load_config(preset, ["report.bootstrap_resamples=200", "report.screenshots=false", *overrides])


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """A whole 2-seed study reported through the command line: (logged study, report.md text, result)."""
    logged = make_study("report-whole")
    out = tmp_path_factory.mktemp("reports")
    result = run_cli(
        "report", "--experiment", "report-whole", "--output", str(out), "--set", "report.bootstrap_resamples=300 report.screenshots=false"
    )
    text_path = out / "report-whole" / "report.md"
    return logged, text_path.read_text() if text_path.exists() else "", result, out / "report-whole"


def test_cli_report_writes_and_logs(whole, client):
    logged, text, result, out_dir = whole
    assert result.returncode == 0, result.stderr
    assert f"Main run `{logged.main_run_id}`" in text
    for name in tracking.REPORT_FIGURES.values():
        assert f"]({name})" in text and (out_dir / name).stat().st_size > 1000  # real matplotlib PNGs
    assert (out_dir / "sweep_objective_vs_beta.png").read_bytes() == png_bytes()
    sweep = section(text, "DPO beta sweep")
    assert "best beta 0.6 (exact_match 0.4375 [0.323, 0.559], n 64); not separated from betas 0.5, 0.7 at p<0.05" in sweep
    runs = client.search_runs(
        [client.get_experiment_by_name("report-whole").experiment_id], f"tags.`{tracking.TAG_STAGE}` = 'report'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    report_run = runs[0]
    assert report_run.data.tags[tracking.tag_upstream("main")] == logged.main_run_id
    assert report_run.data.tags[tracking.TAG_PRESET] == "tiny"  # the study's preset
    # The environment: the report run is tagged with the lock's sha256, and the report lists the versions.
    lock = hashlib.sha256((ROOT / environment.LOCK_FILE).read_bytes()).hexdigest()
    assert report_run.data.tags[tracking.TAG_ENV_LOCK_SHA] == lock
    env = section(text, "Environment")
    for name in ("python", "torch", "transformers", "trl", "peft", "mlflow", "lm-eval", "optuna", "ray"):
        version = platform.python_version() if name == "python" else importlib.metadata.version(name)
        assert f"| {name} | {version} |" in env
    capability = torch.backends.cpu.get_cpu_capability()
    assert f"| torch CPU kernels (`torch.backends.cpu.get_cpu_capability()`) | {capability} |" in env
    assert f"| `requirements-lock.txt` sha256 | `{lock}` |" in env
    # The store's runs were logged without the tag (tests/report_store.py): the report says they do not match.
    assert f"`untagged` ({len(logged.stages['runs'])})" in env and "not all match this lock" in env
    logged_files = {a.path for a in client.list_artifacts(report_run.info.run_id)}
    assert {
        "report.md",
        "figure2_pos.png",
        "figure2_neg.png",
        "figure2_margin.png",
        "sweep_objective_vs_beta.png",
    } <= logged_files
    note = client.get_run(logged.main_run_id).data.tags[tracking.TAG_NOTE]
    assert "## Table 1: SFT by data mix" in note and "## Table 3" in note and "![" not in note
    assert "## Runs used" not in note and note.endswith(f"report run `{report_run.info.run_id}`.\n")
    assert len(note) <= tracking.NOTE_MAX_CHARS
    # The paired difference is logged as metrics too.
    assert tracking.metric_report_paired("synthetic_forward", "diff") in report_run.data.metrics
    # The paper's numbering: the DPO table is its Table 3; Table 2 (teachers) is not run, and says so.
    assert "## Table 3: DPO on the SFT models" in text and "## Table 2" not in text
    missing = section(text, "Missing")
    assert "No run of this study is missing." in missing and "Not run by this study: Table 2 (SFT on D_s1k with Gemini" in missing


def test_every_table_number_is_the_logged_metric(whole):
    logged, text, _, _ = whole
    seeds = logged.stages["seeds"]
    columns = ["synthetic_forward", "synthetic_reverse", "synthetic_transfer", "average"]
    sft = table(text, "Table 1")
    assert list(next(iter(sft.values())))[:4] == columns
    base = parse(sft["base (no SFT)"]["average"])
    assert base["mean"] == f"{100 * logged.metrics['eval.base'][metric('average')]:.1f}" and base["sd"] is None
    labels = {
        "forward": "forward (s1k)",
        "reverse": "reverse (r1k)",
        "mixed": "mixed (D)",
        "mixed_half": "mixed_half (0.5k)",
    }
    checked = 0
    for mix, label in labels.items():
        for column in columns:
            got = parse(sft[label][column])
            mean, sd = pct(logged.metrics[f"eval.sft.{mix}.seed{s}"][metric(column)] for s in seeds)
            assert (got["mean"], got["sd"], got["paper"]) == (mean, sd, None), (mix, column)
            checked += 1
    dpo = table(text, "Table 3")
    for on in ("forward", "reverse", "mixed"):
        for column in columns:
            got = parse(dpo[f"DPO on {on} ({ {'forward': 's1k', 'reverse': 'r1k', 'mixed': 'D'}[on] })"][column])
            after = [logged.metrics[f"eval.dpo.{on}.seed{s}"][metric(column)] for s in seeds]
            before = [logged.metrics[f"eval.sft.{on}.seed{s}"][metric(column)] for s in seeds]
            change = f"{100 * statistics.fmean(a - b for a, b in zip(after, before)):+.1f}"
            assert (got["mean"], got["sd"], got["change"]) == (*pct(after), change), (on, column)
            checked += 1
    direct = table(text, "Table 4")["direct DPO (no SFT)"]
    for column in columns:
        got = parse(direct[column])
        values = [logged.metrics[f"eval.dpo.direct.seed{s}"][metric(column)] for s in seeds]
        change = f"{100 * (statistics.fmean(values) - logged.metrics['eval.base'][metric(column)]):+.1f}"
        assert (got["mean"], got["sd"], got["change"]) == (*pct(values), change), column
        checked += 1
    assert checked == 4 * 4 + 3 * 4 + 4


def test_paired_difference_and_opening(whole):
    logged, text, _, _ = whole
    paired = table(text, "Reverse minus forward SFT")
    for benchmark in ("synthetic_forward", "synthetic_reverse", "synthetic_transfer"):
        # One sample per question, the same questions: the point estimate is the difference of accuracies.
        diffs = [
            logged.metrics[f"eval.sft.reverse.seed{s}"][metric(benchmark)]
            - logged.metrics[f"eval.sft.forward.seed{s}"][metric(benchmark)]
            for s in logged.stages["seeds"]
        ]
        row = paired[benchmark]
        assert row["reverse − forward (points)"] == f"{100 * statistics.fmean(diffs):+.1f}"
        low, high = (float(x) for x in row["95% interval"].strip("[]").split(","))
        assert low <= 100 * statistics.fmean(diffs) <= high
        assert (row["bases"], row["seeds per base"], row["questions"]) == ("1", "2", "12")
    opening = text.split("\n\n")[2]
    assert opening.startswith("Reverse SFT (r1k) averages") and opening.count(". ") >= 2
    assert "paired difference of" in opening and "DPO changed the SFT average" in opening
    means = {mix: statistics.fmean(logged.metrics[f"eval.sft.{mix}.seed{s}"][metric("average")] for s in (0, 1))
             for mix in ("forward", "reverse", "mixed", "mixed_half")}  # fmt: skip
    best = max(("forward", "reverse"), key=means.get)
    assert (f"against the better single direction ({best}: {100 * means[best]:.1f}%), and "
            f"{100 * means['mixed_half']:.1f}% at one direction's budget (0.5k)") in opening  # fmt: skip
    # Figure 2's margin line: the mixed margin (0.08) is smaller than forward's and reverse's (0.4).
    assert "mixed margin (D_m,T_m) ends at 0.080, smaller than 0.400 (D_f,T_f), 0.400 (D_r,T_r)" in text
    wall = table(text, "Stage wall times")
    assert wall["invert"] == {"wall seconds": "2.2", "reused": "no"} or wall["invert"]["wall seconds"] == "2.2"
    assert (
        wall["data"]["reused"] == "yes"
        and wall["pretrain"]["reused"] == "yes"
        and wall["**total**"]["wall seconds"] == "33.8"
    )
    champion = table(text, "Champion")
    assert (
        champion["version"]["value"] == "3"
        and champion["source run"]["value"] == logged.stages["runs"]["dpo.reverse.seed0"]
    )


def test_missing_keys_render_as_missing(tmp_path, client):
    logged = make_study(
        "report-partial", seeds=(0,), omit=("eval.sft.mixed_half", "eval.dpo", "dpo.", "probe.", "sweep", "champion")
    )
    run_id = run_report(cfg(), experiment="report-partial", output=str(tmp_path))
    text = (tmp_path / "report-partial" / "report.md").read_text()
    sft = table(text, "Table 1")
    assert set(sft["mixed_half (0.5k)"].values()) == {"missing", "-"}
    forward = parse(sft["forward (s1k)"]["average"])
    assert forward["mean"] == f"{100 * logged.metrics['eval.sft.forward.seed0'][metric('average')]:.1f}"
    assert forward["sd"] is None  # one seed: no spread
    assert all(
        parse(c)["mean"] == "missing" for row in table(text, "Table 3").values() for k, c in row.items() if k != "seeds"
    )
    missing = section(text, "Missing")
    for key in ("- eval.sft.mixed_half.seed0", "- dpo.direct.seed0", "- probe.mixed", "- sweep"):
        assert key in missing
    assert "No run of this study is missing." not in missing and "Not run by this study: Table 2" in missing
    assert "Probe runs missing" in text and "Sweep run missing." in text and "No champion recorded." in text
    assert "with one seed the spread is unmeasured" in text
    assert client.get_run(run_id).info.status == "FINISHED"


def test_paper_preset_sets_published_numbers_beside_cells(tmp_path):
    make_study("report-paper", seeds=(0,), benchmarks=PAPER, questions=6, preset="paper-7b", omit=("probe.",))
    # The CLI loads the study's preset (its report: section) when --preset is empty.
    assert study_preset({"experiment": "report-paper", "main_run_id": ""}) == "paper-7b"
    run_report(cfg("paper-7b"), experiment="report-paper", output=str(tmp_path))
    text = (tmp_path / "report-paper" / "report.md").read_text()
    sft = table(text, "Table 1")
    assert list(sft["forward (s1k)"])[:4] == ["aime24", "math500", "gpqa", "average"]
    assert parse(sft["forward (s1k)"]["aime24"])["paper"] == "16.7"
    assert parse(sft["mixed (D)"]["average"])["paper"] == "31.5"
    assert parse(sft["base (no SFT)"]["gpqa"])["paper"] is None
    dpo = parse(table(text, "Table 3")["DPO on mixed (D)"]["average"])
    assert (dpo["paper"], dpo["paper_change"]) == ("38.6", "+7.1")
    direct = table(text, "Table 4")["direct DPO (no SFT)"]
    assert parse(direct["gpqa"])["paper"] == "34.6" and parse(direct["math500"])["paper"] == "59"


def test_bad_main_run_id_exits_2_with_one_line(whole):
    result = run_cli("report", "--main_run_id", "0123456789abcdef0123456789abcdef")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --main_run_id 0123456789abcdef0123456789abcdef: no such run in {tracking.tracking_uri()}"
    ]
    logged = whole[0]
    with pytest.raises(UserError, match="is a evaluate run, expected main"):
        run_report(cfg(), main_run_id=logged.stages["runs"]["eval.base"])
    mlflow.MlflowClient().create_experiment("report-empty")
    with pytest.raises(UserError, match="no main run with main/stages.json"):
        run_report(cfg(), experiment="report-empty")


def test_screenshots_setting(tmp_path, monkeypatch, client):
    make_study("report-shots", seeds=(0,), questions=4, omit=("probe.",))
    monkeypatch.setattr(assets, "SCREENSHOT_MODULE", "reverse_align_no_such_module")
    with pytest.raises(UserError, match="report.screenshots true"):
        run_report(cfg("tiny", "report.screenshots=true"), experiment="report-shots", output=str(tmp_path))
    with pytest.raises(UserError, match="expected one of auto, true, false"):
        run_report(cfg("tiny", "report.screenshots=maybe"), experiment="report-shots", output=str(tmp_path))
    run_report(cfg("tiny", "report.screenshots=auto"), experiment="report-shots", output=str(tmp_path))  # skips
    # A capture module and a chromium on PATH: `auto` takes the screenshots, logs and links them.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "fake_ui_shots.py").write_text(
        "from pathlib import Path\n"
        "def capture(tracking_uri, experiment_name, out_dir, model_name):\n"
        f"    path = Path(out_dir) / 'runs.png'\n    path.write_bytes({png_bytes()!r})\n"
        "    (Path(out_dir) / 'args.txt').write_text(f'{experiment_name} {model_name}')\n    return [path]\n"
    )
    (tmp_path / "bin").mkdir()
    chromium = tmp_path / "bin" / "chromium"
    chromium.write_text("#!/bin/sh\n")
    chromium.chmod(0o755)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setattr(assets, "SCREENSHOT_MODULE", "fake_ui_shots")
    run_id = run_report(cfg("tiny", "report.screenshots=auto"), experiment="report-shots", output=str(tmp_path / "out"))
    out_dir = tmp_path / "out" / "report-shots"
    assert "![runs](figures/ui/runs.png)" in (out_dir / "report.md").read_text()
    assert (out_dir / "figures" / "ui" / "runs.png").is_file() and (out_dir / "sweep_objective_vs_beta.png").is_file()
    assert (out_dir / "figures" / "ui" / "args.txt").read_text() == "report-shots reverse-align-adapter"
    assert "figures/ui/runs.png" in {a.path for a in client.list_artifacts(run_id, tracking.ARTIFACT_UI_SCREENSHOTS)}
    # A browser that fails: `auto` warns and reports without screenshots, `true` fails the report.
    (tmp_path / "pkg" / "broken_ui_shots.py").write_text(
        "def capture(tracking_uri, experiment_name, out_dir, model_name):\n"
        "    raise RuntimeError('the MLflow UI did not show sft runs chart within 90s')\n"
    )
    monkeypatch.setattr(assets, "SCREENSHOT_MODULE", "broken_ui_shots")
    run_report(cfg("tiny", "report.screenshots=auto"), experiment="report-shots", output=str(tmp_path / "out"))
    assert "figures/ui/" not in (out_dir / "report.md").read_text()
    with pytest.raises(RuntimeError, match="did not show"):
        run_report(cfg("tiny", "report.screenshots=true"), experiment="report-shots", output=str(tmp_path / "out"))


def test_note_keeps_whole_parts_within_the_limit():
    parts = ["# title", "## A\n\n" + "a" * 50, "## B\n\n" + "b" * 50]
    whole = note(parts, "RUN", limit=1000)
    assert whole.startswith("# title\n\n## A") and "## B" in whole and "cut" not in whole
    cut = note(parts, "RUN", limit=170)
    assert "## A" in cut and "## B" not in cut and "(cut to fit the run description)" in cut and len(cut) <= 170


def test_report_is_an_mlproject_entry_point_with_the_cli_params():
    entry = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["report"]
    assert set(entry["parameters"]) == {p.name for p in cli.STAGES["report"].params} | {"overrides"}
    assert (ROOT / "entrypoints" / "report.py").is_file()
