"""Seeds-and-questions statistics of the replication study: pure functions over scores.

A row's scores are ``scores[base_seed][rl_seed][benchmark][question] = 0/1`` (or any score in
[0, 1]): one DVC experiment per (base seed, RL seed), its per-question correctness read from
``metrics/evaluate_predictions.jsonl``. Questions are compared within a base seed; base seeds
that answered the same questions (the tiny world has its own seed, ``data.world.seed``, so by
default every base seed answers the same benchmarks) share one draw of them per resample.

The estimate of a row is the mean over base seeds of the mean over its RL seeds of the
unweighted average over benchmarks (the paper's "average"). Its confidence interval is a
percentile bootstrap in two levels: each resample draws base seeds with replacement, RL seeds
with replacement within each, and the questions of each benchmark with replacement within each
base world (one draw of questions per world and resample, shared by that world's runs, since
they answer the same questions, and by the other worlds with the same question keys). A base
seed drawn twice in one resample reuses its inner draw (a simplification: it slightly
understates the spread between base seeds).

The difference of two rows is paired: both rows use the same draws of base seeds and of
questions (restricted to the base seeds and questions they share), their RL seeds drawn
independently (different runs). ``verdict`` reads the CI of ``better - worse``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Scores = Mapping[int, Mapping[int, Mapping[str, Mapping[str, float]]]]  # base -> rl -> benchmark -> question
HOLDS, OPPOSITE, INCONCLUSIVE = "holds", "the opposite", "inconclusive"


def correctness(records: Sequence[Mapping[str, Any]], method: str, metric: str) -> dict[str, dict[str, float]]:
    """``{benchmark: {question key: score}}`` of one method from evaluate's prediction records
    (``method``, ``benchmark``, ``id``, ``question`` and the three metrics per record). The key is
    the row's ``id`` when it has one, else its question (a repeated key gets ``#n``)."""
    out: dict[str, dict[str, float]] = {}
    for r in records:
        if r["method"] != method:
            continue
        bench = out.setdefault(r["benchmark"], {})
        key = str(r["id"]) if r.get("id") is not None else r["question"]
        base, n = key, 1
        while key in bench:
            key, n = f"{base}#{n}", n + 1
        bench[key] = float(r[metric])
    return out


