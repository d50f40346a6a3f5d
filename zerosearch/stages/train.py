"""The train stage: RL on the training questions against the configured engine.

    zerosearch train [--resume]          # or: dvc repro train

``train.engine``: ``simulated`` (ZeroSearch: the simulator is served for the run by
``zerosearch.serving`` and stopped after), ``bm25`` (the real engine over the corpus), or
``hybrid``. A served simulator is probed first (``simulator.probe``: useful requests must
bring the gold answer more often than noisy ones, else the stage fails at once, before any
model loads). Writes the trained policy to ``<models>/policy`` (HF format; LoRA merged),
checkpoints to ``<models>/train_checkpoints/step_N``, the per-step curve to
``<metrics>/train_curve.csv`` (DVC plots) and the run summary to ``<metrics>/train.json``.
Under ``accelerate launch`` / ``torchrun`` every process trains on its share of each step; the
main process alone serves the simulator and writes those outputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from zerosearch.atomic import write_csv
from zerosearch.config import Config
from zerosearch.data.schema import read_qa_parquet
from zerosearch.lm.models import save_model
from zerosearch.protocol import SearchEngine
from zerosearch.rl.launch import build_accelerator
from zerosearch.rl.trainer import RLTrainer
from zerosearch.search.factory import (
    make_engine,
    needs_simulator,
    open_engine,
    simulator_urls,
)
from zerosearch.serving import ServerStartError
from zerosearch.tracker import NullTracker, Tracker

log = logging.getLogger(__name__)

# Columns of the plots file, in order (a resumed run rewrites it from the checkpoint history).
CURVE_COLUMNS = ("step", "reward_mean", "em", "response_tokens", "searches_per_trajectory", "noisy_fraction",
                 "kl", "entropy", "clip_fraction", "grad_norm", "value_loss", "step_seconds", "tokens_per_s")


def checkpoint_dir(cfg: Config) -> Path:
    return cfg.path("models") / "train_checkpoints"


def policy_dir(cfg: Config) -> Path:
    return cfg.path("models") / "policy"


def curve_row(step: int, metrics: dict[str, float]) -> dict[str, Any]:
    return {c: (step if c == "step" else round(float(metrics.get(c, 0.0)), 6)) for c in CURVE_COLUMNS}


def launched_as_main(environ: Mapping[str, str] = os.environ) -> bool:
    """True in the process that writes the stage's outputs: rank 0 of an ``accelerate launch`` /
    ``torchrun`` (``RANK``), or the only process (for the flow, before any Accelerator exists)."""
    return int(environ.get("RANK", "0")) == 0


def probe_simulator(cfg: Config, url: str | list[str], rows: list[dict], tracker: Tracker) -> None:
    """The start-of-training check (``simulator.probe``): the simulator at ``url`` must write
    gold-holding documents more often when asked for useful ones than for noisy ones. Logs
    the rates; raises ``SimulatorProbeError`` naming them when the switch does not work."""
    if not cfg.simulator.probe.enabled:
        return
    from zerosearch.search.probe import check_probe, probe_from_config

    result = probe_from_config(cfg, url, rows)
    tracker.log_metrics(result.metrics())
    log.info("simulator probe: %s", result.summary())
    check_probe(result)


@contextlib.contextmanager
def shared_engine(cfg: Config, accelerator, *, log_path: Path, rows: list[dict] | None = None,
                  tracker: Tracker | None = None) -> Iterator[SearchEngine]:
    """``train.engine`` for this process, one simulator server for the whole run: under several
    processes only the main one serves it (or health-checks ``simulator.url``) and probes it
    (``probe_simulator`` on the training questions ``rows``; None: no probe); the others wait
    until it answers and get its URL by broadcast. It stops once every process is done."""
    name, steps = cfg.train.engine, cfg.train.total_steps
    if not needs_simulator(name):
        with open_engine(cfg, name, total_steps=steps, log_path=log_path) as engine:
            yield engine
        return
    if accelerator.num_processes == 1:
        with simulator_urls(cfg, log_path=log_path) as url:
            if rows is not None:
                probe_simulator(cfg, url, rows, tracker or NullTracker())
            yield make_engine(cfg, name, simulator_url=url, total_steps=steps)
        return
    from accelerate.utils import broadcast_object_list

    with contextlib.ExitStack() as stack:
        found: list[dict | None] = [None]
        if accelerator.is_main_process:
            try:
                url = stack.enter_context(simulator_urls(cfg, log_path=log_path))
                if rows is not None:
                    probe_simulator(cfg, url, rows, tracker or NullTracker())
                found[0] = {"url": url}
            except Exception as err:  # the others are waiting for a URL: tell them, then fail
                broadcast_object_list([{"error": f"{type(err).__name__}: {err}"}])
                raise
        broadcast_object_list(found)
        if "error" in found[0]:
            raise ServerStartError(f"the main process could not serve the simulator: {found[0]['error']}")
        yield make_engine(cfg, name, simulator_url=found[0]["url"], total_steps=steps)
        accelerator.wait_for_everyone()


def run(cfg: Config, tracker: Tracker = NullTracker(), *, resume: bool = False,
        engine: SearchEngine | None = None) -> dict[str, Any]:
    """The whole stage; returns its summary. ``engine`` overrides ``train.engine`` (tests).
    Under several processes each trains on its share; only the main one writes outputs."""
    t0 = time.perf_counter()
    rows = read_qa_parquet(cfg.path("data") / "train.parquet")
    accelerator = build_accelerator(cfg.train)
    main = accelerator.is_main_process
    ckpts = checkpoint_dir(cfg)
    if main and not resume and ckpts.exists():
        shutil.rmtree(ckpts)  # a fresh run must not mix with an old run's checkpoints
    accelerator.wait_for_everyone()
    curve_path = cfg.path("metrics") / "train_curve.csv"
    with contextlib.ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(shared_engine(cfg, accelerator, rows=rows, tracker=tracker,
                                                       log_path=cfg.path("models") / "simulator_server.log"))
        trainer = RLTrainer(cfg, engine, rows, checkpoint_dir=ckpts, tracker=tracker, accelerator=accelerator)

        def on_step(step: int, metrics: dict[str, float]) -> None:
            if main:
                write_csv([curve_row(h["step"], h) for h in trainer.history], curve_path)

        trainer.on_step = on_step
        history = trainer.fit(resume=resume)
    if main:
        save_model(trainer.final_policy(), trainer.m.tokenizer, policy_dir(cfg))
    accelerator.wait_for_everyone()
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
