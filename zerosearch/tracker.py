"""The ``Tracker`` protocol every stage logs through, and the trackers that need no server.

Stages and the trainer take a ``Tracker`` and never import MLflow: the MLflow implementation
lives in the MLOps layer (``zerosearch.mlops.tracking.MlflowTracker``) and is handed in by the
flows. ``NullTracker`` records nothing (library use, ``ZEROSEARCH_TRACKING=off``);
``MemoryTracker`` keeps everything in lists (tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    """Where a stage's params, per-step metrics, artifacts and models go."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path) -> None: ...

    def log_model(self, python_model: Any, artifacts: Mapping[str, str], registered_name: str = "",
                  metrics: Mapping[str, float] | None = None) -> str | None:
        """Log ``python_model`` (an MLflow pyfunc ``PythonModel``) with ``artifacts`` (name ->
        local path, valid only during the call: a tracker copies what it keeps) and, with
        ``registered_name``, register it with ``metrics`` as version tags; returns the registry
        reference (``models:/<name>/<version>``) or None."""
        ...


class NullTracker:
    """Accepts every call and records nothing."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...

    def log_model(self, python_model: Any, artifacts: Mapping[str, str], registered_name: str = "",
                  metrics: Mapping[str, float] | None = None) -> str | None:
        return None


class MemoryTracker:
    """Keeps what is logged in lists; handy in tests."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.artifacts: list[str] = []
        # {"python_model", "artifacts" (the paths as given: gone after the call), "registered_name", "metrics"}
        self.models: list[dict[str, Any]] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: str | Path) -> None:
        self.artifacts.append(str(path))

    def log_model(self, python_model: Any, artifacts: Mapping[str, str], registered_name: str = "",
                  metrics: Mapping[str, float] | None = None) -> str | None:
        self.models.append({"python_model": python_model, "artifacts": dict(artifacts),
                            "registered_name": registered_name, "metrics": dict(metrics or {})})
        return f"memory:/{registered_name}" if registered_name else None
