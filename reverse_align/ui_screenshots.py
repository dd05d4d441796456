"""Screenshots of the MLflow UI over a store: the SFT runs compared in charts, and a registered model's page.

:func:`capture` serves the store with ``mlflow server`` on 127.0.0.1 (or uses an ``http(s)`` tracking
URI as it is), opens each page in headless Chromium through its DevTools protocol, waits until the
React app has drawn what the page is for (charts, model versions), and saves 1600 px wide PNGs. The
``report`` stage logs them under ``figures/ui/``.

The pages, as MLflow 3.17's UI reads its URL (``mlflow/server/js/build``):
- charts: ``#/experiments/<id>/runs?searchFilter=tags.`reverse_align.stage` = 'sft'&compareRunsMode=CHART``
  with ``orderByKey=tags.`mlflow.runName``` (any order but start time lists child runs flat, not folded
  under their ``main`` run) and ``workflowType=machine_learning`` (else the UI opens as GenAI). When
  some SFT run has been evaluated (``evaluate`` copies its scores onto it), the filter keeps those
  runs (``metrics.`eval/average` >= 0``) and the chart search box is set to ``eval/``: one bar per
  run for each benchmark and the average, Table 1 in the UI. Otherwise it is set to ``loss`` and
  every SFT run's training curve is shown.
- model: ``#/models/<name>?workflowType=machine_learning``: its versions, aliases and source runs.

Chromium's own ``--screenshot`` shoots after a fixed virtual time, before the metric histories
arrive; hence the DevTools client (aiohttp, a dependency of ``datasets``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from reverse_align import tracking
from reverse_align.errors import UserError

WINDOW = (1600, 1000)
# The eval charts: the UI gives each of eval/average and eval/<benchmark>/accuracy a section of its own
# (about 430 px high), so four sections need a taller page to show at once.
EVAL_CHARTS_WINDOW = (1600, 2050)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "chrome-headless-shell")
SERVER_START_S = 180.0  # `mlflow server` on a fresh sqlite file migrates its tables first (tens of seconds on 2 cores)
PAGE_READY_S = 90.0  # the React app, its metric histories and plotly's drawing
SETTLE_S = 1.5  # after the page looks ready: animations, the last chart's axes
EVAL_SEARCH = "eval/"  # evaluate's scores on the SFT runs: accuracy per benchmark and the average
LOSS_SEARCH = "loss"  # before any evaluation: train/loss per step (and its epoch means)

SFT_FILTER = f"tags.`{tracking.TAG_STAGE}` = 'sft'"
EVALUATED_FILTER = f"metrics.`{tracking.METRIC_EVAL_AVERAGE}` >= 0"  # evaluate has copied its scores onto the run

FILE_CHARTS = "sft_runs_chart.png"
FILE_MODEL = "registered_model.png"

# Ready when: at least one chart has drawn a line or bar, and no chart is still loading.
_CHARTS_READY = """(() => {
  const plots = document.querySelectorAll('.js-plotly-plot');
  const drawn = [...plots].filter(p => p.querySelector('.scatterlayer .trace, .barlayer .trace'));
  const loading = document.querySelectorAll('[data-testid="experiment-view-compare-runs-chart-area"] .anticon-loading, [class*="Spinner"]');
  return drawn.length > 0 && drawn.length === plots.length && loading.length === 0;
})()"""
# Ready when the model page lists its versions (links to /versions/<n>).
_MODEL_READY = """(() => document.querySelectorAll('a[href*="/versions/"]').length > 0)()"""
# The assistant side panel takes a quarter of the window: closed when it is open.
_CLOSE_ASSISTANT = """(() => {
  const close = document.querySelector('button[data-component-id="mlflow.assistant.chat_panel.close"]');
  if (close) close.click();
  return !!close;
})()"""


def find_browser() -> str:
    """Path of a Chromium-family browser on PATH, or bad input saying how to get one."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise UserError(
        "UI screenshots need Chromium on PATH (apt-get install chromium, or set PATH); none of "
        + ", ".join(BROWSERS)
        + " found"
    )


def charts_url(base: str, experiment_id: str, search_filter: str = SFT_FILTER) -> str:
    query = urllib.parse.urlencode(
        {
            "searchFilter": search_filter,
            "orderByKey": f"tags.`{tracking.TAG_RUN_NAME}`",
            "orderByAsc": "true",
            "compareRunsMode": "CHART",
            "workflowType": "machine_learning",
        },
        quote_via=urllib.parse.quote,
    )
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def model_url(base: str, model_name: str) -> str:
    return f"{base.rstrip('/')}/#/models/{urllib.parse.quote(model_name, safe='')}?{tracking.UI_WORKFLOW_PARAM}"


