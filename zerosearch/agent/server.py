"""The trained search agent as a service: an OpenAI-compatible chat endpoint (``zerosearch serve-agent``).

    from zerosearch.agent.server import create_app, serve
    app = create_app(agent, model_name="policy", max_batch=16, max_wait_ms=20, max_queue=64)
    serve(app, host="127.0.0.1", port=8000)                   # uvicorn, until Ctrl-C / SIGTERM

Endpoints:

- ``GET /health``: ``{"status": "ok", "model": NAME, "queued": N}`` (503 once the batch worker is gone).
- ``GET /v1/models``: the one served model, OpenAI-shaped.
- ``POST /v1/chat/completions``: OpenAI chat messages in, a ``chat.completion`` object out.

The question is the content of the LAST ``user`` message (a string, or the text parts of a
content list); other messages are ignored: the agent is single-question, and the policy's
prompt is built exactly as ``evaluate`` builds it, from the agent's one ``RolloutSettings``
(our template or the data rows' wording, through the tokenizer's chat template per
``base.chat_prompt``; the same turn budget, token limits and context window). Decoding is
greedy: ``temperature``, ``top_p``, ``max_tokens`` and the like are accepted and ignored (the
settings bound every turn). ``stream=true`` and ``n>1`` are refused (400). A simulated engine
reads gold answers; pass them as ``{"zerosearch": {"golden_answers": [...]}}`` in the request
body (``extra_body`` with the ``openai`` client); other engines ignore them.

The reply's ``choices[0].message.content`` is the final answer (``""`` when the agent gave
none); ``finish_reason`` is ``"stop"`` with an answer and ``"length"`` when the turn budget
or the context window ran out first. ``usage`` counts the prompt's tokens and the tokens the
policy wrote (documents excluded). The search trace is one extra top-level field::

    "zerosearch": {
      "answered": true,                     # the policy wrote an <answer> block
      "turns": 3,                           # generation turns
      "searches": [{"query": "...", "documents": [{"title": "...", "text": "...", "id": "..."}]}],
      "steps": [{"kind": "think|search|information|answer", "text": "..."}],
      "trajectory": "<think>...</think><search>...</search>..."   # everything after the prompt
    }

Batching and limits: requests go into a bounded queue (``max_queue``; a full queue answers
429 at once). One worker thread takes up to ``max_batch`` queued questions, waiting at most
``max_wait_ms`` for more after the first, and answers them in ONE ``Agent.ask_many`` rollout.
An exception from the engine (a dead simulator server, a web API down) fails that batch's
requests with 503 naming the cause; any other failure of the rollout with 500. A request not
answered within ``request_timeout`` seconds gets 504 (the engine's own timeouts, e.g. the
simulator client's stall timeout, normally fail it first). Errors are OpenAI-shaped:
``{"error": {"message", "type", "code", "param"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from zerosearch.agent.ask import Agent, AgentAnswer


class SearchFailed(RuntimeError):
    """The search engine raised while answering a batch."""


class _GuardedEngine:
    """The agent's engine, with any exception it raises turned into ``SearchFailed``."""

    def __init__(self, engine):
        self.engine = engine

    def search(self, queries, **kwargs):
        try:
            return self.engine.search(queries, **kwargs)
        except Exception as e:  # any engine failure is the same reply: 503 naming it
            raise SearchFailed(f"the search engine failed: {type(e).__name__}: {e}") from e


@dataclass
class _Pending:
    question: str
    golden_answers: list[str] | None
    future: Future = field(default_factory=Future)


