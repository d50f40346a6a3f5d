"""How a training run is placed on its processes and devices, before the trainer loads a model.

- ``build_accelerator``: the ``Accelerator`` for single-process, ``torchrun`` on CPUs
  (``MULTI_CPU`` over gloo) and ``accelerate launch`` runs; ``check_launch`` logs the layout and
  refuses several processes that accelerate sees as one.
- ``deepspeed_values`` / ``apply_deepspeed_values``: the DeepSpeed config entries fixed from
  params before ``prepare``; ``check_deepspeed``: what is refused under DeepSpeed (ZeRO-3, PPO,
  ``--resume``), with why.
- ``master_dtype``: the dtype the trainable models load in; ``memory_estimate`` /
  ``warn_if_over_memory``: the model-state floor of ``rl.memory`` for this run, and a warning
  on CUDA when it exceeds the GPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from zerosearch.config import TrainSection
from zerosearch.rl.algorithms import ALGORITHMS
from zerosearch.rl.memory import MemoryEstimate, training_memory_gb

logger = logging.getLogger(__name__)


def resolve_mixed_precision(value: str) -> str:
    """``train.mixed_precision`` for ``Accelerator``: ``auto`` is bf16 on a CUDA GPU that
    supports it, else no mixed precision (CPU runs stay fp32)."""
    if value != "auto":
        return value
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def build_accelerator(t: TrainSection, environ: Mapping[str, str] = os.environ):
    """The run's ``Accelerator``. Launched as several processes on a machine without an
    accelerator device (``torchrun`` on CPUs), accelerate must be told how to run them, or it
    sees N unaware single-process copies: ``cpu=True`` (data parallel over gloo, ``MULTI_CPU``),
    or, under an ``accelerate launch`` with a DeepSpeed config, the gloo process group (``cpu=True``
    would silently drop DeepSpeed; DeepSpeed's CPU accelerator communicates over gloo)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    return Accelerator(mixed_precision=resolve_mixed_precision(t.mixed_precision),
                       **accelerator_launch_kwargs(environ, InitProcessGroupKwargs))


def accelerator_launch_kwargs(environ: Mapping[str, str], process_group_kwargs) -> dict[str, Any]:
    """The ``Accelerator`` arguments ``build_accelerator`` adds for a launch of several
    processes without an accelerator device; none otherwise."""
    device = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    if launched_world_size(environ) == 1 or device:
        return {}
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return {"kwargs_handlers": [process_group_kwargs(backend="gloo")]}
    return {"cpu": True}


def launched_world_size(environ: Mapping[str, str] = os.environ) -> int:
    """The process count a launcher (``torchrun``, ``accelerate launch``) announced: ``WORLD_SIZE``."""
    return int(environ.get("WORLD_SIZE", "1"))


def check_launch(accelerator, environ: Mapping[str, str] = os.environ) -> None:
    """Say how the run is distributed (one line per process); refuse a launch of several
    processes that accelerate sees as one (each would train alone and write the outputs)."""
    n, world = accelerator.num_processes, launched_world_size(environ)
    kind = getattr(accelerator, "distributed_type", "?")
    print(f"train: process {accelerator.process_index} of {n}, distributed type {kind}, "
          f"device {getattr(accelerator, 'device', '?')}", flush=True)
    if world > 1 and n == 1:
        raise RuntimeError(
            f"WORLD_SIZE={world} in the environment but accelerate sees 1 process (distributed type {kind}): "
            "the processes would train as independent copies. Launch with `accelerate launch` or `torchrun` "
            "on the machine's devices, or set ACCELERATE_USE_CPU=1 for data parallel on CPUs")


def deepspeed_values(t: TrainSection, num_processes: int, mixed_precision: str) -> dict[str, Any]:
    """The DeepSpeed config entries the trainer's design fixes, from params: a micro-batch of
    ``micro_batch_size`` per process, as many micro-batches accumulated as make this process's
    share of a mini-batch (one engine step per mini-batch; ``train_batch_size`` is then
    ``mini_batch_size``), ``max_grad_norm`` clipping (the engine clips, accelerate's
    ``clip_grad_norm_`` only reads the norm), bf16/fp16 as ``mixed_precision``."""
    local = t.mini_batch_size // num_processes
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": local // t.micro_batch_size,
        "train_batch_size": t.mini_batch_size,
        "gradient_clipping": t.max_grad_norm,
        "bf16": {"enabled": mixed_precision == "bf16"},
        "fp16": {"enabled": mixed_precision == "fp16"},
    }


def apply_deepspeed_values(config: dict[str, Any], values: dict[str, Any]) -> None:
    """Write ``values`` into a DeepSpeed config dict in place, over ``"auto"`` and over what the
    launch config said (sections merge: ``bf16: {enabled: ...}`` keeps the section's other keys)."""
    for key, value in values.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value


