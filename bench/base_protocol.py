"""Bench: does the pretrained tiny policy follow the search protocol?

Rolls out the base policy (``zerosearch.agent.rollout``, temperature 1) on held-out test
questions (the tiny world's test splits), answers its searches with the real BM25 engine,
and counts the turns whose output holds a well-formed action (a ``<search>...</search>``
or ``<answer>...</answer>`` block).
Also reports EM of the final answers and how long the base stage took (from its manifest).

    python bench/base_protocol.py [--params params.yaml] [--n 100] [--max-turns 3]

Target (foundation issue): >= 90% well-formed turns; base stage <= 300 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from rich.console import Console
from rich.table import Table

from zerosearch.agent.rollout import RolloutSettings, run_rollouts
from zerosearch.config import load_config
from zerosearch.data.schema import read_qa_parquet
from zerosearch.lm.generation import HFGenerator
from zerosearch.lm.models import load_model
from zerosearch.rewards import exact_match
from zerosearch.search.bm25 import BM25Engine


def run(params: str, n: int, max_turns: int, max_new_tokens: int, seed: int, show_invalid: int = 0) -> dict:
    cfg = load_config(params)
    model, tok = load_model(cfg.base.policy_model)
    engine = BM25Engine.load(cfg.path("data") / "bm25", top_k=cfg.search.top_k)
    generator = HFGenerator(model, tok, temperature=1.0)
    torch.manual_seed(seed)
    rows = {}
    settings = dataclasses.replace(RolloutSettings.from_config(cfg), max_search_turns=max_turns,
                                   max_response_tokens=max_new_tokens)
    for bench in cfg.data.benchmarks:
        qs = read_qa_parquet(cfg.path("data") / "test" / f"{bench}.parquet")[:n]
        batch = run_rollouts(generator, tok, engine, [q["question"] for q in qs], [q["golden_answers"] for q in qs],
                             settings)
        trajs = batch.trajectories
        turns = sum(t.turns for t in trajs)
        invalid = sum(t.invalid_actions for t in trajs)
        for t in [t for t in trajs if t.invalid_actions][:show_invalid]:
            print(f"[{bench}] {tok.decode(t.response_ids)[:400]!r}")
        em = sum(exact_match(t.answer, q["golden_answers"]) for t, q in zip(trajs, qs)) / len(qs)
        rows[bench] = {"questions": len(qs), "turns": turns, "wellformed": (turns - invalid) / max(1, turns),
                       "answered": sum(t.answer is not None for t in trajs) / len(qs), "em": em}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--n", type=int, default=100, help="questions per benchmark")
    ap.add_argument("--max-turns", type=int, default=3, help="searches with documents (then the answer turn)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show-invalid", type=int, default=0, help="print this many trajectories with invalid turns")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = run(args.params, args.n, args.max_turns, args.max_new_tokens, args.seed, args.show_invalid)
    cfg = load_config(args.params)
    manifest = cfg.path("models") / "base" / "manifest.json"
    base = json.loads(manifest.read_text()) if manifest.exists() else {}
    table = Table(title="tiny base policy: protocol adherence (temperature 1, BM25 engine)")
    for col in ("benchmark", "questions", "turns", "well-formed turns", "answered", "EM"):
        table.add_column(col)
    for b, r in rows.items():
        table.add_row(b, str(r["questions"]), str(r["turns"]), f"{r['wellformed']:.1%}",
                      f"{r['answered']:.1%}", f"{r['em']:.3f}")
    total_turns = sum(r["turns"] for r in rows.values())
    overall = sum(r["wellformed"] * r["turns"] for r in rows.values()) / max(1, total_turns)
    table.add_row("all", "", str(total_turns), f"{overall:.1%}", "", "")
    Console().print(table)
    stage_s = base.get("policy_seconds", 0) + base.get("simulator_seconds", 0)
    print(f"well-formed turns: {overall:.1%} (target >= 90%)")
    print(f"base stage pretraining: {stage_s:.0f} s (policy {base.get('policy_seconds', 0):.0f} s, "
          f"simulator {base.get('simulator_seconds', 0):.0f} s; target <= 300 s for the whole stage)")
    print(f"bench wall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
