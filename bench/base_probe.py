"""Bench: try a base-stage recipe without the rest of the pipeline. Builds the base stage with
``--set`` overrides into OUT (the data stage's world is read where params.yaml says), then
scores the base agent alone on the test benchmarks (BM25 searches, as the evaluate stage) and
prints its average EM and the answer breakdown (bench/answer_breakdown.py): whether the
documents it read held a gold answer, and EM when they did.

    python bench/base_probe.py OUT --set base.seed=2 --set tiny_models.n_demos=12000

A base agent near 0 is a policy that never learned to read its documents (RL then has no
signal); judge a recipe over several ``base.seed`` values, not by the pretraining loss.
Writes OUT/probe.json (overrides, seconds, the base stage's stats, the table) and
OUT/metrics/evaluate_predictions.jsonl. About 10 minutes on 2 cores with the default recipe.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def probe(params: Path, out: Path, overrides: list[str]) -> dict[str, Any]:
    from answer_breakdown import breakdown

    from zerosearch.config import load_config
    from zerosearch.data.schema import write_jsonl
    from zerosearch.search.factory import make_engine
    from zerosearch.stages import base as base_stage
    from zerosearch.stages.evaluate import benchmark_rows, run_methods, table

    out = out.resolve()
    cfg = load_config(params, [f"base.paths.models={out}/models", f"base.paths.metrics={out}/metrics",
                               f"base.policy_model={out}/models/base/policy",
                               f"base.simulator_model={out}/models/base/simulator", *overrides,
                               "eval.methods=[base_agent]"])
    t0 = time.perf_counter()
    stats = base_stage.run(cfg)
    seconds = time.perf_counter() - t0
    results, records = run_methods(cfg, make_engine(cfg, "bm25"), benchmark_rows(cfg))
    summary = {"overrides": overrides, "base_seconds": seconds, "base": stats,
               "table": table(results, cfg.data.in_domain), "breakdown": breakdown(records, "base_agent")}
    write_jsonl(records, out / "metrics" / "evaluate_predictions.jsonl")
    (out / "probe.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where the probe's models, predictions and probe.json go")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file (default params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override (repeatable), e.g. base.seed=2")
    args = parser.parse_args()
    s = probe(args.params, args.out, args.overrides)
    b, avg = s["breakdown"], s["table"]["base_agent"]["average"]
    print(f"{' '.join(args.overrides) or '(defaults)'}: base agent EM {avg['em']:.3f} (substring {avg['substring_em']:.3f}); "
          f"gold in the documents {b['gold_in_docs']:.3f}, EM when it was {b['em_given_gold_in_docs']:.3f}; "
          f"base stage {s['base_seconds']:.0f} s")


if __name__ == "__main__":
    main()
