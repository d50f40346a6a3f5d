"""Start, health-wait and stop the simulator LLM's OpenAI-compatible server.

``serve_simulator(spec)`` is a context manager that yields the server's base URL
(``http://host:port/v1``, what ``SimulatorClient`` takes). Backends:

- ``transformers``: ``transformers serve <model>`` from this interpreter's environment (the
  CPU-friendly default; the model is preloaded, so requests must name it exactly as
  ``spec.model`` or leave ``model`` out; one replica, so tp = dp = 1).
- ``sglang``: ``python -m sglang.launch_server --model-path <model> --tp N --dp M``.
- ``vllm``: ``vllm serve <model> --tensor-parallel-size N --data-parallel-size M``.
- ``url``: an already running server at ``spec.url``; it is only health-checked, never
  started or stopped.

The server runs in its own session (process group) under a tether (``zerosearch.tether``) with
its output in a log file; on leaving the context (normally, on an exception, on
``KeyboardInterrupt`` or on the SIGTERM/SIGHUP the CLI turns into an exit) the whole group gets
SIGTERM, then SIGKILL after a grace period, so no worker it spawned outlives it; when this
process dies without leaving the context (SIGKILL, a crash) the tether stops the group.
For sglang and vLLM, as for ``transformers serve``, the served model name is ``spec.model``.

Notes on ``transformers serve`` (transformers 5.x, checked on CPU with a tiny Qwen2):

- The request's ``model`` must equal the served string exactly (for a local directory, the
  path as given; ``/v1/models`` lists it); any other name gets HTTP 400 "Server is pinned".
- ``temperature`` only changes sampling when the model's ``generation_config.json`` has
  ``do_sample: true``; otherwise every request is greedy (``temperature: 0`` always is).
  Its default ``top_k`` (50) applies unless the generation config says otherwise.
- ``--continuous-batching`` is not in the default command. It works on CPU and batches
  concurrent requests (~20x faster for 16 at once), but the first request's temperature and
  top_p then hold for all later ones, and without ``--cb-num-blocks`` the KV cache takes 60%
  of free RAM (the first request then takes ~20 s). Opt in through ``extra_args``, e.g.
  ``("--continuous-batching", "--cb-num-blocks", "256", "--cb-max-batch-tokens", "1024")``.
- No ``--device``: the server's ``auto`` picks a GPU when there is one, else the CPU; pass
  ``("--device", "cpu")`` in ``extra_args`` to force it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from zerosearch.errors import InputError
from zerosearch.tether import group_members, tethered

__all__ = ["ServerSpec", "ServerStartError", "free_port", "health_ok", "port_in_use",
           "serve_simulator", "server_command"]

logger = logging.getLogger(__name__)

BACKENDS = ("transformers", "sglang", "vllm", "url")
_LOG_TAIL_LINES = 40
_PORT_RETRIES = 3  # new ports tried when an auto-picked port was taken before the server bound it


class ServerStartError(InputError, RuntimeError):
    """The simulator server could not be started, or did not become healthy in time."""


@dataclass(frozen=True)
class ServerSpec:
    """How to run (or reach) one simulator server.

    ``port=0`` picks a free port. ``url`` is the base URL for ``backend="url"``.
    ``extra_args`` are appended to the command line; ``env`` entries are added to the
    inherited environment. ``command`` replaces the backend's command line (``{host}`` and
    ``{port}`` in it are substituted; ``extra_args`` are still appended), e.g. for tests.
    """

    backend: Literal["transformers", "sglang", "vllm", "url"]
    model: str
    host: str = "127.0.0.1"
    port: int = 0
    tp: int = 1
    dp: int = 1
    url: str | None = None
    extra_args: tuple[str, ...] = ()
    env: dict | None = None
    command: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not (0 <= self.port <= 65535):
            raise ValueError(f"port must be in 0..65535 (0: pick a free one), got {self.port}")
        if self.tp < 1 or self.dp < 1:
            raise ValueError(f"tp and dp must be >= 1, got tp={self.tp}, dp={self.dp}")
        if self.backend == "url" and not self.url:
            raise ValueError("backend 'url' needs spec.url (e.g. http://host:6001/v1)")
        # tuples keep the spec immutable even when lists were passed
        object.__setattr__(self, "extra_args", tuple(str(a) for a in self.extra_args))
        if self.command is not None:
            object.__setattr__(self, "command", tuple(str(a) for a in self.command))

    def __hash__(self) -> int:  # env is a dict: hash it by its items
        env = tuple(sorted((str(k), str(v)) for k, v in (self.env or {}).items()))
        return hash((self.backend, self.model, self.host, self.port, self.tp, self.dp, self.url,
                     self.extra_args, env, self.command))


def console_script(name: str) -> str:
    """``name`` from this interpreter's bin directory if present, else from PATH, else bare."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name) or name


