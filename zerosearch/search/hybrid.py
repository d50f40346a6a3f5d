"""Simulated search with sparse real API calls and a real fallback for malformed simulations.

Each query is answered by the simulated engine unless (a) a seeded coin, with probability
``real_fraction``, routes it to the real engine, or (b) the simulated engine returned no
documents for it (what it does when the simulator's output was malformed), in which case the
real engine answers it. The coins are deterministic in (seed, step, index of the call within
that step, index of the query in the call). Each engine is called at most once per ``search``,
batched with only the queries routed to it: first the simulated one, then the real one with the
sampled queries and the fallbacks together.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import TypeVar

from zerosearch.protocol import Doc, SearchEngine

T = TypeVar("T")

STAT_KEYS = ("simulated", "real_sampled", "real_fallback")


def _pick(values: Sequence[T] | None, idx: list[int]) -> list[T] | None:
    return None if values is None else [values[i] for i in idx]


def _search_subset(engine: SearchEngine, name: str, idx: list[int], queries, questions, answers,
                   step: int) -> list[list[Doc]]:
    """One batched call of ``engine`` with only the queries at ``idx`` (none: no call)."""
    if not idx:
        return []
    out = engine.search([queries[i] for i in idx], questions=_pick(questions, idx),
                        answers=_pick(answers, idx), step=step)
    if len(out) != len(idx):
        raise RuntimeError(f"{name} engine returned {len(out)} results for {len(idx)} queries")
    return out


class HybridEngine:
    """A ``SearchEngine`` mixing a simulated engine with sparse calls to a real one.

    ``stats`` counts queries: ``simulated`` answered by the simulated engine, ``real_sampled``
    sent to the real engine by the ``real_fraction`` coin, ``real_fallback`` sent to it because
    the simulated engine returned nothing.
    """

    def __init__(self, simulated: SearchEngine, real: SearchEngine, *, real_fraction: float = 0.0, seed: int = 0):
        if not 0.0 <= real_fraction <= 1.0:
            raise ValueError(f"real_fraction must be in [0, 1], got {real_fraction}")
        self.simulated = simulated
        self.real = real
        self.real_fraction = float(real_fraction)
        self.seed = seed
        self._calls_per_step: dict[int, int] = {}
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)

    def reset_stats(self) -> None:
        self.stats = dict.fromkeys(STAT_KEYS, 0)

    def _rng(self, step: int, call: int) -> random.Random:
        digest = hashlib.sha256(f"hybrid:{self.seed}:{step}:{call}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def route(self, n: int, *, step: int, call: int) -> list[bool]:
        """Which of ``n`` queries of the ``call``-th search at ``step`` are sampled for the real engine."""
        rng = self._rng(step, call)
        return [rng.random() < self.real_fraction for _ in range(n)]

    def search(
        self,
        queries: Sequence[str],
        *,
        questions: Sequence[str] | None = None,
        answers: Sequence[Sequence[str]] | None = None,
        step: int = 0,
    ) -> list[list[Doc]]:
        call = self._calls_per_step.get(step, 0)
        self._calls_per_step[step] = call + 1
        if not queries:
            return []
        for name, values in (("questions", questions), ("answers", answers)):
            if values is not None and len(values) != len(queries):
                raise ValueError(f"{len(values)} {name} for {len(queries)} queries")

        to_real = self.route(len(queries), step=step, call=call)
        sim_idx = [i for i, r in enumerate(to_real) if not r]
        results: list[list[Doc] | None] = [None] * len(queries)

        fallback: list[int] = []
        for i, docs in zip(sim_idx, _search_subset(self.simulated, "simulated", sim_idx, queries, questions, answers, step)):
            if docs:
                results[i] = list(docs)
            else:
                fallback.append(i)

        real_idx = sorted([i for i, r in enumerate(to_real) if r] + fallback)
        for i, docs in zip(real_idx, _search_subset(self.real, "real", real_idx, queries, questions, answers, step)):
            results[i] = list(docs)

        self.stats["simulated"] += len(sim_idx) - len(fallback)
        self.stats["real_sampled"] += len(real_idx) - len(fallback)
        self.stats["real_fallback"] += len(fallback)
        return [r if r is not None else [] for r in results]
