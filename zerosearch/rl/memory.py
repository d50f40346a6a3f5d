"""Per-GPU training memory, estimated from the parameter count (model states only).

``training_memory_gb`` is the floor of what one training process keeps on its GPU, in GB
(10^9 bytes), for P policy parameters over N data-parallel processes:

- **ZeRO-2** (``zero_stage=2``, DeepSpeed: the module in bf16, fp32 master weights and Adam
  in the optimizer, both sharded with the gradients): bf16 weights ``2P``, bf16 gradients
  ``2P/N``, fp32 master weights + Adam's two moments ``12P/N``;
- **no DeepSpeed** (``zero_stage=0``, DDP: fp32 weights under bf16 autocast, nothing
  sharded): fp32 weights ``4P``, fp32 gradients ``4P``, Adam ``8P``;
- **LoRA**: the base is frozen (its weights only: ``2P``, or ``4P`` in fp32 without
  DeepSpeed) and the ``lora_params`` trainable ones carry the states above;
- **reference model** (any algorithm with ``kl_coef > 0`` and no LoRA; with LoRA it is the
  policy with adapters disabled): its weights, ``2P`` (``4P`` without DeepSpeed);
- **critic** (PPO): a full trainable copy, the policy's terms again;
- **vLLM** (``rollout_backend: vllm``): ``vllm_fraction x gpu_gb``, which holds the engine's own
  bf16 weights and its KV cache.

Not counted, so a real run needs more: activations (gradient checkpointing keeps one layer's
plus a checkpoint per layer), the chunked log-prob computation, DeepSpeed's communication
buckets, the CUDA context (1-2 GB), fragmentation, and with the ``hf`` rollout backend a
packed copy of the policy's weights.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryEstimate:
    """GB per GPU by part; ``total`` is their sum."""

    policy: float  # weights, gradients and optimizer states of the policy (LoRA: base weights + adapter states)
    reference: float
    critic: float
    vllm: float

    @property
    def total(self) -> float:
        return self.policy + self.reference + self.critic + self.vllm


def _trainable_gb(params: float, processes: int, zero_stage: int) -> float:
    """Weights, gradients and Adam of ``params`` trainable parameters, per process."""
    if zero_stage == 2:
        return (2 * params + 2 * params / processes + 12 * params / processes) / 1e9
    return 16 * params / 1e9  # fp32 weights 4 + gradients 4 + Adam 8, replicated


def training_memory_gb(params: float, *, processes: int, zero_stage: int = 2, lora: bool = False,
                       lora_params: float = 0, critic: bool = False, reference: bool = True,
                       vllm_fraction: float = 0.0, gpu_gb: float = 80.0) -> MemoryEstimate:
    """The floor of one training process's GPU memory (see the module docstring for the
    formula). ``params``: the policy's parameter count; ``processes``: training processes (one
    GPU each); ``zero_stage``: 2 (DeepSpeed ZeRO-2) or 0 (no DeepSpeed); ``reference``: whether a
    separate reference model is kept (ignored with ``lora``); ``vllm_fraction``: the vLLM
    engine's share of the GPU (0 for the ``hf`` backend); ``gpu_gb``: the GPU's memory."""
    if zero_stage not in (0, 2):
        raise ValueError(f"zero_stage must be 0 (no DeepSpeed) or 2 (ZeRO-2; the trainer refuses ZeRO-3), "
                         f"got {zero_stage}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    weight_bytes = 2 if zero_stage == 2 else 4  # the module's dtype: bf16 under DeepSpeed, fp32 masters without
    if lora:
        policy = weight_bytes * params / 1e9 + _trainable_gb(lora_params, processes, zero_stage)
    else:
        policy = _trainable_gb(params, processes, zero_stage)
    return MemoryEstimate(
        policy=policy,
        reference=weight_bytes * params / 1e9 if reference and not lora else 0.0,
        critic=_trainable_gb(params, processes, zero_stage) if critic else 0.0,
        vllm=vllm_fraction * gpu_gb)
