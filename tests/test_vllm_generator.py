"""The vllm rollout backend's glue, against a fake ``vllm`` module (vLLM itself needs a GPU and
is not installed on CPU machines: what runs for real there is listed in the README)."""

import os
import sys
import types

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from zerosearch.agent.rollout import RolloutSettings, run_rollouts
from zerosearch.lm.models import train_tokenizer
from zerosearch.protocol import Doc


class FakeLLM:
    """``vllm.LLM`` as far as the backend uses it, failing where the real one fails when misused:

    - constructor arguments: only the real ones our code could pass (``LLM.__init__``'s own and
      ``EngineArgs`` fields, vllm/entrypoints/llm.py); any other is the real ``TypeError``;
    - ``llm_engine.model_executor`` exists only when the engine core is in this process: with
      ``distributed_executor_backend="external_launcher"`` (vLLM's parallel config then turns V1
      multiprocessing off) or ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (v1/engine/llm_engine.py);
    - the external launcher's executor reads ``RANK``/``LOCAL_RANK`` (``int(os.environ[...])``) and
      rendezvous at ``env://`` (``MASTER_ADDR``/``MASTER_PORT``).

    ``script(tok, turns)`` sets the turns ``generate`` answers with (token ids, like vLLM's outputs)."""

    ARGUMENTS = frozenset({"model", "tokenizer", "trust_remote_code", "tensor_parallel_size", "dtype", "seed",
                           "gpu_memory_utilization", "enforce_eager", "enable_prefix_caching", "max_model_len",
                           "distributed_executor_backend", "max_num_batched_tokens", "max_num_seqs",
                           "enable_sleep_mode"})

    def __init__(self, model, **kwargs):
        unknown = sorted(set(kwargs) - self.ARGUMENTS)
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument '{unknown[0]}'")
        self.kwargs = {"model": model, **kwargs}
        self.calls, self.loaded, self.resets, self.turns = [], {}, 0, []
        self.llm_engine = types.SimpleNamespace()
        external = kwargs.get("distributed_executor_backend") == "external_launcher"
        if external:
            self.rank = (int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
            self.rendezvous = f"{os.environ['MASTER_ADDR']}:{int(os.environ['MASTER_PORT'])}"
        if external or os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
            model = types.SimpleNamespace(load_weights=lambda weights: self.loaded.update(dict(weights)))
            worker = types.SimpleNamespace(worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=model)))
            self.llm_engine.model_executor = types.SimpleNamespace(driver_worker=worker)

    def script(self, tok, turns):
        self.tok, self.turns = tok, list(turns)
        return self

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        turn = self.turns.pop(0)
        ids = self.tok(turn, add_special_tokens=False)["input_ids"][: params.max_tokens]
        out = types.SimpleNamespace(token_ids=ids)
        return [types.SimpleNamespace(outputs=[out]) for _ in prompts]

    def reset_prefix_cache(self):
        self.resets += 1


def in_process_llm(tok, turns=(), **kwargs):
    from zerosearch.lm.vllm_generator import launcher_environment

    os.environ.update(launcher_environment(0, 0, 1))
    return FakeLLM("policy", distributed_executor_backend="external_launcher", **kwargs).script(tok, turns)


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    vllm.LLM = FakeLLM
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.setenv(key, "")  # recorded, so what create() writes there is undone after the test
        monkeypatch.delenv(key)
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

    llm = in_process_llm(tok, ["<search> Kadmir </search>", "<answer> Velora </answer>"])
    gen = VLLMGenerator(llm, tok, temperature=0.8)
    batch = run_rollouts(gen, tok, Engine(), ["Where was Kadmir born?"] * 2, [["Velora"]] * 2,
                         RolloutSettings(max_search_turns=2, max_response_tokens=16, max_obs_tokens=64))
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
    llm = in_process_llm(tok)
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


