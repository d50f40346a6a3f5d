"""The training step's time breakdown: phases timed in place and through proxies, turned into
disjoint parts that add up to the step."""

from __future__ import annotations

import time

import pytest

from zerosearch.rl.step_timing import PHASES, simulator_timed, step_phases
from zerosearch.timing import PhaseTimer


class _Completer:
    def __init__(self):
        self.calls = 0

    def complete(self, prompts, **kw):
        self.calls += 1
        time.sleep(0.02)
        return ["doc"] * len(prompts)


class _Engine:
    def __init__(self):
        self.completer = _Completer()
        self.top_k = 3

    def search(self, queries, *, step=0):
        time.sleep(0.01)
        return [self.completer.complete([q]) for q in queries]


def test_a_timed_proxy_times_only_its_methods_and_keeps_the_rest():
    timer, engine = PhaseTimer(), _Engine()
    timed = timer.wrap(engine, {"search": "search"})
    assert timed.top_k == 3 and timed.search(["a", "b"], step=1) == [["doc"], ["doc"]]
    seconds = timer.take()
    assert set(seconds) == {"search"} and seconds["search"] >= 0.05
    assert timer.take() == {}  # take starts again from zero


def test_the_simulator_is_timed_inside_the_search_and_put_back_after():
    timer, engine = PhaseTimer(), _Engine()
    original = engine.completer
    with simulator_timed(engine, timer), timer.section("rollout"):
        timer.wrap(engine, {"search": "search"}).search(["a", "b"])
    assert engine.completer is original and original.calls == 2
    phases = step_phases(timer.take())
    assert phases["time_simulator_generate"] >= 0.04
    assert phases["time_engine_glue"] == pytest.approx(phases["time_rollout"] - phases["time_simulator_generate"]
                                                       - phases["time_rollout_glue"])


def test_an_engine_without_a_simulator_is_left_alone():
    class Bm25:
        def search(self, queries, *, step=0):
            return []

    engine, timer = Bm25(), PhaseTimer()
    with simulator_timed(engine, timer):
        assert not hasattr(engine, "completer")


def test_the_parts_are_disjoint_and_add_up_to_the_timed_phases():
    seconds = {"rollout": 10.0, "policy_generate": 4.0, "search": 5.0, "simulator_generate": 3.5,
               "score": 0.1, "experience": 1.0, "update": 2.0}
    phases = step_phases(seconds)
    assert phases["time_rollout"] == 10.0
    assert (phases["time_engine_glue"], phases["time_rollout_glue"]) == (1.5, 1.0)
    parts = [phases[f"time_{p}"] for p in PHASES]
    assert sum(parts) == pytest.approx(10.0 + 0.1 + 1.0 + 2.0)
