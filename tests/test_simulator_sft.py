import pytest
from transformers import AutoModelForCausalLM

from tests.conftest import SearchOnceThenAnswer, micro_config
from zerosearch.agent.rollout import RolloutSettings
from zerosearch.data.schema import read_jsonl
from zerosearch.search.simulated import sft_prompt
from zerosearch.stages import base as base_stage
from zerosearch.stages import data as data_stage
from zerosearch.stages.simulator_sft import balance, contains_answer, sft_example


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


def test_collect_pairs_records_and_labels_every_search(tmp_path):
    cfg = micro_config(tmp_path)
    data_stage.run(cfg)
    base_stage.run(cfg)
    from zerosearch.data.schema import read_qa_parquet
    from zerosearch.lm.models import load_model
    from zerosearch.search.bm25 import BM25Engine
    from zerosearch.stages.simulator_sft import collect_pairs

    _, tok = load_model(cfg.base.policy_model)
    qs = read_qa_parquet(cfg.path("data") / "train.parquet")[:30]
    pairs = collect_pairs(SearchOnceThenAnswer(tok), tok, BM25Engine.load(cfg.path("data") / "bm25"), qs,
                          RolloutSettings(max_search_turns=2, max_response_tokens=64, max_obs_tokens=512), batch_size=8)
    assert len(pairs) == 30  # one search per question
    assert [p["question"] for p in pairs] == [q["question"] for q in qs]
    assert {p["label"] for p in pairs} == {"useful", "noisy"}  # single-hop vs two-hop questions
    for p in pairs:
        assert p["query"] == p["question"] and p["documents"]
        assert (p["label"] == "useful") == contains_answer(p["documents"], p["golden_answers"])


def test_stage_balances_holds_out_and_saves_a_loadable_simulator(tmp_path, monkeypatch):
    import zerosearch.stages.simulator_sft as stage

    cfg = micro_config(tmp_path)
    data_stage.run(cfg)
    base_stage.run(cfg)
    fake = [{"query": f"q{i}", "question": f"Q{i}?", "golden_answers": ["Velora"],
             "documents": [f"(T{i}) born in {'Velora' if i % 3 == 0 else 'Zand'}."],
             "label": "useful" if i % 3 == 0 else "noisy"} for i in range(60)]
    seen = []
    monkeypatch.setattr(stage, "collect_pairs", lambda *a, **k: seen.append((a, k)) or fake)
    stats = stage.run(cfg)
    # the searches are collected under the training run's rollout settings (what RL will do)
    (args, _), = seen
    assert args[4] == RolloutSettings.from_config(cfg)
    out = cfg.path("models") / "simulator_sft"
    train, held = read_jsonl(out / "sft_train.jsonl"), read_jsonl(out / "sft_heldout.jsonl")
    assert stats["pairs_collected"] == 60 and stats["pairs_useful"] == 20
    assert len(train) + len(held) == 40 and len(held) == round(40 * cfg.simulator_sft.heldout_fraction)
    labels = [p["label"] for p in train + held]
    assert labels.count("useful") == labels.count("noisy") == 20
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"
    curve = (cfg.path("metrics") / "simulator_sft_loss.csv").read_text().splitlines()
    assert curve[0] == "step,sft_loss" and len(curve) == 1 + cfg.simulator_sft.train.steps


def test_counterfactual_noisy_pairs_share_the_query_and_lack_the_answer(tmp_path):
    from zerosearch.search.bm25 import BM25Engine
    from zerosearch.stages.simulator_sft import counterfactual_noisy

    cfg = micro_config(tmp_path)
    data_stage.run(cfg)
    engine = BM25Engine.load(cfg.path("data") / "bm25", top_k=3)
    from zerosearch.data.tinyworld import load_world

    world, _ = load_world(cfg.path("data"))
    person = world.of_type("person")[0]
    city = world.by_id[person.attrs["born_in"]].name
    useful = {"query": f"{person.name} birthplace", "question": f"Where was {person.name} born?",
              "golden_answers": [city], "documents": ["x"], "label": "useful"}
    noisy = {**useful, "label": "noisy"}
    cf = counterfactual_noisy([useful, noisy], engine, top_k=3)
    assert len(cf) == 1 and cf[0]["query"] == useful["query"] and cf[0]["label"] == "noisy"
    assert 1 <= len(cf[0]["documents"]) <= 3
    assert not contains_answer(cf[0]["documents"], [city])


