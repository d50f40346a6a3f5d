"""SimulatorClient against tiny OpenAI-shaped servers on 127.0.0.1 started by the tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from zerosearch.search.client import (
    SimulatorClient,
    SimulatorRequestError,
    SimulatorUnavailableError,
    request_seed,
)

STALL = object()  # a responder returning this makes the server hang until teardown


def echo(path: str, body: dict, n: int):
    """200 with the prompt (or the user message) echoed back, OpenAI-shaped."""
    if path.endswith("/chat/completions"):
        content = "echo:" + body["messages"][-1]["content"]
        choice = {"index": 0, "message": {"role": "assistant", "content": content},
                  "finish_reason": "stop"}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": "echo:" + body["prompt"], "finish_reason": "stop",
                  "logprobs": None}
        obj = "text_completion"
    return 200, {"id": "x", "object": obj, "created": 0, "model": "m", "choices": [choice],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, respond: Callable):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.respond, self.calls, self.lock = respond, [], threading.Lock()
        self.release = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, payload) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.calls.append((self.path, body))
            n = len(self.server.calls)
        status, payload = self.server.respond(self.path, body, n)
        if payload is STALL:
            self.server.release.wait(10)
            return
        self._send(status, payload)

    def do_GET(self) -> None:
        ok = self.path in ("/health", "/v1/models")
        self._send(200 if ok else 404, {"object": "list", "data": []})


@pytest.fixture
def serve() -> Iterator[Callable[[Callable], Server]]:
    servers: list[Server] = []

    def start(respond: Callable = echo) -> Server:
        server = Server(respond)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


def dead_url() -> str:
    """A URL on a port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def client(urls, **kw) -> SimulatorClient:
    kw = {"timeout": 2.0, "max_retries": 2, "backoff": 0.01, **kw}
    return SimulatorClient(urls, "m", **kw)


def test_results_in_input_order(serve):
    def shuffled(path, body, n):
        time.sleep(0.004 * (int(body["prompt"].split()[-1]) % 3))  # finish out of order
        return echo(path, body, n)

    server = serve(shuffled)
    prompts = [f"prompt {i}" for i in range(40)]
    with client(server.url, concurrency=8) as c:
        out = c.complete(prompts, max_tokens=16, temperature=1.0, top_p=0.9, seed=3)
        assert out == [f"echo:{p}" for p in prompts]
        assert c.requests == 40 and c.complete([], max_tokens=1, temperature=0) == []
    path, body = server.calls[0]
    assert path == "/v1/completions"
    assert {k: body[k] for k in ("model", "max_tokens", "temperature", "top_p")} == {
        "model": "m", "max_tokens": 16, "temperature": 1.0, "top_p": 0.9}
    # one seed per request, derived from the call's seed and the prompt's index
    seeds = {b["prompt"]: b["seed"] for _, b in server.calls}
    assert seeds == {p: request_seed(3, i) for i, p in enumerate(prompts)}


def test_chat_api_sends_one_user_message(serve):
    server = serve()
    with client(server.url, api="chat") as c:
        out = c.complete(["hi", "there"], max_tokens=8, temperature=0.0)
    assert out == ["echo:hi", "echo:there"]
    paths = {p for p, _ in server.calls}
    assert paths == {"/v1/chat/completions"}
    assert sorted((b["messages"] for _, b in server.calls), key=str) == [
        [{"role": "user", "content": "hi"}], [{"role": "user", "content": "there"}]]
    assert all("seed" not in b and "prompt" not in b for _, b in server.calls)


@pytest.mark.parametrize("status", [503, 429])
def test_transient_errors_are_retried(serve, status):
    server = serve(lambda p, b, n: (status, {"error": "busy"}) if n <= 2 else echo(p, b, n))
    with client(server.url, max_retries=3) as c:
        assert c.complete(["q"], max_tokens=4, temperature=0) == ["echo:q"]
        assert c.requests == 3 and len(server.calls) == 3


def test_always_failing_raises_after_bounded_attempts(serve):
    server = serve(lambda p, b, n: (500, {"error": "boom"}))
    c = client(server.url, max_retries=3)
    t0 = time.monotonic()
    with pytest.raises(SimulatorUnavailableError) as err:
        c.complete(["q"], max_tokens=4, temperature=0)
    assert time.monotonic() - t0 < 2.0
    assert c.requests == 4 and len(server.calls) == 4
    msg = str(err.value)
    assert server.url in msg and "4 attempt" in msg and "500" in msg and "running" in msg


def test_client_error_fails_at_once(serve):
    server = serve(lambda p, b, n: (400, {"error": "prompt too long"}))
    c = client(server.url, max_retries=5)
    with pytest.raises(SimulatorRequestError, match="400.*prompt too long"):
        c.complete(["q"], max_tokens=4, temperature=0)
    assert c.requests == 1 and len(server.calls) == 1
    assert issubclass(SimulatorRequestError, SimulatorUnavailableError)


def test_unexpected_response_shape_is_an_error(serve):
    server = serve(lambda p, b, n: (200, {"choices": []}))
    with pytest.raises(SimulatorRequestError, match="OpenAI-shaped"):
        client(server.url).complete(["q"], max_tokens=4, temperature=0)


