"""The `main` entry point: the whole study on a preset, reusing finished runs.

Like a lab notebook, in the paper's order:
1. pretrain  the tiny base model (tiny presets; reused from the registry when present)
2. data      forward set, held-out tests, probe set
3. invert    the reverse of every forward item
4. sft       Table 1: one LoRA SFT per mix (forward, reverse, mixed, mixed_half), per training seed
5. dpo       Table 3: DPO on the forward, reverse and mixed SFT models; Table 4: direct DPO; per seed
6. probe     Figure 2: ALP learning dynamics trained on D_f, D_r and D_m
7. evaluate  the base model and every SFT and DPO adapter on eval.benchmarks
8. sweep     DPO beta over sweep.beta_low..beta_high on the mixed SFT model
9. promote   the best evaluated adapter of this study -> reverse-align-adapter@champion
10. report   reports/<experiment>/report.md: the tables and figures beside the paper's

A stage whose FINISHED run with the same preset, inputs, parameters and config
(what it depends on: tracking.STAGE_CONFIG_SECTIONS) exists is reused, not rerun
(``force=true`` reruns everything). Each stage run is a child of the `main` run
in the MLflow UI; the `main` run tags them all (``reverse_align.upstream.<key>``)
and keeps the map in ``main/stages.json`` with each stage's wall time, which
the report reads. Independent stages run side by side (``main.jobs``) as Ray
tasks (reverse_align/scheduler.py), each asking for the GPUs its config trains
on (:func:`stage_gpus`); ``ray_address`` (or ``RAY_ADDRESS``) joins a cluster.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.errors import UserError
from reverse_align.eval.stage import CHAT_FORMAT
from reverse_align.models import TINY_BASE
from reverse_align.scheduler import Job, Outcome, Ref, run_graph

STAGE = "main"
SFT_MIXES = ("forward", "reverse", "mixed", "mixed_half")
DPO_ON = ("forward", "reverse", "mixed")
PROBE_ON = ("forward", "reverse", "mixed")
# The sweep tunes beta where the paper says DPO matters most: on the mixed-data SFT model (§4.2).
SWEEP_ON = "mixed"


def find_finished(
    stage: str,
    cfg: Config,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    without_tags: tuple[str, ...] = (),
) -> str | None:
    """The newest FINISHED run of a stage with this preset, stage config and these tags/params (as strings)."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    if experiment is None:
        return None
    clauses = [
        f"tags.`{tracking.TAG_STAGE}` = '{stage}'",
        f"tags.`{tracking.TAG_PRESET}` = '{cfg.preset}'",
        f"tags.`{tracking.TAG_CONFIG_HASH}` = '{tracking.config_hash(cfg, stage)}'",
        "attributes.status = 'FINISHED'",
    ]
    clauses += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    clauses += [f"params.`{k}` = '{v}'" for k, v in (params or {}).items()]
    runs = client.search_runs([experiment.experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"])
    runs = [r for r in runs if not any(t in r.data.tags for t in without_tags)]
    return runs[0].info.run_id if runs else None


def _count_or_list(text: str, flag: str, default_count: int, first: int, items: str, item: str) -> list[int]:
    """``N`` -> N values from ``first`` on; ``a,b,c`` -> those values; empty -> ``default_count`` of them."""
    given = str(text).strip()
    try:
        if "," in given:
            values = [int(s) for s in given.split(",") if s.strip()]
        else:
            count = int(given) if given else default_count
            values = list(range(first, first + count))
    except ValueError:
        raise UserError(f"{flag} {text!r}: give a count (3) or a comma-separated list of {items} (0,1,2)") from None
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise UserError(f"{flag} {text!r}: need at least one {item}, no repeats, none negative")
    return values


def parse_seeds(seeds: str, cfg: Config) -> list[int]:
    """``N`` -> N seeds from sft.seed on; ``a,b,c`` -> those seeds; empty -> main.seeds of the preset."""
    return _count_or_list(seeds, "--seeds", cfg.main.seeds, cfg.sft.seed, "seeds", "seed")


def seeded(cfg: Config, seed: int) -> Config:
    """The preset with this training seed for SFT and DPO (data, teacher and base model unchanged)."""
    return replace(cfg, sft=replace(cfg.sft, seed=seed), dpo=replace(cfg.dpo, seed=seed))


def parse_bases(bases: str, cfg: Config) -> list[int]:
    """``N`` -> N base models from pretrain.seed on; ``a,b,c`` -> those pretrain seeds; empty -> main.bases."""
    values = _count_or_list(bases, "--bases", cfg.main.bases, cfg.pretrain.seed, "pretrain seeds", "base")
    if len(values) > 1 and cfg.model.name != TINY_BASE:
        raise UserError(
            f"--bases {bases!r}: only tiny presets pretrain their base model; preset {cfg.preset} starts from "
            f"{cfg.model.name} (one base)"
        )
    return values


def based(cfg: Config, base: int) -> Config:
    """The preset with this pretrain seed: the tiny base model pretrained under it (the world unchanged)."""
    return replace(cfg, pretrain=replace(cfg.pretrain, seed=base))


def base_key(name: str, base: int, bases: list[int]) -> str:
    """A job that belongs to one base (``pretrain``, ``eval.base``): named by it when the study has several."""
    return name if len(bases) == 1 else f"{name}.base{base}"


def replicate_key(name: str, base: int, seed: int, bases: list[int]) -> str:
    """A job of one (base, training seed) replicate: ``sft.forward.seed0``, or ``sft.forward.base1.seed0``."""
    return f"{name}.seed{seed}" if len(bases) == 1 else f"{name}.base{base}.seed{seed}"


def stage_gpus(stage: str, cfg: Config) -> int:
    """GPUs a stage of the study asks Ray for: its training processes on presets that train on GPUs.

    sft and dpo: their ``num_processes`` (torchrun's processes, one GPU each); probe: the larger of the two
    (it trains the real sft and dpo stages); evaluate: 1; sweep: a trial's DPO processes when its one worker
    trains inside the stage (more workers are Ray tasks of their own, each asking for that share). data,
    invert, promote and report: 0. Tiny presets train on CPU threads: 0 everywhere.
    """
    if cfg.model.name == TINY_BASE:
        return 0
    training = {"sft": cfg.sft.num_processes, "dpo": cfg.dpo.num_processes}
    return {
        **training,
        "probe": max(training.values()),
        "evaluate": 1,
        "sweep": cfg.dpo.num_processes if cfg.sweep.workers == 1 else 0,
    }.get(stage, 0)


def plan(cfg: Config, seeds: list[int], parent_id: str, bases: list[int] | None = None, rerun: bool = False) -> list[Job]:
    """Every stage of the study as a job, in the order they are best started.

    Per base model (tiny presets: ``bases`` are pretrain seeds; the first is the preset's own), the SFT,
    DPO and evaluation grid once per training seed; data, teacher, probe and sweep are shared and run on
    the first base.
    """
    from reverse_align.models import find_tiny_base

    bases = bases or [cfg.pretrain.seed]
    cfg = based(cfg, bases[0])
    tiny = cfg.model.name == TINY_BASE

    def finder(stage: str, job_cfg: Config, tags=None, params=None, without_tags=()):
        """A lookup of the job's finished run; tag/param values may be Refs to other jobs."""

        def find(done: dict[str, str]) -> str | None:
            def value(v):
                return v.resolve(done) if isinstance(v, Ref) else v

            return find_finished(
                stage, job_cfg, {k: value(v) for k, v in (tags or {}).items()},
                {k: value(v) for k, v in (params or {}).items()}, without_tags,
            )  # fmt: skip

        return find

    up = tracking.tag_upstream
    not_in_a_sweep = (tracking.TAG_SWEEP_TRIAL,)
    # Evaluations decoded before eval/decoding.py (the checkpoint's generation_config, e.g. Qwen2.5-Instruct's
    # repetition penalty, on the hf backend) log no eval.generation.* params: they are redone, not reused.
    decoded = {f"{tracking.PARAM_EVAL_GENERATION}.repetition_penalty": "1.0"}
    def pretrained(base: int) -> tuple[str, ...]:
        return (base_key("pretrain", base, bases),) if tiny else ()

    jobs = []
    # The data stage measures lengths with the base's tokenizer (the world's: the same for every base).
    jobs += [
        Job("data", "reverse_align.data.stage:run_data", cfg, after=pretrained(bases[0]),
            find=finder("data", cfg, params={"data.source": cfg.data.source, "data.seed": str(cfg.data.seed)})),
        Job("invert", "reverse_align.data.invert:run_invert", cfg, {"data_run_id": Ref("data")},
            find=finder("invert", cfg, tags={up("data"): Ref("data")})),
    ]  # fmt: skip
    if tiny:
        for base in bases:
            base_cfg = based(cfg, base)

            def find_base(done, base_cfg=base_cfg):
                version = find_tiny_base(base_cfg)
                return version.run_id if version is not None else None

            jobs.append(Job(base_key("pretrain", base, bases), "reverse_align.train.pretrain:run_pretrain", base_cfg,
                            {"force": "true" if rerun else "false"}, find=find_base))  # fmt: skip
    first_sweep_sft = replicate_key(f"sft.{SWEEP_ON}", bases[0], seeds[0], bases) if seeds else ""
    for base in bases:
        for seed in seeds:
            seed_cfg = seeded(based(cfg, base), seed)
            # Mixed first: the longest, and the sweep waits for it.
            for mix in sorted(SFT_MIXES, key=lambda m: m != SWEEP_ON):
                jobs.append(Job(
                    replicate_key(f"sft.{mix}", base, seed, bases), "reverse_align.train.sft:run_sft", seed_cfg,
                    {"data_run_id": Ref("invert"), "mix": mix},
                    find=finder("sft", seed_cfg, tags={up("invert"): Ref("invert")}, params={"sft.mix": mix}),
                    after=pretrained(base),
                ))  # fmt: skip
        if base == bases[0] and seeds:
            first = seeded(cfg, seeds[0])
            jobs.append(Job(
                "sweep", "reverse_align.sweep:run_sweep", first,
                {"sft_run_id": Ref(first_sweep_sft), "data_run_id": Ref("invert")},
                find=finder("sweep", first, tags={up("sft"): Ref(first_sweep_sft)}),
            ))  # fmt: skip
    for train_on in PROBE_ON:
        jobs.append(Job(
            f"probe.{train_on}", "reverse_align.probe.stage:run_probe", cfg,
            {"data_run_id": Ref("invert"), "train_on": train_on},
            find=finder("probe", cfg, tags={up("invert"): Ref("invert")}, params={"probe.train_on": train_on}),
            after=pretrained(bases[0]),
        ))  # fmt: skip
    for base in bases:
        base_cfg = based(cfg, base)
        jobs.append(Job(
            base_key("eval.base", base, bases), "reverse_align.eval.stage:run_evaluate", base_cfg, {"data_run_id": Ref("data")},
            # eval.format: a base evaluation graded in the SFT models' format (before it was chat) is not reused.
            find=finder("evaluate", base_cfg, params={"eval.run_id": "base", "eval.data_run_id": Ref("data"),
                                                       tracking.PARAM_EVAL_FORMAT: CHAT_FORMAT, **decoded}),
            after=pretrained(base),
        ))  # fmt: skip
    for base in bases:
        for seed in seeds:
            seed_cfg = seeded(based(cfg, base), seed)
            trained_keys = []
            for on in (*DPO_ON, "direct"):
                key = replicate_key(f"dpo.{on}", base, seed, bases)
                if on == "direct":
                    args = {"sft_run_id": "", "data_run_id": Ref("invert")}
                    find = finder("dpo", seed_cfg, tags={up("invert"): Ref("invert")}, without_tags=(up("sft"), *not_in_a_sweep))
                else:
                    sft_key = replicate_key(f"sft.{on}", base, seed, bases)
                    args = {"sft_run_id": Ref(sft_key), "data_run_id": Ref("invert")}
                    find = finder("dpo", seed_cfg, tags={up("sft"): Ref(sft_key)}, without_tags=not_in_a_sweep)
                jobs.append(Job(key, "reverse_align.train.dpo:run_dpo", seed_cfg, args, find=find, after=pretrained(base)))
            trained_keys = [replicate_key(f"sft.{mix}", base, seed, bases) for mix in SFT_MIXES]
            trained_keys += [replicate_key(f"dpo.{on}", base, seed, bases) for on in (*DPO_ON, "direct")]
            for trained in trained_keys:
                fmt = {tracking.PARAM_EVAL_FORMAT: CHAT_FORMAT} if trained.startswith("dpo.direct.") else {}
                jobs.append(Job(
                    f"eval.{trained}", "reverse_align.eval.stage:run_evaluate", seed_cfg, {"run_id": Ref(trained)},
                    find=finder("evaluate", seed_cfg, params={"eval.run_id": Ref(trained), **fmt, **decoded}),
                ))  # fmt: skip
    evaluated = [job.key for job in jobs if job.key.startswith("eval.")]
    # Promote among this study's adapters only (its invert run), on the metric evaluate copies onto them.
    jobs.append(Job(
        "promote", "reverse_align.registry:run_promote", cfg,
        {"experiment": tracking.experiment_name(), "preset": cfg.preset,
         "where": Ref("invert", f"tags.`{up('invert')}` = '{{}}'")},
        after=tuple(evaluated),
    ))  # fmt: skip
    jobs.append(Job(
        "report", "reverse_align.report.stage:run_report", cfg,
        {"experiment": tracking.experiment_name(), "main_run_id": parent_id}, after=tuple(job.key for job in jobs),
    ))  # fmt: skip
    stage_of = {"train.pretrain": "pretrain", "data.stage": "data", "data.invert": "invert", "train.sft": "sft",
                "train.dpo": "dpo", "probe.stage": "probe", "eval.stage": "evaluate", "sweep": "sweep"}  # fmt: skip
    for job in jobs:
        module = job.target.partition(":")[0].removeprefix("reverse_align.")
        job.gpus = stage_gpus(stage_of.get(module, ""), job.cfg)
    return jobs


def champion() -> dict:
    from reverse_align.registry import alias_holder

    version = alias_holder(tracking.MODEL_ADAPTER, tracking.ALIAS_CHAMPION)
    if version is None:
        return {}
    return {"model": tracking.MODEL_ADAPTER, "alias": tracking.ALIAS_CHAMPION, "version": version.version,
            "run_id": version.run_id or ""}  # fmt: skip


def log_dir(parent_id: str) -> Path:
    """Where stages running side by side write their output.

    Each stage's task logs its own to the main run (``main/logs/``) from the node that ran it; the folder is
    removed after a finished study, kept after a failure (its error line names the failed stage's log there).
    """
    from reverse_align.models import cache_dir

    return cache_dir() / "main-logs" / parent_id


def ui_hint(experiment_id: str) -> str:
    """The command that serves the store's UI (none for an MLflow server) and the experiment's runs page."""
    command = tracking.ui_command()
    if not command:
        return f"open {tracking.ui_url(experiment_id, tracking.tracking_uri())}"
    return f"{command}  then open {tracking.ui_url(experiment_id)}"


def run_main(cfg: Config, force: str = "false", seeds: str = "", bases: str = "", ray_address: str = "") -> str:
    """The study; ``ray_address``: the Ray cluster to run it on (``auto``, ``ray://host:10001``; empty: RAY_ADDRESS,
    else a local cluster of this machine)."""
    from reverse_align import cluster

    rerun = str(force).lower() in ("1", "true", "yes")
    seed_list = parse_seeds(seeds, cfg)
    base_list = parse_bases(bases, cfg)
    if cfg.main.jobs < 1:
        raise UserError(f"main.jobs={cfg.main.jobs}: need at least 1 stage at a time")
    # One Ray cluster for both graphs below (a local one is shut down at the end, a joined one goes on).
    started_ray = cluster.connect(ray_address)
    try:
        tracking.setup()
        return _run_main(cfg, rerun, seed_list, base_list)
    finally:
        cluster.disconnect(started_ray)


def _run_main(cfg: Config, rerun: bool, seed_list: list[int], base_list: list[int]) -> str:
    import mlflow

    from reverse_align import cluster
    from reverse_align import launcher as launchers

    cluster.require_reachable_store(tracking.tracking_uri())
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    # `mlflow run . -e main`: its launcher run is the main run when it is in our experiment, else (Default)
    # it is retired at the end; either way no stage below sees it.
    launcher = launchers.take()
    own_launcher = launcher if launchers.in_our_experiment(launcher) else None
    main_tags = {tracking.TAG_STAGE: STAGE, tracking.TAG_PRESET: cfg.preset}
    if own_launcher:
        parent_id = own_launcher
        for key, value in {**main_tags, tracking.TAG_RUN_NAME: f"main-{cfg.preset}"}.items():
            client.set_tag(parent_id, key, value)
    else:
        parent_id = client.create_run(experiment.experiment_id, tags=main_tags, run_name=f"main-{cfg.preset}").info.run_id
    if launcher and launcher != parent_id:
        launchers.point(launcher, parent_id)
    client.log_param(parent_id, "main.seeds", ",".join(map(str, seed_list)))
    client.log_param(parent_id, "main.bases", ",".join(map(str, base_list)))
    client.log_param(parent_id, "main.jobs", cfg.main.jobs)
    os.environ[tracking.ENV_PARENT_RUN_ID] = parent_id
    record = {"preset": cfg.preset, "seeds": seed_list, "bases": base_list if cfg.model.name == TINY_BASE else [],
              "runs": {}, "champion": {}, "seconds": {}, "reused": [], "placement": {}}  # fmt: skip
    started = time.perf_counter()

    def on_done(key: str, outcome: Outcome) -> None:
        if key == "promote":
            record["champion"] = champion()
        else:
            record["runs"][key] = outcome.run_id
            client.set_tag(parent_id, tracking.tag_upstream(key), outcome.run_id)
        record["seconds"][key] = round(outcome.seconds, 1)
        if outcome.reused:
            record["reused"].append(key)
        else:  # where Ray ran it: the node and the GPUs it was given
            record["placement"][key] = {"node": outcome.node, "gpus": outcome.devices}
        client.log_dict(parent_id, record, tracking.ARTIFACT_MAIN_STAGES)

    try:
        jobs = plan(cfg, seed_list, parent_id, base_list, rerun)
        # The base models first, side by side: everything else starts from one. One base alone gets every
        # core (a 2-thread pretrain is 1.4x a 1-thread one), several split them.
        bases_first = [job for job in jobs if job.key.split(".")[0] == "pretrain"]
        if bases_first:
            run_graph(bases_first, min(cfg.main.jobs, len(bases_first)), log_dir(parent_id), on_done, rerun=rerun,
                      log_run=parent_id)  # fmt: skip
            built = {job.key for job in bases_first}
            jobs = [replace(job, after=tuple(k for k in job.after if k not in built)) for job in jobs if job.key not in built]
        run_graph(jobs, cfg.main.jobs, log_dir(parent_id), on_done, rerun=rerun, log_run=parent_id)
    except BaseException as exc:
        client.set_tag(parent_id, tracking.TAG_ERROR, f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(parent_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        os.environ.pop(tracking.ENV_PARENT_RUN_ID, None)
        if launcher and launcher != parent_id:
            launchers.retire(launcher, parent_id)
    seconds = time.perf_counter() - started
    client.log_metric(parent_id, tracking.METRIC_MAIN_SECONDS, seconds)
    client.set_terminated(parent_id, "FINISHED")
    shutil.rmtree(log_dir(parent_id), ignore_errors=True)  # the main run holds them (main/logs/)
    print(f"[main] study finished in {seconds:.0f} s: run {parent_id}")
    from reverse_align.report.stage import report_path

    report = report_path(tracking.experiment_name())
    if report.is_file():
        print(f"[main] report: {report.resolve()}")
    print(f"[main] browse the runs: {ui_hint(experiment.experiment_id)}")
    return parent_id
