"""The update half of an RL training step: the models it trains and the optimizer steps.

``ppo_epochs`` passes over a seeded shuffle of the step's rollouts, cut into consecutive
mini-batches of this process's share of ``mini_batch_size`` (the last one smaller when it does
not divide). Each mini-batch is one optimizer step, its gradient accumulated over
length-sorted micro-batches of ``micro_batch_size``: clipped policy loss (+ the KL loss for
GRPO and REINFORCE, - the entropy bonus), the critic's clipped value loss (PPO), gradient
clipping. A micro-batch's loss is weighted by its share of the mini-batch's sampled tokens over
all processes, so neither accumulation nor the process count changes what a mini-batch means
(the trainer's docstring lists where this departs from veRL).

Distribution goes through ``accelerate``: gradients sync on a mini-batch's last micro-batch
only (``no_sync`` before it; under DeepSpeed that is also where the engine steps), and every
process runs every micro-batch's forward and backward, one without sampled tokens with its
loss times 0, so no collective waits for a process that skipped one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from zerosearch.config import TrainSection
from zerosearch.rl.algorithms import (
    AlgorithmSpec,
    aggregate,
    get_kl,
    policy_loss,
    value_loss,
)
from zerosearch.rl.experience import (
    Experience,
    critic_values,
    first_scored_position,
    length_sorted,
    token_log_probs,
)


@dataclass
class Models:
    """The trainable policy (and critic), their optimizers, and how to get reference log-probs."""

    policy: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    reference: Any | None = None  # a frozen copy; None with LoRA (adapters disabled) or no KL
    critic: Any | None = None
    critic_optimizer: torch.optim.Optimizer | None = None
    lora: bool = False
    critic_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # the critic's LR warmup (PPO)


def local_mini_batch(t: TrainSection, num_processes: int) -> int:
    """This process's share of ``train.mini_batch_size`` (trajectories of all processes)."""
    return t.mini_batch_size // num_processes


