"""The agent as a service: the OpenAI client against `serve-agent`'s app, batching, limits, errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import ClassVar

import httpx
import openai
import pytest
import torch
import uvicorn

import zerosearch.agent.ask as ask_module
from tests.conftest import REPO, micro_config, micro_overrides
from zerosearch.agent.ask import Agent
from zerosearch.agent.rollout import RolloutSettings
from zerosearch.agent.server import create_app
from zerosearch.protocol import Doc
from zerosearch.search.factory import make_engine

SETTINGS = RolloutSettings(max_search_turns=2, max_response_tokens=16, max_obs_tokens=256)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, what: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@contextmanager
def running(app):
    """``app`` under uvicorn in a thread on a free port; yields the OpenAI base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(lambda: server.started, "the server to start")
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)


def _ask(client: openai.OpenAI, question: str, **kw):
    return client.chat.completions.create(model="agent", messages=[{"role": "user", "content": question}], **kw)


class ScriptedGenerator:
    """A policy that searches once, then answers ``A-<n>`` for question ``Q-<n>``; records the
    batch size of every generate call (the rollout batches across requests through it)."""

    batches: ClassVar[list[int]] = []

    def __init__(self, model, tokenizer, do_sample=False):
        self.tokenizer, self.turn = tokenizer, {}

    def generate(self, contexts, max_new_tokens, keys=None):
        type(self).batches.append(len(contexts))
        out = []
        for ctx, key in zip(contexts, keys, strict=True):
            n = re.findall(r"Q-(\d+)", self.tokenizer.decode(ctx).replace(" ", ""))[0]
            first = self.turn.setdefault(key, 0) == 0
            self.turn[key] += 1
            text = f"<search> about {n} </search>" if first else f"<answer> A-{n} </answer>"
            out.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return out


class FakeEngine:
    """Two documents per query; records batch sizes; ``fail`` raises, ``gate`` blocks until set."""

    def __init__(self, fail: Exception | None = None, gate: threading.Event | None = None):
        self.fail, self.gate, self.calls, self.entered = fail, gate, [], threading.Event()

    def search(self, queries, *, questions=None, answers=None, step=0):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.calls.append(list(queries))
        return [[Doc("T1", f"first on {q}", "d1"), Doc("T2", f"second on {q}", "d2")] for q in queries]


@pytest.fixture(scope="module")
def tokenizer(micro_world):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(micro_config(micro_world).base.policy_model)


@pytest.fixture
def scripted(monkeypatch, tokenizer):
    ScriptedGenerator.batches = []
    monkeypatch.setattr(ask_module, "HFGenerator", ScriptedGenerator)
    return lambda engine: Agent(torch.nn.Module(), tokenizer, engine, SETTINGS)


def test_the_openai_client_gets_the_answer_and_the_search_trace(scripted):
    engine = FakeEngine()
    with running(create_app(scripted(engine), model_name="policy")) as url:
        health = httpx.get(url.removesuffix("/v1") + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["model"] == "policy"
        assert [m.id for m in _client(url).models.list().data] == ["policy"]
        reply = _ask(_client(url), "Q-7: where?")
    assert reply.object == "chat.completion" and reply.model == "policy"
    choice = reply.choices[0]
    assert choice.message.content == "A-7" and choice.finish_reason == "stop" and choice.message.role == "assistant"
    trace = reply.model_extra["zerosearch"]
    assert trace["answered"] is True and trace["turns"] == 2
    assert [s["query"] for s in trace["searches"]] == ["about 7"]
    assert trace["searches"][0]["documents"] == [{"title": "T1", "text": "first on about 7", "id": "d1"},
                                                 {"title": "T2", "text": "second on about 7", "id": "d2"}]
    assert [s["kind"] for s in trace["steps"]] == ["search", "information", "answer"]
    assert "<information>" in trace["trajectory"]
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_concurrent_requests_are_batched_into_fewer_rollouts(scripted):
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    app = create_app(scripted(engine), max_batch=8, max_wait_ms=50, max_queue=16)
    worker = app.state.worker
    with running(app) as url:
        client = _client(url)
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(_ask, client, "Q-0?")
            _wait_for(engine.entered.is_set, "the first batch to reach the engine")
            rest = [pool.submit(_ask, client, f"Q-{i}?") for i in range(1, 8)]
            _wait_for(lambda: worker.queue.qsize() == 7, "seven requests to queue behind the first")
            gate.set()
            replies = [first.result(), *(f.result() for f in rest)]
    assert [r.choices[0].message.content for r in replies] == [f"A-{i}" for i in range(8)]
    assert worker.batch_sizes == [1, 7]  # the seven waiting ones went in one rollout
    assert len(engine.calls) == 2 and sorted(len(c) for c in engine.calls) == [1, 7]
    assert max(ScriptedGenerator.batches) == 7


def test_a_dead_engine_gives_a_clear_503_and_the_server_lives_on(scripted):
    engine = FakeEngine(fail=ConnectionError("simulator at http://127.0.0.1:9/v1 refused the connection"))
    with running(create_app(scripted(engine))) as url:
        with pytest.raises(openai.APIStatusError) as e:
            _ask(_client(url), "Q-1?")
        assert e.value.status_code == 503
        assert "search engine failed" in e.value.message and "refused the connection" in e.value.message
        assert e.value.body["code"] == "search_engine_failed"
        engine.fail = None
        assert _ask(_client(url), "Q-2?").choices[0].message.content == "A-2"  # the worker survived


def test_bad_requests_get_openai_shaped_400s(scripted):
    with running(create_app(scripted(FakeEngine()))) as url:
        client = _client(url)
        for kwargs, code in [({"messages": [{"role": "user", "content": "  "}]}, "empty_question"),
                             ({"messages": [{"role": "system", "content": "hi"}]}, "empty_question"),
                             ({"messages": [{"role": "user", "content": "Q-1?"}], "stream": True}, "unsupported_parameter"),
                             ({"messages": [{"role": "user", "content": "Q-1?"}], "n": 2}, "unsupported_parameter")]:
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="agent", **kwargs)
            assert e.value.status_code == 400 and e.value.body["code"] == code
        # the last user message is the question; content parts are read too
        reply = client.chat.completions.create(model="agent", messages=[
            {"role": "user", "content": "Q-1?"}, {"role": "assistant", "content": "A-1"},
            {"role": "user", "content": [{"type": "text", "text": "Q-5?"}]}])
        assert reply.choices[0].message.content == "A-5"


