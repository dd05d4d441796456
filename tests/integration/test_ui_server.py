"""The MLflow UI's server over the store our stages wrote: its REST API and screenshots of its pages."""

from __future__ import annotations

import json
import os
import shutil
import struct
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import pytest

from reverse_align import tracking, ui_screenshots


@pytest.fixture(scope="module")
def store_server(micro_sft):
    """A real `mlflow server` on 127.0.0.1 over the session's sqlite file (the one the stages wrote)."""
    uri = os.environ["MLFLOW_TRACKING_URI"]
    assert uri.startswith("sqlite:///")
    with ui_screenshots.serve(uri) as base:
        yield base


def _get(base: str, endpoint: str, **query) -> dict:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.load(r)


def _post(base: str, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


def test_rest_api_lists_the_runs_with_tags_and_full_metric_histories(store_server, micro_sft, micro_invert, client):
    experiment = _get(store_server, "experiments/get-by-name", experiment_name=tracking.DEFAULT_EXPERIMENT)[
        "experiment"
    ]
    assert {t["key"]: t["value"] for t in experiment["tags"]}[
        tracking.TAG_EXPERIMENT_KIND
    ] == "custom_model_development"
    found = _post(
        store_server, "runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "filter": f"tags.`{tracking.TAG_STAGE}` = 'sft'", "max_results": 1000},
    )["runs"]  # fmt: skip
    by_id = {r["info"]["run_id"]: r for r in found}
    assert micro_sft in by_id
    # Every listed run is what the sqlite store holds: status, tags, latest metrics.
    for run_id, listed in by_id.items():
        stored = client.get_run(run_id)
        assert listed["info"]["status"] == stored.info.status
        # Proto JSON leaves out empty lists (a run that failed before logging a metric has none).
        assert {t["key"]: t["value"] for t in listed["data"].get("tags", [])} == stored.data.tags
        assert {m["key"]: m["value"] for m in listed["data"].get("metrics", [])} == pytest.approx(stored.data.metrics)
    tags = {t["key"]: t["value"] for t in by_id[micro_sft]["data"]["tags"]}
    assert tags[tracking.TAG_STAGE] == "sft" and tags[tracking.TAG_PRESET] == "micro"
    assert tags[tracking.tag_upstream("invert")] == micro_invert
    # The full per-step history of every metric, as the client reads it from the sqlite file.
    stored = client.get_run(micro_sft)
    assert len(client.get_metric_history(micro_sft, "train/loss")) >= 4
    for key in stored.data.metrics:
        served = _get(store_server, "metrics/get-history", run_id=micro_sft, metric_key=key)["metrics"]
        direct = client.get_metric_history(micro_sft, key)
        assert sorted((m["step"], m["timestamp"], m["value"]) for m in served) == sorted(
            (m.step, m.timestamp, m.value) for m in direct
        ), key
    losses = sorted(
        _get(store_server, "metrics/get-history", run_id=micro_sft, metric_key="train/loss")["metrics"],
        key=lambda m: m["step"],
    )
    assert [m["step"] for m in losses] == sorted({m["step"] for m in losses}) and losses[0]["value"] != losses[-1][
        "value"
    ]


def _png_size_and_spread(path: Path) -> tuple[int, int, float]:
    """(width, height, standard deviation of the grey levels) of an 8-bit RGB(A) PNG, read with the stdlib."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour = header[:4]
    assert depth == 8 and colour in (2, 6)
    channels = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * channels, [], bytearray(width * channels)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(line[::channels])  # the red channel: enough to tell a page from a blank one
        prev = line
    values = [v for row in rows[::10] for v in row[::10]]
    mean = sum(values) / len(values)
    return width, height, (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


@pytest.mark.skipif(
    not any(shutil.which(b) for b in ui_screenshots.BROWSERS),
    reason="Chromium is not on PATH (apt-get install chromium)",
)
def test_capture_saves_the_charts_and_the_model_page(store_server, micro_base, micro_sft, client, tmp_path):
    from reverse_align.config import load_config
    from reverse_align.eval.stage import run_evaluate

    # An evaluated SFT run: the charts show eval scores (taller page), not training loss.
    if tracking.METRIC_EVAL_AVERAGE not in client.get_run(micro_sft).data.metrics:
        cfg = load_config("micro", ["eval.limit=5", "eval.max_new_tokens=16", "eval.benchmarks=synthetic_forward"])
        run_evaluate(cfg, run_id=micro_sft)
    model = "reverse-align-tiny-base-micro"  # registered by the micro pretrain run
    paths = ui_screenshots.capture(store_server, tracking.DEFAULT_EXPERIMENT, tmp_path / "ui", model)
    assert [p.name for p in paths] == [ui_screenshots.FILE_CHARTS, ui_screenshots.FILE_MODEL]
    for path, size in zip(paths, (ui_screenshots.EVAL_CHARTS_WINDOW, ui_screenshots.WINDOW)):
        width, height, spread = _png_size_and_spread(path)
        assert (width, height) == size
        assert spread > 10, f"{path.name} looks blank (grey-level spread {spread:.1f})"


def test_capture_without_chromium_is_one_line_of_bad_input(monkeypatch, tmp_path):
    from reverse_align.errors import UserError

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="Chromium"):
        ui_screenshots.capture("sqlite:///unused.db", "reverse-align", tmp_path, "m")


def test_capture_refuses_a_missing_model_or_experiment(store_server, tmp_path):
    from reverse_align.errors import UserError

    if not any(shutil.which(b) for b in ui_screenshots.BROWSERS):
        pytest.skip("Chromium is not on PATH (apt-get install chromium)")
    with pytest.raises(UserError, match="no registered model 'no-such-model'"):
        ui_screenshots.capture(store_server, tracking.DEFAULT_EXPERIMENT, tmp_path, "no-such-model")
    with pytest.raises(UserError, match="no experiment 'no-such-experiment'"):
        ui_screenshots.capture(store_server, "no-such-experiment", tmp_path, "reverse-align-tiny-base-micro")
    assert list(tmp_path.iterdir()) == []
