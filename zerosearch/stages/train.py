"""The train stage: RL on the training questions against the configured engine.

    zerosearch train [--resume]          # or: dvc repro train

``train.engine``: ``simulated`` (ZeroSearch: the simulator LLM writes the documents; with
``simulator.backend: inprocess``, the CPU default, it runs in this process, else it is served
for the run by ``zerosearch.serving`` and stopped after), ``bm25`` (the real engine over the
corpus), or ``hybrid``. The simulator is probed first (``simulator.probe``: useful requests
must bring the gold answer more often than noisy ones, else the stage fails at once, before
the policy loads). Writes the trained policy to ``<models>/policy`` (HF format; LoRA merged),
checkpoints to ``<models>/train_checkpoints/step_N``, the per-step curve to
``<metrics>/train_curve.csv`` (DVC plots), the validations (``train.val_every``) to
``<metrics>/train_validation.csv`` (one row per validated step N, the policy after N updates;
only the header when validation is off) and the run summary to ``<metrics>/train.json``.
Validation answers ``data.validation``'s questions with a separate instance of
``eval.engine`` (a real engine: bm25, dense or web).
Under ``accelerate launch`` / ``torchrun`` every process trains on its share of each step; the
main process alone serves the simulator (an in-process one: every process loads its own, its
RNG seeded with the process rank too) and writes those outputs.
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
from zerosearch.rewards import ANSWER_METRICS
from zerosearch.rl.launch import build_accelerator
from zerosearch.rl.step_timing import PHASES
from zerosearch.rl.trainer import RLTrainer
from zerosearch.rl.validation import Validation
from zerosearch.search.factory import (
    inprocess_completer,
    make_engine,
    needs_server,
    needs_simulator,
    open_engine,
    simulator_urls,
)
from zerosearch.serving import ServerStartError
from zerosearch.tracker import NullTracker, Tracker

log = logging.getLogger(__name__)

# Columns of the plots file, in order (a resumed run rewrites it from the checkpoint history).
CURVE_COLUMNS = ("step", "reward_mean", "em", "response_tokens", "searches_per_trajectory", "noisy_fraction",
                 "kl", "entropy", "clip_fraction", "grad_norm", "value_loss", "step_seconds", "tokens_per_s",
                 *(f"time_{p}" for p in PHASES), "time_logging_previous")


def validation_rows(cfg: Config) -> list[dict]:
    """``data.validation``'s questions: the benchmark test files (``data_source`` = the
    benchmark) or the data stage's ``val.parquet``; the first ``train.val_max_samples`` of each
    data source (0: all), in file order."""
    data = cfg.path("data")
    if cfg.data.validation == "zerosearch_test":
        rows = read_qa_parquet(data / "val.parquet")
    else:
        rows = [{**r, "data_source": name} for name in cfg.data.benchmarks
                for r in read_qa_parquet(data / "test" / f"{name}.parquet")]
    cap, kept, seen = cfg.train.val_max_samples, [], {}
    for r in rows:
        seen[r["data_source"]] = seen.get(r["data_source"], 0) + 1
        if not cap or seen[r["data_source"]] <= cap:
            kept.append(r)
    return kept


def validation(cfg: Config) -> Validation | None:
    """What ``train.val_every`` validates on, None when it is 0. The engine is ``eval.engine``,
    built here for this process alone (never the training engine); simulator engines are
    refused, served or in process: validation measures the policy against a real engine (and a
    served simulator would need a second server per process)."""
    if not cfg.train.val_every:
        return None
    if needs_simulator(cfg.eval.engine):
        raise ValueError(f"train.val_every={cfg.train.val_every} validates with eval.engine, which is "
                         f"{cfg.eval.engine!r}: validation needs a real engine (bm25, dense, web); "
                         "set eval.engine to one or train.val_every=0")
    rows = validation_rows(cfg)
    if not rows:
        raise ValueError(f"train.val_every={cfg.train.val_every} but data.validation ({cfg.data.validation}) "
                         "has no questions")
    try:
        engine = make_engine(cfg, cfg.eval.engine)
    except ValueError as e:  # e.g. the web engine without its API key: say why training needs it
        raise ValueError(f"validation (train.val_every={cfg.train.val_every}) searches with eval.engine="
                         f"{cfg.eval.engine}: {e}; or set train.val_every=0") from e
    return Validation(rows, engine)


def validation_table(validations: list[dict[str, float]]) -> list[dict[str, Any]]:
    """The rows of ``train_validation.csv``: step, then every ``val_*`` value (6 decimals)."""
    return [{k: (v if k == "step" else round(float(v), 6)) for k, v in row.items()} for row in validations]


def final_validation(cfg: Config, validations: list[dict[str, float]]) -> dict[str, Any] | None:
    """train.json's ``val``: the last validation's step, headline (``eval.headline_metric``) and
    average strict EM, substring EM and F1; None without validations."""
    if not validations:
        return None
    last, metric = validations[-1], cfg.eval.headline_metric
    return {"step": last["step"], "headline_metric": metric, "headline": last[f"val_{metric}"],
            **{m: last[f"val_{m}"] for m in ANSWER_METRICS}}


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


def probe_simulator(cfg: Config, url: str | list[str] | None, rows: list[dict], tracker: Tracker, *,
                    completer=None, results: list | None = None) -> None:
    """The start-of-training check (``simulator.probe``): the simulator at ``url`` (or
    ``completer``, the in-process one) must write gold-holding documents more often when asked
    for useful ones than for noisy ones. Logs the rates; raises ``SimulatorProbeError`` naming
    them when the switch does not work. The result is appended to ``results`` (the stage's
    summary keeps it)."""
    if not cfg.simulator.probe.enabled:
        return
    from zerosearch.search.probe import check_probe, probe_from_config

    result = probe_from_config(cfg, url, rows, completer=completer)
    tracker.log_metrics(result.metrics())
    if results is not None:
        results.append(result)
    log.info("simulator probe: %s", result.summary())
    check_probe(result)


@contextlib.contextmanager
def shared_engine(cfg: Config, accelerator, *, log_path: Path, rows: list[dict] | None = None,
                  tracker: Tracker | None = None, probes: list | None = None) -> Iterator[SearchEngine]:
    """``train.engine`` for this process, one simulator server for the whole run: under several
    processes only the main one serves it (or health-checks ``simulator.url``) and probes it
    (``probe_simulator`` on the training questions ``rows``; None: no probe); the others wait
    until it answers and get its URL by broadcast. It stops once every process is done.
    The probe's result goes to ``probes``.
    ``simulator.backend: inprocess``: every process loads its own simulator (``inprocess_engine``)."""
    name, steps = cfg.train.engine, cfg.train.total_steps
    if not needs_simulator(name):
        with open_engine(cfg, name, total_steps=steps, log_path=log_path, seed=cfg.train.seed) as engine:
            yield engine
        return
    if not needs_server(cfg, name):
        yield inprocess_engine(cfg, accelerator, rows=rows, tracker=tracker, probes=probes)
        accelerator.wait_for_everyone()
        return
    if accelerator.num_processes == 1:
        with simulator_urls(cfg, log_path=log_path) as url:
            if rows is not None:
                probe_simulator(cfg, url, rows, tracker or NullTracker(), results=probes)
            yield make_engine(cfg, name, simulator_url=url, total_steps=steps, seed=cfg.train.seed)
        return
    from accelerate.utils import broadcast_object_list

    with contextlib.ExitStack() as stack:
        found: list[dict | None] = [None]
        if accelerator.is_main_process:
            try:
                url = stack.enter_context(simulator_urls(cfg, log_path=log_path))
                if rows is not None:
                    probe_simulator(cfg, url, rows, tracker or NullTracker(), results=probes)
                found[0] = {"url": url}
            except Exception as err:  # the others are waiting for a URL: tell them, then fail
                broadcast_object_list([{"error": f"{type(err).__name__}: {err}"}])
                raise
        broadcast_object_list(found)
        if "error" in found[0]:
            raise ServerStartError(f"the main process could not serve the simulator: {found[0]['error']}")
        yield make_engine(cfg, name, simulator_url=found[0]["url"], total_steps=steps, seed=cfg.train.seed)
        accelerator.wait_for_everyone()


def inprocess_engine(cfg: Config, accelerator, *, rows: list[dict] | None = None,
                     tracker: Tracker | None = None, probes: list | None = None) -> SearchEngine:
    """``train.engine`` over a simulator loaded in this process, on its device, its RNG seeded
    with the process rank too; the main process probes it (``rows``; None: no probe) and tells
    the others whether the probe passed, so all fail together."""
    from zerosearch.search.probe import SimulatorProbeError

    completer = inprocess_completer(cfg, rank=accelerator.process_index, device=accelerator.device)
    error: list[str | None] = [None]
    if accelerator.is_main_process and rows is not None:
        try:
            probe_simulator(cfg, None, rows, tracker or NullTracker(), completer=completer, results=probes)
        except Exception as err:
            if accelerator.num_processes == 1:
                raise
            error[0] = f"{type(err).__name__}: {err}"
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(error)
            raise
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(error)
        if error[0] is not None:
            raise SimulatorProbeError(f"the main process's simulator probe failed: {error[0]}")
    return make_engine(cfg, cfg.train.engine, total_steps=cfg.train.total_steps, completer=completer,
                       seed=cfg.train.seed)


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
    validation_path = cfg.path("metrics") / "train_validation.csv"
    held_out = validation(cfg)  # before the engine is served: a bad validation setup fails first
    probes: list = []  # the simulator probe's result, when it ran
    with contextlib.ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(shared_engine(cfg, accelerator, rows=rows, tracker=tracker, probes=probes,
                                                       log_path=cfg.path("models") / "simulator_server.log"))
        trainer = RLTrainer(cfg, engine, rows, checkpoint_dir=ckpts, tracker=tracker, accelerator=accelerator,
                            validation=held_out)

        def on_step(step: int, metrics: dict[str, float]) -> None:
            if main:
                write_csv([curve_row(h["step"], h) for h in trainer.history], curve_path)
                write_csv(validation_table(trainer.validations), validation_path)

        trainer.on_step = on_step
        history = trainer.fit(resume=resume)
    if main:
        write_csv(validation_table(trainer.validations), validation_path)  # also when no step ran (resume at the end)
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
        "val": final_validation(cfg, trainer.validations),
        "simulator_probe": probes[0].record() if probes else None,
    }
    return {k: v for k, v in summary.items() if v is not None}
