"""No server outlives the process that started it: a real parent process serves the fake
simulator (``tests/fake_server.py``, which also forks a child), then is ended by SIGTERM,
SIGHUP or SIGKILL; the server and its child must be gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO
from tests.test_serving import FAKE, alive, read_pid, wait_gone
from zerosearch.tether import tethered

PARENT = textwrap.dedent("""
    import sys, time
    from zerosearch.serving import ServerSpec, serve_simulator
    from zerosearch.tether import exit_on_termination_signals
    exit_on_termination_signals()
    fake, pid_file, child_file, ready = sys.argv[1:5]
    cmd = (sys.executable, fake, "--host", "{host}", "--port", "{port}", "--pid-file", pid_file,
           "--child-pid-file", child_file)
    with serve_simulator(ServerSpec(backend="transformers", model="fake", command=cmd),
                         startup_timeout=30, poll_interval=0.1, stop_timeout=2):
        open(ready, "w").write("up")
        time.sleep(120)
""")


def start_parent(tmp_path):
    files = [tmp_path / n for n in ("pid", "child", "ready")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, FAKE, *map(str, files)], env=env)
    server, child = read_pid(files[0], 30), read_pid(files[1], 30)
    for _ in range(300):
        if files[2].exists():
            break
        assert parent.poll() is None, "parent died before the server was up"
        time.sleep(0.1)
    assert alive(server) and alive(child)
    return parent, server, child


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_to_the_parent_stops_its_server(tmp_path, sig):
    parent, server, child = start_parent(tmp_path)
    parent.send_signal(sig)
    assert parent.wait(timeout=20) == 128 + sig  # it left through its cleanup, not killed
    assert wait_gone(server, child), "server or its child outlived the parent"


def test_sigkill_of_the_parent_still_stops_its_server(tmp_path):
    parent, server, child = start_parent(tmp_path)
    parent.kill()
    parent.wait(timeout=10)
    assert wait_gone(server, child, timeout=15), "the tether did not stop the orphaned server"


def test_tether_passes_the_exit_code_through(tmp_path):
    cmd = tethered([sys.executable, "-c", "import sys; sys.exit(7)"])
    assert cmd[:3] == [sys.executable, "-m", "zerosearch.tether"] and cmd[4:6] == ["10", "--"]
    assert subprocess.run(cmd, check=False, env={**os.environ, "PYTHONPATH": str(REPO)}).returncode == 7


def test_a_tether_started_in_its_callers_group_stops_only_its_own(tmp_path):
    """Started without ``start_new_session``, the tether leads a session of its own before it
    runs the command: stopping the server's group never signals the caller (before, the tether's
    group was the caller's, and SIGTERM to the tether killed the caller and its shell)."""
    caller = textwrap.dedent("""
        import subprocess, sys, time
        from zerosearch.tether import tethered
        tether = subprocess.Popen(tethered([sys.executable, "-c", "import time; time.sleep(60)"], grace_s=2))
        time.sleep(1.5)
        tether.terminate()
        print("tether", tether.wait(timeout=20), flush=True)
        time.sleep(0.5)
        print("caller alive")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", caller], env=env, capture_output=True, text=True, timeout=60,
                          start_new_session=True, check=False)
    assert proc.returncode == 0 and "caller alive" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr)