def test_balance_uses_counterfactuals_for_half_the_noisy_pairs():
    useful = [{"label": "useful", "i": i} for i in range(10)]
    noisy = [{"label": "noisy", "i": i} for i in range(10)]
    cf = [{"label": "noisy", "cf": True, "i": i} for i in range(10)]
    out = balance(useful + noisy, seed=1, counterfactual=cf)
    assert sum(p["label"] == "useful" for p in out) == 10
    assert sum(p.get("cf", False) for p in out) == 5
    few = balance(useful + noisy[:2], seed=1, counterfactual=cf)  # not enough plain noisy pairs
    assert sum(p["label"] == "noisy" for p in few) == 10 and sum(p.get("cf", False) for p in few) == 8


def test_lora_finetune_trains_adapters_and_merges_back(tmp_path):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from zerosearch.config import LoraSection, PretrainRun
    from zerosearch.lm.models import train_tokenizer
    from zerosearch.stages.simulator_sft import finetune

    tok = train_tokenizer(["Doc 1: (Velora) Velora is a city in Zandoria."] * 40, vocab_size=300)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pair = {"query": "velora", "question": "Where is Velora?", "golden_answers": ["Zandoria"], "label": "useful",
            "documents": ["(Velora) Velora is a city in Zandoria."]}
    run = PretrainRun(steps=3, batch_size=2, seq_len=32, lr=1e-2, warmup_steps=1, weight_decay=0.0, precision="fp32")
    merged, losses = finetune(model, tok, [sft_example(pair)] * 20, run, LoraSection(enabled=True, r=4, alpha=8, dropout=0.0), seed=0)
    assert len(losses) == 3
    state = merged.state_dict()
    assert set(state) == set(before)  # merged: plain Qwen2 weights, no adapter tensors left
    changed = [k for k in before if not torch.equal(before[k], state[k])]
    assert changed and all("proj" in k for k in changed)  # only the adapted projections moved
    assert torch.equal(before["model.embed_tokens.weight"], state["model.embed_tokens.weight"])


def test_demo_world_searches_are_labelled_and_never_held_out(tmp_path, monkeypatch):
    import zerosearch.stages.simulator_sft as stage
    from zerosearch.data.demos import demo_searches, demo_world

    world, _ = demo_world(0, 100)
    searches = demo_searches(world, 30, seed=0)
    assert len(searches) == 30 and all(s["query"] and s["golden_answers"] for s in searches)
    cfg = micro_config(tmp_path, "simulator_sft.demo_world_searches=200", "tiny_models.demo_entities=100")
    data_stage.run(cfg)
    base_stage.run(cfg)
    fake = [{"query": f"q{i}", "question": f"Q{i}?", "golden_answers": ["Velora"],
             "documents": [f"(T{i}) born in {'Velora' if i % 2 else 'Zand'}."],
             "label": "useful" if i % 2 else "noisy"} for i in range(40)]
    monkeypatch.setattr(stage, "collect_pairs", lambda *a, **k: fake)
    stats = stage.run(cfg)
    out = cfg.path("models") / "simulator_sft"
    train, held = read_jsonl(out / "sft_train.jsonl"), read_jsonl(out / "sft_heldout.jsonl")
    assert stats["demo_world_pairs"] > 150
    assert any(p.get("source") == "demo_world" for p in train)
    assert held and not any(p.get("source") == "demo_world" for p in held)
    demo = [p for p in train if p.get("source") == "demo_world"]
    assert all(contains_answer(p["documents"], p["golden_answers"]) == (p["label"] == "useful") for p in demo)


