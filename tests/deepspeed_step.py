"""One ZeRO-2 step through accelerate + DeepSpeed, the way the trainer drives the engine: run by
tests/test_deepspeed_cpu.py under `accelerate launch --config_file
configs/accelerate/deepspeed_zero2.yaml`. The DeepSpeed values come from the trainer's own
``deepspeed_values``/``apply_deepspeed_values`` before ``prepare``; each micro-batch toggles
``sync_gradients`` and calls ``backward(scale_wrt_gas=False)`` as ``RLTrainer`` does. Prints
one JSON line: the engine's step count after each micro-batch and after a one-micro-batch
remainder mini-batch, whether the weights moved, and the engine's gradient norm against a plain
fp32 reference of the mini-batch's mean loss."""

import copy
import json
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from zerosearch.config import load_config
from zerosearch.rl.launch import apply_deepspeed_values, build_accelerator, deepspeed_values

MICRO, GAS = 2, 2
cfg = load_config(sys.argv[1], ["train.mixed_precision='no'", f"train.micro_batch_size={MICRO}",
                                f"train.mini_batch_size={MICRO * GAS}", "train.batch_prompts=2",
                                "train.group_size=2", "train.max_grad_norm=1000"])
acc = build_accelerator(cfg.train)
plugin = acc.state.deepspeed_plugin
values = deepspeed_values(cfg.train, acc.num_processes, acc.mixed_precision)
apply_deepspeed_values(plugin.deepspeed_config, values)
acc.gradient_accumulation_steps = values["gradient_accumulation_steps"]

torch.manual_seed(0)
model = Qwen2ForCausalLM(Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
reference = copy.deepcopy(model)
model, optimizer = acc.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
engine = acc.deepspeed_engine_wrapped.engine
before = [p.detach().float().clone() for p in engine.module.parameters()]
ids = torch.randint(0, 128, (MICRO * GAS, 16), generator=torch.Generator().manual_seed(1))
sum(reference(input_ids=c, labels=c).loss for c in ids.split(MICRO)).div(GAS).backward()
reference_norm = torch.norm(torch.stack([p.grad.norm() for p in reference.parameters()]))
steps = []
for i, batch in enumerate(ids.split(MICRO)):
    acc.sync_gradients = i == GAS - 1
    try:
        acc.backward(model(input_ids=batch, labels=batch).loss / GAS, scale_wrt_gas=False)
    finally:
        acc.sync_gradients = True
    steps.append(engine.global_steps)
moved = sum(float((p.detach().float() - b).abs().sum()) for p, b in zip(engine.module.parameters(), before))
grad_norm = float(engine.get_global_grad_norm())
# a smaller last mini-batch (mini_batch_size not dividing the step's rollouts): one micro-batch, the
# boundary marked by sync_gradients, not by the engine's count of GAS micro-batches
acc.backward(model(input_ids=ids[:MICRO], labels=ids[:MICRO]).loss, scale_wrt_gas=False)
print(json.dumps({"engine": type(engine).__name__, "zero_stage": engine.zero_optimization_stage(),
                  "gas": engine.gradient_accumulation_steps(), "micro": engine.train_micro_batch_size_per_gpu(),
                  "steps_after_each_micro_batch": steps, "weights_moved": moved,
                  "steps_after_a_one_micro_batch_remainder": engine.global_steps,
                  "grad_norm": grad_norm, "reference_grad_norm": float(reference_norm)}))
