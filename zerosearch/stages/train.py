"""The train stage: RL on the training questions against the configured engine.

    zerosearch train [--resume]          # or: dvc repro train

``train.engine``: ``simulated`` (ZeroSearch: the simulator is served for the run by
``zerosearch.serving`` and stopped after), ``bm25`` (the real engine over the corpus), or
``hybrid``. Writes the trained policy to ``<models>/policy`` (HF format; LoRA merged),
checkpoints to ``<models>/train_checkpoints/step_N``, the per-step curve to
``<metrics>/train_curve.csv`` (DVC plots) and the run summary to ``<metrics>/train.json``.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

from zerosearch.atomic import write_csv
from zerosearch.config import Config
from zerosearch.data.schema import read_qa_parquet
from zerosearch.lm.models import save_model
from zerosearch.protocol import SearchEngine
from zerosearch.rl.trainer import RLTrainer
from zerosearch.search.factory import open_engine
from zerosearch.tracker import NullTracker, Tracker

# Columns of the plots file, in order (a resumed run rewrites it from the checkpoint history).
CURVE_COLUMNS = ("step", "reward_mean", "em", "response_tokens", "searches_per_trajectory", "noisy_fraction",
                 "kl", "entropy", "clip_fraction", "grad_norm", "value_loss", "step_seconds", "tokens_per_s")


def checkpoint_dir(cfg: Config) -> Path:
    return cfg.path("models") / "train_checkpoints"


def policy_dir(cfg: Config) -> Path:
    return cfg.path("models") / "policy"


def curve_row(step: int, metrics: dict[str, float]) -> dict[str, Any]:
    return {c: (step if c == "step" else round(float(metrics.get(c, 0.0)), 6)) for c in CURVE_COLUMNS}


def run(cfg: Config, tracker: Tracker = NullTracker(), *, resume: bool = False,
                 engine: SearchEngine | None = None) -> dict[str, Any]:
    """The whole stage; returns its summary. ``engine`` overrides ``train.engine`` (tests)."""
    t0 = time.perf_counter()
    rows = read_qa_parquet(cfg.path("data") / "train.parquet")
    ckpts = checkpoint_dir(cfg)
    if not resume and ckpts.exists():
        shutil.rmtree(ckpts)  # a fresh run must not mix with an old run's checkpoints
    curve_path = cfg.path("metrics") / "train_curve.csv"
    with contextlib.ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(open_engine(cfg, cfg.train.engine, total_steps=cfg.train.total_steps,
                                                     log_path=cfg.path("models") / "simulator_server.log"))
        trainer = RLTrainer(cfg, engine, rows, checkpoint_dir=ckpts, tracker=tracker)

        def on_step(step: int, metrics: dict[str, float]) -> None:
            if trainer.accelerator.is_main_process:
                write_csv([curve_row(h["step"], h) for h in trainer.history], curve_path)

        trainer.on_step = on_step
        history = trainer.fit(resume=resume)
    if trainer.accelerator.is_main_process:
        save_model(trainer.final_policy(), trainer.m.tokenizer, policy_dir(cfg))
    last = history[-min(5, len(history)):]
    summary = {
        "algorithm": cfg.train.algorithm, "engine": cfg.train.engine, "steps": cfg.train.total_steps,
        "resumed_from_step": trainer.start_step,
        "final_reward_mean": sum(h["reward_mean"] for h in last) / max(1, len(last)),
        "final_em": sum(h["em"] for h in last) / max(1, len(last)),
        "first_reward_mean": history[0]["reward_mean"] if history else 0.0,
        "seconds": time.perf_counter() - t0,
        "stats": getattr(engine, "stats", None) and dict(engine.stats),
    }
    return {k: v for k, v in summary.items() if v is not None}
