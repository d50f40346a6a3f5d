"""Tests for zerosearch.data.hub: local files written here, an offline (fake) HF cache, no network."""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import FIXTURES
from zerosearch.data import hub
from zerosearch.data.hub import (
    BENCHMARK_SPLITS,
    IN_DOMAIN,
    DatasetUnavailableError,
    load_benchmark,
    load_zerosearch_split,
)
from zerosearch.data.schema import MalformedRowError


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test instead of reaching the hub."""

    def refuse(*args, **kwargs):
        raise AssertionError("test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def zs_frame():
    return pd.DataFrame(
        {
            "id": ["train_0", "train_1", "train_2"],
            "question": ["who wrote hamlet? ", "capital of france?", "tallest mountain?"],
            "golden_answers": [
                np.array(["Shakespeare", "William Shakespeare"], dtype=object),
                ["Paris"],
                None,
            ],
            "data_source": ["nq", "hotpotqa", "nq"],
            "prompt": [[{"role": "user", "content": "q"}]] * 3,
            "reward_model": [
                {"style": "rule", "ground_truth": {"target": ["ignored"]}},
                {"style": "rule", "ground_truth": {"target": ["ignored"]}},
                {"style": "rule", "ground_truth": {"target": ["Everest", "Mount Everest"]}},
            ],
        }
    )


ZS_ROWS = [
    {
        "id": "train_0",
        "question": "who wrote hamlet?",
        "golden_answers": ["Shakespeare", "William Shakespeare"],
        "data_source": "nq",
        "split": "train",
        "prompt": [{"role": "user", "content": "q"}],  # kept: the policy is fed exactly it
    },
    {
        "id": "train_1",
        "question": "capital of france?",
        "golden_answers": ["Paris"],
        "data_source": "hotpotqa",
        "split": "train",
        "prompt": [{"role": "user", "content": "q"}],  # kept: the policy is fed exactly it
    },
    {
        "id": "train_2",
        "question": "tallest mountain?",
        "golden_answers": ["Everest", "Mount Everest"],
        "data_source": "nq",
        "split": "train",
        "prompt": [{"role": "user", "content": "q"}],  # kept: the policy is fed exactly it
    },
]


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    zs_frame().to_parquet(d / "train.parquet")
    # test split: golden_answers column absent entirely, answers only in reward_model
    pd.DataFrame(
        {
            "question": ["q1?"],
            "data_source": ["triviaqa"],
            "reward_model": [{"ground_truth": {"target": np.array(["a1"], dtype=object)}}],
        }
    ).to_parquet(d / "test.parquet")
    write_jsonl(
        d / "nq" / "test.jsonl",
        [
            {"id": "test_0", "question": "q0?", "golden_answers": ["a0", "A 0"], "metadata": {}},
            {"id": "test_1", "question": "q1?", "golden_answers": ["a1"], "metadata": {"x": 1}},
            {"id": "test_2", "question": "q2?", "golden_answers": ["a2"], "metadata": {}},
        ],
    )
    write_jsonl(
        d / "hotpotqa" / "dev.jsonl",
        [{"id": "5a8b", "question": "multi?", "golden_answers": ["yes"], "metadata": {"type": "c"}}],
    )
    (d / "bamboogle").mkdir()
    pq.write_table(
        pa.Table.from_pylist(
            [{"id": "b0", "question": "bq?", "golden_answers": ["ba"], "metadata": "{}"}]
        ),
        d / "bamboogle" / "test.parquet",
    )
    return d


def test_constants():
    assert BENCHMARK_SPLITS == {
        "nq": "test",
        "triviaqa": "test",
        "popqa": "test",
        "hotpotqa": "dev",
        "2wikimultihopqa": "dev",
        "musique": "dev",
        "bamboogle": "test",
    }
    assert IN_DOMAIN == ("nq", "hotpotqa")


def test_zerosearch_train_from_local_dir(data_dir):
    rows, skipped = load_zerosearch_split("train", source=str(data_dir))
    assert skipped == 0
    assert rows == ZS_ROWS


def test_zerosearch_reward_model_only_column(data_dir):
    rows, skipped = load_zerosearch_split("test", source=str(data_dir))
    assert (rows, skipped) == (
        [
            {
                "id": "zerosearch-test-0",
                "question": "q1?",
                "golden_answers": ["a1"],
                "data_source": "triviaqa",
                "split": "test",
            }
        ],
        0,
    )


def test_benchmarks_from_local_dir(data_dir):
    rows, skipped = load_benchmark("nq", source=str(data_dir))
    assert skipped == 0
    assert rows == [
        {"id": "test_0", "question": "q0?", "golden_answers": ["a0", "A 0"],
         "data_source": "nq", "split": "test"},
        {"id": "test_1", "question": "q1?", "golden_answers": ["a1"],
         "data_source": "nq", "split": "test"},
        {"id": "test_2", "question": "q2?", "golden_answers": ["a2"],
         "data_source": "nq", "split": "test"},
    ]
    rows, _ = load_benchmark("hotpotqa", source=str(data_dir))
    assert rows == [
        {"id": "5a8b", "question": "multi?", "golden_answers": ["yes"],
         "data_source": "hotpotqa", "split": "dev"}
    ]


def test_benchmark_parquet_variant(data_dir):
    rows, skipped = load_benchmark("bamboogle", source=str(data_dir))
    assert (rows, skipped) == (
        [{"id": "b0", "question": "bq?", "golden_answers": ["ba"],
          "data_source": "bamboogle", "split": "test"}],
        0,
    )


def test_benchmark_data_source_is_the_benchmark_name(tmp_path):
    write_jsonl(
        tmp_path / "popqa" / "test.jsonl",
        [{"question": "q?", "golden_answers": ["a"], "data_source": "something_else"}],
    )
    rows, _ = load_benchmark("popqa", source=str(tmp_path))
    assert rows == [{"id": "popqa-test-0", "question": "q?", "golden_answers": ["a"],
                     "data_source": "popqa", "split": "test"}]


def test_limit_and_explicit_split(data_dir):
    rows, _ = load_benchmark("nq", source=str(data_dir), limit=2)
    assert [r["id"] for r in rows] == ["test_0", "test_1"]
    assert load_benchmark("nq", source=str(data_dir), limit=0) == ([], 0)
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("nq", source=str(data_dir), limit=-1)
    write_jsonl(data_dir / "nq" / "dev.jsonl", [{"question": "d?", "golden_answers": ["d"]}])
    rows, _ = load_benchmark("nq", source=str(data_dir), split="dev")
    assert rows == [{"id": "nq-dev-0", "question": "d?", "golden_answers": ["d"],
                     "data_source": "nq", "split": "dev"}]


BAD_ROWS = [
    {"id": "ok0", "question": "fine?", "golden_answers": ["yes"]},
    {"id": "bad1", "golden_answers": ["no question"]},
    {"id": "bad2", "question": "empty answers?", "golden_answers": []},
    {"id": "bad3", "question": "string answer?", "golden_answers": "not a list"},
    {"id": "ok4", "question": "also fine?", "golden_answers": ["sure"]},
]


@pytest.mark.parametrize("bad_index", [1, 2, 3])
def test_malformed_benchmark_row_names_file_and_row(tmp_path, bad_index):
    good = [BAD_ROWS[0], BAD_ROWS[4]]
    write_jsonl(tmp_path / "musique" / "dev.jsonl", good[:1] + [BAD_ROWS[bad_index]] + good[1:])
    with pytest.raises(MalformedRowError) as err:
        load_benchmark("musique", source=str(tmp_path))
    assert "dev.jsonl" in str(err.value)
    assert "row 1" in str(err.value)


def test_malformed_rows_skipped_and_counted(tmp_path):
    write_jsonl(tmp_path / "2wikimultihopqa" / "dev.jsonl", BAD_ROWS)
    rows, skipped = load_benchmark("2wikimultihopqa", source=str(tmp_path), skip_malformed=True)
    assert skipped == 3
    assert [r["id"] for r in rows] == ["ok0", "ok4"]


def test_malformed_zerosearch_rows(tmp_path):
    df = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "question": ["good?", None, "no answers?"],
            "golden_answers": [["x"], ["y"], []],
            "data_source": ["nq", "nq", "nq"],
        }
    )
    df.to_parquet(tmp_path / "train.parquet")
    with pytest.raises(MalformedRowError, match=r"train\.parquet, row 1"):
        load_zerosearch_split("train", source=str(tmp_path))
    rows, skipped = load_zerosearch_split("train", source=str(tmp_path), skip_malformed=True)
    assert skipped == 2
    assert [r["id"] for r in rows] == ["a"]


def test_unknown_benchmark_lists_known_names():
    with pytest.raises(ValueError) as err:
        load_benchmark("squad")
    for name in BENCHMARK_SPLITS:
        assert name in str(err.value)


def test_missing_file_in_local_dir(data_dir):
    with pytest.raises(DatasetUnavailableError, match="triviaqa"):
        load_benchmark("triviaqa", source=str(data_dir))
    with pytest.raises(DatasetUnavailableError, match="validation.parquet"):
        load_zerosearch_split("validation", source=str(data_dir))


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    """HF offline mode with an empty cache, set before any loader call (env and constants)."""
    import datasets.config
    import huggingface_hub.constants as hf_constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.chdir(tmp_path)  # so a repo id can never collide with a local directory
    return cache


def test_hub_offline_uncached_raises_helpful_error(offline_empty_cache):
    with pytest.raises(DatasetUnavailableError) as err:
        load_zerosearch_split("train")
    msg = str(err.value)
    assert "sunhaonlp/ZeroSearch_dataset/train.parquet" in msg
    assert "offline" in msg
    assert "connect" in msg
    assert "huggingface-cli download sunhaonlp/ZeroSearch_dataset --repo-type dataset" in msg
    assert "local directory" in msg

    with pytest.raises(DatasetUnavailableError) as err:
        load_benchmark("hotpotqa")
    assert "RUC-NLPIR/FlashRAG_datasets/hotpotqa/dev.jsonl" in str(err.value)


def test_nonexistent_local_path_is_not_mistaken_for_a_repo(offline_empty_cache):
    with pytest.raises(DatasetUnavailableError, match="local directory"):
        load_benchmark("nq", source="./no/such/dir")


def test_hub_offline_reads_from_cache(offline_empty_cache):
    """A file already in the HF cache is loaded with HF_HUB_OFFLINE=1 (cache layout faked)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_empty_cache / "datasets--RUC-NLPIR--FlashRAG_datasets"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    write_jsonl(
        repo / "snapshots" / commit / "bamboogle" / "test.jsonl",
        [{"id": "test_0", "question": "cached?", "golden_answers": ["yes"], "metadata": {}}],
    )
    rows, skipped = load_benchmark("bamboogle")
    assert (rows, skipped) == (
        [{"id": "test_0", "question": "cached?", "golden_answers": ["yes"],
          "data_source": "bamboogle", "split": "test"}],
        0,
    )

    repo = offline_empty_cache / "datasets--sunhaonlp--ZeroSearch_dataset"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    zs_frame().to_parquet(repo / "snapshots" / commit / "train.parquet")
    rows, skipped = load_zerosearch_split("train")
    assert (rows, skipped) == (ZS_ROWS, 0)
    assert hub._offline()


