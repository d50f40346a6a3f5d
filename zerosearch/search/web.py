"""A paid web search API as a real engine (the paper evaluates with Google via a SERP API).

Off by default: nothing builds one unless asked, and building one needs an API key in the
environment. Each query is one HTTP request; a batch runs as concurrent requests on a small
thread pool, results in query order. Timeouts, transport errors, 5xx and 429 are retried with
exponential backoff (``backoff * 2**attempt`` seconds, ``max_retries`` retries); any other 4xx
fails at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import httpx

from zerosearch.errors import InputError
from zerosearch.protocol import Doc

SERPER_URL = "https://google.serper.dev/search"
_PROVIDERS = {"serper": "Serper"}


class WebSearchError(InputError, RuntimeError):
    """A web search request failed (after its retries, for transient errors)."""


class WebSearchEngine:
    """Batched Google search through Serper (``provider="serper"``)."""

    def __init__(
        self,
        *,
        provider: Literal["serper"] = "serper",
        api_key_env: str = "SERPER_API_KEY",
        top_k: int = 5,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_workers: int = 4,
        transport: httpx.BaseTransport | None = None,
    ):
        if provider not in _PROVIDERS:
            raise ValueError(f"unknown web search provider {provider!r}: expected one of {sorted(_PROVIDERS)}")
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:
            raise ValueError(
                f"{_PROVIDERS[provider]} web search needs an API key: set the {api_key_env} environment variable"
            )
        if max_retries < 0 or backoff < 0 or top_k < 1 or max_workers < 1:
            raise ValueError("top_k and max_workers must be >= 1, max_retries and backoff >= 0")
        self.provider = provider
        self.api_key_env = api_key_env
        self.top_k = top_k
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_workers = max_workers
        self.client = httpx.Client(
            timeout=timeout,
            transport=transport,
            headers={"X-API-KEY": api_key, "Content-Type": "application/json"},
        )

    @property
    def provider_name(self) -> str:
        return _PROVIDERS[self.provider]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> WebSearchEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:  # never show the key
        return f"WebSearchEngine(provider={self.provider!r}, api_key_env={self.api_key_env!r}, top_k={self.top_k})"

    # --- one query -------------------------------------------------------------------------
    def _post(self, query: str, k: int) -> dict:
        name = self.provider_name
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resp = self.client.post(SERPER_URL, json={"q": query, "num": k})
            except httpx.TransportError as e:  # timeouts, connection errors
                last = f"{type(e).__name__}: {e}"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code >= 400:
                hint = f" (check the API key in {self.api_key_env})" if resp.status_code in (401, 403) else ""
                raise WebSearchError(
                    f"{name} web search failed for query {query!r}: HTTP {resp.status_code}{hint}: {resp.text[:200]}"
                )
            try:
                payload = resp.json()
            except ValueError as e:
                raise WebSearchError(f"{name} web search returned invalid JSON for query {query!r}") from e
            if not isinstance(payload, dict):
                raise WebSearchError(f"{name} web search returned unexpected JSON for query {query!r}")
            return payload
        raise WebSearchError(
            f"{name} web search failed for query {query!r} after {self.max_retries + 1} attempts: {last}"
        )

    def _search_one(self, query: str, k: int) -> list[Doc]:
        if not query.strip():
            return []
        organic = self._post(query, k).get("organic") or []
        docs = []
        for r in organic:
            if not isinstance(r, dict):
                continue
            title, snippet = str(r.get("title") or ""), str(r.get("snippet") or "")
            if title or snippet:
                docs.append(Doc(title=title, text=snippet, id=str(r.get("link") or "")))
        return docs[:k]

    # --- batched protocol ------------------------------------------------------------------
    def search(
        self,
        queries: Sequence[str],
        *,
        questions: Sequence[str] | None = None,
        answers: Sequence[Sequence[str]] | None = None,
        step: int = 0,
        top_k: int | None = None,
    ) -> list[list[Doc]]:
        """Top-k organic results per query (title, snippet, link as id); a blank query gets none."""
        if not queries:
            return []
        k = top_k or self.top_k
        if len(queries) == 1:
            return [self._search_one(queries[0], k)]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(queries))) as pool:
            return list(pool.map(lambda q: self._search_one(q, k), queries))
