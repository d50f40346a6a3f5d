"""Headline metrics: the few numbers per stage that ``dvc metrics show`` prints.

A stage's full metrics, ``<metrics>/<stage>.json`` (every number, nested: what the code, the
tests and the README read), stay as they are, a plain DVC output. From them each stage also
writes ``<metrics>/headline/<stage>.json``: at most ``MAX_KEYS`` flat numbers, the only files
dvc.yaml declares as ``metrics``. ``dvc metrics show`` (and ``metrics diff``, ``exp show``)
prints one column per key of every metrics file in one table: the full files made it a
4,241-character row.

To write the headline files from existing full files, without rerunning a stage::

    python -m zerosearch.mlops.headline metrics
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zerosearch.atomic import write_json

STAGES = ("data", "base", "simulator_sft", "train", "evaluate")
MAX_KEYS = 5
HEADLINE_DIR = "headline"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def headline(stage: str, full: Mapping[str, Any]) -> dict[str, int | float]:
    """The headline numbers of ``stage``'s full metrics ``full`` (those it has)."""
    if stage == "data":
        tests = [v for k, v in full.items() if k.startswith("rows_") and k not in ("rows_train", "rows_val")]
        picked = {"train_questions": full.get("rows_train"), "test_questions": sum(tests) if tests else None,
                  "documents": full.get("bm25_documents", full.get("documents"))}
    elif stage == "base":
        picked = {"policy_loss": full.get("policy_final_loss"), "simulator_loss": full.get("simulator_final_loss")}
    elif stage == "simulator_sft":
        picked = {"enabled": full.get("enabled"), "sft_pairs": full.get("pairs_train"),
                  "sft_loss": full.get("sft_final_loss")}
    elif stage == "train":
        val = full.get("val") or {}
        picked = {"steps": full.get("steps"), "reward_first": full.get("first_reward_mean"),
                  "reward_final": full.get("final_reward_mean"),
                  f"val_{val.get('headline_metric', 'headline')}": val.get("headline")}
    elif stage == "evaluate":
        top = dict(full.get("headline") or {})
        metric = top.pop("metric", "headline")
        picked = {f"{method}_{metric}": value for method, value in sorted(top.items())}
    else:
        raise ValueError(f"no headline for stage {stage!r} (stages: {', '.join(STAGES)})")
    return {k: v for k, v in picked.items() if _number(v)}


def headline_path(full_path: str | Path) -> Path:
    """Where the headline of the full metrics file ``<metrics>/<stage>.json`` goes."""
    full_path = Path(full_path)
    return full_path.parent / HEADLINE_DIR / full_path.name


def write_metrics(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Write a stage's full metrics to ``path`` (``<metrics>/<stage>.json``) and their headline
    to ``<metrics>/headline/<stage>.json``; returns ``path``."""
    path = Path(path)
    write_json(metrics, path)
    write_json(headline(path.stem, metrics), headline_path(path))
    return path


def write_headlines(metrics_dir: str | Path) -> list[Path]:
    """The headline file of every stage's full metrics file in ``metrics_dir``; returns them."""
    written = []
    for stage in STAGES:
        full = Path(metrics_dir) / f"{stage}.json"
        if full.exists():
            written.append(write_json(headline(stage, json.loads(full.read_text(encoding="utf-8"))),
                                      headline_path(full)))
    return written


if __name__ == "__main__":
    for p in write_headlines(sys.argv[1] if len(sys.argv) > 1 else "metrics"):
        print(p)
