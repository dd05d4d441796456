"""A study as the `main` run recorded it: ``main/stages.json`` and the runs it names.

Any key may be missing (a partial study, a stage that failed): lookups return None and the
report says what is missing. Runs, metrics and per-sample tables are fetched once each.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from reverse_align import tracking
from reverse_align.errors import UserError

# The report downloads dozens of small artifacts: no progress bar for each in its output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

SFT_MIXES = ("forward", "reverse", "mixed", "mixed_half")
DPO_ON = ("forward", "reverse", "mixed", "direct")
PROBE_ON = ("forward", "reverse", "mixed")
# Benchmarks in the order tables show them: the paper's, then the tiny world's, then any other (sorted).
BENCHMARK_ORDER = ("aime24", "math500", "gpqa", "synthetic_forward", "synthetic_reverse", "synthetic_transfer")
_SEED_KEY = re.compile(r"(?:\.base(\d+))?\.seed(\d+)$")
_ACCURACY = re.compile(r"^eval/(.+)/accuracy$")


def _client():
    return _client_for(tracking.tracking_uri())


@functools.cache
def _client_for(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def load_json_artifact(run_id: str, path: str):
    """A run's JSON artifact, or None when the run does not hold it."""
    from mlflow.exceptions import MlflowException

    directory = str(Path(path).parent)
    try:
        listed = {a.path for a in _client().list_artifacts(run_id, None if directory == "." else directory)}
        if path not in listed:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = _client().download_artifacts(run_id, path, tmp)
            return json.loads(Path(local).read_text())
    except (MlflowException, OSError, ValueError):
        return None


def find_main_run(experiment: str, main_run_id: str = ""):
    """(main run, stages.json) of ``--main_run_id``, else of the newest `main` run in ``experiment`` that has one."""
    from mlflow.exceptions import MlflowException

    client = _client()
    if main_run_id:
        try:
            run = client.get_run(main_run_id)
        except MlflowException:
            raise UserError(f"--main_run_id {main_run_id}: no such run in {tracking.tracking_uri()}") from None
        stage = run.data.tags.get(tracking.TAG_STAGE)
        if stage != "main":
            raise UserError(f"--main_run_id {main_run_id}: is a {stage or 'non-reverse-align'} run, expected main")
        stages = load_json_artifact(main_run_id, tracking.ARTIFACT_MAIN_STAGES)
        if not isinstance(stages, dict):
            raise UserError(f"--main_run_id {main_run_id}: has no readable {tracking.ARTIFACT_MAIN_STAGES}")
        return run, stages
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise UserError(f"--experiment {experiment}: no such experiment in {tracking.tracking_uri()}")
    runs = client.search_runs(
        [found.experiment_id], f"tags.`{tracking.TAG_STAGE}` = 'main'", order_by=["attributes.start_time DESC"]
    )
    for run in runs:
        stages = load_json_artifact(run.info.run_id, tracking.ARTIFACT_MAIN_STAGES)
        if isinstance(stages, dict):
            return run, stages
    raise UserError(
        f"--experiment {experiment}: no main run with {tracking.ARTIFACT_MAIN_STAGES} "
        f"({len(runs)} main runs); run `reverse-align main` first or pass --main_run_id"
    )


