"""The evaluate stage: every configured benchmark x every method, one table.

    zerosearch evaluate                  # or: dvc repro evaluate (``zerosearch eval`` is an alias)

Methods (``eval.methods``): ``direct`` and ``rag`` with the base policy, ``base_agent`` (the
base policy searching) and ``agent`` (``eval.policy``, the trained one), greedy, searches
answered by ``eval.engine`` (served for the stage when it is the simulator).

Every number comes as three answer metrics (``zerosearch.rewards``): ``em`` (strict exact
match), ``substring_em`` (a gold alias contained in the prediction: the reference's "EM", what
the paper tables report) and ``f1``; ``eval.headline_metric`` picks the headline one.

Writes ``<metrics>/evaluate.json`` (DVC metrics: per method, per benchmark the three metrics,
searches and format errors, plus average, in-domain and out-of-domain of the three, and
``headline``: the headline metric's name and each method's average of it),
``<metrics>/evaluate_predictions.jsonl`` (every question of every method: gold, prediction, the
three metrics, searches, the trajectory), ``<metrics>/evaluate_plots/<benchmark>.png`` (the
headline metric per method, labelled) and ``train_curves.png``, and logs them to the tracker. The evaluate flow then registers the agent in the MLflow model registry
(``eval.registered_model``) with the same rollout settings.
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from pathlib import Path
from typing import Any

from zerosearch.agent.evaluation import (
    headline,
    markdown_tables,
    predict_agent,
    predict_direct,
    predict_rag,
    summarize,
    table,
)
from zerosearch.agent.rollout import RolloutSettings
from zerosearch.config import Config, flatten
from zerosearch.data.schema import read_qa_parquet, write_jsonl
from zerosearch.lm.models import load_model
from zerosearch.progress import progress
from zerosearch.protocol import SearchEngine
from zerosearch.rewards import METRIC_LABELS
from zerosearch.search.factory import open_engine
from zerosearch.tracker import NullTracker, Tracker


def benchmark_rows(cfg: Config) -> dict[str, list[dict]]:
    """The test rows of every benchmark, cut to ``eval.max_samples`` when set."""
    out = {}
    for name in cfg.data.benchmarks:
        rows = read_qa_parquet(cfg.path("data") / "test" / f"{name}.parquet")
        out[name] = rows[: cfg.eval.max_samples] if cfg.eval.max_samples else rows
    return out


def run_methods(cfg: Config, engine, benchmarks: dict[str, list[dict]]) -> tuple[dict, list[dict]]:
    """``(results[method][benchmark] = summary, all prediction records)``; every method runs
    under the one ``RolloutSettings`` of the config (what training used)."""
    e, settings = cfg.eval, RolloutSettings.from_config(cfg)
    policies = {"direct": cfg.base.policy_model, "rag": cfg.base.policy_model,
                "base_agent": cfg.base.policy_model, "agent": e.policy}
    loaded: dict[str, Any] = {}
    results: dict[str, dict[str, dict[str, float]]] = {}
    records: list[dict] = []
    with progress("evaluate", len(e.methods) * len(benchmarks)) as bar:
        for method in e.methods:
            path = policies[method]
            if path not in loaded:
                loaded[path] = load_model(path, trust_remote_code=cfg.base.trust_remote_code)
            model, tok = loaded[path]
            results[method] = {}
            for bench, rows in benchmarks.items():
                if method == "direct":
                    recs = predict_direct(model, tok, rows, settings, batch_size=e.batch_size)
                elif method == "rag":
                    recs = predict_rag(model, tok, engine, rows, settings, batch_size=e.batch_size)
                else:
                    recs = predict_agent(model, tok, engine, rows, settings, batch_size=e.batch_size)
                results[method][bench] = summarize(recs)
                records += [{"method": method, "benchmark": bench, **r} for r in recs]
                bar.update(1, info=f"{method} {bench} {e.headline_metric} {results[method][bench][e.headline_metric]:.3f}")
    return results, records


def bar_chart_top(values: list[float]) -> float:
    """The y-axis top of a bar chart of scores in [0, 1]: room above the highest bar for its label,
    rounded up to a tenth, never above 1.05 nor below 0.1 (an all-zero chart still shows its axis)."""
    top = max(values, default=0.0)
    return min(1.05, max(0.1, math.ceil((top * 1.15 + 1e-9) * 10) / 10))


def plot_benchmarks(tab: dict[str, dict[str, Any]], benchmarks: list[str], out_dir: Path,
                    metric: str = "em") -> list[Path]:
    """One bar chart per benchmark (``metric`` per method, labelled with its name) plus one for the average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for bench in [*benchmarks, "average"]:
        methods = [m for m in tab if bench in tab[m]]
        values = [tab[m][bench][metric] for m in methods]
        fig, ax = plt.subplots(figsize=(5, 3))
        bars = ax.bar(methods, values, color="#4c72b0")
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=2, fontsize=8)  # the value on each bar
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_ylim(0, bar_chart_top(values))
        ax.set_title(f"{bench}: {METRIC_LABELS[metric]} by method")
        fig.tight_layout()
        path = out_dir / f"{bench}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def plot_training(curve_csv: Path, out: Path, validation_csv: Path | None = None, metric: str = "em") -> Path | None:
    """Reward, strict EM, searches and KL per training step from the train stage's curve, and
    validation's ``metric`` (average over data sources, greedy) when ``validation_csv`` has rows."""
    rows = _read_csv(curve_csv)
    if not rows:
        return None
    validations = _read_csv(validation_csv) if validation_csv is not None else []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    panels = [(rows, "reward_mean", "reward"), (rows, "em", "strict EM (train rollouts)"),
              (rows, "searches_per_trajectory", "searches"), (rows, "kl", "KL to reference")]
    if validations and f"val_{metric}" in validations[0]:
        panels.append((validations, f"val_{metric}", f"validation {METRIC_LABELS[metric]} (greedy)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
    for ax, (source, key, label) in zip(axes, panels, strict=True):
        xs = steps if source is rows else [int(r["step"]) for r in source]
        ax.plot(xs, [float(r.get(key) or 0) for r in source], marker="o" if source is not rows else None)
        ax.set_title(label)
        ax.set_xlabel("step")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def run(cfg: Config, tracker: Tracker = NullTracker(), engine: SearchEngine | None = None) -> dict[str, Any]:
    """The whole stage; returns the ``table``, ``metrics`` (what ``evaluate.json`` holds: the
    table plus ``headline``), ``markdown`` (a titled table per metric, the headline first) and
    ``seconds``. ``engine`` overrides ``eval.engine`` (tests). Registering the trained agent
    in MLflow is the flow's next task (``zerosearch.mlops.registry.register_agent``)."""
    t0 = time.perf_counter()
    metrics_dir = cfg.path("metrics")
    benchmarks = benchmark_rows(cfg)
    with open_engine(cfg, cfg.eval.engine, total_steps=cfg.train.total_steps,
                     log_path=cfg.path("models") / "simulator_server.log") if engine is None else contextlib.nullcontext(engine) as eng:
        results, records = run_methods(cfg, eng, benchmarks)
    tab = table(results, cfg.data.in_domain)
    metric = cfg.eval.headline_metric
    metrics = {**tab, "headline": headline(tab, metric)}
    write_jsonl(records, metrics_dir / "evaluate_predictions.jsonl")
    plots = plot_benchmarks(tab, list(benchmarks), metrics_dir / "evaluate_plots", metric)
    curves = plot_training(metrics_dir / "train_curve.csv", metrics_dir / "evaluate_plots" / "train_curves.png",
                           metrics_dir / "train_validation.csv", metric)
    tracker.log_metrics({f"evaluate.{k}": v for k, v in flatten(metrics).items() if isinstance(v, (int, float))})
    for path in [*plots, curves, metrics_dir / "evaluate_predictions.jsonl"]:
        if path is not None:
            tracker.log_artifact(path)
    return {"table": tab, "metrics": metrics, "markdown": markdown_tables(tab, list(benchmarks), metric),
            "seconds": time.perf_counter() - t0}
