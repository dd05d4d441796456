"""The `promote` stage: register the best adapter run and move the ``champion`` alias.

Candidates are the FINISHED ``sft``/``dpo`` runs of an experiment (narrowed by
``--stage``, ``--preset``, ``--where`` or one ``--run_id``) that carry
``--metric``; the best (highest) one is registered as a new version of
``--model_name`` from its logged MLflow ``model`` (mlflow.transformers' PEFT
format: the adapter plus a *reference* to the base model, never its weights;
see train/common.py ``log_final_adapter``). The version carries lineage tags
(stage, preset, mix, beta, base model, metric and value, source run). The alias
moves only when the new version beats the alias holder on the same metric,
read from the holder's source run now (``--force true`` moves it anyway).
A run already registered under the name is not registered again.

Loading by name::

    mlflow.transformers.load_model("models:/reverse-align-adapter@champion")  # a text-generation pipeline
    model, tokenizer = reverse_align.registry.load_adapter()                   # peft: base + adapter
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.errors import UserError

ADAPTER_STAGES = ("sft", "dpo")


@dataclass(frozen=True)
class Candidate:
    run: object  # mlflow.entities.Run
    value: float

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def _client():
    import mlflow

    return mlflow.MlflowClient(tracking.tracking_uri())


def adapter_runs(experiment: str, stages: tuple[str, ...], preset: str = "", where: str = "") -> list:
    """FINISHED runs of ``stages`` in ``experiment`` (optionally one preset and an extra MLflow filter)."""
    client = _client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise UserError(f"--experiment {experiment}: no such experiment in {tracking.tracking_uri()}")
    from mlflow.exceptions import MlflowException

    runs = []
    for stage in stages:  # MLflow's search has no IN for tags
        clauses = [f"tags.`{tracking.TAG_STAGE}` = '{stage}'", "attributes.status = 'FINISHED'"]
        if preset:
            clauses.append(f"tags.`{tracking.TAG_PRESET}` = '{preset}'")
        if where:
            clauses.append(where)
        try:
            runs += client.search_runs([found.experiment_id], " and ".join(clauses), max_results=5000)
        except MlflowException as exc:
            raise UserError(f"--where {where!r}: {exc.message.splitlines()[0]}") from None
    return runs


def logged_adapter_model_id(run) -> str | None:
    """The id of the run's logged MLflow ``model`` when the run also holds its ``adapter/``; else None."""
    client = _client()
    adapter_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, tracking.ARTIFACT_ADAPTER)}
    if "adapter_model.safetensors" not in adapter_files:
        return None
    for output in run.outputs.model_outputs if run.outputs else []:
        model = client.get_logged_model(output.model_id)
        if model.name == tracking.ARTIFACT_MODEL:
            return model.model_id
    return None


def pick_best(runs: list, metric: str) -> Candidate:
    scored = [Candidate(r, r.data.metrics[metric]) for r in runs if metric in r.data.metrics]
    if not scored:
        raise UserError(f"no FINISHED adapter run among {len(runs)} candidates has metric {metric!r}")
    return max(scored, key=lambda c: (c.value, c.run.info.start_time))


def lineage_tags(run, metric: str, value: float) -> dict[str, str]:
    params, tags = run.data.params, run.data.tags
    out = {
        tracking.TAG_SOURCE_RUN: run.info.run_id,
        tracking.TAG_STAGE: tags.get(tracking.TAG_STAGE, ""),
        tracking.TAG_PRESET: tags.get(tracking.TAG_PRESET, ""),
        tracking.TAG_METRIC: metric,
        tracking.TAG_METRIC_VALUE: repr(value),
        tracking.TAG_BASE_MODEL: params.get("model.name", ""),
        "sft.mix": params.get("sft.mix", ""),
    }
    if params.get("model.name") == "tiny-base":
        out[tracking.TAG_BASE_MODEL] = f"tiny-base ({params.get('pretrain.registered_model', '')})"
    if tags.get(tracking.TAG_STAGE) == "dpo":
        out["dpo.beta"] = params.get("dpo.beta", "")
        out["dpo.reference"] = params.get("dpo.reference", "")
    out.update({k: v for k, v in tags.items() if k.startswith(tracking.TAG_UPSTREAM_PREFIX)})
    return {k: v for k, v in out.items() if v != ""}


def existing_version(model_name: str, run_id: str):
    """The version of ``model_name`` already registered from ``run_id``, or None."""
    client = _client()
    versions = client.search_model_versions(f"name = '{model_name}'")
    same = [v for v in versions if v.tags.get(tracking.TAG_SOURCE_RUN) == run_id]
    return min(same, key=lambda v: int(v.version)) if same else None