def server_command(spec: ServerSpec, port: int) -> list[str]:
    """The command line that serves ``spec.model`` on ``spec.host:port``."""
    if spec.command is not None:
        base = [a.replace("{host}", spec.host).replace("{port}", str(port)) for a in spec.command]
    elif spec.backend == "transformers":
        if spec.tp != 1 or spec.dp != 1:
            raise ValueError(f"transformers serve runs one model replica on one device; "
                             f"tp={spec.tp}, dp={spec.dp} need backend sglang or vllm")
        # The positional model is preloaded (and pinned) before the server answers /health.
        # No --continuous-batching: on CPU it pins the first request's sampling parameters
        # for all later requests and sizes its KV cache from free RAM (see the module docs).
        base = [console_script("transformers"), "serve", spec.model,
                "--host", spec.host, "--port", str(port)]
    elif spec.backend == "sglang":
        base = [sys.executable, "-m", "sglang.launch_server", "--model-path", spec.model,
                "--host", spec.host, "--port", str(port), "--tp", str(spec.tp), "--dp", str(spec.dp)]
    elif spec.backend == "vllm":
        base = [console_script("vllm"), "serve", spec.model, "--host", spec.host,
                "--port", str(port), "--tensor-parallel-size", str(spec.tp),
                "--data-parallel-size", str(spec.dp)]
    else:
        raise ValueError("backend 'url' names an existing server; there is no command to run")
    return [*base, *spec.extra_args]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing is bound to right now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _connect_host(host: str) -> str:
    """Where to reach a server bound to ``host`` (the loopback for wildcard addresses)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on ``host:port`` (or holds it so that it cannot be bound)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        if s.connect_ex((_connect_host(host), port)) == 0:
            return True
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def _base_url(host: str, port: int) -> str:
    h = _connect_host(host)
    return f"http://[{h}]:{port}/v1" if ":" in h else f"http://{h}:{port}/v1"


def health_ok(base_url: str, timeout: float = 2.0) -> bool:
    """True if ``<root>/health`` or ``<base_url>/models`` answers 200 (root: without ``/v1``)."""
    base = base_url.rstrip("/")
    root = base.removesuffix("/v1")
    with httpx.Client(timeout=timeout, trust_env=False) as http:
        for url in (f"{root}/health", f"{base}/models"):
            try:
                if http.get(url).status_code == 200:
                    return True
            except httpx.HTTPError:
                continue
    return False


def _log_tail(path: Path, offset: int, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError as err:
        return f"<could not read {path}: {err}>"
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    kept = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join(kept) if kept else "<log is empty>"


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = group_members(pgid)  # zombies nobody reaps yet would otherwise look alive
    return members is None or bool(members)


def stop_process_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group of ``proc`` (its session leader), SIGKILL it after ``grace``."""
    pgid = proc.pid  # start_new_session=True: the child leads its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        if proc.returncode is not None and not _group_alive(pgid):
            break
        time.sleep(0.05)
    else:
        logger.warning("server process group %d still running %.0fs after SIGTERM; sending SIGKILL",
                       pgid, grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=max(grace, 5.0))
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
        logger.error("server pid %d did not exit after SIGKILL", proc.pid)
    end = time.monotonic() + 5.0  # SIGKILLed group members vanish within moments
    while _group_alive(pgid) and time.monotonic() < end:
        time.sleep(0.05)


def _wait_url(base_url: str, startup_timeout: float, poll_interval: float) -> None:
    if wait_healthy(None, base_url, time.monotonic() + startup_timeout, poll_interval) != "healthy":
        raise ServerStartError(
            f"simulator server at {base_url} did not answer 200 on /health or /models "
            f"within {startup_timeout:g}s (backend 'url': nothing was started; is it running?)")


