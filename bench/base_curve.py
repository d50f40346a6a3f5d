"""Bench: the base agent's EM as the policy's pretraining goes on, not only at its end.

Pretrains the base policy exactly as the base stage does (its tokenizer, demonstrations, seed and
learning-rate schedule, ``--set`` overrides applied), saves it every ``--every`` steps, then
scores each saved policy as a base agent on the test benchmarks (BM25 searches, as the evaluate
stage) and prints one row per checkpoint: the mean loss of the steps before it, average EM, and
the answer breakdown (bench/answer_breakdown.py): the share of answers whose documents held a gold
answer, and EM when they did (the reading skill).

    python bench/base_curve.py OUT --every 400 --set base.seed=2

It tells apart a policy that never learns to read from one that learns and forgets (the
transience of in-context learning) and shows when the skill appears: what an end-point probe
(bench/base_probe.py) cannot. The checkpoints of one run share its cosine schedule, so the
step-k policy is not what a k-step run would give. The simulator is not trained. Writes
OUT/curve.json, OUT/losses.json and OUT/step_<k>/ (the saved policies; ``--score-only`` scores
them again). About 14 minutes of pretraining with the default recipe on 2 cores, plus ~1 minute
per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def curve(params: Path, out: Path, every: int, overrides: list[str], score_only: bool = False) -> dict[str, Any]:
    """Pretrain (unless ``score_only``: the checkpoints already in ``out``), then score every
    checkpoint; the config is read once, so editing the params file meanwhile changes nothing."""
    from zerosearch.config import load_config

    out = out.resolve()
    cfg = load_config(params, [*overrides, "eval.methods=[base_agent]"])
    if score_only:
        losses = json.loads((out / "losses.json").read_text()) if (out / "losses.json").exists() else []
        saved = sorted(int(d.name.removeprefix("step_")) for d in out.glob("step_*"))
        pretrain_seconds = None
    else:
        t0 = time.perf_counter()
        losses, saved = pretrain_with_checkpoints(cfg, out, every)
        pretrain_seconds = time.perf_counter() - t0
        (out / "losses.json").write_text(json.dumps(losses) + "\n")
    points = score_checkpoints(cfg, out, saved, losses, every)
    summary = {"overrides": overrides, "every": every, "pretrain_seconds": pretrain_seconds, "points": points}
    (out / "curve.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def pretrain_with_checkpoints(cfg, out: Path, every: int) -> tuple[list[float], list[int]]:
    """The base stage's policy pretraining, saving the policy to ``out/step_<k>`` every ``every``
    steps and at the end; returns the loss per step and the saved steps."""
    from zerosearch.agent.pretraining import pretraining_texts
    from zerosearch.lm.models import save_model, tiny_causal_lm, train_tokenizer
    from zerosearch.lm.supervised import pack_examples, train_causal_lm

    tm = cfg.tiny_models
    run = tm.policy_pretrain
    texts = pretraining_texts(cfg)
    tokenizer = train_tokenizer(texts.tokenizer_texts(), tm.vocab_size)
    policy = tiny_causal_lm(tm.policy, len(tokenizer), tokenizer, cfg.base.seed)
    chunks = pack_examples(tokenizer, texts.policy_examples(cfg.base.seed), run.seq_len)
    losses: list[float] = []
    saved: list[int] = []

    def on_step(step: int, m: dict[str, float]) -> None:
        losses.append(m["loss"])
        if (step + 1) % every == 0 or step + 1 == run.steps:
            save_model(policy, tokenizer, out / f"step_{step + 1}")
            saved.append(step + 1)

    train_causal_lm(policy, chunks, run, cfg.base.seed, desc="pretrain policy", on_step=on_step)
    return losses, saved


def score_checkpoints(cfg, out: Path, steps: list[int], losses: list[float], every: int) -> list[dict[str, Any]]:
    """Each ``out/step_<k>`` policy as the base agent (BM25) on the test benchmarks: average EM,
    the answer breakdown and the mean loss of the ``every`` steps before it (None without losses)."""
    from answer_breakdown import breakdown

    from zerosearch.search.factory import make_engine
    from zerosearch.stages.evaluate import benchmark_rows, run_methods, table

    engine, rows, points = make_engine(cfg, "bm25"), benchmark_rows(cfg), []
    for done in steps:
        step_cfg = cfg.model_copy(update={"base": cfg.base.model_copy(update={"policy_model": str(out / f"step_{done}")})})
        results, records = run_methods(step_cfg, engine, rows)
        window = losses[max(0, done - every):done]
        points.append({"step": done, "loss": sum(window) / len(window) if window else None,
                       "em": table(results, cfg.data.in_domain)["base_agent"]["average"]["em"],
                       **{k: v for k, v in breakdown(records, "base_agent").items() if k != "em"}})
        print(json.dumps(points[-1]), flush=True)
    return points


def curve_table(summary: dict[str, Any]):
    """``curve``'s summary as a rich table, one row per checkpoint."""
    from rich.table import Table

    seconds = summary["pretrain_seconds"]
    t = Table(title=f"base agent over pretraining: {' '.join(summary['overrides']) or '(defaults)'}, "
                    + (f"pretraining {seconds:.0f} s" if seconds is not None else "scored only"))
    for col in ("step", "loss", "EM", "gold in docs", "EM when gold"):
        t.add_column(col, justify="right")
    for p in summary["points"]:
        t.add_row(str(p["step"]), "-" if p["loss"] is None else f"{p['loss']:.3f}", f"{p['em']:.3f}",
                  f"{p['gold_in_docs']:.3f}", f"{p['em_given_gold_in_docs']:.3f}")
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where the checkpoints and curve.json go")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file (default params.yaml)")
    parser.add_argument("--every", type=int, default=400, help="save and score the policy every N steps (default 400)")
    parser.add_argument("--score-only", action="store_true",
                        help="score the checkpoints already in OUT (an interrupted run) instead of pretraining")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override (repeatable), e.g. base.seed=2")
    args = parser.parse_args()
    if args.every < 1:
        parser.error("--every must be at least 1")
    s = curve(args.params, args.out, args.every, args.overrides, args.score_only)
    from rich.console import Console

    Console(width=120).print(curve_table(s))


if __name__ == "__main__":
    main()
