"""Running the replication study: each planned experiment once, resumably, and its results read back.

    zerosearch replicate [--claims 1,2] [--seeds N] [--base-seeds N] [--dry-run] [--report-only]

``run_study`` walks the plan (``mlops/study.py``) and, for every experiment that is not
finished, runs ``dvc exp run --temp --name rep-...`` with its ``-S`` changes
(``mlops/experiments.py``: ``experiment_changes`` validates them, ``run_experiment`` streams
the run and names a failing stage). **Finished** means the experiment's git ref exists with a
``metrics/evaluate.json`` and its ``metrics/evaluate_predictions.jsonl`` is in the DVC cache.
A ``--temp`` run that is interrupted leaves no ref, so the next call runs it again; a ref
without its outputs is removed first. A failed experiment is recorded and the study goes on
with the next one (the report marks its rows incomplete); the command exits non-zero.

Why sequential ``dvc exp run --temp`` and not ``dvc exp run --queue`` + ``dvc queue start -j 1``:
the queue runs experiments in a background Celery worker, so a failure surfaces in
``dvc queue logs`` rather than in this command (or the Prefect flow's logs), a killed worker
leaves queued and running entries whose state has to be cleaned up before a rerun, and with
one job at a time (two cores) it buys no parallelism. One foreground ``--temp`` run at a time
streams each stage's output, names the failing stage, and needs no state of its own: the
experiment refs are the record of what is done.

Work is shared through DVC's run cache, not by this module: a stage whose command, deps and
params equal an earlier run's is restored from the cache instead of rerun. So the base stage
runs once per base seed, the simulator SFT stage once per (base seed, simulator config) (its
params hold no ``train.*`` seed), and train once per (variant, base, RL seed); the baselines
variant reuses the default run's policy (``eval.methods`` is not a train param). DVC saves a
stage to its run cache only when every output is cached or is a metric or plot, so those stages
keep their outputs in the DVC cache (dvc.yaml; ``train.json`` is read back with
``experiment_output``).

Each ``dvc exp run`` runs under a tether (``zerosearch.tether``, in ``run_experiment``):
stopping the command (Ctrl-C, SIGTERM) or killing it stops DVC and the stage it runs, so an
interrupted experiment leaves no orphan training next to its rerun.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from zerosearch.config import ConfigError
from zerosearch.mlops.experiments import (
    ExperimentFailed,
    cache_dir,
    experiment_changes,
    experiment_file,
    experiment_metrics,
    experiment_output,
    has_experiment,
    remove_experiment,
    run_experiment,
)
from zerosearch.mlops.study import Experiment

PREDICTIONS, EVALUATE, TRAIN = "evaluate_predictions.jsonl", "evaluate.json", "train.json"


class ExperimentStore(Protocol):
    """Where the study's experiments live (DVC refs; a dict in tests)."""

    def finished(self, name: str) -> bool: ...

    def discard(self, name: str) -> None: ...

    def predictions(self, name: str) -> list[dict]: ...

    def metrics(self, name: str, file: str) -> dict | None: ...


class DvcStore:
    """The experiments as DVC left them in ``repo`` (refs ``refs/exps/...``, the DVC cache)."""

    def __init__(self, repo: str | Path = ".", metrics_dir: str = "metrics") -> None:
        self.repo, self.metrics_dir = Path(repo), metrics_dir
        self._cache: Path | None = None

    def _cache_dir(self) -> Path:
        if self._cache is None:
            self._cache = cache_dir(self.repo)
        return self._cache

    def finished(self, name: str) -> bool:
        if not has_experiment(name, self.repo):
            return False
        try:
            experiment_file(name, f"{self.metrics_dir}/{EVALUATE}", self.repo)
            experiment_output(name, f"{self.metrics_dir}/{PREDICTIONS}", self.repo, self._cache_dir())
        except LookupError:
            return False
        return True

    def discard(self, name: str) -> None:
        if has_experiment(name, self.repo):
            remove_experiment(name, self.repo)

    def predictions(self, name: str) -> list[dict]:
        text = experiment_output(name, f"{self.metrics_dir}/{PREDICTIONS}", self.repo, self._cache_dir())
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def metrics(self, name: str, file: str) -> dict | None:
        """A metrics file as the experiment left it: from its commit (``evaluate.json``, in git)
        or from the DVC cache (``train.json``: the stages the study shares keep their outputs
        cached, dvc.yaml); None when it has neither."""
        path = f"{self.metrics_dir}/{file}"
        try:
            return experiment_metrics(name, path, self.repo)
        except LookupError:
            pass
        try:
            return json.loads(experiment_output(name, path, self.repo, self._cache_dir()))
        except LookupError:
            return None


