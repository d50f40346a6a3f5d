"""C3: the per-GPU training memory estimate (model states only), by hand on the paper presets.

P = 3.09e9 (Qwen2.5-3B), 7.62e9 (Qwen2.5-7B); GPUs of 80 GB; vLLM at the presets' 0.3 (24 GB).
ZeRO-2 per GPU: bf16 weights 2P + bf16 grads 2P/N + fp32 master and Adam 12P/N; the bf16
reference 2P. No DeepSpeed (PPO): 16P per trainable model, the fp32 reference 4P."""

import logging
import types
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from zerosearch.config import LoraSection, load_config
from zerosearch.rl.memory import training_memory_gb
from zerosearch.rl.launch import memory_estimate, warn_if_over_memory

REPO = Path(__file__).resolve().parents[1]
P3, P7 = 3.09e9, 7.62e9
LORA7 = 40.4e6  # r=16 on q k v o gate up down, 28 layers: 16 * (7168+4096+4096+7168+3*22528) * 28


def preset(name, *overrides):
    return load_config(REPO / f"configs/paper/{name}.yaml", list(overrides)).train


def test_grpo_3b_fits_the_readme_two_training_gpus():
    e = memory_estimate(preset("grpo-qwen2.5-3b-sft"), params=P3, trainable=P3, processes=2, deepspeed=True,
                        gpu_gb=80)
    # 2*3.09 + 3.09 + 6*3.09 = 27.81; reference 6.18; vLLM 24
    assert e.policy == pytest.approx(27.81) and e.reference == pytest.approx(6.18) and e.critic == 0
    assert e.vllm == pytest.approx(24.0) and e.total == pytest.approx(57.99)


@pytest.mark.parametrize("name", ["grpo-qwen2.5-7b-sft", "grpo-qwen2.5-7b-prompt", "reinforce-qwen2.5-7b-sft"])
def test_7b_full_fine_tuning_needs_eight_training_gpus(name):
    """Fixed: 2P + 2P (reference) + 24 = 54.48; per process 14P/N = 106.68/N."""
    t = preset(name)
    totals = {n: memory_estimate(t, params=P7, trainable=P7, processes=n, deepspeed=True, gpu_gb=80).total
              for n in (2, 4, 8)}
    assert totals[2] == pytest.approx(107.82) and totals[4] == pytest.approx(81.15)
    assert totals[8] == pytest.approx(67.815)
    assert [n for n, gb in totals.items() if gb <= 80] == [8]


def test_7b_with_lora_fits_one_or_two_gpus():
    t = preset("grpo-qwen2.5-7b-sft", "train.lora.enabled=true")
    e2 = memory_estimate(t, params=P7 + LORA7, trainable=LORA7, processes=2, deepspeed=True, gpu_gb=80)
    # frozen bf16 base 15.24, adapters 2L + 2L/2 + 12L/2 = 9L = 0.3636, no reference copy, vLLM 24
    assert e2.reference == 0 and e2.policy == pytest.approx(15.24 + 0.3636)
    assert e2.total == pytest.approx(39.6036)
    e1 = memory_estimate(t, params=P7 + LORA7, trainable=LORA7, processes=1, deepspeed=True, gpu_gb=80)
    assert e1.total == pytest.approx(15.24 + 16 * 0.0404 + 24)


def test_ppo_without_deepspeed_does_not_fit_80_gb():
    """PPO is refused under DeepSpeed, so it runs plain data parallel: nothing sharded."""
    e7 = memory_estimate(preset("ppo-qwen2.5-7b-sft"), params=P7, trainable=P7, processes=2, deepspeed=False,
                         gpu_gb=80)
    assert (e7.policy, e7.critic, e7.reference) == pytest.approx((121.92, 121.92, 30.48))
    assert e7.total == pytest.approx(298.32)
    e3 = memory_estimate(preset("ppo-qwen2.5-3b-sft"), params=P3, trainable=P3, processes=2, deepspeed=False,
                         gpu_gb=80)
    assert e3.total == pytest.approx(49.44 * 2 + 12.36 + 24)
    lora = memory_estimate(preset("ppo-qwen2.5-7b-sft", "train.lora.enabled=true"), params=P7 + LORA7,
                           trainable=LORA7, processes=2, deepspeed=False, gpu_gb=80)
    assert lora.critic == pytest.approx(121.92) and lora.total > 80  # the critic alone is a full model


