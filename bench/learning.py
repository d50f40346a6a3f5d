"""Bench: did RL help? Base policy vs trained policy on the test splits, real BM25 engine, greedy.

    python bench/learning.py [--params params.yaml] [--trained models/policy] [--n 200]
                             [--compare LABEL=PATH ...]

Rows: the base policy (``base.policy_model``), the trained policy (``--trained``, the train
stage's output by default) and any ``--compare LABEL=PATH`` (e.g. a PPO run's policy).
Columns: EM per test split and the mean number of searches. Target (trainer issue): the
trained policy beats the base by a clear margin.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from zerosearch.agent.evaluation import predict_agent, summarize
from zerosearch.agent.rollout import RolloutSettings
from zerosearch.config import load_config
from zerosearch.data.schema import read_qa_parquet
from zerosearch.lm.models import load_model
from zerosearch.search.factory import make_engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--trained", default=None, help="trained policy dir (default: <models>/policy)")
    ap.add_argument("--compare", nargs="*", default=[], help="more policies as LABEL=PATH")
    ap.add_argument("--n", type=int, default=200, help="questions per split (0 = all)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = load_config(args.params)
    engine = make_engine(cfg, "bm25")
    policies = {"base": cfg.base.policy_model, "trained": args.trained or str(cfg.path("models") / "policy")}
    policies |= dict(item.split("=", 1) for item in args.compare)
    splits = cfg.data.benchmarks
    table = Table(title=f"EM on the test splits (BM25 top-{cfg.search.top_k}, greedy, {cfg.train.max_turns} searches + answer)")
    for col in ["policy", *splits, "average", "searches"]:
        table.add_column(col, justify="right")
    for label, path in policies.items():
        model, tok = load_model(path)
        ems, searches = [], []
        for split in splits:
            rows = read_qa_parquet(cfg.path("data") / "test" / f"{split}.parquet")
            rows = rows[: args.n] if args.n else rows
            s = summarize(predict_agent(model, tok, engine, rows, RolloutSettings.from_config(cfg)))
            ems.append(s["em"])
            searches.append(s["searches"])
        table.add_row(label, *[f"{e:.3f}" for e in ems], f"{sum(ems) / len(ems):.3f}",
                      f"{sum(searches) / len(searches):.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