Runner = Callable[[Experiment], None]  # runs one experiment; raises ExperimentFailed


def dvc_runner(repo: str | Path = ".", params: str | Path = "params.yaml",
               on_line: Callable[[str], None] = print) -> Runner:
    """Runs an experiment as ``dvc exp run --temp`` with its overrides turned into ``-S`` changes."""

    def run(e: Experiment) -> None:
        changes = experiment_changes(Path(repo) / params, list(e.overrides), Path(repo) / params)
        run_experiment(changes, e.name, repo, temp=True, on_line=on_line)

    return run


def check_plan(experiments: Sequence[Experiment], repo: str | Path = ".", params: str | Path = "params.yaml") -> dict[str, str]:
    """Each variant's overrides validated through the config schema (one experiment per
    variant): ``{variant: error}`` for the ones that do not validate."""
    errors: dict[str, str] = {}
    seen: set[str] = set()
    for e in experiments:
        if e.variant in seen:
            continue
        seen.add(e.variant)
        try:
            experiment_changes(Path(repo) / params, list(e.overrides), Path(repo) / params)
        except ConfigError as err:
            errors[e.variant] = str(err)
    return errors


@dataclass
class StudyRun:
    skipped: list[str] = field(default_factory=list)  # finished before
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why


def run_study(experiments: Sequence[Experiment], store: ExperimentStore, runner: Runner,
              on_event: Callable[[str], None] = lambda line: None) -> StudyRun:
    """Run every experiment ``store`` does not have finished; go on past a failed one."""
    out = StudyRun()
    for i, e in enumerate(experiments, 1):
        where = f"[{i}/{len(experiments)}] {e.name}"
        if store.finished(e.name):
            out.skipped.append(e.name)
            on_event(f"{where}: finished before, skipped")
            continue
        store.discard(e.name)  # a ref without its outputs (a run cut short after DVC committed it)
        on_event(f"{where}: running")
        try:
            runner(e)
        except ExperimentFailed as err:
            out.failed[e.name] = str(err)
            on_event(f"{where}: FAILED in stage {err.stage or '(none)'}")
            continue
        out.ran.append(e.name)
    return out


@dataclass
class Collected:
    """What the report needs of each finished experiment."""

    predictions: dict[str, list[dict]]  # name -> evaluate's prediction records
    train: dict[str, dict]  # name -> metrics/train.json


def collect(experiments: Sequence[Experiment], store: ExperimentStore) -> Collected:
    """Read back the finished experiments of the plan (the others are missing from the report)."""
    out = Collected({}, {})
    for e in experiments:
        if not store.finished(e.name):
            continue
        out.predictions[e.name] = store.predictions(e.name)
        out.train[e.name] = store.metrics(e.name, TRAIN) or {}
    return out


# ----------------------------------------------------------------------------- time estimate

