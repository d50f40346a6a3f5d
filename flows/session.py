"""What every zerosearch command that runs a flow wraps it in: ``with flow_session(): flow(...)``.

Two faults of Prefect's defaults, fixed here (docs/RELIABILITY.md):

1. Without ``PREFECT_API_URL`` Prefect starts a temporary API server (~200 MB) as a plain
   subprocess, stopped only by ``atexit``: SIGKILL of the command leaves it running.
   ``temporary_api()`` starts the same server (``prefect.server.api.server.create_app`` with
   ``ephemeral=True``: no UI, the ephemeral set of services, the same database under
   ``PREFECT_HOME``) under ``zerosearch.tether``, which stops it when this process is gone,
   whatever ended it, and points ``PREFECT_API_URL`` at it (this process and its children:
   a stage that ``dvc exp run`` starts, a rank of ``accelerate launch``, use this server
   instead of starting their own). Prefect then never starts its own. A configured
   ``PREFECT_API_URL``, or ephemeral mode turned off, is left as it is.
2. A flow run whose process was SIGKILLed stays "Running" in the Prefect database forever.
   Every flow run started in a session carries an owner tag
   (``zerosearch-owner:<host>:<pid>:<process start time>``), and the session first marks
   Crashed each run still Running / Pending / Cancelling whose owner on this host is gone
   (the start time tells a reused pid from the owner), with its unfinished task runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prefect import get_client, tags
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.context import refresh_global_settings_context
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogHandler
from prefect.server.api.server import create_app
from prefect.settings import get_current_settings
from prefect.states import Crashed

from zerosearch.tether import process_start_time, tethered

OWNER_PREFIX = "zerosearch-owner:"
UNFINISHED = [StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]
STOP_GRACE_S = 5.0


def ephemeral_app():
    """The app the tethered server serves (``uvicorn --factory flows.session:ephemeral_app``):
    Prefect's own, as its temporary server builds it (no UI, the ephemeral services)."""
    return create_app(ephemeral=True, final=True)


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def server_command(port: int) -> list[str]:
    """The tethered command line of the temporary API server on ``port``."""
    return tethered([sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).resolve().parents[1]),
                     "--factory", "flows.session:ephemeral_app", "--host", "127.0.0.1", "--port", str(port),
                     "--log-level", "error", "--lifespan", "on"], grace_s=STOP_GRACE_S)


def _start_server(timeout_s: float) -> tuple[subprocess.Popen, str]:
    settings = get_current_settings()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", **settings.to_environment_variables(exclude_unset=True)}
    for _ in range(3):  # a port taken between the probe and the bind: another one
        port = _free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        proc = subprocess.Popen(server_command(port), env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if _healthy(api_url):
                return proc, api_url
            time.sleep(0.1)
        if proc.poll() is None:
            _stop(proc)
            raise RuntimeError(f"the temporary Prefect API server did not answer within {timeout_s:g} s "
                               "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
    raise RuntimeError(f"the temporary Prefect API server exited at start (code {proc.returncode})")


def _flush_to_api() -> None:
    """Send what Prefect still queues for the API (logs, events) while the server lives: at exit
    it would send it to a server already stopped."""
    for logger in [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)] + [logging.getLogger()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, APILogHandler):
                handler.flush()
    EventsWorker.drain_all(timeout=STOP_GRACE_S)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()  # the tether stops the server's whole process group
    try:
        proc.wait(timeout=STOP_GRACE_S + 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in this process's environment (and so its children's) and its Prefect
    settings: the global settings every thread reads."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    refresh_global_settings_context()
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        refresh_global_settings_context()


@contextlib.contextmanager
def temporary_api() -> Iterator[str | None]:
    """A Prefect API for the block: the configured one, or a temporary server tethered to this
    process (None when there is neither: ephemeral mode off, Prefect then says so)."""
    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        yield settings.api.url
        return
    proc, url = _start_server(settings.server.ephemeral.startup_timeout_seconds)
    # it serves no UI: no "View at" link to one (Prefect infers the UI's address from the API's)
    values = {"PREFECT_API_URL": url, **({} if settings.ui_url else {"PREFECT_UI_URL": ""})}
    try:
        with _environment(values):
            try:
                yield url
            finally:
                _flush_to_api()
    finally:
        _stop(proc)


def owner_tag(pid: int | None = None) -> str:
    """The tag naming the process that runs a flow: host, pid and the pid's start time."""
    pid = os.getpid() if pid is None else pid
    start = process_start_time(pid)
    return f"{OWNER_PREFIX}{socket.gethostname()}:{pid}:{'?' if start is None else start}"


def owner_gone(tag: str, host: str | None = None) -> bool:
    """True when ``tag``'s process ran on this host and is gone (a reused pid is gone too)."""
    try:
        owner_host, pid_s, start = tag[len(OWNER_PREFIX):].rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    if owner_host != (host or socket.gethostname()):
        return False  # another machine's process: nothing tells from here
    now = process_start_time(pid)
    if now is not None:
        return start != "?" and str(now) != start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return start != "?"  # the pid lives but /proc cannot say since when: not provably gone


def crash_orphaned_runs() -> list[str]:
    """Mark Crashed every unfinished flow run (and its unfinished task runs) whose owner on this
    host is gone; returns the names of the flow runs marked."""
    crashed, me = [], owner_tag()
    with get_client(sync_client=True) as client:
        unfinished = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED)))
        runs, page = [], 200
        while len(batch := client.read_flow_runs(flow_run_filter=unfinished, limit=page, offset=len(runs))):
            runs += batch
            if len(batch) < page:
                break
        for run in runs:
            owner = next((t for t in run.tags if t.startswith(OWNER_PREFIX)), None)
            if owner is None or owner == me or not owner_gone(owner):
                continue
            message = (f"the process that ran it ({owner[len(OWNER_PREFIX):]}) is gone; "
                       f"marked by the next zerosearch flow ({me[len(OWNER_PREFIX):]})")
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=UNFINISHED))))
            for task_run in tasks:
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            crashed.append(run.name)
    return crashed


@contextlib.contextmanager
def flow_session() -> Iterator[None]:
    """A tethered API (when none is configured), orphaned runs marked Crashed, and every flow
    run started in the block tagged with this process as its owner."""
    with temporary_api() as url:
        if url is not None:
            try:
                names = crash_orphaned_runs()
            except Exception as e:  # noqa: BLE001 - the sweep must not stop the flow it precedes
                print(f"warning: could not mark orphaned Prefect flow runs Crashed: {e}", file=sys.stderr)
            else:
                if names:
                    print(f"Prefect: marked Crashed {len(names)} flow run(s) of processes that are gone: "
                          f"{', '.join(names)}", file=sys.stderr)
        with tags(owner_tag()):
            yield
