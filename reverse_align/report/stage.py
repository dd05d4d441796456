"""``reverse-align report --experiment <name> [--output reports] [--main_run_id <id>]``.

Reads the study the `main` run recorded (``main/stages.json``), writes
``<output>/<experiment>/report.md`` with its PNGs, logs that folder to a new `report` run
(tag ``reverse_align.upstream.main``; the child of ``REVERSE_ALIGN_PARENT_RUN_ID`` when set),
and writes the tables (no images) into the main run's description.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from reverse_align import environment, sweep_stats, tracking
from reverse_align.config import Config, preset_path
from reverse_align.errors import UserError
from reverse_align.report import assets, paper, summary, tables
from reverse_align.report.paired import Paired, paired_difference, per_question
from reverse_align.report.study import Study, find_main_run

STAGE = "report"
# The paper's tables no stage of this study produces (listed under Missing in every report).
NOT_RUN = (
    "Not run by this study: Table 2 (SFT on D_s1k with Gemini against DeepSeek-R1 traces, PROTOCOL §6's "
    "teacher table); no stage trains on s1K's Gemini traces."
)


def study_preset(args: dict) -> str:
    """The preset the study ran on (its main run's stages.json), for ``--preset`` left empty."""
    experiment = args.get("experiment") or tracking.experiment_name()
    _, stages = find_main_run(experiment, args.get("main_run_id", ""))
    preset = str(stages.get("preset") or "")
    try:
        preset_path(preset)
    except UserError:
        return "tiny"  # a preset this checkout does not know: the report: section of the default
    return preset


def replication(study: Study) -> str:
    """How many of each replication unit the study has: bases (tiny presets) and training seeds."""
    seeds = f"{len(study.seeds)} training seed{'s' * (len(study.seeds) > 1)} ({', '.join(map(str, study.seeds))})"
    if not study.stages.get("bases") and not study.several_bases:
        return seeds  # a paper preset (its base is the released model), or a study from before bases
    bases = study.bases
    return f"{len(bases)} base model{'s' * (len(bases) > 1)} (pretrain seeds {', '.join(map(str, bases))}) x {seeds}"


def paired_results(study: Study, benchmarks: list[str], resamples: int, seed: int) -> dict[str, Paired | None]:
    """reverse - forward SFT per benchmark and over all of them (``average``), from the per-sample tables."""
    pairs = {}
    for benchmark in benchmarks:
        rev, fwd = {}, {}
        for r in study.replicates:
            a = study.samples(study.replicate_key("eval.sft.reverse", r), benchmark)
            b = study.samples(study.replicate_key("eval.sft.forward", r), benchmark)
            if a and b:
                rev[r], fwd[r] = per_question(a), per_question(b)
        pairs[benchmark] = (rev, fwd)
    results = {b: paired_difference([pairs[b]], resamples, seed) for b in benchmarks}
    usable = [pairs[b] for b in benchmarks if results[b] is not None]
    results[tables.AVERAGE] = paired_difference(usable, resamples, seed) if usable else None
    return results


def sweep_line(study: Study) -> str:
    """The best beta with its 95% interval, and the betas it is not separated from (reverse_align/sweep_stats.py)."""
    run = study.run("sweep")
    if run is None:
        return "Sweep run missing."
    metrics, tags = run.data.metrics, run.data.tags
    best_beta = metrics.get(tracking.METRIC_SWEEP_BEST_BETA)
    best_value = metrics.get(tracking.METRIC_SWEEP_BEST_VALUE)
    if best_beta is None or best_value is None:
        return f"Sweep run `{study.keys['sweep']}` has no best beta logged."
    objective = run.data.params.get("sweep.objective", "objective")
    low, high = metrics.get(tracking.METRIC_SWEEP_BEST_CI_LOW), metrics.get(tracking.METRIC_SWEEP_BEST_CI_HIGH)
    if low is None or high is None or tracking.TAG_SWEEP_NOT_SEPARATED not in tags:
        return (
            f"Sweep run `{study.keys['sweep']}`: best beta {best_beta:g}, {objective} {best_value:.4g} "
            "(no interval recorded: a sweep from before per-question records)."
        )
    n = int(metrics.get(tracking.METRIC_SWEEP_BEST_N, 0))
    close = [b for b in tags[tracking.TAG_SWEEP_NOT_SEPARATED].split(",") if b]
    if close:
        verdict = f"not separated from betas {', '.join(close)} at p<{sweep_stats.ALPHA:g}"
    elif metrics.get(tracking.METRIC_SWEEP_BEST_SEPARATED) == 1:
        verdict = f"separated from every other beta at p<{sweep_stats.ALPHA:g}"
    else:
        verdict = "no other trial to compare with"
    return (
        f"Sweep run `{study.keys['sweep']}`: best beta {best_beta:g} ({objective} {best_value:.4g} "
        f"[{low:.3f}, {high:.3f}], n {n}); {verdict} (exact McNemar test of the best against each other trial on "
        "the same questions; the interval: Wilson 95%). `sweep/trials.csv` of the run has every trial's interval "
        "and p."
    )


def environment_text(study: Study) -> str:
    """The library versions and CPU kernel path of this report's process, the lock file's sha256, and the
    lock hashes the study's runs were tagged with (runs from before the tag: untagged)."""
    from collections import Counter

    found = environment.versions()
    rows = [f"| {name} | {version} |" for name, version in found.items()]
    rows.append(f"| torch CPU kernels (`torch.backends.cpu.get_cpu_capability()`) | {environment.cpu_capability()} |")
    lock = environment.lock_sha256()
    rows.append(f"| `{environment.LOCK_FILE}` sha256 | `{lock}` |")
    tagged = Counter()
    for key in study.keys:
        run = study.run(key)
        if run is not None:
            tagged[run.data.tags.get(tracking.TAG_ENV_LOCK_SHA, "untagged")] += 1
    if not tagged:
        runs = "No run of the study to compare."
    elif set(tagged) == {lock}:
        runs = f"All {tagged[lock]} runs of the study were tagged with this lock (`{tracking.TAG_ENV_LOCK_SHA}`)."
    else:
        listed = ", ".join(f"`{sha[:12]}` ({count})" for sha, count in tagged.most_common())
        runs = f"The study's runs by lock (`{tracking.TAG_ENV_LOCK_SHA}`, runs): {listed}; not all match this lock."
    return (
        "What this report was made with (its own process; `make setup` installs the lock).\n\n"
        "| package | version |\n| --- | --- |\n" + "\n".join(rows) + f"\n\n{runs}"
    )


def build(study: Study, cfg: Config, out_dir: Path, screenshot_paths: list[Path]) -> tuple[str, list[str], dict]:
    """(report markdown, its parts without images for the main run's note, paired results). Writes the PNGs."""
    size = paper.size_for(study.preset, cfg.report.paper_size)
    benchmarks = study.benchmarks()
    columns = [*benchmarks, tables.AVERAGE]
    paired = paired_results(study, benchmarks, cfg.report.bootstrap_resamples, cfg.report.seed)
    figure_paths = assets.figure2(study, out_dir)
    sweep_png = assets.sweep_figure(study, out_dir)
    published = f"; the paper's numbers (PROTOCOL §6, {size}) beside each cell" if size else ""
    head = [
        f"# reverse-align report: {study.preset or 'unknown preset'}",
        (
            f"Main run `{study.main_run_id}`: {replication(study)}{published}. "
            "Accuracies in percent, mean ± sd over "
            f"{'bases and seeds' if study.several_bases else 'seeds'}; every number is a logged metric of the runs "
            "listed at the end."
        ),
        summary.opening(study, paired[tables.AVERAGE]),
    ]
    sections = [
        ("Table 1: SFT by data mix", tables.sft_table(study, columns, size), None),
        (
            "Reverse minus forward SFT (paired)",
            ("Base b, seed s of r1k against base b, seed s of s1k on the same questions; 95% interval from "
             f"{cfg.report.bootstrap_resamples} bootstrap resamples of bases, then seeds, then questions "
             if study.several_bases else
             "Seed s of r1k against seed s of s1k on the same questions; 95% interval from "
             f"{cfg.report.bootstrap_resamples} bootstrap resamples of seeds then questions ")
            + f"(seed {cfg.report.seed}).\n\n"
            + tables.paired_table(paired),
            None,
        ),
        ("Table 3: DPO on the SFT models", tables.dpo_table(study, columns, size), None),
        ("Table 4: direct DPO (no SFT)", tables.direct_table(study, columns, size), None),
    ]
    figure_md = "\n\n".join(f"![Figure 2 {kind}]({p.name})" for kind, p in figure_paths.items())
    sections.append(
        ("Figure 2: ALP learning dynamics", assets.margin_line(study), figure_md or "Probe runs missing: no Figure 2.")
    )
    sweep_text = sweep_line(study)
    sections.append(("DPO beta sweep", sweep_text, f"![objective vs beta]({sweep_png.name})" if sweep_png else None))
    champion = study.stages.get("champion")
    sections.append(
        ("Champion", tables.champion_table(champion) if isinstance(champion, dict) else "No champion recorded.", None)
    )
    sections.append(("Stage wall times", tables.times_table(study), None))
    sections.append(("Environment", environment_text(study), None))
    if screenshot_paths:
        links = "\n\n".join(f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in screenshot_paths)
        sections.append(("MLflow UI", "Screenshots of the tracking UI for this experiment.", links))
    missing = study.missing()
    runs_missing = "\n".join(f"- {k}" for k in missing) if missing else "No run of this study is missing."
    sections.append(("Missing", f"{runs_missing}\n\n{NOT_RUN}", None))
    sections.append(("Runs used", tables.runs_table(study), None))
    full = head + [f"## {title}\n\n{text}" + (f"\n\n{images}" if images else "") for title, text, images in sections]
    # The note leaves out the run list (the main run tags its stage runs) and the screenshots.
    plain = head + [f"## {title}\n\n{text}" for title, text, _ in sections if title not in ("Runs used", "MLflow UI")]
    return "\n\n".join(full) + "\n", plain, paired


def note(parts: list[str], report_run_id: str, limit: int = tracking.NOTE_MAX_CHARS) -> str:
    """The main run's description: whole parts while they fit MLflow's limit, then where the rest is."""
    tail = f"\n\nFull report: artifact `{tracking.ARTIFACT_REPORT}` of report run `{report_run_id}`.\n"
    cut_tail = "\n\n(cut to fit the run description)" + tail
    if len("\n\n".join(parts)) + len(tail) <= limit:
        return "\n\n".join(parts) + tail
    kept: list[str] = []
    for part in parts:
        if len("\n\n".join([*kept, part])) + len(cut_tail) > limit:
            break
        kept.append(part)
    return "\n\n".join(kept) + cut_tail


@contextlib.contextmanager
def _experiment(name: str):
    """Runs started inside go to ``name`` (the experiment reported on)."""
    previous = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    os.environ["MLFLOW_EXPERIMENT_NAME"] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_NAME"] = previous


def _clear(out_dir: Path) -> None:
    """Remove what an earlier report wrote here (report.md and its PNGs), nothing else."""
    for path in [
        out_dir / tracking.ARTIFACT_REPORT,
        *out_dir.glob("*.png"),
        *(out_dir / tracking.ARTIFACT_UI_SCREENSHOTS).glob("*.png"),
    ]:
        path.unlink(missing_ok=True)


def _paired_metrics(result: Paired) -> dict[str, float]:
    return {"diff": result.diff, "ci_low": result.low, "ci_high": result.high}


def report_path(experiment: str, output: str = "reports") -> Path:
    """``<output>/<experiment>/report.md``, the experiment name made safe as a folder name."""
    return Path(output or "reports") / re.sub(r"[^A-Za-z0-9._-]+", "_", experiment) / tracking.ARTIFACT_REPORT


def run_report(cfg: Config, experiment: str = "", output: str = "reports", main_run_id: str = "") -> str:
    """Write and log the report; returns the report run id. ``cfg``: the study's preset (see study_preset)."""
    import mlflow

    experiment = experiment or tracking.experiment_name()
    main_run, stages = find_main_run(experiment, main_run_id)
    study = Study(main_run.info.run_id, stages)
    want_screenshots = assets.screenshots_wanted(cfg.report.screenshots)
    out_dir = report_path(experiment, output).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(out_dir)
    params = {
        "report.experiment": experiment,
        "report.main_run_id": study.main_run_id,
        "report.study_preset": study.preset,
    }
    with (
        _experiment(experiment),
        tracking.stage_run(STAGE, cfg, upstream={"main": study.main_run_id}, params=params) as run,
    ):
        shots = assets.screenshots(experiment, out_dir, tracking.MODEL_ADAPTER, cfg.report.screenshots) if want_screenshots else []
        text, plain, paired = build(study, cfg, out_dir, shots)
        (out_dir / tracking.ARTIFACT_REPORT).write_text(text)
        mlflow.log_artifacts(str(out_dir))
        for benchmark, result in paired.items():
            if result is not None:
                mlflow.log_metrics(
                    {tracking.metric_report_paired(benchmark, k): v for k, v in _paired_metrics(result).items()}
                )
        mlflow.MlflowClient().set_tag(study.main_run_id, tracking.TAG_NOTE, note(plain, run.info.run_id))
        print(f"report: {out_dir / tracking.ARTIFACT_REPORT} (run {run.info.run_id}, main run {study.main_run_id})")
    return run.info.run_id
