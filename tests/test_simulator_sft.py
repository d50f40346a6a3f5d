import pytest
from transformers import AutoModelForCausalLM

from tests.conftest import micro_config
from zerosearch.base_models import build_base
from zerosearch.data.build import build_data
from zerosearch.data.schema import read_jsonl
from zerosearch.search.simulated import sft_prompt
from zerosearch.simulator_sft import balance, build_simulator_sft, contains_answer, sft_example


def test_contains_answer_whole_words_normalized():
    assert contains_answer(["Doc 1: (X) born in Velora City."], ["Velora"])
    assert contains_answer(["the Zandoria crown"], ["zandoria crown"])
    assert not contains_answer(["Veloran people"], ["Velora"])
    assert not contains_answer([], ["Velora"]) and not contains_answer(["x"], ["", "  "])


def test_balance_equalizes_labels_and_is_seeded():
    pairs = [{"label": "useful", "i": i} for i in range(10)] + [{"label": "noisy", "i": i} for i in range(3)]
    out = balance(pairs, seed=0)
    assert sorted(p["label"] for p in out) == ["noisy"] * 3 + ["useful"] * 3
    assert out == balance(pairs, seed=0)
    with pytest.raises(ValueError, match="0 noisy"):
        balance(pairs[:10], seed=0)


def test_sft_example_trains_on_documents_only():
    pair = {"query": "q", "question": "Q?", "golden_answers": ["A", "a2"], "label": "noisy",
            "documents": ["(T) one.", "two."]}
    (prompt, p_trained), (docs, d_trained) = sft_example(pair)
    assert prompt == sft_prompt("q", "Q?", "A", noisy=True) and not p_trained
    assert docs == "Doc 1: one.".replace("one.", "(T) one.") + "\nDoc 2: two." and d_trained


class QueryPolicy:
    """Searches the question's subject once, then answers."""

    def __init__(self, tok):
        self.tok = tok

    def generate(self, contexts, max_new_tokens):
        out = []
        for ctx in contexts:
            after = self.tok.decode(ctx).split("Question: ")[1]
            question = after.split("\n")[0]
            turn = "<answer> x </answer>" if "<information>" in after else f"<search> {question} </search>"
            out.append(self.tok(turn, add_special_tokens=False)["input_ids"])
        return out


def test_collect_pairs_records_and_labels_every_search(tmp_path):
    cfg = micro_config(tmp_path)
    build_data(cfg)
    build_base(cfg)
    from zerosearch.data.schema import read_qa_parquet
    from zerosearch.models import load_model
    from zerosearch.search.bm25 import BM25Engine
    from zerosearch.simulator_sft import collect_pairs

    _, tok = load_model(cfg.base.policy_model)
    qs = read_qa_parquet(cfg.path("data") / "train.parquet")[:30]
    pairs = collect_pairs(QueryPolicy(tok), tok, BM25Engine.load(cfg.path("data") / "bm25"), qs,
                          max_turns=3, max_response_tokens=64, max_obs_tokens=512, batch_size=8)
    assert len(pairs) == 30  # one search per question
    assert [p["question"] for p in pairs] == [q["question"] for q in qs]
    assert {p["label"] for p in pairs} == {"useful", "noisy"}  # single-hop vs two-hop questions
    for p in pairs:
        assert p["query"] == p["question"] and p["documents"]
        assert (p["label"] == "useful") == contains_answer(p["documents"], p["golden_answers"])


def test_stage_balances_holds_out_and_saves_a_loadable_simulator(tmp_path, monkeypatch):
    import zerosearch.simulator_sft as stage

    cfg = micro_config(tmp_path)
    build_data(cfg)
    build_base(cfg)
    fake = [{"query": f"q{i}", "question": f"Q{i}?", "golden_answers": ["Velora"],
             "documents": [f"(T{i}) born in {'Velora' if i % 3 == 0 else 'Zand'}."],
             "label": "useful" if i % 3 == 0 else "noisy"} for i in range(60)]
    monkeypatch.setattr(stage, "collect_pairs", lambda *a, **k: fake)
    stats = stage.build_simulator_sft(cfg)
    out = cfg.path("models") / "simulator_sft"
    train, held = read_jsonl(out / "sft_train.jsonl"), read_jsonl(out / "sft_heldout.jsonl")
    assert stats["pairs_collected"] == 60 and stats["pairs_useful"] == 20
    assert len(train) + len(held) == 40 and len(held) == round(40 * cfg.simulator_sft.heldout_fraction)
    labels = [p["label"] for p in train + held]
    assert labels.count("useful") == labels.count("noisy") == 20
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"
    curve = (cfg.path("metrics") / "simulator_sft_loss.csv").read_text().splitlines()
    assert curve[0] == "step,sft_loss" and len(curve) == 1 + cfg.simulator_sft.train.steps
