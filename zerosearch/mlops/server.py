"""The MLflow tracking server over the repository's ``mlflow.db``: one writer process that every
pipeline process logs to over HTTP (``zerosearch ui`` runs it in the foreground)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from zerosearch.mlops.tracking import MLFLOW_UI_PORT
from zerosearch.serving import (
    ServerStartError,
    console_script,
    free_port,
    port_in_use,
    start_process,
    stop_process_group,
    wait_healthy,
)


def mlflow_server_command(root: str | Path, host: str = "127.0.0.1", port: int = MLFLOW_UI_PORT) -> list[str]:
    """``mlflow server`` over ``<root>/mlflow.db`` (artifacts of new runs in ``<root>/mlartifacts``),
    one worker process: the single writer the pipeline's processes log to over HTTP."""
    root = Path(root).resolve()
    return [console_script("mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "mlartifacts"), "--host", host, "--port", str(port),
            "--workers", "1"]


@contextlib.contextmanager
def mlflow_server(root: str | Path, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 60.0
                  ) -> Iterator[str]:
    """Run an MLflow tracking server for ``root`` and yield its URL once ``/health`` answers."""
    port = port or free_port(host)
    if port_in_use(host, port):
        raise ServerStartError(f"port {port} on {host} is in use: is an MLflow server already running there?")
    url = f"http://{host}:{port}"
    log = Path(root) / "mlflow-server.log"
    proc = start_process(mlflow_server_command(root, host, port), log)
    try:
        state = wait_healthy(proc, url, time.monotonic() + startup_timeout, poll_interval=0.5)  # GET <url>/health
        if state == "exited":
            raise ServerStartError(f"mlflow server exited with code {proc.returncode}; see {log}")
        if state == "timeout":
            raise ServerStartError(f"mlflow server did not answer {url}/health within {startup_timeout:g}s; see {log}")
        yield url
    finally:
        stop_process_group(proc, 10.0)
