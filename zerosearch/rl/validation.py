"""Validation during training: the policy's greedy answers to held-out questions, scored per
data source, on an engine of its own (never the training engine), leaving every random state
and the policy's mode as they were, so training is identical with validation on or off."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from zerosearch.agent.evaluation import by_source, predict_agent
from zerosearch.agent.rollout import RolloutSettings
from zerosearch.protocol import SearchEngine
from zerosearch.rl.checkpoint import rng_state, set_rng_state


@dataclass
class Validation:
    """Held-out questions (rows with ``data_source``) and the engine answering their searches,
    an instance of its own (the evaluation's engine), never the training engine."""

    rows: list[dict]
    engine: SearchEngine


def validation_metrics(records: Sequence[dict]) -> dict[str, float]:
    """Records with ``data_source`` -> ``val_<metric>`` (the mean over sources) and
    ``val_<source>_<metric>`` for strict EM, substring EM and F1 (``agent.evaluation.by_source``)."""
    summary = by_source(records)
    average = summary.pop("average", {})
    out = {f"val_{m}": v for m, v in average.items() if m != "n"}
    for source, scores in summary.items():
        out.update({f"val_{source}_{m}": v for m, v in scores.items() if m != "n"})
    return out


def validation_due(n: int, every: int, total: int) -> bool:
    """Whether the policy after ``n`` updates is validated: ``n`` = 0, a multiple of ``every``
    or ``total`` (never with ``every`` 0)."""
    return every > 0 and n <= total and (n % every == 0 or n == total)


def validate_policy(validation: Validation, policy, tokenizer, settings: RolloutSettings, generator, *,
                    batch_size: int, rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """``policy``'s answers (through ``generator``, greedy) to the validation questions
    (``validation_metrics``), over all processes: each answers ``rows[rank::world_size]``, the
    records are gathered. The torch (and CUDA) and Python RNG states are put back after it, and
    the policy's train/eval mode."""
    rows = validation.rows[rank::world_size]
    was_training, torch_rng, py_rng = policy.training, rng_state(), random.getstate()
    try:
        records = predict_agent(policy, tokenizer, validation.engine, rows, settings, batch_size=batch_size,
                                generator=generator)
    finally:
        set_rng_state(torch_rng)
        random.setstate(py_rng)
        policy.train(was_training)
    records = [{**r, "data_source": row["data_source"]} for r, row in zip(records, rows, strict=True)]
    if world_size > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
    return validation_metrics(records)