class BatchWorker:
    """One thread answering queued questions in batches (see the module docstring)."""

    def __init__(self, agent: Agent, *, max_batch: int, max_wait_ms: float, max_queue: int):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch ({max_batch}) and max_queue ({max_queue}) must be >= 1")
        self.agent = Agent(agent.model, agent.tokenizer, _GuardedEngine(agent.engine), agent.settings)
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self.queue: queue.Queue[_Pending] = queue.Queue(maxsize=max_queue)
        self.batch_sizes: list[int] = []  # every batch answered, in order (for tests and logs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-batch-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        while True:  # whoever still waits gets an answer, not a hang
            try:
                p = self.queue.get_nowait()
            except queue.Empty:
                break
            if p.future.set_running_or_notify_cancel():
                p.future.set_exception(RuntimeError("the server is shutting down"))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, question: str, golden_answers: list[str] | None = None) -> Future:
        """Queue a question; ``queue.Full`` when ``max_queue`` requests already wait."""
        p = _Pending(question, golden_answers)
        self.queue.put_nowait(p)
        return p.future

    def _next_batch(self) -> list[_Pending]:
        try:
            batch = [self.queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return [p for p in batch if p.future.set_running_or_notify_cancel()]  # timed-out ones are cancelled

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                answers = self.agent.ask_many([p.question for p in batch], [p.golden_answers for p in batch])
            except Exception as e:  # noqa: BLE001 - the batch's requests get the error; the worker lives on
                for p in batch:
                    p.future.set_exception(e)
            else:
                for p, a in zip(batch, answers, strict=True):
                    p.future.set_result(a)


def _error(status: int, message: str, kind: str, code: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": param}}, status_code=status)


def _question(messages) -> str | None:
    """The content of the last user message (text parts of a content list joined), or None."""
    if not isinstance(messages, list):
        return None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            return content if isinstance(content, str) else None
    return None


def completion(answer: AgentAnswer, model_name: str) -> dict:
    """The OpenAI ``chat.completion`` object for one agent answer, trace in ``zerosearch``."""
    answered = answer.answer is not None
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer or ""},
                     "finish_reason": "stop" if answered else "length", "logprobs": None}],
        "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                  "total_tokens": answer.prompt_tokens + answer.completion_tokens},
        "zerosearch": {"answered": answered, "turns": answer.turns, "searches": answer.searched,
                       "steps": answer.steps, "trajectory": answer.trajectory},
    }


def create_app(agent: Agent, *, model_name: str = "zerosearch-agent", max_batch: int = 16,
               max_wait_ms: float = 20, max_queue: int = 64, request_timeout: float = 600) -> FastAPI:
    """The FastAPI app serving ``agent`` (see the module docstring); ``app.state.worker`` is
    its ``BatchWorker``, started and stopped with the app's lifespan."""
    worker = BatchWorker(agent, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="zerosearch agent", lifespan=lifespan)
    app.state.worker = worker

    @app.get("/health")
    async def health():
        body = {"status": "ok" if worker.alive else "down", "model": model_name, "queued": worker.queue.qsize()}
        return JSONResponse(body, status_code=200 if worker.alive else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "zerosearch"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body is not JSON", "invalid_request_error", "invalid_json")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object", "invalid_request_error", "invalid_json")
        if body.get("stream"):
            return _error(400, "stream=true is not supported: the agent answers after its searches; "
                          "send stream=false", "invalid_request_error", "unsupported_parameter", "stream")
        if (body.get("n") or 1) != 1:
            return _error(400, "n must be 1: decoding is greedy, every choice would be the same",
                          "invalid_request_error", "unsupported_parameter", "n")
        question = _question(body.get("messages"))
        if question is None or not question.strip():
            return _error(400, "the question is empty: the last user message's content is the question",
                          "invalid_request_error", "empty_question", "messages")
        extra = body.get("zerosearch") or {}
        gold = extra.get("golden_answers") if isinstance(extra, dict) else None
        if gold is not None and not (isinstance(gold, list) and all(isinstance(g, str) for g in gold)):
            return _error(400, "zerosearch.golden_answers must be a list of strings", "invalid_request_error",
                          "invalid_golden_answers", "zerosearch.golden_answers")
        try:
            future = worker.submit(question, gold)
        except queue.Full:
            return _error(429, f"the server is busy: {worker.queue.maxsize} requests already wait; retry later",
                          "rate_limit_error", "queue_full")
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(future), timeout=request_timeout)
        except asyncio.TimeoutError:
            return _error(504, f"no answer within {request_timeout:g} s", "timeout_error", "request_timeout")
        except SearchFailed as e:
            return _error(503, str(e), "service_unavailable", "search_engine_failed")
        except Exception as e:  # noqa: BLE001 - answered as an error, never a hang
            return _error(500, f"the agent failed: {type(e).__name__}: {e}", "server_error", "agent_failed")
        return completion(answer, model_name)

    return app


def serve(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run ``app`` under uvicorn until Ctrl-C / SIGTERM (uvicorn stops it cleanly)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")
