"""The evaluate stage: every configured benchmark x every method, one table.

    zerosearch eval                      # or: dvc repro evaluate

Methods (``eval.methods``): ``direct`` and ``rag`` with the base policy, ``base_agent`` (the
base policy searching) and ``agent`` (``eval.policy``, the trained one), greedy, searches
answered by ``eval.engine`` (served for the stage when it is the simulator).

Writes ``<metrics>/eval.json`` (DVC metrics: per method, per benchmark EM/F1/searches/format
errors, plus average, in-domain and out-of-domain EM/F1), ``<metrics>/eval_predictions.jsonl``
(every question of every method: gold, prediction, searches, the trajectory),
``<metrics>/eval_plots/<benchmark>.png`` (EM per method) and ``train_curves.png``; logs them to
MLflow and registers the agent's policy in the model registry (``eval.registered_model``).
"""

from __future__ import annotations

import contextlib
import csv
import time
from pathlib import Path
from typing import Any

from zerosearch.config import Config
from zerosearch.data.schema import read_qa_parquet, write_jsonl
from zerosearch.evaluation import markdown_table, predict_agent, predict_direct, predict_rag, summarize, table
from zerosearch.models import load_model
from zerosearch.search.factory import open_engine
from zerosearch.tracking import NullTracker, flatten


def benchmark_rows(cfg: Config) -> dict[str, list[dict]]:
    """The test rows of every benchmark, cut to ``eval.max_samples`` when set."""
    out = {}
    for name in cfg.data.benchmarks:
        rows = read_qa_parquet(cfg.path("data") / "test" / f"{name}.parquet")
        out[name] = rows[: cfg.eval.max_samples] if cfg.eval.max_samples else rows
    return out


def run_methods(cfg: Config, engine, benchmarks: dict[str, list[dict]]) -> tuple[dict, list[dict]]:
    """``(results[method][benchmark] = summary, all prediction records)``."""
    t, e = cfg.train, cfg.eval
    policies = {"direct": cfg.base.policy_model, "rag": cfg.base.policy_model,
                "base_agent": cfg.base.policy_model, "agent": e.policy}
    loaded: dict[str, Any] = {}
    results: dict[str, dict[str, dict[str, float]]] = {}
    records: list[dict] = []
    for method in e.methods:
        path = policies[method]
        if path not in loaded:
            loaded[path] = load_model(path, trust_remote_code=cfg.base.trust_remote_code)
        model, tok = loaded[path]
        results[method] = {}
        for bench, rows in benchmarks.items():
            if method == "direct":
                recs = predict_direct(model, tok, rows, max_response_tokens=t.max_response_tokens,
                                      batch_size=e.batch_size, chat=cfg.base.chat_prompt)
            elif method == "rag":
                recs = predict_rag(model, tok, engine, rows, max_response_tokens=t.max_response_tokens,
                                   max_obs_tokens=t.max_obs_tokens, batch_size=e.batch_size,
                                   chat=cfg.base.chat_prompt)
            else:
                recs = predict_agent(model, tok, engine, rows, max_turns=t.max_turns,
                                     max_response_tokens=t.max_response_tokens, max_obs_tokens=t.max_obs_tokens,
                                     max_context_tokens=t.max_prompt_tokens, batch_size=e.batch_size,
                                     chat=cfg.base.chat_prompt)
            results[method][bench] = summarize(recs)
            records += [{"method": method, "benchmark": bench, **r} for r in recs]
    return results, records


def plot_benchmarks(tab: dict[str, dict[str, Any]], benchmarks: list[str], out_dir: Path) -> list[Path]:
    """One bar chart per benchmark (EM per method) plus one for the average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for bench in [*benchmarks, "average"]:
        methods = [m for m in tab if bench in tab[m]]
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(methods, [tab[m][bench]["em"] for m in methods], color="#4c72b0")
        ax.set_ylabel("EM")
        ax.set_ylim(0, 1)
        ax.set_title(f"{bench}: exact match by method")
        fig.tight_layout()
        path = out_dir / f"{bench}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_training(curve_csv: Path, out: Path) -> Path | None:
    """Reward, EM, searches and KL per training step from the train stage's curve."""
    if not curve_csv.exists():
        return None
    with open(curve_csv, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    panels = [("reward_mean", "reward"), ("em", "EM (train rollouts)"), ("searches_per_trajectory", "searches"),
              ("kl", "KL to reference")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
    for ax, (key, label) in zip(axes, panels, strict=True):
        ax.plot(steps, [float(r.get(key) or 0) for r in rows])
        ax.set_title(label)
        ax.set_xlabel("step")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def evaluate(cfg: Config, tracker: NullTracker = NullTracker(), engine=None) -> dict[str, Any]:
    """The whole stage; returns the table (what ``eval.json`` holds) plus ``markdown``."""
    t0 = time.perf_counter()
    metrics_dir = cfg.path("metrics")
    benchmarks = benchmark_rows(cfg)
    with open_engine(cfg, cfg.eval.engine, total_steps=cfg.train.total_steps,
                     log_path=cfg.path("models") / "simulator_server.log") if engine is None else contextlib.nullcontext(engine) as eng:
        results, records = run_methods(cfg, eng, benchmarks)
    tab = table(results, cfg.data.in_domain)
    write_jsonl(records, metrics_dir / "eval_predictions.jsonl")
    plots = plot_benchmarks(tab, list(benchmarks), metrics_dir / "eval_plots")
    curves = plot_training(metrics_dir / "train_curve.csv", metrics_dir / "eval_plots" / "train_curves.png")
    tracker.log_metrics({f"eval.{k}": v for k, v in flatten(tab).items() if isinstance(v, (int, float))})
    for path in [*plots, curves, metrics_dir / "eval_predictions.jsonl"]:
        if path is not None:
            tracker.log_artifact(path)
    registered = None
    if "agent" in cfg.eval.methods:
        index = cfg.path("data") / "bm25"  # the registered agent searches it when loaded from MLflow
        agent_metrics = {f"eval.{k}": v for k, v in flatten(tab["agent"]).items() if k.endswith(".em")}
        registered = tracker.log_model(cfg.eval.policy, cfg.eval.registered_model,
                                       index=index if index.exists() else None, metrics=agent_metrics)
    md = markdown_table(tab, list(benchmarks))
    return {"table": tab, "markdown": md, "registered_model": registered, "seconds": time.perf_counter() - t0}

