"""Bench: does the tiny simulator write useful documents when asked, and noisy ones when asked?

On the held-out (query, question, answer) pairs of the simulator SFT stage, asks the
fine-tuned simulator (in process, temperature from params) for useful and for noisy
documents and counts how often the documents contain a gold answer. BM25 on the same
queries is the reference row (a real engine has no useful/noisy switch: one rate).

    python bench/simulator_quality.py [--params params.yaml] [--n 200]

Targets (simulator issue): useful >= 3x noisy, and useful >= 60%.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from zerosearch.config import load_config
from zerosearch.lm.models import load_model
from zerosearch.search.bm25 import BM25Engine
from zerosearch.search.local import LocalCompleter
from zerosearch.search.simulated import SimulatedEngine
from zerosearch.stages.simulator_sft import contains_answer, load_heldout


def rate(engine, pairs, step: int) -> tuple[float, float]:
    """(share of queries whose documents contain a gold answer, share with no documents)."""
    results = engine.search([p["query"] for p in pairs], questions=[p["question"] for p in pairs],
                            answers=[p["golden_answers"] for p in pairs], step=step)
    hits = sum(contains_answer([d.text for d in docs], p["golden_answers"]) for docs, p in zip(results, pairs))
    return hits / len(pairs), sum(not docs for docs in results) / len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--n", type=int, default=200, help="held-out pairs to use")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = load_config(args.params)
    sim_dir = cfg.path("models") / "simulator_sft"
    pairs = load_heldout(sim_dir)[: args.n]
    model, tok = load_model(str(sim_dir))
    torch.manual_seed(args.seed)
    completer = LocalCompleter(model, tok, batch_size=32)

    def engine(p: float) -> SimulatedEngine:  # p = noise probability at every step
        return SimulatedEngine(completer, top_k=cfg.search.top_k, max_tokens=cfg.simulator.max_tokens,
                               temperature=cfg.simulator.temperature, p_start=p, p_end=p, total_steps=1)

    t0 = time.perf_counter()
    useful, useful_empty = rate(engine(0.0), pairs, 0)
    noisy, noisy_empty = rate(engine(1.0), pairs, 0)
    bm25, _ = rate(BM25Engine.load(cfg.path("data") / "bm25", top_k=cfg.search.top_k), pairs, 0)
    labelled = sum(p["label"] == "useful" for p in pairs) / len(pairs)

    table = Table(title=f"documents containing the gold answer ({len(pairs)} held-out queries)")
    for col in ("engine", "asked useful", "asked noisy", "useful / noisy", "no documents (useful, noisy)"):
        table.add_column(col)
    table.add_row("tiny simulator (SFT)", f"{useful:.1%}", f"{noisy:.1%}",
                  f"{useful / noisy:.1f}x" if noisy else "inf", f"{useful_empty:.1%}, {noisy_empty:.1%}")
    table.add_row("BM25 (real engine, reference)", f"{bm25:.1%}", "-", "-", "-")
    Console().print(table)
    print(f"held-out pairs labelled useful: {labelled:.1%} (balanced set)")
    ok = useful >= 0.6 and (noisy == 0 or useful / noisy >= 3)
    print(f"targets useful >= 60% and >= 3x noisy: {'met' if ok else 'NOT met'}; bench {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
