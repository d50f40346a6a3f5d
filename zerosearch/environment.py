"""What a stage ran on: Python, the platform, the CPU threads and the versions of the packages
whose numbers decide results (torch's kernels above all; a different torch or MKL build can
change a tiny model's training, see the README's expected band).

``environment()`` is recorded by every stage: as ``version.<package>`` tags of its MLflow run
and in ``<metrics>/environment/<stage>.json`` (beside the metrics, so a user whose numbers
differ can see whether the machine or the versions did; in git for data and evaluate, in the
DVC cache for the stages whose runs experiments share, see dvc.yaml).
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

from zerosearch.atomic import write_json

PACKAGES = ("zerosearch", "torch", "transformers", "tokenizers", "accelerate", "peft", "numpy", "pyarrow",
            "bm25s", "pydantic", "prefect", "mlflow", "dvc")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version per package name; ``"absent"`` for one that is not installed."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def environment() -> dict[str, object]:
    """Python, platform, CPU count, torch's threads and BLAS, and ``package_versions()``."""
    import os

    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch_blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "cuda": torch.version.cuda or "none",
        "packages": package_versions(),
    }


def version_tags(env: dict[str, object]) -> dict[str, str]:
    """``environment()`` as flat string tags for an MLflow run: ``version.torch`` and so on."""
    tags = {f"version.{k}": str(v) for k, v in env["packages"].items()}  # type: ignore[union-attr]
    tags.update({f"env.{k}": str(v) for k, v in env.items() if k != "packages"})
    return tags


def write_environment(stage: str, metrics_dir: str | Path) -> Path:
    """``environment()`` to ``<metrics_dir>/environment/<stage>.json`` (atomically)."""
    path = Path(metrics_dir) / "environment" / f"{stage}.json"
    write_json(environment(), path)
    return path
