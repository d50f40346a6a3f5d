"""bench/pretrain_speed.py times real optimizer steps in each mode (the model learns while timed)."""

import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import pretrain_speed  # noqa: E402

from zerosearch.config import PretrainRun  # noqa: E402


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_seconds_per_step_trains_the_model_it_times(mode):
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=64))
    ids = torch.arange(16).repeat(8, 2) % 64  # (8, 32): a repeated pattern, learnable
    before = [p.detach().clone() for p in model.parameters()]
    run = PretrainRun(steps=6, batch_size=2, seq_len=32, lr=1e-3, warmup_steps=1, weight_decay=0.0, precision="fp32")
    seconds, loss = pretrain_speed.seconds_per_step(model, (ids, ids), run, mode=mode, warmup=2)
    assert seconds > 0 and 0 < loss < 10
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # the steps were real updates
    assert all(p.dtype == torch.float32 for p in model.parameters())