def test_a_full_queue_answers_429_at_once(scripted):
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    app = create_app(scripted(engine), max_batch=1, max_wait_ms=0, max_queue=1)
    with running(app) as url:
        client = _client(url)
        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(_ask, client, "Q-1?")
            _wait_for(engine.entered.is_set, "the first request to reach the engine")
            waiting = pool.submit(_ask, client, "Q-2?")
            _wait_for(lambda: app.state.worker.queue.qsize() == 1, "the second request to queue")
            with pytest.raises(openai.RateLimitError) as e:
                _ask(client, "Q-3?")
            assert e.value.status_code == 429 and e.value.body["code"] == "queue_full"
            gate.set()
            assert [busy.result().choices[0].message.content, waiting.result().choices[0].message.content] == ["A-1", "A-2"]


def test_a_request_past_its_timeout_gets_504(scripted):
    gate = threading.Event()
    with running(create_app(scripted(FakeEngine(gate=gate)), request_timeout=0.2)) as url:
        try:
            with pytest.raises(openai.APIStatusError) as e:
                _ask(_client(url), "Q-1?")
        finally:
            gate.set()
    assert e.value.status_code == 504 and e.value.body["code"] == "request_timeout"


def test_the_real_tiny_policy_answers_as_ask_does(micro_world):
    cfg = micro_config(micro_world)
    agent = Agent.load(cfg.base.policy_model, make_engine(cfg, "bm25"), SETTINGS)
    direct = agent.ask("Where was X born?")
    with running(create_app(agent)) as url:
        reply = _ask(_client(url), "Where was X born?")
    assert reply.choices[0].message.content == (direct.answer or "")
    assert reply.choices[0].finish_reason == ("stop" if direct.answer is not None else "length")
    trace = reply.model_extra["zerosearch"]
    assert trace["trajectory"] == direct.trajectory and len(trace["searches"]) == direct.searches


def test_serve_agent_command_serves_and_stops_on_sigterm(micro_world):
    port = _free_port()
    overrides = [a for o in micro_overrides(micro_world) for a in ("--set", o)]
    policy = micro_config(micro_world).base.policy_model
    cmd = [sys.executable, "-c", "from zerosearch.cli import app; app()", "serve-agent", "--engine", "bm25",
           "--policy", policy,
           "--port", str(port), "--params", str(REPO / "params.yaml"), *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.stdout.read()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        _wait_for(up, "serve-agent to answer /health", limit_s=180)
        reply = _ask(_client(f"http://127.0.0.1:{port}/v1"), "Where was X born?")
        assert reply.model == policy
        assert isinstance(reply.choices[0].message.content, str) and "zerosearch" in reply.model_extra
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert "stopped" in out and "Application shutdown complete" in out, out
    assert proc.returncode in (0, 128 + signal.SIGTERM), out  # SIGTERM ends it as Ctrl-C does


def test_a_simulator_server_that_is_down_gives_a_503_naming_it(scripted, micro_world):
    """The real simulated engine, its server's port closed: an error reply, not a hang."""
    cfg = micro_config(micro_world, "simulator.backend=url", "simulator.max_retries=0")
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    engine = make_engine(cfg, "simulated", simulator_url=dead)
    with running(create_app(scripted(engine))) as url, pytest.raises(openai.APIStatusError) as e:
        _ask(_client(url), "Q-1?")
    assert e.value.status_code == 503 and e.value.body["code"] == "search_engine_failed"
    assert "127.0.0.1" in e.value.message, e.value.message