@dataclass
class Study:
    main_run_id: str
    stages: dict
    _runs: dict = field(default_factory=dict)
    _samples: dict = field(default_factory=dict)

    @property
    def preset(self) -> str:
        return str(self.stages.get("preset") or "")

    @property
    def keys(self) -> dict[str, str]:
        runs = self.stages.get("runs")
        return {str(k): str(v) for k, v in runs.items() if v} if isinstance(runs, dict) else {}

    @property
    def seeds(self) -> list[int]:
        """The declared seeds, with any seed a run key names (a study's seed list may be cut short)."""
        declared = {int(s) for s in self.stages.get("seeds") or [] if str(s).lstrip("-").isdigit()}
        named = {int(m.group(2)) for k in self.keys if (m := _SEED_KEY.search(k))}
        return sorted(declared | named) or [0]

    @property
    def bases(self) -> list[int]:
        """The study's base models (pretrain seeds; one on paper presets and in studies before bases)."""
        declared = {int(b) for b in self.stages.get("bases") or [] if str(b).lstrip("-").isdigit()}
        named = {int(m.group(1)) for k in self.keys if (m := _SEED_KEY.search(k)) and m.group(1) is not None}
        return sorted(declared | named) or [0]

    @property
    def several_bases(self) -> bool:
        return len(self.bases) > 1

    @property
    def replicates(self) -> list[tuple[int, int]]:
        """Every (base, training seed) of the grid."""
        return [(b, s) for b in self.bases for s in self.seeds]

    def replicate_key(self, prefix: str, replicate: tuple[int, int]) -> str:
        """``eval.sft.forward`` + (1, 0) -> ``eval.sft.forward.base1.seed0`` (``.seed0`` with one base)."""
        base, seed = replicate
        return f"{prefix}.base{base}.seed{seed}" if self.several_bases else f"{prefix}.seed{seed}"

    def base_key(self, name: str, base: int) -> str:
        """``eval.base`` of one base: ``eval.base.base1`` when the study has several."""
        return f"{name}.base{base}" if self.several_bases else name

    def run(self, key: str):
        """The run named ``key`` in stages.json, or None (no such key, or the run is gone)."""
        from mlflow.exceptions import MlflowException

        run_id = self.keys.get(key)
        if not run_id:
            return None
        if run_id not in self._runs:
            try:
                self._runs[run_id] = _client().get_run(run_id)
            except MlflowException:
                self._runs[run_id] = None
        return self._runs[run_id]

    def metric(self, key: str, name: str) -> float | None:
        run = self.run(key)
        return None if run is None else run.data.metrics.get(name)

    def seed_values(self, prefix: str, name: str) -> dict[tuple[int, int], float]:
        """``{(base, seed): metric}`` over the runs ``<prefix>[.base<b>].seed<s>`` that logged ``name``."""
        out = {}
        for replicate in self.replicates:
            value = self.metric(self.replicate_key(prefix, replicate), name)
            if value is not None:
                out[replicate] = value
        return out

    def base_values(self, name: str) -> dict[int, float]:
        """``{base: metric}`` of each base model's own evaluation (``eval.base``)."""
        out = {}
        for base in self.bases:
            value = self.metric(self.base_key("eval.base", base), name)
            if value is not None:
                out[base] = value
        return out

    def base_by_replicate(self, name: str) -> dict[tuple[int, int], float]:
        """The base model's metric beside each replicate trained on it (what Δ vs base pairs with)."""
        bases = self.base_values(name)
        return {r: bases[r[0]] for r in self.replicates if r[0] in bases}

    def benchmarks(self) -> list[str]:
        """Every benchmark with an accuracy in any eval run of the study, in table order."""
        found = set()
        for key in self.keys:
            if key.startswith("eval."):
                run = self.run(key)
                found |= {m.group(1) for name in (run.data.metrics if run else {}) if (m := _ACCURACY.match(name))}
        known = [b for b in BENCHMARK_ORDER if b in found]
        return known + sorted(found - set(known))

    def samples(self, key: str, benchmark: str) -> list[dict] | None:
        """Rows of an eval run's ``eval/samples/<benchmark>.json`` (an MLflow table: columns + data)."""
        cache_key = (key, benchmark)
        if cache_key not in self._samples:
            run_id = self.keys.get(key)
            table = load_json_artifact(run_id, f"{tracking.ARTIFACT_EVAL_SAMPLES}/{benchmark}.json") if run_id else None
            rows = None
            if isinstance(table, dict) and "columns" in table and "data" in table:
                rows = [dict(zip(table["columns"], values)) for values in table["data"]]
            self._samples[cache_key] = rows
        return self._samples[cache_key]

    def expected_keys(self) -> list[str]:
        """Every key a whole study has (pretrain only on tiny presets, so not expected)."""
        keys = ["data", "invert", *(self.base_key("eval.base", b) for b in self.bases), "sweep"]
        for r in self.replicates:
            keys += [self.replicate_key(f"sft.{mix}", r) for mix in SFT_MIXES]
            keys += [self.replicate_key(f"eval.sft.{mix}", r) for mix in SFT_MIXES]
            keys += [self.replicate_key(f"dpo.{on}", r) for on in DPO_ON]
            keys += [self.replicate_key(f"eval.dpo.{on}", r) for on in DPO_ON]
        keys += [f"probe.{on}" for on in PROBE_ON]
        return keys

    def missing(self) -> list[str]:
        """Expected keys stages.json lacks, and keys whose run is not in the store."""
        absent = [k for k in self.expected_keys() if k not in self.keys]
        gone = [k for k in self.keys if self.run(k) is None]
        return absent + [f"{k} (run {self.keys[k]} not found)" for k in gone]