def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def measured_seconds(metrics_dir: str | Path = "metrics") -> dict[str, Any]:
    """Stage times measured by the workspace's last pipeline run: ``data``/``base``/
    ``simulator_sft``/``train`` seconds from their metrics files, and ``evaluate_per_question``
    (seconds per question per method): ``evaluate.json``'s ``seconds`` when it has one, else
    the train stage's validation (greedy agent answers, the same work per question) from
    ``train_validation.csv``. ``hardware``: what they were measured on."""
    d = Path(metrics_dir)
    base, sft, train, data = (_read_json(d / f"{s}.json") for s in ("base", "simulator_sft", "train", "data"))
    env = _read_json(d / "environment" / "train.json")
    per_question = None
    evaluate = _read_json(d / EVALUATE)
    questions = sum(v for k, v in data.items() if k.startswith("rows_") and k != "rows_train")
    if evaluate.get("seconds") and questions:
        per_question = evaluate["seconds"] / questions / max(1, len([m for m in evaluate if m != "headline"]))
    elif (d / "train_validation.csv").exists():
        import csv

        with open(d / "train_validation.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        seconds = [float(r["val_seconds"]) for r in rows if r.get("val_seconds")]
        if seconds:
            per_question = sum(seconds) / len(seconds) / _validation_questions(d)
    return {"data": data.get("seconds", 0.0), "base": base.get("policy_seconds", 0.0) + base.get("simulator_seconds", 0.0),
            "simulator_sft": sft.get("seconds", 0.0), "train": train.get("seconds"), "train_steps": train.get("steps"),
            "evaluate_per_question": per_question, "questions": questions,
            "hardware": f"{env.get('cpu_count', '?')} CPU cores, CUDA {env.get('cuda', '?')}"}


def _validation_questions(metrics_dir: Path) -> int:
    """Questions one validation answers: ``train.val_max_samples`` per benchmark (params.yaml)."""
    from zerosearch.config import load_config

    try:
        cfg = load_config(metrics_dir.parent / "params.yaml")
    except (ConfigError, OSError):
        return 1
    per = cfg.train.val_max_samples
    return per * len(cfg.data.benchmarks) if per else 1


def _methods(e: Experiment) -> int:
    for o in e.overrides:
        key, _, value = o.partition("=")
        if key == "eval.methods":
            return len(json.loads(value))
    return 4


def _sft_key(e: Experiment) -> tuple | None:
    """What makes a simulator SFT run distinct: the base seed and the variant's simulator_sft.*
    overrides (None: no SFT run, ``simulator_sft.enabled`` false)."""
    sft = tuple(sorted(o for o in e.overrides if o.startswith("simulator_sft.")))
    if "simulator_sft.enabled=false" in sft:
        return None
    return (e.base_seed, sft)


def scratch_pretrain_seconds(cfg, policy_seconds: float) -> float:
    """The scratch simulator's pretraining time, scaled from the policy's measured one
    (``policy_seconds``) by parameters x tokens: the arithmetic is what costs on CPU."""
    from zerosearch.lm.models import shape_parameter_count

    tm, scratch = cfg.tiny_models, cfg.simulator_sft.scratch
    run = lambda r: r.steps * r.batch_size * r.seq_len
    ratio = (shape_parameter_count(scratch.shape, tm.vocab_size) * run(scratch.pretrain)
             / (shape_parameter_count(tm.policy, tm.vocab_size) * run(tm.policy_pretrain)))
    return policy_seconds * ratio


def estimate(experiments: Sequence[Experiment], measured: dict[str, Any], workspace_base_seed: int = 0) -> dict[str, Any]:
    """Seconds the plan takes if every stage takes as long as the workspace's last run of it:
    train + evaluate per experiment, base per new base seed (the world, ``data.world.seed``, is
    the same for every base seed: data does not rerun), simulator SFT per new
    (base seed, simulator config), plus ``scratch_pretrain`` seconds per simulator pretrained from
    scratch (``simulator_sft.init=scratch``). Upper bound on the first experiment, whose stages may be up to
    date; DVC's own work per experiment (temp copy, checkouts) is not counted."""
    bases = {e.base_seed for e in experiments} - {workspace_base_seed}
    sfts = {k for e in experiments if (k := _sft_key(e)) is not None} - {(workspace_base_seed, ())}
    train = measured.get("train") or 0.0
    per_q = measured.get("evaluate_per_question") or 0.0
    evaluate = sum(per_q * measured.get("questions", 0) * _methods(e) for e in experiments)
    scratch = sum(1 for k in sfts if any(o.replace('"', "") == "simulator_sft.init=scratch" for o in k[1]))
    parts = {"train": train * len(experiments), "evaluate": evaluate,
             "base": measured.get("base", 0.0) * len(bases),
             "simulator_sft": measured.get("simulator_sft", 0.0) * len(sfts),
             "scratch simulator pretraining": measured.get("scratch_pretrain", 0.0) * scratch}
    return {"seconds": sum(parts.values()), "parts": parts, "new_base_seeds": len(bases), "simulator_sft_runs": len(sfts),
            "complete": bool(measured.get("train")) and per_q > 0, "hardware": measured.get("hardware")}
