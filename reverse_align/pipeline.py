"""The `main` entry point: the whole study on a preset, reusing finished runs.

Like a lab notebook, in order:
1. pretrain  the tiny base model (tiny presets; reused from the registry when present)
2. data      forward set, held-out tests, probe set
3. invert    the reverse of every forward item
4. sft       Table 1: one LoRA SFT per mix (forward, reverse, mixed, mixed_half)
5. dpo       Table 2: DPO on the forward, reverse and mixed SFT models; Table 4: direct DPO

A stage whose FINISHED run with the same preset, inputs, parameters and config
(what it depends on: tracking.STAGE_CONFIG_SECTIONS) exists is reused, not rerun
(``force=true`` reruns everything). Each stage run is a child of the `main` run
in the MLflow UI, and the `main` run tags them all.
"""

from __future__ import annotations

import importlib.util

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.models import TINY_BASE

STAGE = "main"
SFT_MIXES = ("forward", "reverse", "mixed", "mixed_half")
DPO_ON = ("forward", "reverse", "mixed")


def find_finished(
    stage: str,
    cfg: Config,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    without_tag: str | None = None,
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
    runs = [r for r in runs if without_tag is None or without_tag not in r.data.tags]
    return runs[0].info.run_id if runs else None


def _stage_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_main(cfg: Config, force: str = "false") -> str:
    import os

    import mlflow

    from reverse_align.data.invert import run_invert
    from reverse_align.data.stage import run_data

    rerun = str(force).lower() in ("1", "true", "yes")
    tracking.setup()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    parent = client.create_run(
        experiment.experiment_id,
        tags={tracking.TAG_STAGE: STAGE, tracking.TAG_PRESET: cfg.preset},
        run_name=f"main-{cfg.preset}",
    )
    parent_id = parent.info.run_id
    os.environ[tracking.ENV_PARENT_RUN_ID] = parent_id
    done: dict[str, str] = {}

    def step(key: str, stage: str, launch, tags=None, params=None, without_tag=None) -> str:
        run_id = None if rerun else find_finished(stage, cfg, tags, params, without_tag)
        if run_id:
            print(f"[main] {key}: reusing finished run {run_id}")
        else:
            print(f"[main] {key}: running")
            run_id = launch()
        done[key] = run_id
        client.set_tag(parent_id, tracking.tag_upstream(key), run_id)
        return run_id

    try:
        if cfg.model.name == TINY_BASE:
            from reverse_align.models import find_tiny_base
            from reverse_align.train.pretrain import run_pretrain

            version = find_tiny_base(cfg)
            if version is None or rerun:
                done["pretrain"] = run_pretrain(cfg, force="true" if rerun else "false")
            else:
                print(f"[main] pretrain: reusing {version.name} version {version.version}")
            # The weights the whole study starts from (the run that registered them).
            pretrain_id = tracking.base_model_upstream(cfg, STAGE).get("pretrain")
            if pretrain_id:
                client.set_tag(parent_id, tracking.tag_upstream("pretrain"), pretrain_id)
        data_id = step("data", "data", lambda: run_data(cfg), params={"data.source": cfg.data.source, "data.seed": str(cfg.data.seed)})
        invert_id = step(
            "invert", "invert", lambda: run_invert(cfg, data_run_id=data_id), tags={tracking.tag_upstream("data"): data_id}
        )
        sft_ids: dict[str, str] = {}
        if _stage_available("reverse_align.train.sft"):
            from reverse_align.train.sft import run_sft

            for mix in SFT_MIXES:
                sft_ids[mix] = step(
                    f"sft.{mix}", "sft", lambda mix=mix: run_sft(cfg, data_run_id=invert_id, mix=mix),
                    tags={tracking.tag_upstream("invert"): invert_id}, params={"sft.mix": mix},
                )
        if _stage_available("reverse_align.train.dpo") and sft_ids:
            from reverse_align.train.dpo import run_dpo

            for mix in DPO_ON:
                step(
                    f"dpo.{mix}", "dpo",
                    lambda mix=mix: run_dpo(cfg, sft_run_id=sft_ids[mix], data_run_id=invert_id),
                    tags={tracking.tag_upstream("sft"): sft_ids[mix]},
                )
            step(
                "dpo.direct", "dpo", lambda: run_dpo(cfg, sft_run_id="", data_run_id=invert_id),
                tags={tracking.tag_upstream("invert"): invert_id}, without_tag=tracking.tag_upstream("sft"),
            )
    except BaseException as exc:
        client.set_tag(parent_id, tracking.TAG_ERROR, f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(parent_id, "FAILED")
        raise
    finally:
        os.environ.pop(tracking.ENV_PARENT_RUN_ID, None)
    client.set_terminated(parent_id, "FINISHED")
    print(f"[main] study finished: run {parent_id}; " + ", ".join(f"{k}={v}" for k, v in done.items()))
    return parent_id