ZERO3_REFUSED = (
    "DeepSpeed ZeRO-3 is not supported by this trainer: the reference model would never be initialised "
    "by DeepSpeed (its forward would run on empty partitioned parameters), the decode loop runs a different "
    "number of forwards per process (ZeRO-3's per-forward all-gathers would hang), generation under "
    "inference_mode breaks ZeRO-3's later backward, and checkpoints are written by the main process alone "
    "(they would hold the partition placeholders). Launch with configs/accelerate/deepspeed_zero2.yaml "
    "(with train.lora.enabled: true for a policy that does not fit ZeRO-2 in full)")
PPO_REFUSED = (
    "train.algorithm: ppo is not supported under DeepSpeed: one Accelerator drives one DeepSpeed engine, "
    "so the critic's backward and step would go through the policy's engine (the critic never steps, the "
    "policy takes extra momentum steps, and ZeRO-2 asserts 'Gradient computed twice'). Use grpo, "
    "reinforce or reinforce_pp under DeepSpeed, or run PPO data parallel without it: "
    "accelerate launch --multi_gpu --num_processes N -m zerosearch.cli train ...")
RESUME_REFUSED = (
    "--resume is not supported under DeepSpeed: the optimizer state would be one process's ZeRO partition "
    "(DeepSpeed's own checkpoints, accelerator.save_state/load_state, are not wired in), so checkpoints "
    "written under DeepSpeed hold the policy but no optimizer state. Start a fresh run, or train without "
    "DeepSpeed to resume")


def check_deepspeed(plugin, t: TrainSection, *, resume: bool = False) -> None:
    """Refuse, before any model is loaded, what the trainer does not do right under DeepSpeed
    (``plugin``: accelerate's DeepSpeed plugin, None without DeepSpeed): ZeRO-3, PPO's second
    engine, resuming the optimizer state."""
    if plugin is None:
        return
    if plugin.zero_stage == 3:
        raise ValueError(ZERO3_REFUSED)
    if t.algorithm == "ppo":
        raise ValueError(PPO_REFUSED)
    if resume:
        raise ValueError(RESUME_REFUSED)


def memory_estimate(t: TrainSection, *, params: float, trainable: float, processes: int, deepspeed: bool,
                    gpu_gb: float) -> MemoryEstimate:
    """``rl.memory.training_memory_gb`` for this run's settings: ``params`` parameters in the
    policy as loaded, ``trainable`` of them trainable (with LoRA: the adapters'), ZeRO-2 under
    DeepSpeed (ZeRO-3 is refused) else plain data parallel, the critic for PPO, the reference
    when ``kl_coef > 0``, the vLLM engine's share with that backend."""
    lora = t.lora.enabled
    return training_memory_gb(
        params - trainable if lora else params, processes=processes, zero_stage=2 if deepspeed else 0, lora=lora,
        lora_params=trainable if lora else 0, critic=ALGORITHMS[t.algorithm].critic, reference=t.kl_coef > 0,
        vllm_fraction=t.vllm_gpu_memory_utilization if t.rollout_backend == "vllm" else 0.0, gpu_gb=gpu_gb)


def warn_if_over_memory(policy, t: TrainSection, *, processes: int, deepspeed: bool, device) -> MemoryEstimate | None:
    """Log a warning when the estimated model states of one process exceed its GPU's memory
    (a floor: activations come on top). Nothing off CUDA; returns the estimate on CUDA."""
    if not torch.cuda.is_available() or torch.device(device).type != "cuda":
        return None
    gpu_gb = torch.cuda.get_device_properties(device).total_memory / 1e9
    e = memory_estimate(t, params=sum(p.numel() for p in policy.parameters()),
                        trainable=sum(p.numel() for p in policy.parameters() if p.requires_grad),
                        processes=processes, deepspeed=deepspeed, gpu_gb=gpu_gb)
    if e.total > gpu_gb:
        logger.warning(
            "train: the model states alone are estimated at %.1f GB per GPU (policy %.1f, reference %.1f, critic %.1f, "
            "vLLM %.1f; activations not counted) but the GPU has %.1f GB: expect out-of-memory. Use more training "
            "processes under DeepSpeed ZeRO-2, train.lora.enabled: true, or a lower "
            "train.vllm_gpu_memory_utilization (README, \"Going to GPUs\")",
            e.total, e.policy, e.reference, e.critic, e.vllm, gpu_gb)
    return e


def master_dtype(deepspeed: bool) -> torch.dtype | str:
    """The dtype to load the trainable models (policy, critic) and the reference in.

    Without DeepSpeed, fp32: accelerate's mixed precision is autocast only, so the optimizer
    updates the loaded weights themselves, and bf16 weights round most lr-1e-6 updates away
    (transformers 5 loads ``dtype=None`` as ``"auto"``, bf16 for Qwen2.5/Llama-3.2). Under
    DeepSpeed, the checkpoint's own (``"auto"``): the engine casts the module to its bf16/fp16
    and keeps fp32 master weights in the optimizer itself."""
    return "auto" if deepspeed else torch.float32