def test_nothing_listening_fails_quickly():
    url = dead_url()
    c = client(url, timeout=0.5, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(SimulatorUnavailableError, match="Connect") as err:
        c.complete(["q"], max_tokens=4, temperature=0)
    assert time.monotonic() - t0 < 2.0
    assert url in str(err.value) and c.requests == 2


def test_stalled_server_times_out(serve):
    server = serve(lambda p, b, n: (200, STALL))
    c = client(server.url, timeout=0.3, max_retries=1, stall_timeout=5.0)
    t0 = time.monotonic()
    with pytest.raises(SimulatorUnavailableError, match="Timeout"):
        c.complete(["q"], max_tokens=4, temperature=0)
    assert time.monotonic() - t0 < 2.0
    assert len(server.calls) == 2


def test_a_frozen_server_fails_the_whole_call_after_one_stall_timeout(serve):
    """A server that accepts and never answers: the call fails once no request finished for
    stall_timeout, the queued requests are never sent and nothing is retried after that (before,
    each wave of `concurrency` requests ran its own timeouts and retries: 8 x 4 attempts here)."""
    server = serve(lambda p, b, n: (200, STALL))
    c = client(server.url, timeout=1.0, max_retries=3, concurrency=2, stall_timeout=0.5)
    with pytest.raises(SimulatorUnavailableError, match=r"answered none of 8 pending request\(s\) for 0.5s"):
        c.complete([f"q{i}" for i in range(8)], max_tokens=4, temperature=0)
    time.sleep(1.5)  # the two aborted requests reach their own timeout: no retry follows
    assert len(server.calls) == 2
    server.respond = echo  # the client serves the next call on a fresh connection pool
    assert c.complete(["again"], max_tokens=4, temperature=0) == ["echo:again"]


def test_a_request_out_of_attempts_fails_the_call(serve):
    def respond(path, body, n):
        return (500, {"error": "boom"}) if body["prompt"] == "bad" else (200, STALL)

    server = serve(respond)
    c = client(server.url, timeout=5.0, max_retries=1, concurrency=4, stall_timeout=30.0)
    with pytest.raises(SimulatorUnavailableError, match="failed after 2 attempt"):
        c.complete(["bad", "slow1", "slow2"], max_tokens=4, temperature=0)
    assert sum(b["prompt"] == "bad" for _, b in server.calls) == 2


def test_dead_first_url_falls_over_to_second(serve):
    server = serve()
    with client([dead_url(), server.url], timeout=0.5, max_retries=1) as c:
        prompts = [f"p{i}" for i in range(4)]
        assert c.complete(prompts, max_tokens=4, temperature=0) == [f"echo:{p}" for p in prompts]
        assert c.requests == 6  # round-robin: two prompts started on the dead URL
    assert len(server.calls) == 4


def test_round_robin_over_live_servers(serve):
    a, b = serve(), serve()
    with client([a.url, b.url]) as c:
        c.complete([f"p{i}" for i in range(10)], max_tokens=4, temperature=0)
    assert len(a.calls) == 5 and len(b.calls) == 5


def test_cache_hits_skip_requests(serve, tmp_path):
    server = serve()
    c = client(server.url, cache_dir=tmp_path / "cache")
    first = c.complete(["a", "b"], max_tokens=8, temperature=1.0)
    assert c.requests == 2 and c.cache_hits == 0
    assert c.complete(["a", "b"], max_tokens=8, temperature=1.0) == first
    assert c.requests == 2 and c.cache_hits == 2
    c.complete(["a"], max_tokens=8, temperature=0.5)  # different sampling: a miss
    assert c.requests == 3 and c.cache_hits == 2
    files = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 3 and not list((tmp_path / "cache").rglob(".tmp-*"))
    key = files[0].stem
    assert files[0].parent.name == key[2:4] and files[0].parent.parent.name == key[:2]
    again = client(server.url, cache_dir=tmp_path / "cache")  # persists across clients
    assert again.complete(["b"], max_tokens=8, temperature=1.0) == ["echo:b"]
    assert again.requests == 0 and again.cache_hits == 1
    assert len(server.calls) == 3


def test_health(serve):
    assert client(serve().url).health()
    assert not client(dead_url()).health(timeout=0.3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="base_urls"):
        SimulatorClient([], "m")
    with pytest.raises(ValueError, match="api"):
        SimulatorClient("http://127.0.0.1:1/v1", "m", api="edits")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_retries"):
        SimulatorClient("http://127.0.0.1:1/v1", "m", max_retries=-1)


def test_config_with_several_simulator_urls_spreads_searches_over_them(serve, tmp_path):
    """simulator.backend: url with a list of URLs: open_engine waits for each, then the engine's
    client balances requests over all of them."""
    from tests.conftest import micro_config
    from zerosearch.search.factory import open_engine

    a, b = serve(), serve()
    cfg = micro_config(tmp_path, "simulator.backend=url", f"simulator.url=[{a.url}, {b.url}]")
    with open_engine(cfg, "simulated", total_steps=10) as engine:
        engine.search([f"q{i}" for i in range(8)], questions=[f"Q{i}" for i in range(8)],
                      answers=[["x"]] * 8, step=0)
    assert len(a.calls) == 4 and len(b.calls) == 4
