"""MLflow tracking: one parent run per pipeline run, a nested run per stage, the tracker the
flows hand to the stages (``MlflowTracker``, a ``zerosearch.tracker.Tracker``), the MLflow
and the runs of a DVC experiment. The MLflow server itself is ``mlops.server``.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else a sqlite file ``mlflow.db`` at the
repository root (``DVC_ROOT`` inside DVC runs, so ``dvc exp run --temp`` experiments log to the
same file; the working directory otherwise). Several processes logging at once should share
an MLflow tracking server over HTTP instead (``zerosearch ui``, ``mlops.server.mlflow_server``): one writer
process in front of the database. Stages of one pipeline run find their parent run through
``ZEROSEARCH_PARENT_RUN_ID`` when set, else by a key of (git revision, params file hash, DVC
experiment name), so the separate processes ``dvc repro`` starts end up under one parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from zerosearch.config import flatten
from zerosearch.environment import environment, version_tags
from zerosearch.tracker import NullTracker, Tracker

MLFLOW_UI_PORT = 5000


def tracking_uri(root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db`` with ``root`` the argument,
    ``DVC_ROOT`` (set by DVC for stage commands, the parent repo in ``--temp`` runs) or ``.``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    base = Path(root or os.environ.get("DVC_ROOT") or ".").resolve()
    return f"sqlite:///{base / 'mlflow.db'}"


def ui_base_url(uri: str) -> str:
    """Where the MLflow UI for ``uri`` is: the server itself, or ``zerosearch ui``'s default."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{MLFLOW_UI_PORT}"


class MlflowTracker:
    """Logs to the active MLflow run."""

    def __init__(self, mlflow_module) -> None:
        self.mlflow = mlflow_module

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # Asynchronous: a per-step sqlite write would slow the training loops; MLflow flushes
        # the queue when the run ends.
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, synchronous=False)

    def log_artifact(self, path: str | Path) -> None:
        self.mlflow.log_artifact(str(path))

    def log_model(self, python_model: Any, artifacts: Mapping[str, str], registered_name: str = "",
                  metrics: Mapping[str, float] | None = None) -> str | None:
        info = self.mlflow.pyfunc.log_model(name="policy", python_model=python_model, artifacts=dict(artifacts),
                                            registered_model_name=registered_name or None)
        version = getattr(info, "registered_model_version", None)
        if not (registered_name and version):
            return None
        client = self.mlflow.MlflowClient()
        for key, value in (metrics or {}).items():
            client.set_model_version_tag(registered_name, str(version), key, str(value))
        return f"models:/{registered_name}/{version}"


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pipeline_key(params_file: str | Path) -> str:
    digest = hashlib.sha256(Path(params_file).read_bytes()).hexdigest()[:12] if Path(params_file).exists() else "none"
    experiment = os.environ.get("DVC_EXP_NAME")  # two experiments with equal params are two runs
    return f"{git_revision()[:12]}-{digest}" + (f"-{experiment}" if experiment else "")


def _parent_run_id(mlflow, experiment_id: str, key: str) -> str:
    if os.environ.get("ZEROSEARCH_PARENT_RUN_ID"):
        return os.environ["ZEROSEARCH_PARENT_RUN_ID"]
    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`zerosearch.pipeline_key` = '{key}'",
        max_results=1,
        output_format="list",
    )
    if found:
        return found[0].info.run_id
    tags = {"zerosearch.pipeline_key": key, "mlflow.runName": f"pipeline-{key}", "git_revision": git_revision()}
    if os.environ.get("DVC_EXP_NAME"):
        tags.update({"dvc_experiment": os.environ["DVC_EXP_NAME"], "mlflow.runName": os.environ["DVC_EXP_NAME"]})
    run = mlflow.MlflowClient().create_run(experiment_id, tags=tags)
    return run.info.run_id


# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, evaluations),
# where a training run is filed under "Evaluations"; ours is model training.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


@contextlib.contextmanager
def stage_run(stage: str, config, params_file: str | Path = "params.yaml") -> Iterator[Tracker]:
    """An MLflow run for one stage, nested under the pipeline run; yields a tracker.

    Set ``ZEROSEARCH_TRACKING=off`` to log nothing (a ``NullTracker`` is yielded)."""
    if os.environ.get("ZEROSEARCH_TRACKING", "").lower() == "off":
        yield NullTracker()
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.set_experiment(config.base.mlflow_experiment)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # the UI's model-training view
        try:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException:  # two stages starting at once: the other one set it
            pass
    parent = _parent_run_id(mlflow, experiment.experiment_id, pipeline_key(params_file))
    tags = {"stage": stage, "git_revision": git_revision(), **version_tags(environment())}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    with mlflow.start_run(run_id=parent, experiment_id=experiment.experiment_id):
        with mlflow.start_run(run_name=stage, nested=True, tags=tags):
            tracker = MlflowTracker(mlflow)
            tracker.log_params(flatten(config.model_dump()))
            yield tracker


def experiment_runs(dvc_experiment: str, mlflow_experiment: str, root: str | Path | None = None) -> list[dict]:
    """The MLflow runs tagged with DVC experiment ``dvc_experiment`` (pipeline run first, then
    stages in start order): stage, run id, UI link and the model version a run registered."""
    import mlflow

    uri = tracking_uri(root)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(mlflow_experiment)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.dvc_experiment = '{dvc_experiment}'")
    out = []
    for run in sorted(runs, key=lambda r: ("mlflow.parentRunId" in r.data.tags, r.info.start_time or 0)):
        entry = {"stage": run.data.tags.get("stage", "pipeline"), "run_id": run.info.run_id,
                 "url": f"{ui_base_url(uri)}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"}
        versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
        if versions:
            entry["registered_model"] = f"models:/{versions[0].name}/{versions[0].version}"
        out.append(entry)
    return out
