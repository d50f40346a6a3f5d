import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from zerosearch.lm.models import PROTOCOL_TAGS, resolve_model_path, train_tokenizer
from zerosearch.lm.supervised import pack_examples, pack_texts
from zerosearch.stages import base as base_stage
from zerosearch.stages import data as data_stage


def test_tokenizer_keeps_protocol_tags_whole_and_has_chat_template():
    texts = ["Velora is a city in Zandoria.", "Kadmir Ostavel was born in Velora in 1873."] * 20
    tok = train_tokenizer(texts, vocab_size=400)
    for tag in PROTOCOL_TAGS:
        ids = tok(f"x {tag} y", add_special_tokens=False)["input_ids"]
        assert tok.convert_tokens_to_ids(tag) in ids
    text = "<search> Velora </search>"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_pack_examples_masks_untrained_segments():
    tok = train_tokenizer(["prompt answer docs"] * 30, vocab_size=300)
    examples = [[("prompt ", False), ("answer", True)], [("docs", False)]] * 10
    ids, labels = pack_examples(tok, examples, seq_len=4)
    assert ids.shape == labels.shape and ids.shape[1] == 4
    flat_ids, flat_labels = ids.flatten().tolist(), labels.flatten().tolist()
    prompt_ids = tok("prompt ", add_special_tokens=False)["input_ids"]
    assert flat_labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
    trained = [i for i, lab in zip(flat_ids, flat_labels) if lab != -100]
    assert tok.eos_token_id in trained and all(lab in (-100, i) for i, lab in zip(flat_ids, flat_labels))
    all_ids, all_labels = pack_texts(tok, ["prompt answer docs"] * 5, seq_len=4)
    assert torch.equal(all_ids, all_labels)
    with pytest.raises(ValueError, match="not enough text"):
        pack_texts(tok, ["a"], seq_len=1000)


def test_base_stage_saves_models_that_load_with_auto_classes(micro_cfg):
    data_stage.run(micro_cfg)
    stats = base_stage.run(micro_cfg)
    for name in ("policy", "simulator"):
        path = micro_cfg.path("models") / "base" / name
        assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert model.config.model_type == "qwen2" and model.config.hidden_size == 32
        assert stats[f"{name}_params"] == sum(p.numel() for p in model.parameters())
        assert tok.convert_tokens_to_ids("</search>") != tok.unk_token_id
        out = model.generate(**tok("Question: x", return_tensors="pt"), max_new_tokens=3, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        assert out.shape[1] == tok("Question: x", return_tensors="pt")["input_ids"].shape[1] + 3
    manifest = json.loads((micro_cfg.path("models") / "base" / "manifest.json").read_text())
    assert manifest["demos"] == 40 and manifest["policy_train_tokens"] == 2 * 2 * 64
    curve = (micro_cfg.path("metrics") / "base_loss.csv").read_text().splitlines()
    assert curve[0] == "step,policy_loss,simulator_loss" and len(curve) == 3


def test_base_stage_is_deterministic(tmp_path):
    from tests.conftest import micro_config

    weights = []
    for run in ("a", "b"):
        cfg = micro_config(tmp_path / run)
        data_stage.run(cfg)
        base_stage.run(cfg)
        weights.append((cfg.path("models") / "base" / "policy" / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]


def test_resolve_model_path_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        resolve_model_path("Qwen/Qwen2.5-3B")


def test_base_stage_for_hub_models_checks_paths(micro_cfg, tmp_path):
    from tests.conftest import micro_config

    cfg = micro_config(tmp_path, "tiny_models.build=false", f"base.policy_model={tmp_path}/nowhere/p")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        base_stage.run(cfg)


def test_shape_parameter_count_is_the_built_models_count():
    from zerosearch.config import ModelShape
    from zerosearch.lm.models import (
        count_parameters,
        shape_parameter_count,
        tiny_causal_lm,
        train_tokenizer,
    )

    shape = ModelShape(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, max_position=128)
    tok = train_tokenizer(["alpha beta gamma delta"] * 20, 600)
    assert shape_parameter_count(shape, len(tok)) == count_parameters(tiny_causal_lm(shape, len(tok), tok, seed=0))


def _pretrain_one_sentence(**run_fields) -> tuple[list[float], torch.nn.Module]:
    """``train_causal_lm`` with ``run_fields`` on one repeated sentence, a fresh 1-layer Qwen2 seeded 0."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from zerosearch.config import PretrainRun
    from zerosearch.lm import supervised

    tok = train_tokenizer(["Velora is a city in Zandoria."] * 40, vocab_size=300)
    chunks = pack_texts(tok, ["Velora is a city in Zandoria."] * 40, seq_len=16)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=64))
    run = PretrainRun(**{"batch_size": 2, "seq_len": 16, "lr": 1e-2, "warmup_steps": 1, "weight_decay": 0.0,
                         "precision": "fp32", **run_fields})
    return supervised.train_causal_lm(model, chunks, run, seed=0), model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_causal_lm_learns_in_either_precision_and_keeps_fp32_weights(precision):
    losses, model = _pretrain_one_sentence(steps=30, precision=precision)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]  # it learns the repeated sentence
    assert all(p.dtype == torch.float32 for p in model.parameters())
    if precision == "bf16":  # autocast ran: the same run in fp32 gives other losses
        assert losses != _pretrain_one_sentence(steps=30, precision="fp32")[0]


def test_weight_decay_shrinks_matrices_only_and_zero_decay_is_plain_one_group_adamw(monkeypatch):
    import zerosearch.lm.supervised as supervised

    def trained(weight_decay: float) -> dict[str, torch.Tensor]:
        return dict(_pretrain_one_sentence(steps=10, weight_decay=weight_decay)[1].named_parameters())

    plain, decayed = trained(0.0), trained(0.5)
    groups = supervised.decay_groups(torch.nn.ModuleList([torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)]), 0.5)
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert [[tuple(p.shape) for p in g["params"]] for g in groups] == [[(2, 3)], [(2,), (2,), (2,)]]
    matrices = [n for n, p in plain.items() if p.dim() >= 2]
    assert matrices and all(decayed[n].norm() < plain[n].norm() for n in matrices)  # decay pulls them in

    # zero decay: exactly the weights of one-group AdamW(weight_decay=0), the optimizer before groups
    monkeypatch.setattr(supervised, "decay_groups",
                        lambda model, weight_decay: [{"params": list(model.parameters()), "weight_decay": 0.0}])
    assert all(torch.equal(p, plain[n]) for n, p in trained(0.0).items())
