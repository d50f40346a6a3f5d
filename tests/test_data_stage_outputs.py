"""The data stage replaces its own outputs and nothing else (reliability: a local dataset kept
under data/ was deleted, then the stage failed saying the source did not exist)."""

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, micro_config
from zerosearch.data.schema import read_qa_parquet
from zerosearch.stages import data as data_stage

FIXTURE_DATA = FIXTURES / "data"
needs_fixtures = pytest.mark.skipif(not FIXTURE_DATA.is_dir(), reason="../shared/fixtures/data is absent")


def _local_flashrag(root: Path) -> None:
    (root / "nq").mkdir(parents=True)
    shutil.copyfile(FIXTURE_DATA / "flashrag_quickstart_nq_test.jsonl", root / "nq" / "test.jsonl")
    shutil.copyfile(FIXTURE_DATA / "searchr1_nq_search_sample.parquet", root / "train.parquet")


def _hub_cfg(tmp_path, source: Path, *extra):
    return micro_config(tmp_path, "data.source=hub", f"data.train_source={source}",
                        f"data.benchmarks_source={source}", "data.benchmarks=[nq]", "data.in_domain=[nq]", *extra)


@needs_fixtures
def test_a_local_dataset_kept_under_data_survives_the_stage(tmp_path):
    source = tmp_path / "data" / "FlashRAG_local"  # the natural place the issue found deleted
    _local_flashrag(source)
    before = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    stats = data_stage.run(_hub_cfg(tmp_path, source))
    assert stats["rows_train"] == 500 and stats["rows_nq"] == 17
    assert {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "data" / ".building").exists()


def test_other_files_in_the_output_directory_are_left_alone(tmp_path):
    cfg = micro_config(tmp_path)
    out = cfg.path("data")
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "mine.txt").write_text("keep me")
    (out / "test").mkdir()
    (out / "test" / "stale.parquet").write_text("an old output: the test/ folder is the stage's")
    data_stage.run(cfg)
    assert (out / "notes" / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in (out / "test").iterdir()) == sorted(f"{b}.parquet" for b in cfg.data.benchmarks)
    assert {p.name for p in out.iterdir()} == {"notes", "train.parquet", "test", "corpus.jsonl", "bm25", "world.json"}


def test_a_failed_run_leaves_the_previous_outputs_as_they_were(tmp_path):
    cfg = micro_config(tmp_path)
    data_stage.run(cfg)
    out = cfg.path("data")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="does not provide"):  # fails after building part of the outputs
        data_stage.run(micro_config(tmp_path, "data.benchmarks=[tiny_single, nq]", "data.in_domain=[nq]"))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@needs_fixtures
@pytest.mark.parametrize("where", ["corpus", "train"])
def test_a_source_that_is_one_of_the_outputs_is_refused_before_anything_is_written(tmp_path, where):
    out = tmp_path / "data"
    if where == "corpus":  # data.corpus pointing at the stage's own corpus.jsonl
        out.mkdir()
        (out / "corpus.jsonl").write_text(json.dumps({"id": "0", "contents": '"T"\\nx'}) + "\n")
        source = tmp_path / "src"
        _local_flashrag(source)
        cfg = _hub_cfg(tmp_path, source, f"data.corpus={out / 'corpus.jsonl'}")
        key = "data.corpus"
    else:  # the training set kept as data/train.parquet, the file the stage writes
        _local_flashrag(out)
        cfg = _hub_cfg(tmp_path, out)
        key = "data.train_source"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=rf"{key} .* one of the data stage's own outputs"):
        data_stage.run(cfg)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_tiny_world_files_are_the_same_as_before(tmp_path):
    """Building under .building and moving into place writes the same bytes as writing in place."""
    cfg = micro_config(tmp_path)
    data_stage.run(cfg)
    rows = read_qa_parquet(cfg.path("data") / "train.parquet")
    assert len(rows) == cfg.data.world.n_train_questions
    first = (cfg.path("data") / "train.parquet").read_bytes()
    data_stage.run(cfg)
    assert (cfg.path("data") / "train.parquet").read_bytes() == first


def test_the_world_has_its_own_seed_base_seed_leaves_it_alone(tmp_path):
    """``data.world.seed`` decides the world (entities, corpus, questions); ``base.seed`` seeds
    the models only, so every base seed of the study answers the same benchmarks."""
    def files(name, *overrides):
        cfg = micro_config(tmp_path / name, *overrides)
        data_stage.run(cfg)
        out = cfg.path("data")
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file() and "bm25" not in p.parts}

    default = files("default")
    assert files("base1", "base.seed=1") == default
    other = files("world1", "data.world.seed=1")
    assert other.keys() == default.keys() and other["world.json"] != default["world.json"]
    assert other["test/tiny_single.parquet"] != default["test/tiny_single.parquet"]