SCRATCH = [*[f"simulator_sft.scratch.shape.{k}={v}" for k, v in {"hidden_size": 48, "num_layers": 2, "num_heads": 4,
                                                                   "num_kv_heads": 2, "intermediate_size": 96,
                                                                   "max_position": 512}.items()],
           *[f"simulator_sft.scratch.pretrain.{k}={v}" for k, v in {"steps": 3, "batch_size": 2, "seq_len": 64,
                                                                     "warmup_steps": 1}.items()]]


def test_scratch_simulator_has_its_own_shape_and_the_policys_pretraining_texts(tmp_path, monkeypatch):
    """simulator_sft.init: scratch fine-tunes a fresh model of simulator_sft.scratch.shape (not the
    policy copy), pretrained in this stage on exactly the texts the base stage gave the policy,
    with the base tokenizer; policy_copy fine-tunes base.simulator_model as before."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    import zerosearch.stages.simulator_sft as stage
    from zerosearch.agent import pretraining
    from zerosearch.lm.models import count_parameters

    seen: dict[str, list] = {}
    real = pretraining.pretrain

    def recording(name, model, tokenizer, examples, run, seed, tracker, curve):
        seen[name] = (examples, seed, run)
        return real(name, model, tokenizer, examples, run, seed, tracker, curve)

    monkeypatch.setattr(base_stage, "pretrain", recording)
    monkeypatch.setattr(stage, "pretrain", recording)
    copy_cfg = micro_config(tmp_path, *SCRATCH)
    data_stage.run(copy_cfg)
    base_stage.run(copy_cfg)
    fake = [{"query": f"q{i}", "question": f"Q{i}?", "golden_answers": ["Velora"],
             "documents": [f"(T{i}) born in {'Velora' if i % 3 == 0 else 'Zand'}."],
             "label": "useful" if i % 3 == 0 else "noisy"} for i in range(60)]
    monkeypatch.setattr(stage, "collect_pairs", lambda *a, **k: fake)
    out = copy_cfg.path("models") / "simulator_sft"
    policy = AutoModelForCausalLM.from_pretrained(copy_cfg.base.policy_model)

    copied = stage.run(copy_cfg)  # policy_copy: the base simulator, the policy's shape
    assert copied["simulator_init"] == "policy_copy" and "simulator_pretrain" not in seen
    assert copied["simulator_params"] == count_parameters(policy)
    assert not any(k.startswith("simulator_pretrain_") for k in copied)
    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size == copy_cfg.tiny_models.policy.hidden_size

    cfg = micro_config(tmp_path, *SCRATCH, "simulator_sft.init=scratch")
    stats = stage.run(cfg)
    shape = cfg.simulator_sft.scratch.shape
    tok = AutoTokenizer.from_pretrained(cfg.base.policy_model)
    torch.manual_seed(0)
    expected = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                                            tie_word_embeddings=True))
    assert stats["simulator_init"] == "scratch"
    assert stats["simulator_params"] == stats["simulator_pretrain_params"] == count_parameters(expected)
    assert stats["simulator_params"] != count_parameters(policy)
    assert stats["simulator_pretrain_final_loss"] > 0 and stats["simulator_pretrain_seconds"] >= 0
    assert stats["simulator_pretrain_train_tokens"] == 3 * 2 * 64
    saved = AutoModelForCausalLM.from_pretrained(out)
    assert (saved.config.hidden_size, saved.config.num_hidden_layers, saved.config.num_key_value_heads,
            saved.config.intermediate_size) == (shape.hidden_size, shape.num_layers, shape.num_kv_heads,
                                                shape.intermediate_size)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tok.get_vocab()  # the base stage's tokenizer
    # the policy's pretraining texts, in the policy's order; its own seed and run
    policy_examples, policy_seed, _ = seen["policy"]
    examples, seed, run = seen["simulator_pretrain"]
    assert examples == policy_examples and len(examples) > cfg.tiny_models.n_demos
    assert seed == cfg.base.seed + 2 != policy_seed and run == cfg.simulator_sft.scratch.pretrain
    curve = (cfg.path("metrics") / "simulator_sft_loss.csv").read_text().splitlines()
    assert curve[0] == "step,sft_loss" and len(curve) == 1 + cfg.simulator_sft.train.steps  # the SFT run, as before