def run_em(per_benchmark: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """One experiment's mean score per benchmark plus their unweighted ``average``."""
    out = {b: float(np.mean(list(q.values()))) for b, q in per_benchmark.items() if q}
    out["average"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def benchmarks_of(scores: Scores) -> list[str]:
    """The benchmarks every run of the row has (in first-seen order)."""
    runs = [r for base in scores.values() for r in base.values()]
    if not runs:
        return []
    return [b for b in runs[0] if all(b in r for r in runs)]


def point_estimate(scores: Scores, benchmarks: Sequence[str] | None = None) -> float:
    """Mean over base seeds of the mean over RL seeds of the average over ``benchmarks``."""
    benchmarks = list(benchmarks or benchmarks_of(scores))
    per_base = [np.mean([np.mean([np.mean(list(run[b].values())) for b in benchmarks]) for run in base.values()])
                for base in scores.values() if base]
    return float(np.mean(per_base))


@dataclass(frozen=True)
class Draws:
    """One set of bootstrap draws shared by the rows it is used for."""

    bases: list[int]  # the base seeds resampled
    base_weights: np.ndarray  # (R, B): how often resample r drew base j, over B
    questions: dict[tuple[int, str], tuple[list[str], np.ndarray]]  # (base, benchmark) -> keys, (R, Q) indices


def draw(layout: Mapping[int, Mapping[str, Sequence[str]]], resamples: int, rng: np.random.Generator) -> Draws:
    """Draw base seeds and, per base world and benchmark, questions, each with replacement.
    ``layout[base][benchmark]`` = the question keys there; worlds with the same keys for a
    benchmark (the same questions) share one draw of them."""
    bases = sorted(layout)
    picks = rng.integers(0, len(bases), size=(resamples, len(bases)))
    weights = (picks[..., None] == np.arange(len(bases))).sum(axis=1) / len(bases)
    questions, shared = {}, {}
    for b in bases:
        for bench, keys in layout[b].items():
            keys = list(keys)
            same = (bench, tuple(keys))
            if same not in shared:
                shared[same] = rng.integers(0, len(keys), size=(resamples, len(keys)))
            questions[(b, bench)] = (keys, shared[same])
    return Draws(bases, weights, questions)


def replicates(scores: Scores, draws: Draws, rng: np.random.Generator,
               benchmarks: Sequence[str] | None = None) -> np.ndarray:
    """``(R,)`` resampled estimates of a row under ``draws``; its RL seeds are drawn from ``rng``."""
    benchmarks = list(benchmarks or benchmarks_of(scores))
    resamples = draws.base_weights.shape[0]
    per_base = np.empty((resamples, len(draws.bases)))
    for j, b in enumerate(draws.bases):
        runs = sorted(scores[b])
        k = len(runs)
        picks = rng.integers(0, k, size=(resamples, k))
        run_weights = (picks[..., None] == np.arange(k)).sum(axis=1) / k  # (R, k)
        values = []
        for bench in benchmarks:
            keys, idx = draws.questions[(b, bench)]
            x = np.array([[scores[b][r][bench][q] for q in keys] for r in runs], dtype=float)  # (k, Q)
            values.append(np.take_along_axis(run_weights @ x, idx, axis=1).mean(axis=1))
        per_base[:, j] = np.mean(values, axis=0)
    return (per_base * draws.base_weights).sum(axis=1)


def _layout(scores_list: Sequence[Scores], benchmarks: Sequence[str]) -> dict[int, dict[str, list[str]]]:
    """Base seeds all rows have, and per benchmark the questions every run of them answered."""
    bases = sorted(set.intersection(*(set(s) for s in scores_list)))
    layout: dict[int, dict[str, list[str]]] = {}
    for b in bases:
        layout[b] = {}
        for bench in benchmarks:
            runs = [run[bench] for s in scores_list for run in s[b].values()]
            layout[b][bench] = [q for q in runs[0] if all(q in r for r in runs[1:])]
    return layout


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def confidence_interval(scores: Scores, *, resamples: int = 2000, seed: int = 0, confidence: float = 0.95,
                        benchmarks: Sequence[str] | None = None) -> tuple[float, float]:
    """The two-level bootstrap percentile interval of the row's estimate."""
    benchmarks = list(benchmarks or benchmarks_of(scores))
    rng = np.random.default_rng(seed)
    draws = draw(_layout([scores], benchmarks), resamples, rng)
    return _interval(replicates(scores, draws, rng, benchmarks), confidence)


def difference(better: Scores, worse: Scores, *, resamples: int = 2000, seed: int = 0,
               confidence: float = 0.95) -> dict[str, Any]:
    """``better - worse`` on the base seeds and questions both have, paired by question:
    ``{"diff", "ci": [lo, hi], "verdict", "bases", "questions"}``."""
    benchmarks = [b for b in benchmarks_of(better) if b in benchmarks_of(worse)]
    layout = _layout([better, worse], benchmarks)
    if not layout or not benchmarks:
        return {"diff": None, "ci": None, "verdict": INCONCLUSIVE, "bases": [], "questions": 0}
    rng = np.random.default_rng(seed)
    draws = draw(layout, resamples, rng)

    def restrict(s: Scores) -> dict:
        return {b: {r: {bench: {q: s[b][r][bench][q] for q in layout[b][bench]} for bench in benchmarks}
                    for r in s[b]} for b in layout}

    a, c = restrict(better), restrict(worse)
    reps = replicates(a, draws, rng, benchmarks) - replicates(c, draws, rng, benchmarks)
    lo, hi = _interval(reps, confidence)
    return {"diff": point_estimate(a, benchmarks) - point_estimate(c, benchmarks), "ci": [lo, hi],
            "verdict": verdict(lo, hi), "bases": list(layout),
            "questions": sum(len(q) for per in layout.values() for q in per.values())}


def verdict(lo: float, hi: float) -> str:
    """From the CI of (expected better - expected worse): above 0 the claim holds, below 0 the
    opposite holds, otherwise this scale cannot tell."""
    if lo > 0:
        return HOLDS
    if hi < 0:
        return OPPOSITE
    return INCONCLUSIVE


def summarize_row(scores: Scores, *, resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Per-seed EM per benchmark, the means and the CIs of one row (what replication.json holds)."""
    benchmarks = benchmarks_of(scores)
    per_seed = [{"base_seed": b, "rl_seed": r, "em": run_em(scores[b][r])} for b in sorted(scores) for r in sorted(scores[b])]
    mean = {bench: point_estimate(scores, [bench]) for bench in benchmarks}
    ci = {bench: list(confidence_interval(scores, resamples=resamples, seed=seed, confidence=confidence,
                                          benchmarks=[bench])) for bench in benchmarks}
    mean["average"] = point_estimate(scores, benchmarks)
    ci["average"] = list(confidence_interval(scores, resamples=resamples, seed=seed, confidence=confidence,
                                             benchmarks=benchmarks))
    return {"benchmarks": benchmarks, "per_seed": per_seed, "mean": mean, "ci": ci,
            "n_runs": len(per_seed)}