def _lora_policy(tok, dtype):
    from zerosearch.config import LoraSection
    from zerosearch.lm.models import with_lora

    torch.manual_seed(0)
    base = _policy(tok).to(dtype)
    policy = with_lora(base, LoraSection(enabled=True, r=2, alpha=4, dropout=0.0))
    with torch.no_grad():  # adapters as after some training: B is 0 when fresh
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    return policy


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_lora_sync_sends_w_plus_sba_and_never_touches_the_base_weights(tok, fake_vllm, dtype):
    """B5: bf16 weights (DeepSpeed's) or fp32 masters; the engine is bf16 either way."""
    from zerosearch.lm.vllm_generator import VLLMGenerator

    policy = _lora_policy(tok, dtype)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    llm = in_process_llm(tok)
    gen = VLLMGenerator(llm, tok, dtype="bfloat16")
    for _ in range(3):  # several syncs: nothing accumulates
        gen.sync_weights(policy)
    after = dict(policy.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # bit-identical, adapters included
    lora_layers = [(n, m) for n, m in policy.get_base_model().named_modules() if hasattr(m, "lora_A")]
    assert len(lora_layers) == 7  # q k v o gate up down
    for name, layer in lora_layers:
        w = before[f"base_model.model.{name}.base_layer.weight"]
        a = before[f"base_model.model.{name}.lora_A.default.weight"]
        b = before[f"base_model.model.{name}.lora_B.default.weight"]
        s = layer.scaling["default"]
        assert s == 2.0  # alpha / r
        sent = llm.loaded[f"{name}.weight"]
        assert sent.dtype == torch.bfloat16
        assert torch.equal(sent, (w.float() + s * (b.float() @ a.float())).to(torch.bfloat16))
        exact = (w.double() + s * (b.double() @ a.double())).to(torch.bfloat16)  # fp32 rounding, then the cast
        assert (sent.float() - exact.float()).abs().max() <= exact.float().abs().max() * 2 ** -8
        assert not torch.equal(sent, w.to(torch.bfloat16))  # the adapter is in what was sent
    # the names are the checkpoint's; non-LoRA tensors arrive as they are
    assert set(llm.loaded) == set(_policy(tok).state_dict())
    assert torch.equal(llm.loaded["model.norm.weight"], before["base_model.model.model.norm.weight"])


def test_merging_in_place_in_bf16_would_drift_the_base(tok):
    """Why B5's sync does not use peft's merge_adapter/unmerge_adapter (TRL's route): in bf16 the
    round trip changes the frozen base weights."""
    policy = _lora_policy(tok, torch.bfloat16)
    q = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    before = dict(policy.named_parameters())[q].detach().clone()
    with torch.no_grad():
        for _ in range(3):
            policy.merge_adapter()
            policy.unmerge_adapter()
    assert not torch.equal(dict(policy.named_parameters())[q], before)


def _policy(tok):
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, intermediate_size=32))


def test_create_builds_an_in_process_engine_on_this_rank(tok, fake_vllm, monkeypatch):
    """A2 + A3: external_launcher (the engine core in this process, on LOCAL_RANK's GPU), the ranks
    and the launcher's rendezvous in the environment; the weights then reach the engine's model."""
    from zerosearch.lm.vllm_generator import VLLMGenerator

    os.environ.update(MASTER_ADDR="10.0.0.1", MASTER_PORT="29500")  # as torchrun / accelerate launch set them
    gen = VLLMGenerator.create("/models/policy", tok, gpu_memory_utilization=0.3, temperature=0.9, seed=7,
                               rank=3, local_rank=1, world_size=4, max_model_len=2048)
    assert gen.llm.kwargs == {"model": "/models/policy", "dtype": "bfloat16", "gpu_memory_utilization": 0.3,
                              "enable_prefix_caching": True, "seed": 7, "max_model_len": 2048,
                              "tensor_parallel_size": 1, "distributed_executor_backend": "external_launcher",
                              "max_num_batched_tokens": 4096}
    assert gen.llm.rank == (3, 1, 4) and gen.llm.rendezvous == "10.0.0.1:29500"
    assert gen.sampling_params(8).top_p == 1.0  # the default: no nucleus filter
    nucleus = VLLMGenerator.create("/models/policy", tok, gpu_memory_utilization=0.3, temperature=1.0, seed=7,
                                   top_p=0.95)
    assert nucleus.sampling_params(8).top_p == 0.95 and nucleus.sampling_params(8).temperature == 1.0
    policy = _policy(tok)
    assert gen.sync_weights(policy) == len(policy.state_dict()) and gen.llm.resets == 1


def test_a_single_process_engine_gets_ranks_and_a_rendezvous_too(tok, fake_vllm):
    from zerosearch.lm.vllm_generator import VLLMGenerator, launcher_environment

    gen = VLLMGenerator.create("p", tok, gpu_memory_utilization=0.3, temperature=1.0, seed=0)
    assert gen.llm.rank == (0, 0, 1) and gen.llm.rendezvous.startswith("localhost:")
    with pytest.raises(RuntimeError, match="2 training processes but no MASTER_PORT"):
        launcher_environment(1, 1, 2, environ={})


def test_the_fake_engine_fails_where_vllm_does(tok, fake_vllm, monkeypatch):
    """D: the default executor runs the engine core in another process: no model to load into."""
    from zerosearch.lm.vllm_generator import VLLMGenerator

    with pytest.raises(TypeError, match="unexpected keyword argument 'prefix_caching'"):
        FakeLLM("p", prefix_caching=True)
    gen = VLLMGenerator(FakeLLM("p", enable_prefix_caching=True), tok)
    with pytest.raises(RuntimeError, match="runs in another process.*external_launcher"):
        gen.sync_weights(_policy(tok))
    monkeypatch.setitem(os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    assert VLLMGenerator(FakeLLM("p"), tok).sync_weights(_policy(tok)) > 0
