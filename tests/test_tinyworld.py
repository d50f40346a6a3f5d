import hashlib
import json

import pytest

from tests.conftest import micro_config
from zerosearch.data import tinyworld
from zerosearch.stages import data as data_stage
from zerosearch.data.schema import QA_COLUMNS, read_corpus, read_qa_parquet


def digest_tree(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = data_stage.run(micro_config(tmp_path / "a"))
    b = data_stage.run(micro_config(tmp_path / "b"))
    assert a == b
    da, db = digest_tree(tmp_path / "a" / "data"), digest_tree(tmp_path / "b" / "data")
    assert da == db
    assert {"train.parquet", "corpus.jsonl", "world.json", "test/tiny_single.parquet",
            "test/tiny_multi.parquet", "test/tiny_ood.parquet"} <= set(da)
    assert any(k.startswith("bm25/") for k in da)
    c = digest_tree_after(tmp_path / "c", "data.world.seed=1")
    assert c["corpus.jsonl"] != da["corpus.jsonl"]


def digest_tree_after(root, *overrides):
    data_stage.run(micro_config(root, *overrides))
    return digest_tree(root / "data")


def test_split_sizes_schema_and_stats(micro_cfg):
    stats = data_stage.run(micro_cfg)
    data = micro_cfg.path("data")
    train = read_qa_parquet(data / "train.parquet")
    assert len(train) == stats["rows_train"] == 150
    for name in ("tiny_single", "tiny_multi", "tiny_ood"):
        rows = read_qa_parquet(data / "test" / f"{name}.parquet")
        assert len(rows) == 30
        assert all(r["data_source"] == name and r["split"] == "test" for r in rows)
    assert set(train[0]) == set(QA_COLUMNS)
    assert all(isinstance(r["golden_answers"], list) and r["golden_answers"] for r in train)
    assert stats["entities"] == 120 and stats["documents"] == len(read_corpus(data / "corpus.jsonl"))


def test_world_shape_and_partition():
    g = tinyworld.generate(seed=3, n_entities=300, n_train=600, n_test=100,
                           test_fraction=0.2, two_hop_fraction=0.4)
    world, roles, splits = g["world"], g["roles"], g["splits"]
    assert len(world.entities) == 300
    names = [e.name.lower() for e in world.entities]
    assert len(set(names)) == len(names)  # unique names
    assert {e.type for e in world.entities} == {"person", "city", "company", "country"}
    # test questions are about entities no train question is about
    subjects = {name: {q["subject"] for q in qs} for name, qs in splits.items()}
    for test in ("tiny_single", "tiny_multi", "tiny_ood"):
        assert subjects[test].isdisjoint(subjects["train"])
        assert {roles[s] for s in subjects[test]} == {"test"}
    assert {roles[s] for s in subjects["train"]} == {"train"}
    # templates: single/multi use in-domain ones, ood only unseen ones
    in_domain = {t.name for t in tinyworld.SINGLE_HOP + tinyworld.TWO_HOP}
    assert {q["template"] for q in splits["train"]} <= in_domain
    assert {q["template"] for q in splits["tiny_ood"]}.isdisjoint(in_domain)
    assert all(len(q["chain"]) == 2 for q in splits["tiny_multi"])
    assert all(len(q["chain"]) == 1 for q in splits["tiny_single"])
    two_hop = sum(len(q["chain"]) == 2 for q in splits["train"])
    assert two_hop == 240  # 40% of 600


def test_answers_are_supported_by_the_corpus():
    """Every hop of every question is stated in a document of the entity it is about."""
    g = tinyworld.generate(seed=0, n_entities=200, n_train=200, n_test=40,
                           test_fraction=0.2, two_hop_fraction=0.5)
    world = g["world"]
    text_of = {}
    for d in g["corpus"]:
        text_of.setdefault(d["entity"], "")
        text_of[d["entity"]] += " " + d["text"]
    for qs in g["splits"].values():
        for q in qs:
            node = q["subject"]
            for hop in q["chain"]:
                value = world.by_id[hop].name if hop in world.by_id else hop
                assert value in text_of[node], (q["question"], value)
                node = hop
    q = g["splits"]["tiny_single"][0]
    assert q["golden_answers"][0] in {world.by_id[c].name for c in q["chain"] if c in world.by_id} | set(q["chain"])


def test_entity_answers_have_aliases():
    world = tinyworld.build_world(seed=0, n_entities=100)
    person = world.of_type("person")[0]
    assert tinyworld.World.answer_aliases(person) == [person.name, person.name.split()[-1]]
    country = world.of_type("country")[0]
    assert f"Republic of {country.name}" in tinyworld.World.answer_aliases(country)
    assert tinyworld.World.answer_aliases(1901) == ["1901"]


def test_too_small_world_is_a_clear_error():
    with pytest.raises(ValueError, match="world is too small.*raise data.world.n_entities"):
        tinyworld.generate(seed=0, n_entities=60, n_train=5000, n_test=10,
                           test_fraction=0.2, two_hop_fraction=0.4)


def test_world_json_round_trips(micro_cfg):
    data_stage.run(micro_cfg)
    raw = json.loads((micro_cfg.path("data") / "world.json").read_text())
    world = tinyworld.World.from_json(raw["entities"])
    assert len(world.entities) == 120 and set(raw["roles"]) == {e.id for e in world.entities}
