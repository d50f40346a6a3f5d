import pytest

from zerosearch.data import tinyworld
from zerosearch.protocol import Doc, format_docs
from zerosearch.search.bm25 import BM25Engine


def world_and_engine(seed=0, n_entities=600):
    g = tinyworld.generate(seed, n_entities, n_entities, n_entities // 6, 0.2, 0.4)
    return g, BM25Engine.build(g["corpus"], top_k=5)


def test_gold_document_in_top5_for_single_hop_test_questions():
    """Queried with the entity name and the relation, >= 95% find the document stating the answer."""
    g, engine = world_and_engine()
    world = g["world"]
    by_name = {t.name: t for t in tinyworld.SINGLE_HOP}
    questions = g["splits"]["tiny_single"]
    queries = [f"{world.by_id[q['subject']].name} {tinyworld.RELATION_QUERY_WORDS[by_name[q['template']].path[0]]}"
               for q in questions]
    results = engine.search(queries)
    hits = 0
    for q, docs in zip(questions, results):
        assert 1 <= len(docs) <= 5  # only documents sharing a term with the query are returned
        gold = {d["id"] for d in g["corpus"] if d["entity"] == q["subject"]
                and q["golden_answers"][0] in d["text"]}
        hits += any(d.id in gold for d in docs)
    assert hits / len(questions) >= 0.95


def test_save_load_round_trip_gives_same_results(tmp_path):
    g, engine = world_and_engine(n_entities=200)
    engine.save(tmp_path / "bm25")
    loaded = BM25Engine.load(tmp_path / "bm25", top_k=5)
    queries = ["capital of " + g["world"].of_type("country")[0].name, "painter employer"]
    assert loaded.search(queries) == engine.search(queries)


def test_batched_search_and_edge_cases():
    _, engine = world_and_engine(n_entities=200)
    assert engine.search([]) == []
    empty, stop_only = engine.search(["", "the of and"])
    assert empty == [] and stop_only == []
    assert len(engine.search(["x"] * 7)) == 7
    assert len(engine.search(["painter"], top_k=2)[0]) == 2


def test_missing_index_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the data stage"):
        BM25Engine.load(tmp_path / "nope")


def test_format_docs():
    docs = [Doc("Velora", "A city."), Doc("", "No title.")]
    assert format_docs(docs) == "Doc 1: (Velora) A city.\nDoc 2: No title."
