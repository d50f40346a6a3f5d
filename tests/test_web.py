"""Web search engine against a recorded Serper response served by ``httpx.MockTransport``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from zerosearch.search import web
from zerosearch.protocol import Doc
from zerosearch.search.web import SERPER_URL, WebSearchEngine, WebSearchError

RECORDED = json.loads((Path(__file__).parent / "data" / "serper_response.json").read_text())


@pytest.fixture(autouse=True)
def no_real_network(monkeypatch):
    """A key in the environment, and any real HTTP attempt fails the test."""
    monkeypatch.setenv("SERPER_API_KEY", "test-key-123")

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the real network")

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", refuse)


class Recorder:
    """A MockTransport handler: answers from ``responses`` (cycled on the last), records requests."""

    def __init__(self, *responses):
        self.responses = list(responses) or [RECORDED]
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            r = self.responses[min(len(self.requests) - 1, len(self.responses) - 1)]
        if isinstance(r, Exception):
            raise r
        if isinstance(r, int):
            return httpx.Response(r, json={"message": "error", "statusCode": r})
        return httpx.Response(200, json=r)

    def engine(self, **kwargs) -> WebSearchEngine:
        kwargs.setdefault("backoff", 0.0)
        return WebSearchEngine(transport=httpx.MockTransport(self), **kwargs)


def test_parses_recorded_serper_response_and_sends_the_right_request():
    rec = Recorder()
    docs = rec.engine().search(["who wrote the novel frankenstein"])[0]
    assert docs == [
        Doc(title="Frankenstein - Wikipedia", id="https://en.wikipedia.org/wiki/Frankenstein",
            text=RECORDED["organic"][0]["snippet"]),
        Doc(title="Mary Shelley | Biography, Books, Frankenstein, & Facts | Britannica",
            id="https://www.britannica.com/biography/Mary-Wollstonecraft-Shelley",
            text=RECORDED["organic"][1]["snippet"]),
        Doc(title="Frankenstein by Mary Shelley | Project Gutenberg", id="https://www.gutenberg.org/ebooks/84",
            text=RECORDED["organic"][2]["snippet"]),
    ]
    (req,) = rec.requests
    assert req.method == "POST" and str(req.url) == SERPER_URL == "https://google.serper.dev/search"
    assert req.headers["X-API-KEY"] == "test-key-123"
    assert req.headers["Content-Type"] == "application/json"
    assert json.loads(req.content) == {"q": "who wrote the novel frankenstein", "num": 5}


def test_top_k_limits_results_and_request():
    rec = Recorder()
    engine = rec.engine(top_k=2)
    assert [d.id for d in engine.search(["frankenstein"])[0]] == [
        "https://en.wikipedia.org/wiki/Frankenstein",
        "https://www.britannica.com/biography/Mary-Wollstonecraft-Shelley",
    ]
    assert len(engine.search(["frankenstein"], top_k=1)[0]) == 1
    assert [json.loads(r.content)["num"] for r in rec.requests] == [2, 1]


def test_batched_search_is_concurrent_and_keeps_query_order():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def handler(request):
        q = json.loads(request.content)["q"]
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05 if q.endswith("0") else 0.01)  # the first query finishes last
        with lock:
            in_flight[0] -= 1
        return httpx.Response(200, json={"organic": [{"title": q, "link": f"https://x/{q}", "snippet": "s"}]})

    engine = WebSearchEngine(transport=httpx.MockTransport(handler), max_workers=4)
    queries = [f"query {i}" for i in range(8)]
    results = engine.search(queries)
    assert [r[0].title for r in results] == queries
    assert peak[0] > 1
    assert engine.search([]) == []


def test_blank_query_sends_no_request_and_missing_organic_gives_no_docs():
    rec = Recorder({"searchParameters": {"q": "x"}})
    assert rec.engine().search(["  ", "x"]) == [[], []]
    assert len(rec.requests) == 1


def test_retries_transient_errors_then_succeeds(monkeypatch):
    sleeps = []
    monkeypatch.setattr(web.time, "sleep", sleeps.append)
    rec = Recorder(503, 429, httpx.ReadTimeout("timed out"), RECORDED)
    docs = rec.engine(backoff=0.5, max_retries=3).search(["frankenstein"])[0]
    assert len(docs) == 3 and len(rec.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff

    rec = Recorder(503, RECORDED)
    assert rec.engine().search(["frankenstein"])[0] == docs and len(rec.requests) == 2


def test_gives_up_after_max_retries_with_a_clear_error():
    rec = Recorder(503)
    with pytest.raises(RuntimeError, match=r"Serper web search failed .* after 3 attempts: HTTP 503"):
        rec.engine(max_retries=2).search(["frankenstein"])
    assert len(rec.requests) == 3


@pytest.mark.parametrize("status, match", [(400, "HTTP 400"), (403, "check the API key in SERPER_API_KEY")])
def test_client_errors_fail_immediately(status, match):
    rec = Recorder(status, RECORDED)
    with pytest.raises(WebSearchError, match=match):
        rec.engine().search(["frankenstein"])
    assert len(rec.requests) == 1


def test_missing_api_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY")
    with pytest.raises(ValueError, match="set the SERPER_API_KEY environment variable"):
        WebSearchEngine()
    monkeypatch.setenv("MY_KEY", "secret-value")
    engine = WebSearchEngine(api_key_env="MY_KEY")
    assert "secret-value" not in repr(engine) and "MY_KEY" in repr(engine)


def test_default_transport_never_reaches_the_network_in_tests():
    engine = WebSearchEngine(max_retries=0)  # real HTTPTransport, patched to refuse by the fixture
    with pytest.raises(AssertionError, match="real network"):
        engine.search(["frankenstein"])