class Updater:
    """Optimizer steps of ``models`` on a step's ``Experience`` under ``t`` (``cfg.train``),
    ``spec`` (the algorithm) and ``accelerator``; ``deepspeed``: launched with a DeepSpeed config."""

    def __init__(self, t: TrainSection, spec: AlgorithmSpec, models: Models, accelerator, *, seed: int,
                 deepspeed: bool) -> None:
        self.t, self.spec, self.m, self.accelerator = t, spec, models, accelerator
        self.seed, self.deepspeed = seed, deepspeed

    def run(self, exp: Experience, step: int) -> dict[str, float]:
        """The step's epochs over mini-batches; returns mean loss statistics (this process's
        token share of each: the trainer sums them over processes)."""
        t, m = self.t, self.m
        gen = torch.Generator().manual_seed(self.seed * 7919 + step)
        sums: dict[str, float] = {}
        updates = 0
        m.policy.train()
        if m.critic is not None:
            m.critic.train()
        local = local_mini_batch(t, self.accelerator.num_processes)
        for _ in range(t.ppo_epochs):
            # consecutive chunks of one shuffle; the last is smaller when the size does not divide
            for mini in torch.randperm(len(exp), generator=gen).split(local):
                stats = self.mini_batch(exp, mini)
                updates += 1
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
        m.policy.eval()
        return {k: v / max(1, updates) for k, v in sums.items()}

    def global_tokens(self, local: Tensor) -> Tensor:
        """The sampled tokens of a mini-batch over all processes (its share on each)."""
        if self.accelerator.num_processes == 1:
            return local
        return self.accelerator.reduce(local.to(self.accelerator.device), reduction="sum")

    def mini_batch(self, exp: Experience, mini: Tensor) -> dict[str, float]:
        """One optimizer step on a mini-batch, its gradient accumulated over micro-batches.

        A micro-batch's loss is weighted by its share of the mini-batch's sampled tokens over
        all processes, times the process count (DDP and DeepSpeed average gradients over
        processes): the step is the token mean of the whole mini-batch. A micro-batch without
        sampled tokens still runs forward and backward (its loss times 0): every process must
        run the same passes, or the collectives inside them wait forever. A mini-batch without
        any sampled token on any process is skipped by every process alike (no optimizer step).
        """
        t, m, acc = self.t, self.m, self.accelerator
        tokens = self.global_tokens(exp.mask[mini].sum())
        if float(tokens) == 0.0:
            return {"grad_norm": 0.0, **({"critic_grad_norm": 0.0} if m.critic is not None else {})}
        m.optimizer.zero_grad(set_to_none=True)
        if m.critic_optimizer is not None:
            m.critic_optimizer.zero_grad(set_to_none=True)
        stats: dict[str, float] = {}
        micros = length_sorted(mini, exp.attention_mask.sum(-1)).split(t.micro_batch_size)
        for i, micro in enumerate(micros):
            e = exp.select(micro)
            share = float(e.mask.sum() / tokens)
            with self.accumulating(last=i == len(micros) - 1):
                for k, v in self.micro_step(e, share * acc.num_processes).items():
                    stats[k] = stats.get(k, 0.0) + v * share
        stats["grad_norm"] = float(acc.clip_grad_norm_(m.policy.parameters(), t.max_grad_norm))
        m.optimizer.step()
        if m.critic is not None:
            stats["critic_grad_norm"] = float(acc.clip_grad_norm_(m.critic.parameters(), t.max_grad_norm))
            m.critic_optimizer.step()
        return stats

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Around one micro-batch's forward and backward: only the mini-batch's last one syncs
        gradients over processes (``no_sync`` otherwise) and, under DeepSpeed, steps the engine
        (accelerate steps it inside every backward while ``sync_gradients`` is true)."""
        acc = self.accelerator
        acc.sync_gradients = last
        try:
            with contextlib.ExitStack() as stack:
                if not last:
                    for model in (self.m.policy, self.m.critic):
                        if model is not None:
                            stack.enter_context(acc.no_sync(model))
                yield
        finally:
            acc.sync_gradients = True

    def backward(self, loss: Tensor) -> None:
        # Under DeepSpeed the losses are already weighted for accumulation (see mini_batch): no
        # second division by gradient_accumulation_steps.
        self.accelerator.backward(loss, **({"scale_wrt_gas": False} if self.deepspeed else {}))

    def micro_step(self, e: Experience, weight: float) -> dict[str, float]:
        """Forward and backward of one micro-batch, its losses times ``weight``; its statistics."""
        t, m = self.t, self.m
        # Without an entropy bonus the entropy is only logged (the curve's collapse signal): computed
        # without autograd, one chunk at a time, so it costs a softmax pass and no memory for backward.
        log_probs, entropy = token_log_probs(m.policy, e.input_ids, e.attention_mask, t.temperature,
                                             with_entropy="grad" if t.entropy_coef else True,
                                             start=first_scored_position(e.mask))
        old_log_probs = e.old_log_probs if e.old_log_probs is not None else log_probs.detach()
        pg_loss, pg_stats = policy_loss(log_probs, old_log_probs, e.advantages, e.mask, clip_ratio=t.clip_ratio)
        entropy_mean = aggregate(entropy, e.mask)
        loss = pg_loss - t.entropy_coef * entropy_mean
        stats: dict[str, float] = {}
        if e.ref_log_probs is not None:
            kl = aggregate(get_kl(t.kl_estimator)(log_probs, e.ref_log_probs), e.mask)
            if not self.spec.kl_in_reward:
                # ADDED, so the update pulls the policy towards the reference. The reference actor
                # (veRL's dp_actor, use_kl_loss) subtracts kl_loss_coef * kl_loss instead, which
                # rewards drifting away from it; we keep this fix (docs: FIDELITY).
                loss = loss + t.kl_coef * kl
            stats["kl"] = kl.item()
        self.backward(loss * weight)
        stats.update(policy_loss=pg_loss.item(), entropy=entropy_mean.item(), **pg_stats)
        if m.critic is not None:
            values = critic_values(m.critic, e.input_ids, e.attention_mask)
            v_loss, v_stats = value_loss(values, e.old_values, e.returns, e.mask, clip_range=t.value_clip)
            self.backward(v_loss * weight)
            stats.update(value_loss=v_loss.item(), **v_stats)
        return stats
