"""Servers that die with the process that started them, whatever ends it.

A server the project starts (the simulator's ``transformers serve`` / sglang / vLLM, the
``mlflow server`` of ``zerosearch ui``) runs under a small tether process::

    python -m zerosearch.tether PARENT_PID GRACE_S -- server command ...

The tether leads the server's session (``start_new_session``), so the server and every worker it
forks share its process group. It runs the command, exits with its exit code, and:

- on SIGTERM, SIGHUP or SIGINT, passes SIGTERM to the whole group (SIGKILL after ``GRACE_S``);
- when ``PARENT_PID`` is gone (the parent was SIGKILLed, or crashed: the tether is
  re-parented), does the same. A parent killed with SIGKILL cannot clean up; the tether can.

``tethered(cmd)`` is the command line that wraps ``cmd``. ``exit_on_termination_signals()``
(called by the CLI and ``python -m flows.<stage>``) makes SIGTERM and SIGHUP end this process
like Ctrl-C does, through ``finally`` blocks and context managers, so servers it started are
stopped on the way out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

POLL_S = 0.25  # how often the tether checks that its parent still lives


def tethered(cmd: list[str], *, parent_pid: int | None = None, grace_s: float = 10.0) -> list[str]:
    """``cmd`` run under a tether to ``parent_pid`` (default: this process)."""
    parent = os.getpid() if parent_pid is None else parent_pid
    return [sys.executable, "-m", "zerosearch.tether", str(parent), f"{grace_s:g}", "--", *cmd]


def exit_on_termination_signals() -> None:
    """SIGTERM / SIGHUP raise ``SystemExit(128 + signal)`` in the main thread (cleanup runs)."""

    def leave(signum, _frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, leave)


def parent_alive(parent_pid: int) -> bool:
    """True while the tether's parent is ``parent_pid`` (a dead parent's children are re-parented)."""
    return os.getppid() == parent_pid


def _stop_group(child: subprocess.Popen, grace_s: float) -> int:
    """SIGTERM every process of our group but us, SIGKILL after ``grace_s``; the child's code."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group signal reaches us too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgid(0), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    code = child.poll()
    # workers the server forked may outlive it: the group goes, us with it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.stdout.flush()
    if code is None or _others_in_group():
        os.killpg(os.getpgid(0), signal.SIGKILL)
    return code if code is not None else -signal.SIGKILL


def group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) pids of process group ``pgid``, from ``/proc``; None where there is
    no ``/proc`` to read (the caller then assumes the group is still there)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members = []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(name))
    return members


def process_start_time(pid: int) -> int | None:
    """When live (non-zombie) process ``pid`` started, in clock ticks since boot (``/proc``):
    with the pid it names one process, a reused pid has another start time. None when there
    is no such process, or no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # state is field 3 of stat(5), starttime field 22
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _others_in_group() -> bool:
    """True when a live process other than us is in our process group (unknown: True)."""
    members = group_members(os.getpgid(0))
    return members is None or any(pid != os.getpid() for pid in members)


def run(parent_pid: int, grace_s: float, cmd: list[str]) -> int:
    """Run ``cmd`` tethered to ``parent_pid``; returns its exit code (see the module doc)."""
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    if os.getpgid(0) != os.getpid():  # started without start_new_session: the group we stop
        os.setsid()                     # must be ours, never the caller's (its shell, its tests)
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, on_signal)
    child = subprocess.Popen(cmd)
    while True:
        try:
            code = child.wait(timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            pass
        if stop["signal"] is not None or not parent_alive(parent_pid):
            code = _stop_group(child, grace_s)
            break
    return code if code >= 0 else 128 - code  # killed by signal N: the shell's 128 + N


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 4 or args[2] != "--":
        sys.exit("usage: python -m zerosearch.tether PARENT_PID GRACE_S -- COMMAND ...")
    sys.exit(run(int(args[0]), float(args[1]), args[3:]))


if __name__ == "__main__":
    main()
