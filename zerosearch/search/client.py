"""A batched client for the OpenAI-compatible servers (sglang, vLLM, ``transformers serve``)
that host the simulator LLM. Every request has a bounded number of attempts (no retrying
forever): a dead server raises ``SimulatorUnavailableError`` instead of hanging training.

A whole call is bounded too: when no request of the call has finished for ``stall_timeout``
seconds (a frozen server: it accepts connections and never answers), or one request has used
up its attempts, the call fails at once: the requests still queued are dropped and those in
flight are aborted (the connection pool is closed under them). So a frozen simulator fails a
call in about ``stall_timeout`` seconds, whatever the number of queued requests, instead of
``request_timeout x attempts`` per wave of ``concurrency`` requests.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Literal

import httpx

from zerosearch.errors import InputError
from zerosearch.search.curriculum import mix_seed

__all__ = ["SimulatorClient", "SimulatorRequestError", "SimulatorUnavailableError", "request_seed"]


def request_seed(seed: int, index: int) -> int:
    """The ``seed`` sent with request ``index`` of a call seeded ``seed`` (below 2**31)."""
    return mix_seed(seed, index) % 2**31


class SimulatorUnavailableError(InputError, RuntimeError):
    """The simulator server could not produce a completion within the allowed attempts."""


class SimulatorRequestError(SimulatorUnavailableError):
    """The server rejected the request (4xx but 429) or answered in an unknown shape."""


class _Retryable(Exception):
    """One failed attempt worth retrying (connection error, timeout, 5xx, 429)."""


class SimulatorClient:
    """Sends prompts to one or more OpenAI-compatible servers; returns completion texts.

    ``base_urls``: ``http://host:port/v1`` or a list of them; requests are spread over them
    round-robin, and a failed attempt moves on to the next URL. ``api``: ``"completions"``
    posts raw prompts to ``/completions``; ``"chat"`` sends each prompt as one user message
    to ``/chat/completions``, after a system message ``system_message`` unless it is None
    (the reference sends an empty one, ``""``; completions take none). ``max_retries``: extra attempts per prompt after the first,
    spaced ``backoff * 2**attempt`` seconds (plus jitter). ``cache_dir``: optional on-disk
    cache of completions keyed by model, api, prompt and sampling parameters. Proxy
    environment variables are ignored (the servers are expected to be directly reachable).
    """

    def __init__(self, base_urls: str | list[str], model: str, *,
                 api: Literal["completions", "chat"] = "completions", timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 0.5, concurrency: int = 8,
                 cache_dir: str | Path | None = None, api_key: str = "EMPTY",
                 system_message: str | None = None, stall_timeout: float | None = None) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("base_urls must name at least one server URL")
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
        if api == "completions" and system_message is not None:
            raise ValueError("a system message needs api='chat' (a raw completion has no messages)")
        stall_timeout = 2 * timeout if stall_timeout is None else stall_timeout
        if timeout <= 0 or max_retries < 0 or backoff < 0 or concurrency < 1 or stall_timeout <= 0:
            raise ValueError(
                f"need timeout > 0, max_retries >= 0, backoff >= 0, concurrency >= 1, stall_timeout > 0; got "
                f"{timeout=}, {max_retries=}, {backoff=}, {concurrency=}, {stall_timeout=}")
        self.stall_timeout = stall_timeout
        self.base_urls = [u.rstrip("/") for u in urls]
        self.model, self.api, self.timeout = model, api, timeout
        self.system_message = system_message
        self.max_retries, self.backoff, self.concurrency = max_retries, backoff, concurrency
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_hits = self.requests = 0  # hits in cache_dir; HTTP requests incl. retries
        self._lock = threading.Lock()
        self._next_url = itertools.count()
        self._api_key = api_key
        self._http = self._new_http()

    def _new_http(self) -> httpx.Client:
        return httpx.Client(timeout=self.timeout, trust_env=False,
                            headers={"Authorization": f"Bearer {self._api_key}"},
                            limits=httpx.Limits(max_connections=self.concurrency * len(self.base_urls)))

    def complete(self, prompts: Sequence[str], *, max_tokens: int, temperature: float,
                 top_p: float | None = 1.0, seed: int | None = None) -> list[str]:
        """One completion text per prompt, in input order (prompts run concurrently).
        ``top_p`` None (and ``seed`` None) is left out of the request: the server's default.
        ``seed``: the call's; prompt ``i`` is sent ``seed = mix_seed(seed, i) % 2**31`` (an int
        every OpenAI-compatible server takes), so each request of a call has its own seed and
        a rerun of the call sends the same ones (docs/ARCHITECTURE.md says which servers honour it).

        Raises ``SimulatorUnavailableError`` when a prompt fails all its attempts, and
        ``SimulatorRequestError`` (a subclass) when the server rejects a request.
        """
        if not prompts:
            return []
        params = {"max_tokens": max_tokens, "temperature": temperature}
        params.update({} if top_p is None else {"top_p": top_p})
        requests = [params if seed is None else {**params, "seed": request_seed(seed, i)} for i in range(len(prompts))]
        abort = threading.Event()  # set when this call gives up: its requests stop retrying
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)))
        futures = [pool.submit(self._complete_one, p, r, abort) for p, r in zip(prompts, requests, strict=True)]
        pending, last_progress = set(futures), time.monotonic()
        try:
            while pending:
                done, pending = wait(pending, timeout=max(0.0, last_progress + self.stall_timeout - time.monotonic()),
                                     return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()  # a request that used up its attempts fails the call now
                if done:
                    last_progress = time.monotonic()
                elif pending:
                    raise SimulatorUnavailableError(
                        f"simulator at {', '.join(self.base_urls)} answered none of {len(pending)} pending "
                        f"request(s) for {self.stall_timeout:g}s (simulator.stall_timeout; each request times "
                        f"out after {self.timeout:g}s): the server is frozen or overloaded. Check its log and "
                        f"that it answers (e.g. curl {self.base_urls[0]}/models).")
            return [f.result() for f in futures]
        except BaseException:
            self._give_up(pool, abort)
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _give_up(self, pool: ThreadPoolExecutor, abort: threading.Event) -> None:
        """Stop the failed call's work: queued requests dropped, retries stopped, the connection
        pool closed under the requests in flight (a fresh one serves the next call; a request
        blocked in a read may still end only at its own timeout, in the background)."""
        abort.set()
        pool.shutdown(wait=False, cancel_futures=True)
        http, self._http = self._http, self._new_http()
        http.close()

    def health(self, timeout: float = 2.0) -> bool:
        """True if any server answers 200 on ``<root>/health`` or ``<base>/models``
        (root: the base URL without its trailing ``/v1``)."""
        for base in self.base_urls:
            root = base[: -len("/v1")] if base.endswith("/v1") else base
            for url in (f"{root}/health", f"{base}/models"):
                try:
                    if self._http.get(url, timeout=timeout).status_code == 200:
                        return True
                except httpx.HTTPError:
                    continue
        return False

    def close(self) -> None:
        """Close the pooled HTTP connections (also done by ``with SimulatorClient(...)``)."""
        self._http.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _complete_one(self, prompt: str, params: dict, abort: threading.Event | None = None) -> str:
        key = self._cache_key(prompt, params)
        cached = self._cache_get(key)
        if cached is not None:
            return cached
        if self.api == "chat":
            system = [] if self.system_message is None else [{"role": "system", "content": self.system_message}]
            path, body = "/chat/completions", {"messages": [*system, {"role": "user", "content": prompt}]}
        else:
            path, body = "/completions", {"prompt": prompt}
        text = self._post_with_retries(path, {"model": self.model, **body, **params}, abort)
        self._cache_put(key, text)
        return text

    def _post_with_retries(self, path: str, body: dict, abort: threading.Event | None = None) -> str:
        start = next(self._next_url)
        attempts, used, last = self.max_retries + 1, [], "no attempt made"
        for attempt in range(attempts):
            base = self.base_urls[(start + attempt) % len(self.base_urls)]
            used += [] if base in used else [base]
            if abort is not None and abort.is_set():
                break  # the call already failed: no more attempts
            try:
                return self._post_once(base + path, body)
            except _Retryable as err:
                last = str(err)
            if attempt + 1 < attempts and not (abort is not None and abort.is_set()):
                delay = min(self.backoff * 2**attempt, 30.0)  # capped at 30 s
                time.sleep(delay + random.uniform(0, 0.1 * delay))
        raise SimulatorUnavailableError(
            f"simulator request failed after {attempts} attempt(s) on {', '.join(used)}; "
            f"last error: {last}. Check that the simulator server is running and reachable "
            f"(e.g. curl {used[0]}/models).")

    def _post_once(self, url: str, body: dict) -> str:
        with self._lock:
            self.requests += 1
        try:
            resp = self._http.post(url, json=body)
        except httpx.TransportError as err:  # connect/read errors and timeouts
            raise _Retryable(f"{url}: {type(err).__name__}: {err}") from err
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"{url}: HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.status_code != 200:
            raise SimulatorRequestError(
                f"simulator at {url} rejected the request with HTTP {resp.status_code} "
                f"(not retried): {resp.text[:500]}")
        try:
            choice = resp.json()["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise SimulatorRequestError(
                f"simulator at {url} answered 200 without an OpenAI-shaped {self.api} "
                f"result ({type(err).__name__}: {err}): {resp.text[:300]}") from err
        return text or ""

    def _cache_key(self, prompt: str, params: dict) -> str:
        fields = [self.model, self.api, prompt, params["max_tokens"], params["temperature"],
                  params.get("top_p"), params.get("seed")]
        if self.system_message is not None:  # only then: keys of caches written without one stay valid
            fields.append(self.system_message)
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:  # two hex levels keep directories small
        return self.cache_dir / key[:2] / key[2:4] / f"{key}.json"  # type: ignore[operator]

    def _cache_get(self, key: str) -> str | None:
        if self.cache_dir is None:
            return None
        try:
            text = json.loads(self._cache_path(key).read_text(encoding="utf-8"))["text"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or unreadable entry: a miss
        with self._lock:
            self.cache_hits += 1
        return text

    def _cache_put(self, key: str, text: str) -> None:
        if self.cache_dir is None:
            return
        path = self._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"model": self.model, "api": self.api, "text": text}, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