def capture(tracking_uri: str, experiment_name: str, out_dir: Path, model_name: str) -> list[Path]:
    """Save ``sft_runs_chart.png`` and ``registered_model.png`` of the store's UI in ``out_dir``; their paths."""
    browser = find_browser()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with serve(tracking_uri) as base:
        experiment = _get_json(base, "experiments/get-by-name", experiment_name=experiment_name)
        if "experiment" not in experiment:
            raise UserError(f"no experiment {experiment_name!r} in {_redacted(tracking_uri)}")
        if "registered_model" not in _get_json(base, "registered-models/get", name=model_name):
            raise UserError(f"no registered model {model_name!r} in {_redacted(tracking_uri)}")
        experiment_id = experiment["experiment"]["experiment_id"]

        def any_run(search_filter: str) -> bool:
            found = _post_json(
                base, "runs/search", {"experiment_ids": [experiment_id], "max_results": 1, "filter": search_filter}
            )
            return bool(found.get("runs"))

        if not any_run(SFT_FILTER):
            raise UserError(f"experiment {experiment_name!r} has no sft run to chart")
        evaluated = f"{SFT_FILTER} and {EVALUATED_FILTER}"
        if any_run(evaluated):
            charts = (charts_url(base, experiment_id, evaluated), _CHARTS_READY, EVAL_SEARCH, EVAL_CHARTS_WINDOW)
        else:
            charts = (charts_url(base, experiment_id), _CHARTS_READY, LOSS_SEARCH, WINDOW)
        pages = [
            (*charts, out_dir / FILE_CHARTS),
            (model_url(base, model_name), _MODEL_READY, None, WINDOW, out_dir / FILE_MODEL),
        ]  # fmt: skip
        with chromium(browser) as ws_url:
            asyncio.run(_shoot_all(ws_url, pages))
    return [path for *_, path in pages]


@contextlib.contextmanager
def serve(tracking_uri: str) -> Iterator[str]:
    """The UI's base URL: the tracking URI itself for an MLflow server, else ``mlflow server`` over the store."""
    if tracking_uri.startswith(("http://", "https://")):
        yield tracking_uri.rstrip("/")
        return
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--backend-store-uri", tracking_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_http(base + "/health", SERVER_START_S, server, log)
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@contextlib.contextmanager
def chromium(browser: str) -> Iterator[str]:
    """Headless Chromium with its DevTools endpoint; yields the first page's websocket URL."""
    # Chromium's helper processes may still touch the profile as it goes: never fail over removing it.
    with tempfile.TemporaryDirectory(prefix="reverse-align-chromium-", ignore_cleanup_errors=True) as profile:
        command = [
            browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
            "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "about:blank",
        ]  # fmt: skip
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{browser} did not open its DevTools port (exit code {proc.poll()})")
                time.sleep(0.1)
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                targets = json.load(response)
            yield next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """The browser and every helper process it started (its own session: one process group)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class DevTools:
    """The few Chrome DevTools Protocol calls a screenshot needs, over one page's websocket."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=PAGE_READY_S)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"DevTools {method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not await self.evaluate(expression):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the MLflow UI did not show {what} within {timeout:.0f}s")
            await asyncio.sleep(0.5)


async def _shoot_all(ws_url: str, pages) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        devtools = DevTools(ws)
        await devtools.call("Page.enable")
        for url, ready, charts_search, (width, height), path in pages:
            await devtools.call(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
            )
            await devtools.call("Page.navigate", url=url)
            await devtools.wait_for(
                "document.readyState === 'complete' && !!document.querySelector('#root *')", PAGE_READY_S, url
            )
            await asyncio.sleep(SETTLE_S)
            await devtools.evaluate(_CLOSE_ASSISTANT)
            if charts_search:
                await devtools.wait_for(
                    "!!document.querySelector('input[placeholder=\"Search metric charts\"]')",
                    PAGE_READY_S,
                    "the charts' search box",
                )
                await devtools.evaluate("document.querySelector('input[placeholder=\"Search metric charts\"]').focus()")
                await devtools.call("Input.insertText", text=charts_search)
            await devtools.wait_for(ready, PAGE_READY_S, path.stem.replace("_", " "))
            # No focus ring on the search box, no hover toolbar over a chart.
            await devtools.evaluate("document.activeElement && document.activeElement.blur()")
            await devtools.call("Input.dispatchMouseEvent", type="mouseMoved", x=width - 2, y=height - 2)
            await asyncio.sleep(SETTLE_S)
            shot = await devtools.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
            path.write_bytes(base64.b64decode(shot["data"]))


def _get_json(base: str, endpoint: str, **query) -> dict:
    import urllib.error

    url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        raise


def _post_json(base: str, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _wait_http(url: str, timeout: float, server: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"mlflow server exited with code {server.returncode}: {' '.join(tail)}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer {url} within {timeout:.0f}s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redacted(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if parts.password:
        return uri.replace(f":{parts.password}@", ":***@")
    return uri
