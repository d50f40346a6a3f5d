"""Corpora in our format and in FlashRAG / Search-R1's (``{id, contents}``), read into one
shape; the data stage writes ours whatever it was given."""

import json
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, micro_config
from zerosearch.data.schema import (
    MalformedRowError,
    flashrag_document,
    read_corpus,
    read_jsonl,
)

FIXTURE_DATA = FIXTURES / "data"


def test_flashrag_contents_split_into_title_and_text():
    assert flashrag_document('"Evan Morris"\nEvan Morris Evan L. Morris was a lobbyist.') == (
        "Evan Morris", "Evan Morris Evan L. Morris was a lobbyist.")
    assert flashrag_document("one line only") == ("", "one line only")


def test_ours_and_flashrag_rows_read_alike(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": 7, "contents": '"T"\nbody'}) + "\n"
                    + json.dumps({"id": "x", "title": "A", "text": "b"}) + "\n", encoding="utf-8")
    assert read_corpus(path) == [{"id": "7", "title": "T", "text": "body"}, {"id": "x", "title": "A", "text": "b"}]


def test_row_without_text_or_contents_names_file_and_document(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "1", "contents": '"T"\nok'}) + "\n" + json.dumps({"id": "2"}) + "\n")
    with pytest.raises(MalformedRowError, match=r"c\.jsonl, document 2"):
        read_corpus(path)


@pytest.mark.skipif(not FIXTURE_DATA.is_dir(), reason="../shared/fixtures/data is absent")
@pytest.mark.parametrize("name, n", [("flashrag_sample_data.jsonl", 1000), ("searchr1_example_corpus.jsonl", 10)])
def test_real_wiki_corpus_files(name, n):
    docs = read_corpus(FIXTURE_DATA / name)
    assert len(docs) == n
    first = docs[0]
    assert first["id"] == "0" and first["title"] == "Evan Morris"
    assert first["text"].startswith("Evan Morris Evan L. Morris (January 26, 1977")
    assert all(d["text"] and "\n" not in d["title"] for d in docs)


@pytest.mark.skipif(not FIXTURE_DATA.is_dir(), reason="../shared/fixtures/data is absent")
def test_data_stage_writes_our_format_from_a_flashrag_corpus(tmp_path):
    """A hub-source data stage over local FlashRAG files and the wiki sample corpus."""
    from zerosearch.stages import data as data_stage

    bench = tmp_path / "bench" / "nq"
    bench.mkdir(parents=True)
    (bench / "test.jsonl").write_bytes((FIXTURE_DATA / "flashrag_quickstart_nq_test.jsonl").read_bytes())
    train = tmp_path / "train_src"
    train.mkdir()
    (train / "train.parquet").write_bytes((FIXTURE_DATA / "searchr1_nq_search_sample.parquet").read_bytes())
    cfg = micro_config(
        tmp_path,
        "data.source=hub", f"data.train_source={train}", f"data.benchmarks_source={tmp_path / 'bench'}",
        "data.benchmarks=[nq]", "data.in_domain=[nq]", f"data.corpus={FIXTURE_DATA / 'flashrag_sample_data.jsonl'}")
    stats = data_stage.run(cfg)
    out = Path(cfg.path("data"))
    rows = [json.loads(line) for line in (out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1000 and set(rows[0]) == {"id", "title", "text"}
    assert stats["bm25_documents"] == 1000 and stats["rows_train"] == 500 and stats["rows_nq"] == 17


def test_a_line_that_is_not_utf8_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "1", "text": "ok"}\n\xff\xfe not text\n')
    with pytest.raises(MalformedRowError, match=r"c\.jsonl, line 2: not valid UTF-8 \(byte 0xff at column 1\)"):
        read_corpus(path)


def test_an_empty_corpus_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(MalformedRowError, match=r"empty\.jsonl: the corpus holds no documents"):
        read_corpus(path)
    with pytest.raises(MalformedRowError, match="corpus file not found"):
        read_corpus(tmp_path / "missing.jsonl")


def test_skip_malformed_covers_corpus_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "1", "text": "ok"}\n\xff bad\n{broken\n[1, 2]\n{"id": "5"}\n{"id": "6", "contents": "\\"T\\"\\nfine"}\n')
    skipped: list[int] = []
    docs = read_corpus(path, skip_malformed=True, skipped=skipped)
    assert [d["id"] for d in docs] == ["1", "6"] and len(skipped) == 4
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"a": 1}\n\n{broken\n')
    with pytest.raises(MalformedRowError, match=r"broken\.jsonl, line 3: not valid JSON"):
        read_jsonl(broken)
