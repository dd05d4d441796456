"""Where a preset's base model comes from, and how every stage loads it.

``model.name: tiny-base`` means the model the `pretrain` stage registered under
``pretrain.registered_model`` for this exact world and architecture (matched by
a fingerprint tag); anything else is a Hugging Face id or local directory.
Either way the model loads through ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from reverse_align.config import Config
from reverse_align.errors import UserError

TINY_BASE = "tiny-base"
TAG_FINGERPRINT = "reverse_align.fingerprint"


def cache_dir() -> Path:
    return Path(os.environ.get("REVERSE_ALIGN_CACHE", Path.home() / ".cache" / "reverse_align"))


def tiny_fingerprint(cfg: Config) -> str:
    """Identifies the tiny base model a config would build (architecture, world, seed)."""
    pretrain = dataclasses.asdict(cfg.pretrain)
    pretrain.pop("registered_model")
    payload = {"pretrain": pretrain, "synthetic": dataclasses.asdict(cfg.synthetic), "seed": cfg.data.seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def find_tiny_base(cfg: Config):
    """The registered model version built for this config, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from reverse_align import tracking

    client = mlflow.MlflowClient(tracking.tracking_uri())
    name = cfg.pretrain.registered_model
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    fingerprint = tiny_fingerprint(cfg)
    matching = [v for v in versions if v.tags.get(TAG_FINGERPRINT) == fingerprint and v.status == "READY"]
    return max(matching, key=lambda v: int(v.version)) if matching else None


def resolve_base_model(cfg: Config) -> str:
    """A local directory or hub id that ``from_pretrained`` accepts."""
    if cfg.model.name != TINY_BASE:
        return cfg.model.name
    version = find_tiny_base(cfg)
    if version is None:
        raise UserError(
            f"no tiny base model registered for preset {cfg.preset!r} "
            f"(model {cfg.pretrain.registered_model}); run: reverse-align pretrain --preset {cfg.preset}"
        )
    target = cache_dir() / "models" / version.run_id
    if not (target / "config.json").is_file():
        import shutil

        import mlflow

        from reverse_align import tracking

        # Per process: `main` runs stages side by side, and two may fetch the base at once.
        partial = target.parent / f".{version.run_id}.{os.getpid()}.partial"
        partial.mkdir(parents=True, exist_ok=True)
        downloaded = mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, dst_path=str(partial), tracking_uri=tracking.tracking_uri()
        )
        # Download beside the target, then rename: a killed download never looks complete.
        try:
            os.replace(downloaded, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process's complete copy
                raise
        shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def require_same_base(cfg: Config, run, flag: str) -> None:
    """An adapter run means its model only on the base it was trained on: refuse another preset's base.

    ``flag`` names the option that gave ``run`` (``--run_id``, ``--sft_run_id``) in the one-line error.
    """
    from reverse_align import tracking

    ours = cfg.flat()
    keys = ["model.name"] + (["pretrain.registered_model"] if cfg.model.name == TINY_BASE else [])
    for key in keys:
        theirs = run.data.params.get(key)
        if theirs is not None and theirs != str(ours[key]):
            raise UserError(
                f"{flag} {run.info.run_id}: trained with {key}={theirs}, preset {cfg.preset} has {key}={ours[key]}; "
                f"pass --preset {run.data.tags.get(tracking.TAG_PRESET, '?')}"
            )


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, name)
    except AttributeError:
        raise UserError(f"model.dtype {name!r} is not a torch dtype") from None


def load_tokenizer(cfg: Config, path: str | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path or resolve_base_model(cfg))


def load_model(cfg: Config, path: str | None = None):
    from transformers import AutoModelForCausalLM

    from reverse_align import attention
    from reverse_align.preflight import AUTO_ATTENTION, Machine, resolve_attention

    implementation = cfg.model.attn_implementation
    if implementation == AUTO_ATTENTION:
        implementation = resolve_attention(implementation, Machine.detect())
    if implementation == attention.NAME:
        attention.register()

    model = AutoModelForCausalLM.from_pretrained(
        path or resolve_base_model(cfg),
        dtype=torch_dtype(cfg.model.dtype),
        attn_implementation=implementation,
    )
    if cfg.model.compile_layers:
        # Layer by layer (dynamic shapes): every packed length reuses one graph, and the trainer, peft and the
        # fused LM-head loss still see a plain module tree.
        for layer in model.model.layers:
            layer.compile(dynamic=True)
    return model
