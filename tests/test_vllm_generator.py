"""The vllm rollout backend's glue, against a fake ``vllm`` module (vLLM itself needs a GPU and
is not installed on CPU machines: what runs for real there is listed in the README)."""

import sys
import types

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from zerosearch.agent.rollout import RolloutSettings, run_rollouts
from zerosearch.lm.models import train_tokenizer
from zerosearch.protocol import Doc


class FakeLLM:
    """Records calls; answers each prompt with a scripted turn (token ids), like vLLM's outputs."""

    def __init__(self, tok, turns):
        self.tok, self.turns, self.calls, self.loaded, self.resets = tok, list(turns), [], {}, 0
        model = types.SimpleNamespace(load_weights=lambda weights: self.loaded.update(dict(weights)))
        worker = types.SimpleNamespace(worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=model)))
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=worker))

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        turn = self.turns.pop(0)
        ids = self.tok(turn, add_special_tokens=False)["input_ids"][: params.max_tokens]
        out = types.SimpleNamespace(token_ids=ids)
        return [types.SimpleNamespace(outputs=[out]) for _ in prompts]

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    vllm.LLM = lambda **kw: types.SimpleNamespace(kwargs=kw)
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    return vllm


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["Where was Kadmir born? <search> Kadmir </search> <answer> Velora </answer>"] * 20,
                           vocab_size=300)


class Engine:
    def search(self, queries, *, questions=None, answers=None, step=0):
        return [[Doc("T", f"about {q}")] for q in queries]


def test_rollouts_through_vllm_keep_the_masks_and_stop_tokens(tok, fake_vllm):
    from zerosearch.lm.vllm_generator import VLLMGenerator

    llm = FakeLLM(tok, ["<search> Kadmir </search>", "<answer> Velora </answer>"])
    gen = VLLMGenerator(llm, tok, temperature=0.8)
    batch = run_rollouts(gen, tok, Engine(), ["Where was Kadmir born?"] * 2, [["Velora"]] * 2,
                         RolloutSettings(max_turns=3, max_response_tokens=16, max_obs_tokens=64))
    assert batch.answers == ["Velora", "Velora"] and batch.num_searches.tolist() == [1, 1]
    first_prompts, params = llm.calls[0]
    assert first_prompts[0]["prompt_token_ids"] == batch.trajectories[0].prompt_ids
    assert params.max_tokens == 16 and params.temperature == 0.8 and params.include_stop_str_in_output
    assert set(params.stop_token_ids) == {tok.convert_tokens_to_ids("</search>"),
                                         tok.convert_tokens_to_ids("</answer>"), tok.eos_token_id}
    # the second turn's context is the first turn plus the documents (token ids, not re-tokenized text)
    second = llm.calls[1][0][0]["prompt_token_ids"]
    t = batch.trajectories[0]
    assert second == t.context[: len(second)] and len(second) > len(t.prompt_ids)
    sampled = [i for i, m in zip(t.response_ids, t.loss_mask) if m]
    assert tok.decode(sampled) == "<search> Kadmir </search><answer> Velora </answer>"
    assert VLLMGenerator(llm, tok, do_sample=False).sampling_params(8).temperature == 0.0


def test_sync_weights_loads_every_policy_tensor_and_resets_the_prefix_cache(tok, fake_vllm):
    from zerosearch.lm.vllm_generator import VLLMGenerator

    policy = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, intermediate_size=32))
    llm = FakeLLM(tok, [])
    gen = VLLMGenerator(llm, tok)
    n = gen.sync_weights(policy)
    assert n == len(policy.state_dict()) and set(llm.loaded) == set(policy.state_dict())
    assert llm.resets == 1


def test_lora_policies_are_merged_with_checkpoint_names(tok, fake_vllm):
    from zerosearch.config import LoraSection
    from zerosearch.lm.models import with_lora
    from zerosearch.lm.vllm_generator import policy_weights

    base = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, intermediate_size=32))
    names = set(base.state_dict())
    policy = with_lora(base, LoraSection(enabled=True, r=2, alpha=4, dropout=0.0))
    with torch.no_grad():  # make the adapters do something
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.fill_(0.1)
    weights = dict(policy_weights(policy))
    assert set(weights) == names  # no lora_ tensors, no base_layer in the names
    q = next(n for n in names if n.endswith("q_proj.weight"))
    unmerged = dict(policy.get_base_model().state_dict())[q.replace("q_proj.weight", "q_proj.base_layer.weight")]
    assert not torch.allclose(weights[q], unmerged)  # the merged weight, read while merged
