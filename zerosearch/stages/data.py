"""The data stage: write the normalized QA files, the corpus and the BM25 index under
``base.paths.data``.

Run it with ``zerosearch data`` (or ``dvc repro data``); ``run(cfg, tracker)`` is the stage. Layout::

    data/train.parquet            normalized QA rows (schema.QA_COLUMNS)
    data/test/<benchmark>.parquet one file per evaluation benchmark
    data/val.parquet              hub source with data.validation: zerosearch_test only: the
                                  ZeroSearch dataset's test.parquet (validation during training)
    data/corpus.jsonl             {id, title, text} documents (tiny world, or data.corpus converted)
    data/bm25/                    the BM25 index over the corpus
    data/world.json               tiny world only: entities and subject roles
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from zerosearch.config import Config
from zerosearch.data import hub, tinyworld
from zerosearch.data.schema import (
    normalize_rows,
    read_corpus,
    write_jsonl,
    write_qa_parquet,
)
from zerosearch.search.bm25 import BM25Engine
from zerosearch.tracker import NullTracker, Tracker


def _tinyworld_files(cfg: Config, out: Path) -> dict[str, Any]:
    w = cfg.data.world
    g = tinyworld.generate(w.seed, w.n_entities, w.n_train_questions, w.n_test_questions,
                           w.test_fraction, w.two_hop_fraction)
    (out / "world.json").write_text(
        json.dumps({"entities": g["world"].to_json(), "roles": g["roles"]}, sort_keys=True,
                   ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    write_jsonl(g["corpus"], out / "corpus.jsonl")
    splits = {}
    for name, questions in g["splits"].items():
        split = "train" if name == "train" else "test"
        rows, _ = normalize_rows(questions, source=f"tinyworld:{name}", data_source=name, split=split)
        splits[name] = rows
    stats = {"entities": len(g["world"].entities), "documents": len(g["corpus"])}
    return {"splits": splits, "stats": stats, "skipped": 0}


def _hub_files(cfg: Config, out: Path) -> dict[str, Any]:
    skip = cfg.data.skip_malformed
    train, skipped = hub.load_zerosearch_split("train", source=cfg.data.train_source, skip_malformed=skip)
    splits = {"train": train}
    if cfg.data.validation == "zerosearch_test":
        splits["val"], n = hub.load_zerosearch_split("test", source=cfg.data.train_source, skip_malformed=skip)
        skipped += n
    for name in cfg.data.benchmarks:
        rows, n = hub.load_benchmark(name, source=cfg.data.benchmarks_source, skip_malformed=skip)
        splits[name] = rows
        skipped += n
    if cfg.data.corpus:  # ours or FlashRAG's format in, ours out; data.skip_malformed covers its lines too
        bad: list[int] = []
        write_jsonl(read_corpus(cfg.data.corpus, skip_malformed=skip, skipped=bad), out / "corpus.jsonl")
        skipped += len(bad)
    return {"splits": splits, "stats": {}, "skipped": skipped}


# Everything the stage writes under base.paths.data, and nothing else is ever removed there: a
# local dataset or any other file kept in that directory stays (DVC keeps the directory too: the
# stage's out is `persist`, so it is not deleted before the stage runs).
STAGE_OUTPUTS = ("train.parquet", "val.parquet", "test", "corpus.jsonl", "bm25", "world.json")
_BUILDING = ".building"


def source_paths(cfg: Config) -> dict[str, Path]:
    """The local files the stage reads, by params key (hub repo ids are not local)."""
    d = cfg.data
    paths: dict[str, Path] = {}
    if d.corpus:
        paths["data.corpus"] = Path(d.corpus)
    if d.source == "hub":
        if Path(d.train_source).is_dir():
            paths["data.train_source"] = Path(d.train_source) / "train.parquet"
            if d.validation == "zerosearch_test":
                paths["data.train_source (validation)"] = Path(d.train_source) / "test.parquet"
        if Path(d.benchmarks_source).is_dir():
            for name in d.benchmarks:  # <dir>/<benchmark>/ holds its split file
                paths[f"data.benchmarks_source ({name})"] = Path(d.benchmarks_source) / name
    return paths


def check_sources(cfg: Config, out: Path) -> None:
    """A source the stage would replace (one of ``STAGE_OUTPUTS`` under ``out``, or inside one) is
    refused before anything is written: the stage would overwrite what it reads."""
    owned = [(out / name).resolve() for name in (*STAGE_OUTPUTS, _BUILDING)]
    for key, path in source_paths(cfg).items():
        where = path.resolve()
        if any(where == o or where.is_relative_to(o) for o in owned):
            raise ValueError(f"{key} ({path}) is or lies inside one of the data stage's own outputs under "
                             f"{out} ({', '.join(STAGE_OUTPUTS)}), which the stage replaces: keep sources "
                             f"elsewhere (any other name under {out} is left alone)")


def _replace_outputs(staging: Path, out: Path) -> None:
    """Move the new outputs into place; each old one is removed only once its new one is built."""
    for name in STAGE_OUTPUTS:
        new, old = staging / name, out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        if new.exists():
            new.rename(old)
    shutil.rmtree(staging)


def _build(cfg: Config, staging: Path) -> dict[str, Any]:
    """Every output of the stage, written under ``staging``; returns the stage's stats."""
    (staging / "test").mkdir(parents=True)
    built = _tinyworld_files(cfg, staging) if cfg.data.source == "tinyworld" else _hub_files(cfg, staging)
    missing = [b for b in cfg.data.benchmarks if b not in built["splits"]]
    if missing:
        raise ValueError(f"data.benchmarks names {missing}, which the {cfg.data.source} source does not provide")
    for name, rows in built["splits"].items():
        if name in ("train", "val"):
            write_qa_parquet(rows, staging / f"{name}.parquet")
        elif name in cfg.data.benchmarks:
            write_qa_parquet(rows, staging / "test" / f"{name}.parquet")
    stats = dict(built["stats"])
    stats.update({f"rows_{name}": len(rows) for name, rows in built["splits"].items()})
    stats["skipped_malformed"] = built["skipped"]
    corpus = staging / "corpus.jsonl"
    if corpus.exists():
        engine = BM25Engine.build(read_corpus(corpus), k1=cfg.search.bm25.k1, b=cfg.search.bm25.b)
        engine.save(staging / "bm25")
        stats["bm25_documents"] = len(engine.docs)
    return stats


def run(cfg: Config, tracker: Tracker = NullTracker()) -> dict[str, Any]:
    """Write every data file of the stage; returns the stats written to metrics/data.json.

    Outputs are built under ``<data>/.building`` and moved into place at the end, so a failure
    (a bad row, a missing file) leaves the previous outputs as they were."""
    out = cfg.path("data")
    check_sources(cfg, out)
    staging = out / _BUILDING
    shutil.rmtree(staging, ignore_errors=True)  # a build an earlier failure left behind
    try:
        stats = _build(cfg, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the previous outputs stay as they were
        raise
    _replace_outputs(staging, out)
    tracker.log_metrics({k: float(v) for k, v in stats.items()})
    return stats