def test_the_data_stage_writes_zerosearch_test_for_validation_and_the_train_stage_reads_it(tmp_path):
    """data.validation: zerosearch_test with the hub source: the real Search-R1/ZeroSearch test
    parquet (fixture) becomes data/val.parquet with its data_source kept, and validation takes
    the first train.val_max_samples of each source."""
    import shutil

    from tests.conftest import micro_config
    from zerosearch.data.schema import read_qa_parquet
    from zerosearch.stages import data as data_stage
    from zerosearch.stages import train as train_stage

    fixtures = FIXTURES / "data"
    if not (fixtures / "searchr1_nq_search_sample.parquet").exists():
        pytest.skip(f"the real data fixtures are not at {fixtures} (../shared/fixtures, see its README)")
    src = tmp_path / "hub"
    (src / "nq").mkdir(parents=True)
    shutil.copyfile(fixtures / "searchr1_nq_search_sample.parquet", src / "train.parquet")
    shutil.copyfile(fixtures / "searchr1_nq_search_sample.parquet", src / "test.parquet")
    shutil.copyfile(fixtures / "flashrag_quickstart_nq_test.jsonl", src / "nq" / "test.jsonl")
    hub_data = ["data.source=hub", f"data.train_source={src}", f"data.benchmarks_source={src}",
                "data.benchmarks=[nq]", "data.in_domain=[nq]"]
    cfg = micro_config(tmp_path, *hub_data, "data.validation=zerosearch_test", "train.val_max_samples=7")
    stats = data_stage.run(cfg)
    val = read_qa_parquet(tmp_path / "data" / "val.parquet")
    assert stats["rows_val"] == len(val) == 500 and {r["data_source"] for r in val} == {"nq"}
    assert val[0]["golden_answers"] and val[0]["split"] == "test"
    rows = train_stage.validation_rows(cfg)
    assert [r["id"] for r in rows] == [r["id"] for r in val[:7]]
    # the benchmarks route (the tiny world's) writes no val.parquet and validates on the test files
    bench = micro_config(tmp_path, *hub_data, "data.validation=benchmarks", "train.val_max_samples=0")
    data_stage.run(bench)
    assert not (tmp_path / "data" / "val.parquet").exists()
    rows = train_stage.validation_rows(bench)
    assert len(rows) == 17 and {r["data_source"] for r in rows} == {"nq"}
    with pytest.raises(ValueError, match="zerosearch_test .* needs source: hub"):
        micro_config(tmp_path, "data.validation=zerosearch_test")