def test_the_hf_backend_takes_no_vllm_share_and_zero3_is_refused():
    t = preset("grpo-qwen2.5-3b-sft", "train.rollout_backend=hf")
    assert memory_estimate(t, params=P3, trainable=P3, processes=2, deepspeed=True, gpu_gb=80).vllm == 0
    with pytest.raises(ValueError, match="zero_stage must be 0 .* or 2"):
        training_memory_gb(P3, processes=2, zero_stage=3)


def _tiny_lora_policy():
    from zerosearch.lm.models import with_lora

    base = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=32))
    return with_lora(base, LoraSection(enabled=True, r=2, alpha=4, dropout=0.0))


def test_the_trainer_warns_when_the_estimate_exceeds_the_gpu(monkeypatch, caplog):
    policy = _tiny_lora_policy()
    total = sum(p.numel() for p in policy.parameters())
    lora = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    t = preset("grpo-qwen2.5-7b-sft", "train.lora.enabled=true")
    assert warn_if_over_memory(policy, t, processes=2, deepspeed=True, device="cpu") is None  # nothing off CUDA

    def gpu(total_memory):
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device: types.SimpleNamespace(total_memory=total_memory))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu(80e9)
    with caplog.at_level(logging.WARNING, logger="zerosearch.rl.launch"):
        e = warn_if_over_memory(policy, t, processes=2, deepspeed=True, device="cuda:0")
    # the counts of the loaded model: a frozen bf16 base, 9 bytes per adapter parameter over 2 processes
    assert e.policy == pytest.approx((2 * (total - lora) + 9 * lora) / 1e9) and e.reference == 0
    assert e.vllm == pytest.approx(24.0) and caplog.records == []
    gpu(1000)  # a GPU far too small for even this policy
    with caplog.at_level(logging.WARNING, logger="zerosearch.rl.launch"):
        e = warn_if_over_memory(policy, t, processes=2, deepspeed=True, device="cuda:0")
    assert e.total > 1e-6
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "expect out-of-memory" in record.getMessage()
    assert "train.lora.enabled" in record.getMessage() and "GPU has 0.0 GB" in record.getMessage()


@pytest.mark.parametrize("name", ["grpo-qwen2.5-7b-sft", "grpo-qwen2.5-7b-prompt", "reinforce-qwen2.5-7b-sft",
                                  "ppo-qwen2.5-7b-sft"])
def test_the_7b_preset_headers_state_the_estimates(name):
    header = (REPO / f"configs/paper/{name}.yaml").read_text()
    t = preset(name)
    if t.algorithm == "ppo":
        e = memory_estimate(t, params=P7, trainable=P7, processes=2, deepspeed=False, gpu_gb=80)
        assert f"{e.total:.0f} GB per GPU" in header and f"{e.critic:.0f} GB alone" in header
        return
    gb = {n: memory_estimate(t, params=P7, trainable=P7, processes=n, deepspeed=True, gpu_gb=80).total
          for n in (2, 4, 8)}
    assert f"{gb[2]:.0f} GB per GPU on 2 training GPUs, {gb[4]:.0f} on 4, {gb[8]:.0f} on 8" in header
    lora = memory_estimate(preset(name, "train.lora.enabled=true"), params=P7 + LORA7, trainable=LORA7,
                           processes=2, deepspeed=True, gpu_gb=80)
    assert f"({lora.total:.0f} GB" in header
    # the 8-process advice is a valid split of the preset's batch
    assert t.batch_prompts % 8 == 0 and (t.mini_batch_size // 8) % t.micro_batch_size == 0
