"""Bench: where a training step's time goes, the simulator served vs in process, in one process.

Runs the train stage (``zerosearch.stages.train.run``, the code ``dvc repro`` runs) on the
committed tiny data and base models with the params file's settings, ``--steps`` steps per
simulator backend, outputs in a temp dir, no validation (``train.val_every=0``, timed by the
stage itself), no probe, MLflow logging to a temp sqlite store; then prints the mean seconds
per step of each phase of the breakdown (``zerosearch.rl.step_timing``), skipping the first
step (warm-up), and the ratio against the first backend listed:

    policy_generate     the policy's sampling (the rollout generator)
    simulator_generate  the simulator's generation (in process: its generator; served: the
                        HTTP round trip to ``transformers serve``, the server's work included)
    engine_glue         the simulated engine's own work: prompts, parsing, the noise draws
    rollout_glue        the rollout loop around generation and search: contexts, tokenizing
    score               the reward
    experience          behaviour and reference log-probs (the critic's values under PPO)
    update              forward + backward + optimizer steps
    logging             MLflow, the stage's per-step CSVs, checkpoints

    python bench/train_speed.py [--params params.yaml] [--steps 6] [--backends transformers,inprocess]
                                [--set KEY=VALUE ...]

The curriculum's noise follows ``train.total_steps``, set to ``--steps`` here: timings, not
learning, are measured. Needs ``dvc repro base simulator_sft`` (or ``make run``) first.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from zerosearch.config import load_config
from zerosearch.rl.step_timing import PHASES

REPO = Path(__file__).resolve().parents[1]
COLUMNS = [*(f"time_{p}" for p in PHASES), "time_logging_previous"]
LABELS = {c: c.removeprefix("time_").removesuffix("_previous") for c in COLUMNS}


def run_backend(params: Path, backend: str, steps: int, out: Path, sets: list[str]) -> list[dict[str, float]]:
    """The train stage's curve rows (every column a float) for ``steps`` steps under ``backend``."""
    import mlflow

    from zerosearch.mlops.tracking import MlflowTracker
    from zerosearch.stages import train as train_stage

    cfg = load_config(params, overrides=[
        f"simulator.backend={backend}", f"train.total_steps={steps}", f"train.save_every={steps}",
        "train.val_every=0", "simulator.probe.enabled=false",
        f"base.paths.models={out}/models", f"base.paths.metrics={out}/metrics",
        f"base.policy_model={REPO}/models/base/policy",
        # the committed SFT simulator, named directly (the stage would look under the temp dir)
        "simulator_sft.enabled=false", f"base.simulator_model={REPO}/models/simulator_sft",
        f"base.paths.data={REPO}/data", *sets])
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    mlflow.set_experiment("bench")
    t0 = time.perf_counter()
    with mlflow.start_run():
        train_stage.run(cfg, MlflowTracker(mlflow))
    print(f"{backend}: {steps} steps in {time.perf_counter() - t0:.1f} s (with model loading and serving)", flush=True)
    with open(out / "metrics" / "train_curve.csv", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--steps", type=int, default=6, help="steps per backend (the first is warm-up, not counted)")
    ap.add_argument("--backends", default="transformers,inprocess",
                    help="simulator.backend values, comma-separated; the first is the baseline")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key for every backend (repeatable), e.g. train.micro_batch_size=30")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step is warm-up)")
    torch.set_num_threads(args.threads)
    backends = args.backends.split(",")
    means: dict[str, dict[str, float]] = {}
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix=f"train_speed_{backend}_") as tmp:
            rows = run_backend(args.params, backend, args.steps, Path(tmp), args.sets)
        counted = rows[1:]
        m = {c: statistics.mean(r[c] for r in counted) for c in COLUMNS if c != "time_logging_previous"}
        # step k's logging is reported with step k + 1: steps 1.. are rows 2..
        m["time_logging_previous"] = (statistics.mean(r["time_logging_previous"] for r in rows[2:])
                                      if len(rows) > 2 else float("nan"))
        m["step_seconds"] = statistics.mean(r["step_seconds"] for r in counted)
        m["tokens_per_s"] = statistics.mean(r["tokens_per_s"] for r in counted)
        means[backend] = m

    base = backends[0]
    table = Table(title=f"seconds per train step (mean of steps 1..{args.steps - 1}), {args.threads} threads")
    table.add_column("phase")
    for b in backends:
        table.add_column(b, justify="right")
        if b != base:
            table.add_column(f"{b} / {base}", justify="right")
    for c in [*COLUMNS, "step_seconds", "tokens_per_s"]:
        cells = []
        for b in backends:
            cells.append(f"{means[b][c]:.3f}" if c != "tokens_per_s" else f"{means[b][c]:.0f}")
            if b != base:
                cells.append(f"{means[b][c] / means[base][c]:.2f}x" if means[base][c] else "-")
        table.add_row(LABELS.get(c, c), *cells)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
