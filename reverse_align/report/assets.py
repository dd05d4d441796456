"""The report's pictures: Figure 2 from the probe runs' metrics, the sweep's figure, MLflow UI screenshots."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import tempfile
from pathlib import Path

from reverse_align import sweep_plots, tracking
from reverse_align.errors import UserError
from reverse_align.probe import figures
from reverse_align.report.study import PROBE_ON, Study

SCREENSHOT_MODULE = "reverse_align.ui_screenshots"
SCREENSHOT_SETTINGS = ("auto", "true", "false")
CHROMIUM = ("chromium", "chromium-browser")


def figure2(study: Study, out_dir: Path) -> dict[str, Path]:
    """``figure2_<pos|neg|margin>.png`` in ``out_dir`` from the probe runs' ``alp/*`` metrics ({} without any)."""
    import matplotlib.pyplot as plt
    import mlflow

    probes = {on: study.keys[f"probe.{on}"] for on in PROBE_ON if study.run(f"probe.{on}") is not None}
    if not any(name.startswith("alp/") for on in probes for name in study.run(f"probe.{on}").data.metrics):
        return {}
    client = mlflow.MlflowClient(tracking.tracking_uri())
    curves = figures.figure2_curves(probes)
    paths = {}
    for kind, name in tracking.REPORT_FIGURES.items():
        fig = figures.draw(client, curves, kind)
        paths[kind] = out_dir / name
        fig.savefig(paths[kind], dpi=110)
        plt.close(fig)
    return paths


def final_margins(study: Study, phase: str) -> dict[str, float]:
    """The last logged margin of each in-distribution curve: (D_f,T_f), (D_r,T_r), (D_m,T_m)."""
    import mlflow

    client = mlflow.MlflowClient(tracking.tracking_uri())
    out = {}
    for on in PROBE_ON:
        if study.run(f"probe.{on}") is None:
            continue
        history = client.get_metric_history(study.keys[f"probe.{on}"], tracking.metric_alp(phase, "margin", on))
        if history:
            out[on] = max(history, key=lambda m: m.step).value
    return out


def margin_line(study: Study) -> str:
    """Whether the mixed margin ends smaller than the single-direction margins (paper: mixed 0.05-0.1)."""
    lines = []
    for phase in tracking.ALP_PHASES:
        margins = final_margins(study, phase)
        if "mixed" not in margins or not ({"forward", "reverse"} & set(margins)):
            continue
        singles = {k: v for k, v in margins.items() if k != "mixed"}
        smaller = all(margins["mixed"] < v for v in singles.values())
        others = ", ".join(f"{v:.3f} (D_{k[0]},T_{k[0]})" for k, v in singles.items())
        verdict = "smaller than" if smaller else "not smaller than every one of"
        lines.append(
            f"after {phase.upper()} the mixed margin (D_m,T_m) ends at {margins['mixed']:.3f}, {verdict} {others}"
        )
    if not lines:
        return "No mixed and single-direction probe margins to compare (probe runs missing)."
    text = "; ".join(lines)
    return text[0].upper() + text[1:] + ". The paper reports a mixed margin of only 0.05-0.1."


def sweep_figure(study: Study, out_dir: Path) -> Path | None:
    """The sweep run's objective-vs-beta figure copied into ``out_dir``, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if study.run("sweep") is None:
        return None
    artifact = f"{tracking.ARTIFACT_FIGURES}/{sweep_plots.OBJECTIVE_VS_BETA}"
    target = out_dir / sweep_plots.OBJECTIVE_VS_BETA
    # Fetched beside, not into, out_dir: its figures/ holds the UI screenshots.
    with tempfile.TemporaryDirectory(prefix="reverse-align-report-") as tmp:
        try:
            local = mlflow.MlflowClient(tracking.tracking_uri()).download_artifacts(study.keys["sweep"], artifact, tmp)
        except (MlflowException, OSError):
            return None
        shutil.move(local, target)
    return target


def _screenshot_setting(setting: str) -> str:
    """``report.screenshots`` as one of SCREENSHOT_SETTINGS, or bad input."""
    setting = str(setting).strip().lower()
    if setting not in SCREENSHOT_SETTINGS:
        raise UserError(f"report.screenshots {setting!r}: expected one of {', '.join(SCREENSHOT_SETTINGS)}")
    return setting


def screenshots_wanted(setting: str) -> bool:
    """``auto``: when the screenshot module imports and chromium is on PATH; ``true``: required."""
    setting = _screenshot_setting(setting)
    if setting == "false":
        return False
    available = importlib.util.find_spec(SCREENSHOT_MODULE) is not None
    if setting == "true":
        if not available:
            raise UserError(
                f"report.screenshots true: {SCREENSHOT_MODULE} is not installed (set report.screenshots=false)"
            )
        return True
    return available and any(shutil.which(name) for name in CHROMIUM)


def screenshots(experiment: str, out_dir: Path, model_name: str, setting: str = "true") -> list[Path]:
    """PNGs of the MLflow UI (reverse_align/ui_screenshots.py) under ``out_dir/figures/ui``.

    With ``auto`` they are a bonus: a browser or page that fails is a warning and the report goes on.
    """
    module = importlib.import_module(SCREENSHOT_MODULE)
    target = out_dir / tracking.ARTIFACT_UI_SCREENSHOTS
    target.mkdir(parents=True, exist_ok=True)
    try:
        return [Path(p) for p in module.capture(tracking.tracking_uri(), experiment, target, model_name)]
    except Exception as exc:
        if _screenshot_setting(setting) == "true":
            raise
        print(f"warning: no MLflow UI screenshots ({type(exc).__name__}: {exc}); report.screenshots=auto goes on without")
        return []
