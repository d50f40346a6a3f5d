"""Atomic writes: build a file or directory under a temporary name, then rename it into
place, so a crash never leaves half an output (a checkpoint, a dataset, a metrics file).
``write_json`` and ``write_csv`` write the metrics and plots files DVC declares this way."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` (nothing exists there yet); when the block
    succeeds it replaces ``path`` (a file or a whole directory), otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if tmp.is_dir():
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write a JSON file (a metrics file DVC declares: sorted keys, indented), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write a CSV (a DVC plots file; header from the first row, ``step`` when empty), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step"])
        writer.writeheader()
        writer.writerows(rows)
    return path
