"""A training step's wall-clock breakdown: policy generation, simulator generation, the
engine's own work around it, the rest of the rollout loop, scoring, log-probs and the update.

The trainer times its phases with a ``PhaseTimer``: ``rollout``, ``score``, ``experience``
(behaviour and reference log-probs, values) and ``update`` as sections; the policy generator's
``generate``, the engine's ``search`` and the simulator's ``complete`` (in process or served)
through timed proxies. ``step_phases`` turns those into disjoint parts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from zerosearch.protocol import SearchEngine
from zerosearch.timing import PhaseTimer

# The disjoint parts of a step, in the order a table shows them.
PHASES = ("policy_generate", "simulator_generate", "engine_glue", "rollout_glue", "score", "experience", "update")


def step_phases(seconds: dict[str, float]) -> dict[str, float]:
    """``time_<phase>`` for each of ``PHASES`` and ``time_rollout`` (the rollout's total) from a
    ``PhaseTimer``'s nested seconds: the engine's glue is its search time less the simulator's,
    the rollout's glue its total less generation and search."""
    rollout, search = seconds.get("rollout", 0.0), seconds.get("search", 0.0)
    policy, simulator = seconds.get("policy_generate", 0.0), seconds.get("simulator_generate", 0.0)
    parts = {"policy_generate": policy, "simulator_generate": simulator,
             "engine_glue": max(0.0, search - simulator), "rollout_glue": max(0.0, rollout - policy - search),
             "score": seconds.get("score", 0.0), "experience": seconds.get("experience", 0.0),
             "update": seconds.get("update", 0.0)}
    return {"time_rollout": rollout, **{f"time_{k}": parts[k] for k in PHASES}}


@contextlib.contextmanager
def simulator_timed(engine: SearchEngine, timer: PhaseTimer) -> Iterator[None]:
    """While open, the simulator behind ``engine`` (a simulated engine's ``completer``, also
    inside a hybrid engine) is timed as ``simulator_generate``; engines without one are left
    as they are."""
    simulated = getattr(engine, "simulated", engine)
    completer = getattr(simulated, "completer", None)
    if completer is None:
        yield
        return
    simulated.completer = timer.wrap(completer, {"complete": "simulator_generate"})
    try:
        yield
    finally:
        simulated.completer = completer
