"""A flow command killed with SIGKILL leaves nothing behind (flows/session.py): Prefect's
temporary API server dies with it, and its flow run ends Crashed when the next flow starts.

Real processes and signals: a tiny flow run through ``flows.entry.main`` (what ``python -m
flows.<stage>`` runs) without ``PREFECT_API_URL``, its Prefect database under a temporary
``PREFECT_HOME``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO
from zerosearch.tether import process_start_time

TINY_FLOW = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from prefect import flow, task
    from flows.entry import main

    @task
    def step(marker: str, sleep_s: float) -> int:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(sleep_s)
        return 1

    @flow(name="tiny")
    def tiny(params: str) -> dict:
        step(os.environ["TINY_MARKER"], float(os.environ["TINY_SLEEP"]))
        return {}

    if __name__ == "__main__":
        main(tiny, sys.argv[1])
""")

READ_RUNS = textwrap.dedent("""
    import json
    from prefect import get_client
    from flows.session import flow_session
    with flow_session(), get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        tasks = client.read_task_runs()
    print(json.dumps({
        "flows": [{"name": r.name, "state": r.state_type.value, "message": r.state.message, "tags": r.tags}
                  for r in runs],
        "tasks": [{"flow_run": str(t.flow_run_id), "state": t.state_type.value} for t in tasks],
        "ids": {r.name: str(r.id) for r in runs}}))
""")


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    return {**env, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / ".prefect"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "TINY_MARKER": str(tmp_path / "marker"),
            **extra}


def _start_tiny_flow(tmp_path, sleep_s: float) -> subprocess.Popen:
    script = tmp_path / "tiny_flow.py"
    script.write_text(TINY_FLOW)
    return subprocess.Popen([sys.executable, str(script), str(REPO / "params.yaml")], cwd=REPO,
                            env=_env(tmp_path, TINY_SLEEP=str(sleep_s)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_inside_the_flow(proc: subprocess.Popen, tmp_path) -> None:
    marker = tmp_path / "marker"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, f"the flow command died early:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "the flow never started its task"
        time.sleep(0.2)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of every live (non-zombie) process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] not in ("Z", "X"):
            out[int(name)] = (int(fields[1]), cmdline)
    return out


def _descendants(pid: int) -> dict[int, str]:
    procs, found, frontier = _processes(), {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, cmd) in procs.items():
            if ppid == parent and child not in found:
                found[child] = cmd
                frontier.append(child)
    return found


@pytest.mark.slow
def test_sigkill_of_a_flow_command_stops_prefects_temporary_server(tmp_path):
    proc = _start_tiny_flow(tmp_path, sleep_s=300)
    try:
        _wait_inside_the_flow(proc, tmp_path)
        tree = _descendants(proc.pid)
        servers = [cmd for cmd in tree.values() if "uvicorn" in cmd]
        # one API server, ours, under the tether: Prefect started none of its own
        assert servers and all("flows.session:ephemeral_app" in cmd for cmd in servers), tree
        assert any("zerosearch.tether" in cmd for cmd in tree.values()), tree
    finally:
        proc.kill()
        proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while (left := set(tree) & set(_processes())) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not left, f"outlived the SIGKILLed command: {[tree[p] for p in left]}"


@pytest.mark.slow
def test_a_flow_run_of_a_killed_command_ends_crashed_when_the_next_flow_starts(tmp_path):
    killed = _start_tiny_flow(tmp_path, sleep_s=300)
    try:
        _wait_inside_the_flow(killed, tmp_path)
    finally:
        killed.kill()
        killed.wait(timeout=30)
    (tmp_path / "marker").unlink()
    nxt = _start_tiny_flow(tmp_path, sleep_s=0)
    out, _ = nxt.communicate(timeout=300)
    assert nxt.returncode == 0, out[-3000:]
    assert "marked Crashed 1 flow run(s) of processes that are gone" in out, out[-3000:]

    read = subprocess.run([sys.executable, "-c", READ_RUNS], cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300, check=True)
    runs = json.loads(read.stdout.splitlines()[-1])
    by_owner = {next(t for t in r["tags"] if t.startswith("zerosearch-owner:")).split(":")[2]: r
                for r in runs["flows"]}
    first, second = by_owner[str(killed.pid)], by_owner[str(nxt.pid)]
    assert first["state"] == "CRASHED" and f":{killed.pid}:" in first["message"] and "is gone" in first["message"]
    assert second["state"] == "COMPLETED"
    first_tasks = [t["state"] for t in runs["tasks"] if t["flow_run"] == runs["ids"][first["name"]]]
    assert first_tasks == ["CRASHED"]  # its task, Running when the process was killed, too


def test_an_owner_is_gone_once_its_process_is_or_its_pid_was_reused():
    from flows.session import OWNER_PREFIX, owner_gone, owner_tag

    me = owner_tag()
    host = socket.gethostname()
    assert me == f"{OWNER_PREFIX}{host}:{os.getpid()}:{process_start_time(os.getpid())}"
    assert not owner_gone(me)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert owner_gone(f"{OWNER_PREFIX}{host}:{child.pid}:{12345}")  # no such process any more
    assert owner_gone(f"{OWNER_PREFIX}{host}:{os.getpid()}:{process_start_time(os.getpid()) + 1}")  # pid reused
    assert not owner_gone(f"{OWNER_PREFIX}another-host:{child.pid}:1")  # nothing to tell from here
    assert not owner_gone(f"{OWNER_PREFIX}not-a-tag")
