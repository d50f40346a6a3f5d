"""The noise curriculum: how often the simulated engine is asked for noisy documents.

ZeroSearch raises the share of noisy (unhelpful) documents over training along an
exponential schedule, so the policy first learns the search format on useful documents
and later learns to cope with poor ones:

    p(step) = p_start + (base**x - 1) / (base - 1) * (p_end - p_start),  x = step / total_steps

Schedules are chosen by name (``SCHEDULES``): ``exponential`` is the paper's; ``fixed`` is the
paper's ablation without a curriculum, ``p_end`` at every step (``p_start`` and ``base``
unused). The functions are pure and deterministic, so a resumed run draws the same noise.
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["SCHEDULES", "mix_seed", "noise_probability", "noisy_flags"]


def _exponential(x: float, p_start: float, p_end: float, base: float) -> float:
    return p_start + (base**x - 1.0) / (base - 1.0) * (p_end - p_start)


def _fixed(x: float, p_start: float, p_end: float, base: float) -> float:
    return float(p_end)


# name -> p(x) for x = step / total_steps in [0, 1)
SCHEDULES = {"exponential": _exponential, "fixed": _fixed}


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")


def noise_probability(
    step: int, total_steps: int, p_start: float, p_end: float, base: float = 4.0,
    schedule: str = "exponential",
) -> float:
    """Probability that a search call at ``step`` gets noisy documents.

    ``step`` is the 0-based RL step; ``x = step / total_steps`` runs from 0 to 1. Under the
    ``exponential`` schedule the probability rises from ``p_start`` (at step 0) to ``p_end``
    (at ``step >= total_steps``, where it stays), non-decreasing in ``step`` when
    ``p_start <= p_end``; under ``fixed`` it is ``p_end`` at every step.

    Raises ValueError for ``step < 0``, ``total_steps <= 0``, ``base <= 1``, a probability
    outside [0, 1] or an unknown ``schedule``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if base <= 1:
        raise ValueError(f"base must be > 1 for an increasing exponential schedule, got {base}")
    _check_probability("p_start", p_start)
    _check_probability("p_end", p_end)
    if step >= total_steps:
        return float(p_end)
    return SCHEDULES[schedule](step / total_steps, p_start, p_end, base)


def _rng_for(seed: int, step: int) -> random.Random:
    """A generator seeded from (seed, step) only, stable across processes and platforms."""
    digest = hashlib.sha256(f"zerosearch-noise:{int(seed)}:{int(step)}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def noisy_flags(seed: int, step: int, n: int, p: float) -> list[bool]:
    """Which of the ``n`` search calls made at ``step`` get noisy documents.

    Returns ``n`` booleans, each True with probability ``p`` independently. The draw
    depends on ``(seed, step, n, p)`` alone (not on process state or call order), so a
    run resumed at ``step`` redraws exactly the same flags. ``p == 0`` gives all False,
    ``p == 1`` all True.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check_probability("p", p)
    rng = _rng_for(seed, step)
    return [rng.random() < p for _ in range(n)]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, the same on every process and platform (sha256): the
    simulated engine's seed of a search call from (seed, step, call index), and the seeds
    derived from it per request or per process."""
    digest = hashlib.sha256(("zerosearch-seed:" + ":".join(str(int(p)) for p in parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
