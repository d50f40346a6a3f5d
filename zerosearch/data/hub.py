"""Loaders for the paper's real data: the ZeroSearch training set and the FlashRAG QA benchmarks.

``source`` is either a Hugging Face hub dataset repo id or a local directory with the same
layout (``<dir>/train.parquet``, ``<dir>/<benchmark>/<split>.jsonl`` or ``.parquet``). Hub files
are fetched with ``huggingface_hub.hf_hub_download`` (the library ``datasets`` uses), so they land
in the shared HF cache and ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` are honoured; when a
file is neither cached nor reachable, :class:`DatasetUnavailableError` says how to get it. Files
are then read locally (pyarrow / json) so that a bad row is reported by ``normalize_rows`` with
its file and index instead of failing inside an Arrow type cast. Every loader returns
``(rows, n_skipped)`` in the schema of :mod:`zerosearch.data.schema`; a row's ``prompt`` chat
messages come along when the file has them (the ZeroSearch parquet does; FlashRAG benchmarks
do not, and get our prompt template), and questions are kept as written.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from zerosearch.data.schema import normalize_rows, read_jsonl
from zerosearch.errors import InputError

ZEROSEARCH_REPO = "sunhaonlp/ZeroSearch_dataset"
FLASHRAG_REPO = "RUC-NLPIR/FlashRAG_datasets"

# Benchmark -> the split the paper evaluates on.
BENCHMARK_SPLITS: dict[str, str] = {
    "nq": "test",
    "triviaqa": "test",
    "popqa": "test",
    "hotpotqa": "dev",
    "2wikimultihopqa": "dev",
    "musique": "dev",
    "bamboogle": "test",
}
IN_DOMAIN = ("nq", "hotpotqa")

# ``prompt`` (the policy prompt as chat messages) is kept: the policy is fed exactly it.
_KEEP = ("id", "question", "golden_answers", "data_source", "reward_model", "prompt")
_TRUE = {"1", "ON", "YES", "TRUE"}


class DatasetUnavailableError(InputError, RuntimeError):
    """The requested data file is neither in a local directory, in the HF cache, nor reachable."""


def _offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(v in _TRUE for v in env)


def _fetch(source: str, filename: str) -> tuple[Path, str]:
    """Return (local path, label for messages) of ``filename`` under ``source``."""
    if Path(source).is_dir():
        path = Path(source) / filename
        if not path.is_file():
            raise DatasetUnavailableError(f"{path} not found in local directory {source}")
        return path, str(path)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    label = f"{source}/{filename} (hub dataset)"
    try:
        local = hf_hub_download(source, filename, repo_type="dataset", local_files_only=_offline())
    except (OSError, EntryNotFoundError, HFValidationError) as e:
        if isinstance(e, HFValidationError):
            raise DatasetUnavailableError(
                f"source {source!r} is neither an existing local directory nor a valid hub "
                f"dataset repo id (needed file: {filename})"
            ) from e
        if isinstance(e, LocalEntryNotFoundError) or not isinstance(
            e, (EntryNotFoundError, RepositoryNotFoundError)
        ):
            mode = "offline mode is on" if _offline() else "the hub could not be reached"
            why = f"the file is not in the HF cache and {mode}"
        else:
            why = "the hub answered that this repo or file does not exist"
        raise DatasetUnavailableError(
            f"cannot load {label}: {why} ({type(e).__name__}). Either connect to the internet, "
            f"pre-download it with `huggingface-cli download {source} --repo-type dataset` "
            f"(`hf download ...` in huggingface_hub>=1.0; add `--local-dir DIR` to get a plain "
            f"directory), or point `source` at a local directory with the same layout."
        ) from e
    return Path(local), label


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        names = pq.read_schema(path).names
        return pq.read_table(path, columns=[c for c in _KEEP if c in names]).to_pylist()
    return read_jsonl(path)


def _zerosearch_raw(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """Fall back to ``reward_model.ground_truth.target`` when ``golden_answers`` is absent."""
    reward = row.get("reward_model")
    if row.get("golden_answers") is not None or not isinstance(reward, Mapping):
        return row
    truth = reward.get("ground_truth")
    if isinstance(truth, Mapping) and "target" in truth:
        return {**row, "golden_answers": truth["target"]}
    return row


def load_zerosearch_split(
    split: str, *, source: str = ZEROSEARCH_REPO, skip_malformed: bool = False
) -> tuple[list[dict], int]:
    """Load ``<source>/<split>.parquet`` of the ZeroSearch dataset (``train`` or ``test``)."""
    path, label = _fetch(source, f"{split}.parquet")
    return normalize_rows(
        (_zerosearch_raw(r) for r in _read_rows(path)),
        source=label,
        data_source="zerosearch",
        split=split,
        skip_malformed=skip_malformed,
    )


def load_benchmark(
    name: str,
    *,
    source: str = FLASHRAG_REPO,
    split: str | None = None,
    skip_malformed: bool = False,
    limit: int | None = None,
) -> tuple[list[dict], int]:
    """Load a FlashRAG benchmark (default split: the one the paper evaluates on).

    ``limit`` keeps the first N rows of the file (a skipped malformed row counts against it).
    Local directories may hold ``<name>/<split>.jsonl`` or ``<name>/<split>.parquet``.
    """
    if name not in BENCHMARK_SPLITS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_SPLITS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    split = split or BENCHMARK_SPLITS[name]
    filename = f"{name}/{split}.jsonl"
    if Path(source).is_dir() and not (Path(source) / filename).is_file():
        if (Path(source) / name / f"{split}.parquet").is_file():
            filename = f"{name}/{split}.parquet"
    path, label = _fetch(source, filename)
    # Keep only the FlashRAG fields (and a prompt, where a file has one): data_source is the
    # benchmark name, not a column.
    fields = ("id", "question", "golden_answers", "prompt")
    raws = ({k: r[k] for k in fields if k in r} for r in _read_rows(path))
    return normalize_rows(
        itertools.islice(raws, limit),
        source=label,
        data_source=name,
        split=split,
        skip_malformed=skip_malformed,
    )
