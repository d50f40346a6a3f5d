"""Hybrid engine routing with two fake engines that record their calls."""

from __future__ import annotations

import pytest

from zerosearch.protocol import Doc
from zerosearch.search.hybrid import HybridEngine


class FakeEngine:
    """Returns one Doc per query naming its source; queries containing ``empty_on`` get no docs."""

    def __init__(self, name: str, empty_on: str | None = None):
        self.name = name
        self.empty_on = empty_on
        self.calls: list[dict] = []

    def search(self, queries, *, questions=None, answers=None, step=0):
        self.calls.append({"queries": list(queries), "questions": questions, "answers": answers, "step": step})
        return [[] if self.empty_on and self.empty_on in q else [Doc(title=self.name, text=q, id=f"{self.name}:{q}")]
                for q in queries]


def make(fraction=0.0, seed=0, empty_on=None):
    sim, real = FakeEngine("sim", empty_on), FakeEngine("real")
    return HybridEngine(sim, real, real_fraction=fraction, seed=seed), sim, real


QUERIES = [f"q{i}" for i in range(40)]
QUESTIONS = [f"question {i}" for i in range(40)]
ANSWERS = [[f"ans{i}", f"alias{i}"] for i in range(40)]


def sources(results):
    return [docs[0].title if docs else None for docs in results]


def test_fraction_zero_is_all_simulated():
    h, sim, real = make(0.0)
    out = h.search(QUERIES, questions=QUESTIONS, answers=ANSWERS, step=3)
    assert sources(out) == ["sim"] * 40 and [d[0].text for d in out] == QUERIES
    assert sim.calls == [{"queries": QUERIES, "questions": QUESTIONS, "answers": ANSWERS, "step": 3}]
    assert real.calls == []
    assert h.stats == {"simulated": 40, "real_sampled": 0, "real_fallback": 0}


def test_fraction_one_is_all_real():
    h, sim, real = make(1.0)
    out = h.search(QUERIES, step=1)
    assert sources(out) == ["real"] * 40 and [d[0].text for d in out] == QUERIES
    assert sim.calls == [] and real.calls == [{"queries": QUERIES, "questions": None, "answers": None, "step": 1}]
    assert h.stats == {"simulated": 0, "real_sampled": 40, "real_fallback": 0}


def test_mixed_routing_calls_each_engine_once_with_its_sliced_subset_and_keeps_order():
    h, sim, real = make(0.3, seed=7)
    out = h.search(QUERIES, questions=QUESTIONS, answers=ANSWERS, step=5)
    assert [d[0].text for d in out] == QUERIES  # output order preserved
    real_idx = [i for i, s in enumerate(sources(out)) if s == "real"]
    sim_idx = [i for i, s in enumerate(sources(out)) if s == "sim"]
    assert 0 < len(real_idx) < 40 and len(real_idx) + len(sim_idx) == 40
    assert len(sim.calls) == 1 and len(real.calls) == 1
    assert sim.calls[0] == {"queries": [QUERIES[i] for i in sim_idx], "questions": [QUESTIONS[i] for i in sim_idx],
                            "answers": [ANSWERS[i] for i in sim_idx], "step": 5}
    assert real.calls[0] == {"queries": [QUERIES[i] for i in real_idx], "questions": [QUESTIONS[i] for i in real_idx],
                             "answers": [ANSWERS[i] for i in real_idx], "step": 5}
    assert h.stats == {"simulated": len(sim_idx), "real_sampled": len(real_idx), "real_fallback": 0}


def test_empty_simulated_results_fall_back_to_real_and_are_counted():
    h, sim, real = make(0.0, empty_on="bad")
    queries = ["good 0", "bad 1", "good 2", "bad 3"]
    out = h.search(queries, questions=["Q0", "Q1", "Q2", "Q3"], answers=[["a0"], ["a1"], ["a2"], ["a3"]], step=2)
    assert sources(out) == ["sim", "real", "sim", "real"]
    assert [d[0].text for d in out] == queries
    assert sim.calls[0]["queries"] == queries
    assert real.calls == [{"queries": ["bad 1", "bad 3"], "questions": ["Q1", "Q3"], "answers": [["a1"], ["a3"]],
                           "step": 2}]
    assert h.stats == {"simulated": 2, "real_sampled": 0, "real_fallback": 2}


def test_sampled_and_fallback_queries_share_one_real_call():
    h, sim, real = make(0.5, seed=1, empty_on="bad")
    queries = [f"{'bad' if i % 2 else 'good'} {i}" for i in range(30)]
    out = h.search(queries)
    sampled = h.route(30, step=0, call=0)
    assert len(sim.calls) == 1 and len(real.calls) == 1
    expected_real = [q for q, s in zip(queries, sampled) if s or "bad" in q]
    assert real.calls[0]["queries"] == expected_real  # in original order
    assert all(s == ("real" if (r or "bad" in q) else "sim") for q, r, s in zip(queries, sampled, sources(out)))
    n_fallback = sum(1 for q, s in zip(queries, sampled) if not s and "bad" in q)
    assert h.stats == {"simulated": 30 - len(expected_real), "real_sampled": sum(sampled),
                       "real_fallback": n_fallback}
    h.reset_stats()
    assert h.stats == {"simulated": 0, "real_sampled": 0, "real_fallback": 0}


def test_routing_is_reproducible_per_seed_and_step_and_varies_across_steps_and_calls():
    def routed(seed, steps):
        h, _, _ = make(0.5, seed=seed)
        return [sources(h.search(QUERIES, step=s)) for s in steps]

    a = routed(0, [0, 0, 1, 2])
    assert a == routed(0, [0, 0, 1, 2])  # same seed, same (step, call) sequence -> same routing
    assert a[0] != a[1]  # second call within a step gets fresh coins
    assert a[0] != a[2] != a[3]  # different steps differ
    assert routed(1, [0])[0] != a[0]  # different seed differs
    # the call counter is per step: interleaving another step does not shift a step's routing
    h, _, _ = make(0.5, seed=0)
    first = sources(h.search(QUERIES, step=0))
    h.search(QUERIES, step=9)
    assert [first, sources(h.search(QUERIES, step=0))] == a[:2]


def test_edge_cases():
    h, sim, real = make(0.5)
    assert h.search([]) == [] and sim.calls == [] and real.calls == []
    with pytest.raises(ValueError, match="real_fraction"):
        HybridEngine(sim, real, real_fraction=1.5)
    with pytest.raises(ValueError, match="2 questions for 3 queries"):
        h.search(["a", "b", "c"], questions=["x", "y"])