def start_process(cmd: list[str], log_path: Path, env: dict | None = None, *, grace_s: float = 10.0
                  ) -> subprocess.Popen:
    """Start ``cmd`` under a tether (``zerosearch.tether``) that leads its own session:
    ``stop_process_group`` stops all it spawned, and the tether stops them when this process
    dies, even by SIGKILL. Its stdout and stderr are appended to ``log_path``."""
    with open(log_path, "ab") as log:
        try:
            return subprocess.Popen(tethered(cmd, grace_s=grace_s), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        except OSError as err:
            raise ServerStartError(f"could not run {shlex.join(cmd)}: {err}") from err


def wait_healthy(proc: subprocess.Popen | None, url: str, deadline: float, poll_interval: float
                 ) -> Literal["healthy", "exited", "timeout"]:
    """Poll ``health_ok(url)`` until the server of ``proc`` answers while ``proc`` still runs
    ("healthy"), ``proc`` exits ("exited") or ``time.monotonic()`` passes ``deadline`` ("timeout").
    ``proc`` None: a server started elsewhere, only its answer counts."""
    while True:
        if proc is not None and proc.poll() is not None:
            return "exited"
        if health_ok(url, timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
            if proc is None or proc.poll() is None:  # healthy, and it is ours answering
                return "healthy"
            continue  # it died meanwhile: report that on the next round
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))


@contextlib.contextmanager
def serve_simulator(spec: ServerSpec, *, startup_timeout: float = 300.0,
                    log_path: str | Path | None = None, poll_interval: float = 0.5,
                    stop_timeout: float = 10.0) -> Iterator[str]:
    """Run the simulator server for ``spec`` and yield its base URL once it is healthy.

    Raises ``ServerStartError`` when a chosen port is taken, when the server exits before it
    is healthy (with its exit code and the log's last lines) or when ``startup_timeout``
    seconds pass first (the server is killed). ``log_path``: where the server's stdout and
    stderr go (appended; default a new temp file). ``stop_timeout``: seconds between SIGTERM
    and SIGKILL when stopping.
    """
    if startup_timeout <= 0 or poll_interval <= 0 or stop_timeout < 0:
        raise ValueError(f"need startup_timeout > 0, poll_interval > 0, stop_timeout >= 0; got "
                         f"{startup_timeout=}, {poll_interval=}, {stop_timeout=}")
    if spec.backend == "url":
        url = spec.url.rstrip("/")  # type: ignore[union-attr]
        _wait_url(url, startup_timeout, poll_interval)
        logger.info("simulator server at %s is up (backend 'url', not managed here)", url)
        yield url
        return

    if spec.port and port_in_use(spec.host, spec.port):
        raise ServerStartError(
            f"port {spec.port} on {spec.host} is already in use; not starting a second simulator "
            f"server there. Stop the other server, choose another port, port=0 for a free one, "
            f"or backend 'url' to use the running server.")
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="zerosearch-simulator-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           **{str(k): str(v) for k, v in (spec.env or {}).items()}}  # HF_HUB_OFFLINE etc. inherited

    deadline = time.monotonic() + startup_timeout
    for attempt in range(_PORT_RETRIES if spec.port == 0 else 1):
        port = spec.port or free_port(spec.host)
        url = _base_url(spec.host, port)
        cmd = server_command(spec, port)
        offset = log_path.stat().st_size if log_path.exists() else 0
        logger.info("starting simulator server (%s): %s; log: %s", spec.backend, shlex.join(cmd), log_path)
        started = time.monotonic()
        proc = start_process(cmd, log_path, env)
        try:
            state = wait_healthy(proc, url, deadline, poll_interval)
            if state == "exited":
                tail = _log_tail(log_path, offset)
                if spec.port == 0 and attempt + 1 < _PORT_RETRIES and "address already in use" in tail.lower():
                    logger.warning("port %d was taken before the server bound it; retrying", port)
                    continue  # port clash: try a new port
                raise ServerStartError(
                    f"simulator server exited with code {proc.returncode} after "
                    f"{time.monotonic() - started:.1f}s, before answering health checks at "
                    f"{url}.\nCommand: {shlex.join(cmd)}\nLast lines of {log_path}:\n{tail}")
            if state == "timeout":
                stop_process_group(proc, stop_timeout)
                raise ServerStartError(
                    f"simulator server did not answer health checks at {url} within "
                    f"{startup_timeout:g}s; killed it.\nCommand: {shlex.join(cmd)}\n"
                    f"Last lines of {log_path}:\n{_log_tail(log_path, offset)}")
            logger.info("simulator server ready at %s after %.1fs (pid %d)", url,
                        time.monotonic() - started, proc.pid)
            yield url
            return
        finally:
            if proc.returncode is None or _group_alive(proc.pid):
                logger.info("stopping simulator server at %s (pid %d)", url, proc.pid)
                stop_process_group(proc, stop_timeout)
    raise ServerStartError("simulator server could not bind a free port")  # pragma: no cover