def register(candidate: Candidate, model_name: str, metric: str, model_id: str):
    """A new version from the run's logged model, or the one registered from it before (and whether it is new)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    previous = existing_version(model_name, candidate.run_id)
    if previous is not None:
        return previous, False
    try:
        client.create_registered_model(
            model_name, description="LoRA adapters of reverse-align (mlflow.transformers PEFT: adapter + base reference)"
        )
    except MlflowException:
        pass  # exists
    version = client.create_model_version(
        name=model_name,
        source=f"models:/{model_id}",
        run_id=candidate.run_id,
        tags=lineage_tags(candidate.run, metric, candidate.value),
    )
    return version, True


def alias_holder(model_name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def holder_value(holder, metric: str) -> float | None:
    """The alias holder's metric, read from its source run now (it may have been re-evaluated)."""
    if holder is None or not holder.run_id:
        return None
    return _client().get_run(holder.run_id).data.metrics.get(metric)


def run_promote(
    cfg: Config,
    experiment: str = "",
    metric: str = tracking.METRIC_EVAL_AVERAGE,
    model_name: str = tracking.MODEL_ADAPTER,
    alias: str = tracking.ALIAS_CHAMPION,
    force: str = "false",
    stage: str = "",
    preset: str = "",
    where: str = "",
    run_id: str = "",
) -> str:
    """Register the best adapter run; move ``alias`` if it wins. Returns the version number."""
    del cfg  # promote reads runs, not a preset
    experiment = experiment or tracking.experiment_name()
    metric = metric or tracking.METRIC_EVAL_AVERAGE
    model_name = model_name or tracking.MODEL_ADAPTER
    alias = alias or tracking.ALIAS_CHAMPION
    stages = tuple(s.strip() for s in (stage or ",".join(ADAPTER_STAGES)).split(",") if s.strip())
    unknown = [s for s in stages if s not in ADAPTER_STAGES]
    if unknown:
        raise UserError(f"--stage {stage}: adapters come from {' or '.join(ADAPTER_STAGES)} runs, not {unknown[0]}")
    tracking.setup()
    if run_id:
        run = tracking.require_run(run_id, stages, "run_id")
        if metric not in run.data.metrics:
            raise UserError(f"--run_id {run_id}: has no metric {metric!r}; nothing registered")
        best = Candidate(run, run.data.metrics[metric])
    else:
        best = pick_best(adapter_runs(experiment, stages, preset, where), metric)
    model_id = logged_adapter_model_id(best.run)
    if model_id is None:
        raise UserError(
            f"run {best.run_id} ({metric} {best.value:.4g}) has no logged adapter and MLflow model "
            f"({tracking.ARTIFACT_ADAPTER}/, {tracking.ARTIFACT_MODEL}); nothing registered"
        )
    version, created = register(best, model_name, metric, model_id)
    holder = alias_holder(model_name, alias)
    current = holder_value(holder, metric)
    what = f"{model_name} version {version.version} (run {best.run_id}, {metric} {best.value:.4g})"
    what = ("registered " if created else "already registered: ") + what
    if holder is not None and holder.version == version.version:
        print(f"{what}; already @{alias}")
    elif holder is None or current is None or best.value > current or _truthy(force):
        _client().set_registered_model_alias(model_name, alias, version.version)
        was = "" if holder is None else f" (was version {holder.version}, {metric} {current})"
        forced = " by --force" if holder is not None and current is not None and best.value <= current else ""
        print(f"{what}; @{alias} -> version {version.version}{forced}{was}")
    else:
        print(f"{what}; @{alias} stays version {holder.version} ({metric} {current:.4g} >= {best.value:.4g})")
    return str(version.version)


def load_adapter(model_uri: str = f"models:/{tracking.MODEL_ADAPTER}@{tracking.ALIAS_CHAMPION}"):
    """(peft.PeftModel, tokenizer) of a registered adapter: the base model with the adapter on top.

    The registered model references its base by the local directory it was
    trained from; when that directory is gone (another machine), the base is
    resolved again from the source run's config (the registered tiny base, or
    the hub id) and passed to mlflow as ``base_model_path``.
    """
    import mlflow
    import yaml

    from reverse_align import attention
    from reverse_align.models import resolve_base_model
    from reverse_align.train.common import config_from_dict

    attention.register()  # tiny presets train with sdpa_varlen; harmless otherwise
    base_path = None
    info = mlflow.models.get_model_info(model_uri)
    local_base = (info.flavors.get("transformers") or {}).get("local_base_model_path")
    if local_base and not Path(local_base).is_dir():
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            config_path = tracking.download_artifact(info.run_id, tracking.ARTIFACT_CONFIG, tmp)
            base_path = resolve_base_model(config_from_dict(yaml.safe_load(Path(config_path).read_text())))
    parts = mlflow.transformers.load_model(model_uri, return_type="components", base_model_path=base_path)
    return parts["model"], parts["tokenizer"]
