"""Evaluating a search agent: greedy rollouts over a benchmark, EM/F1 per example and on average.

``predict`` rolls a policy out over QA rows in batches (greedy decoding) and returns one
prediction record per row; ``summarize`` turns records into the benchmark's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from zerosearch.rewards import exact_match, f1_score
from zerosearch.rollout import HFGenerator, run_rollouts
from zerosearch.search.base import SearchEngine


def predict(model, tokenizer, engine: SearchEngine, rows: Sequence[dict], *, max_turns: int,
            max_response_tokens: int, max_obs_tokens: int, batch_size: int = 64, chat: bool = False) -> list[dict]:
    """One record per row: question, gold, prediction, EM, F1, searches, invalid turns, trajectory text."""
    generator = HFGenerator(model, tokenizer, do_sample=False)
    model.eval()
    records: list[dict[str, Any]] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = run_rollouts(generator, tokenizer, engine, [r["question"] for r in chunk],
                                 [r["golden_answers"] for r in chunk], max_turns=max_turns,
                                 max_response_tokens=max_response_tokens, max_obs_tokens=max_obs_tokens, chat=chat)
            for row, traj in zip(chunk, batch.trajectories, strict=True):
                records.append({
                    "id": row.get("id"), "question": row["question"], "golden_answers": list(row["golden_answers"]),
                    "prediction": traj.answer, "em": exact_match(traj.answer, row["golden_answers"]),
                    "f1": f1_score(traj.answer, row["golden_answers"]), "searches": traj.searches,
                    "invalid_actions": traj.invalid_actions, "turns": traj.turns,
                    "trajectory": tokenizer.decode(traj.response_ids, skip_special_tokens=False),
                })
    return records


def summarize(records: Sequence[dict]) -> dict[str, float]:
    """Mean EM, F1, searches; share of rows with an answer; format errors per turn."""
    n = max(1, len(records))
    turns = max(1, sum(r["turns"] for r in records))
    return {
        "n": len(records),
        "em": sum(r["em"] for r in records) / n,
        "f1": sum(r["f1"] for r in records) / n,
        "searches": sum(r["searches"] for r in records) / n,
        "answered": sum(r["prediction"] is not None for r in records) / n,
        "format_error_rate": sum(r["invalid_actions"] for r in records) / turns,
    }
