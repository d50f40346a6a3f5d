"""The MLflow UI and the Prefect UI, checked for real in a headless Chromium.

An MLflow tracking server and a Prefect server run on 127.0.0.1 (temp stores); the data
stage's flow runs against both (as ``dvc repro`` would with ``MLFLOW_TRACKING_URI`` and
``PREFECT_API_URL`` set); Chromium renders the MLflow run page and the Prefect flow-runs page
(``--dump-dom`` after the pages' scripts ran) and the test asserts the run, its metrics and the
flow run are shown. Needs Debian's ``chromium`` (``make browser-deps``); skipped without it.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO, micro_overrides
from zerosearch.serving import free_port, start_process, stop_process_group, wait_healthy
from zerosearch.mlops.server import mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render(url: str, budget_ms: int = 20000) -> str:
    """The page's DOM after its scripts ran (and fetched their data)."""
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}  # the UI's scripts call the API here
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "prefect-server.log"
    proc = start_process([str(REPO / ".venv/bin/prefect") if (REPO / ".venv/bin/prefect").exists() else "prefect",
                          "server", "start", "--host", "127.0.0.1", "--port", str(port)], log, env)
    url = f"http://127.0.0.1:{port}"
    try:  # GET <url>/api/health
        assert wait_healthy(proc, f"{url}/api", time.monotonic() + 120, poll_interval=1.0) == "healthy", log.read_text()
        yield url
    finally:
        stop_process_group(proc, 10.0)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make browser-deps)")
def test_mlflow_and_prefect_uis_show_the_run_and_its_metrics(tmp_path, prefect_server):
    import mlflow

    (tmp_path / "mlflow").mkdir()
    with mlflow_server(tmp_path / "mlflow") as mlflow_url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url, "PREFECT_API_URL": f"{prefect_server}/api",
               "PREFECT_HOME": str(tmp_path / "prefect")}
        env.pop("ZEROSEARCH_TRACKING", None)
        code = ("import json, sys; from flows.data import data_flow; "
                "print(json.dumps(data_flow(sys.argv[1], sys.argv[2:])))")
        out = subprocess.run([sys.executable, "-c", code, str(REPO / "params.yaml"), *micro_overrides(tmp_path)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        stats = json.loads(out.stdout.strip().splitlines()[-1])

        client = mlflow.MlflowClient(tracking_uri=mlflow_url)
        experiment = client.get_experiment_by_name("zerosearch")
        (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.stage = 'data'")
        page = render(f"{mlflow_url}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
        assert "data" in page and run.info.run_id in page
        assert "rows_train" in page and str(stats["rows_train"]) in page  # the metric and its value

    runs = httpx.post(f"{prefect_server}/api/flow_runs/filter", json={}, trust_env=False).json()
    (flow_run,) = [r for r in runs if r["state_type"] == "COMPLETED"]
    page = render(f"{prefect_server}/runs")  # the flow-runs page: the count and the flow filter
    assert "1 run" in page and ">data<" in page
    page = render(f"{prefect_server}/runs/flow-run/{flow_run['id']}")  # its page: name, state, flow
    assert flow_run["name"] in page and "Completed" in page
