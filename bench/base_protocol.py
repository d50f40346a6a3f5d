"""Bench: does the pretrained tiny policy follow the search protocol?

Samples the base policy at temperature 1 on held-out test questions (the tiny world's test
splits), answers its searches with the real BM25 engine, and counts the turns whose output
holds a well-formed action (a ``<search>...</search>`` or ``<answer>...</answer>`` block).
Also reports EM of the final answers and how long the base stage took (from its manifest).

    python bench/base_protocol.py [--params params.yaml] [--n 100] [--max-turns 4]

Target (foundation issue): >= 90% well-formed turns; base stage <= 300 s.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch
from rich.console import Console
from rich.table import Table

from zerosearch.config import load_config
from zerosearch.data.schema import read_qa_parquet
from zerosearch.models import load_model
from zerosearch.prompts import INVALID_ACTION, information_block, policy_prompt
from zerosearch.rewards import exact_match
from zerosearch.search.bm25 import BM25Engine

ACTION_RE = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)


def run(params: str, n: int, max_turns: int, max_new_tokens: int, seed: int, show_invalid: int = 0) -> dict:
    cfg = load_config(params)
    model, tok = load_model(cfg.base.policy_model)
    engine = BM25Engine.load(cfg.path("data") / "bm25", top_k=cfg.search.top_k)
    stop_ids = [tok.convert_tokens_to_ids(t) for t in ("</search>", "</answer>")] + [tok.eos_token_id]
    torch.manual_seed(seed)
    rows = {}
    for bench in cfg.data.benchmarks:
        qs = read_qa_parquet(cfg.path("data") / "test" / f"{bench}.parquet")[:n]
        texts = [policy_prompt(q["question"]) for q in qs]
        answers: list[str | None] = [None] * len(qs)
        turns = wellformed = 0
        active = list(range(len(qs)))
        for _ in range(max_turns):
            if not active:
                break
            enc = tok([texts[i] for i in active], return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                     max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                                     pad_token_id=tok.pad_token_id)
            new = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=False)
            still = []
            for i, gen in zip(active, new):
                gen = gen.replace(tok.pad_token, "").replace(tok.eos_token, "")
                texts[i] += gen
                turns += 1
                m = ACTION_RE.search(gen)
                if m is None:
                    if show_invalid > 0:
                        show_invalid -= 1
                        print(f"[invalid turn, {bench}] {gen!r}")
                    texts[i] += INVALID_ACTION
                    still.append(i)
                    continue
                wellformed += 1
                if m.group(1) == "answer":
                    answers[i] = m.group(2).strip()
                else:
                    texts[i] += information_block(engine.search([m.group(2).strip()])[0])
                    still.append(i)
            active = still
        em = sum(exact_match(a, q["golden_answers"]) for a, q in zip(answers, qs)) / len(qs)
        rows[bench] = {"questions": len(qs), "turns": turns, "wellformed": wellformed / max(1, turns),
                       "answered": sum(a is not None for a in answers) / len(qs), "em": em}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--n", type=int, default=100, help="questions per benchmark")
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show-invalid", type=int, default=0, help="print this many malformed turns")
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
