"""The RL trainer: GRPO, PPO, REINFORCE and REINFORCE++ over multi-turn search rollouts.

One training step:

1. sample ``batch_prompts`` training questions (seeded by the step) and roll each out
   ``group_size`` times with the policy (``zerosearch.agent.rollout``), the engine answering
   every search with the step number (the simulator's curriculum reads it);
2. score the final answers with the outcome reward (F1 or EM, by name);
3. compute, without gradients, the behaviour log-probs, the reference log-probs (for the KL
   term) and, for PPO, the critic's values; then advantages and returns by the algorithm's
   estimator (``zerosearch.rl.algorithms``);
4. ``ppo_epochs`` passes over the shuffled rollouts cut into consecutive mini-batches of
   ``mini_batch_size`` trajectories (the last one smaller when it does not divide the step's
   rollouts: the reference's 320 = 256 + 64, two optimizer steps), each accumulated over
   micro-batches: clipped policy loss (+ KL loss for GRPO and REINFORCE, - entropy bonus),
   clipped value loss for the critic, gradient clipping, one optimizer step per mini-batch;
   the policy's learning rate (``warmup_ratio``) and the critic's (``critic_warmup_ratio``)
   warm up linearly, then stay constant (one LR step per training step).

Only tokens the policy sampled enter any loss (the rollout's loss mask): retrieved
documents and corrective messages are state, not actions. ``train.mask_observations: false``
is the paper's ablation without state masking: every response token (observations included,
never the prompt) enters the losses, the advantages and the KL and entropy means
(``RolloutBatch.trained_mask``).

Departures from the reference (Search-R1 / ZeroSearch on veRL):

- Losses are token-means over a whole mini-batch (micro-batch losses are weighted by their
  share of the mini-batch's tokens over all processes), so neither gradient accumulation nor
  the process count changes the loss a mini-batch defines. A smaller last mini-batch is the
  token mean of its own tokens (veRL divides every micro-batch's mean by the full
  mini-batch's micro-batch count, so its 64-trajectory remainder steps with a quarter of its
  mean's gradient).
- The KL loss is added to the policy loss (the reference actor subtracts it: see
  ``zerosearch.rl.update.Updater.micro_step``).
- The LR schedule advances once per training step, not once per mini-batch. Warmup step
  ``k`` (from 0) runs at ``(k + 1) / ceil(ratio * total_steps)`` of the LR; veRL's at
  ``k / int(ratio * total_steps)``, its first step at LR 0. For a non-integer
  ``ratio * total_steps`` both reach the full LR at step ``int(ratio * total_steps)`` (203
  steps: ours over 193 / 58 / 4 steps for 0.95 / 0.285 / 0.015, veRL's over 192 / 57 / 3).
- Mini-batches are drawn from a seeded shuffle of the step's rollouts (veRL's actor:
  ``shuffle: False``, consecutive rows, whole groups together).
- PPO's critic is ``AutoModelForTokenClassification`` (one label) initialised from the
  policy's weights with a fresh head, a separate model as in veRL.
- With LoRA the reference model is the policy with its adapters disabled (no second copy).

Distribution goes through ``accelerate`` (models, optimizers, backward, gradient clipping):
the same code runs single-process, under ``torchrun`` on CPUs (``build_accelerator``: data
parallel over gloo, ``MULTI_CPU``) and under ``accelerate launch`` with the DeepSpeed configs
in ``configs/accelerate/`` on GPUs. Each process rolls out ``batch_prompts / processes``
prompts (whole groups) and trains on ``mini_batch_size / processes`` trajectories of each
mini-batch (both are numbers for all processes together). Gradients sync on a mini-batch's
last micro-batch only, so the optimizer steps once per mini-batch (under DeepSpeed too: the
engine's micro-batch, accumulation, clipping and bf16 are written from params before
``prepare``), and the LR scheduler, kept out of accelerate, once per training step. Every
process runs every micro-batch's forward and backward, one without sampled tokens with its
loss times 0, so no collective waits for a process that skipped one. The trainable models
load in fp32 unless DeepSpeed keeps fp32 master weights (``master_dtype``); the reference
model and the critic are placed like the policy (a replica per process). ``check_deepspeed`` refuses
what is not right under DeepSpeed yet: ZeRO-3, PPO (its critic needs a second engine) and ``--resume``.
Logged metrics are over all processes (rewards and EM gathered, per-trajectory means averaged,
counts and the loss statistics' token shares summed, times the slowest process's);
``noisy_fraction`` is the mean of the processes' fractions and REINFORCE++'s batch
normalization is per process. Only the main process writes checkpoints and logs metrics.
``train.mixed_precision`` (``auto``: bf16 on CUDA) and ``base.attn_implementation`` (``auto``:
flash-attn when installed) apply there.

Validation (``train.val_every``, ``validate``): the policy after N updates answers held-out
questions greedily, for N = 0, every ``val_every`` and ``total_steps``, with the searches of a
``Validation``'s own engine (never the training engine: the simulator's curriculum and
counters do not see it). Greedy decoding draws no random number and the RNG states are
restored after it anyway, so training is the same with validation on or off. Every process
validates its share of the questions (``rows[rank::N]``), the records are gathered and the
main process logs per-source and average strict EM, substring EM and F1 (``val_*``) at step N;
they are kept in ``validations`` and in every checkpoint, so a resumed run keeps them.

Rollouts come from ``train.rollout_backend``: ``hf`` (``zerosearch.lm.generation.HFGenerator``, a
new one per step over the current weights) or ``vllm`` (``zerosearch.lm.vllm_generator``: one
engine for the run, the policy's weights loaded into it before every rollout).
"""

from __future__ import annotations

import copy
import functools
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zerosearch.agent.rollout import RolloutBatch, RolloutSettings, run_rollouts
from zerosearch.config import Config
from zerosearch.lm.generation import HFGenerator
from zerosearch.progress import progress
from zerosearch.protocol import SearchEngine
from zerosearch.rewards import exact_match, get_reward
from zerosearch.rl.algorithms import ALGORITHMS, get_advantage, get_kl
from zerosearch.rl.checkpoint import (
    checkpoint_path,
    config_differences,
    intact_checkpoint,
    read_state,
    save_checkpoint,
    set_rng_state,
)
from zerosearch.rl.experience import (
    Experience,
    critic_values,
    first_scored_position,
    length_sorted,
    rows_by_micro_batch,
    token_log_probs,
)
from zerosearch.rl.launch import (
    apply_deepspeed_values,
    build_accelerator,
    check_deepspeed,
    check_launch,
    deepspeed_values,
    master_dtype,
    warn_if_over_memory,
)
from zerosearch.rl.step_timing import simulator_timed, step_phases
from zerosearch.rl.update import Models, Updater, local_mini_batch
from zerosearch.rl.validation import Validation, validate_policy, validation_due
from zerosearch.timing import PhaseTimer
from zerosearch.tracker import NullTracker, Tracker

# RolloutBatch.stats() entries that are counts (summed over processes); the others are
# per-trajectory means, averaged over processes (each has as many trajectories).
COUNTED_STATS = ("truncated_observations", "turns_hit_length_limit", "context_limit_stops")



def constant_with_warmup(warmup_steps: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


class RLTrainer:
    """Runs ``cfg.train`` over ``train_rows`` against ``engine``; checkpoints to ``checkpoint_dir``.

    ``on_step(step, metrics)`` is called after every step (the stage writes plots with it).
    ``validation``: what ``train.val_every`` validates on (None: no validation).
    """

    def __init__(self, cfg: Config, engine: SearchEngine, train_rows: Sequence[dict], *,
                 checkpoint_dir: str | Path, tracker: Tracker = NullTracker(),
                 on_step: Callable[[int, dict[str, float]], None] | None = None, accelerator=None,
                 validation: Validation | None = None):
        self.cfg, self.t = cfg, cfg.train
        self.spec = ALGORITHMS[self.t.algorithm]
        self.engine, self.rows = engine, list(train_rows)
        if not self.rows:
            raise ValueError("no training questions")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.tracker, self.on_step = tracker, on_step
        self.rollout_settings = RolloutSettings.from_config(cfg)
        self.accelerator = accelerator or build_accelerator(self.t)
        check_launch(self.accelerator)
        check_deepspeed(self._deepspeed_plugin(), self.t)
        self.reward_fn = get_reward(self.t.reward)
        self.history: list[dict[str, float]] = []
        self.validation = validation
        self.validations: list[dict[str, float]] = []  # {"step": N, val_*}: the policy after N updates
        self.start_step = 0
        self.m: Models | None = None
        self.updater: Updater | None = None  # the optimizer steps over self.m (setup)
        self._vllm = None  # the vllm rollout engine, created on the first rollout
        self.timer = PhaseTimer()  # a step's seconds per phase (``step_phases``)
        self._logging_seconds = 0.0  # the previous step's logging and checkpointing

    # ------------------------------------------------------------------ setup

    def setup(self, resume: bool = False) -> int:
        """Load models (from the newest checkpoint when ``resume``); returns the first step to run."""
        check_deepspeed(self._deepspeed_plugin(), self.t, resume=resume)
        found = (intact_checkpoint(self.checkpoint_dir, critic=self.spec.critic, check_state=self._check_config)
                 if resume else None)
        ckpt, trainer_state = found if found is not None else (None, None)
        if resume and ckpt is None:
            print(f"--resume: no checkpoint under {self.checkpoint_dir}; starting from step 0")
        self._check_process_split()
        torch.manual_seed(self.cfg.train.seed)  # a run is a function of its config, not of what ran before
        state = read_state(ckpt) if ckpt is not None else None  # its config was checked first
        self.m = self._build_models(ckpt)
        self.updater = Updater(self.t, self.spec, self.m, self.accelerator, seed=self.cfg.train.seed,
                               deepspeed=self._deepspeed_plugin() is not None)
        if state is not None:
            if trainer_state.get("optimizer") is None:
                raise ValueError(f"cannot resume from {ckpt}: it was written under DeepSpeed and holds no "
                                 "optimizer state; start a fresh run")
            self.m.optimizer.load_state_dict(trainer_state["optimizer"])
            self.m.scheduler.load_state_dict(trainer_state["scheduler"])
            if self.m.critic_optimizer is not None:
                self.m.critic_optimizer.load_state_dict(trainer_state["critic_optimizer"])
                self.m.critic_scheduler.load_state_dict(trainer_state["critic_scheduler"])
            set_rng_state(trainer_state["rng"])
            self.history = state["history"]
            self.validations = state.get("validations", [])
            self.start_step = state["step"]
        return self.start_step

    def _check_config(self, ckpt: Path, state: dict) -> None:
        """A checkpoint written under another config is refused (before anything else of it is read)."""
        diff = config_differences(state["config"], self.cfg.model_dump())
        if diff:
            raise ValueError(f"cannot resume from {ckpt}: the config changed since it was written:\n  "
                             + "\n  ".join(diff) + "\nrestore those values or start a fresh run")

    def _check_process_split(self) -> None:
        """Each of N processes trains on batch_prompts / N prompts and mini_batch_size / N of
        each mini-batch (both are numbers for all processes together): they must divide. Then a
        smaller last mini-batch (``batch_prompts * group_size`` not a multiple of
        ``mini_batch_size``) splits too: each process's remainder is ``1 / N`` of it, the same
        size on every process, so all run the same micro-batches (under DeepSpeed the last one
        of each mini-batch is the accumulation boundary, whatever their count)."""
        n, t = self.accelerator.num_processes, self.t
        if n == 1:
            return
        if t.batch_prompts % n:
            raise ValueError(f"train.batch_prompts ({t.batch_prompts}) must be a multiple of the {n} processes")
        if t.mini_batch_size % n or t.mini_batch_size // n % t.micro_batch_size:
            raise ValueError(f"train.mini_batch_size ({t.mini_batch_size}, trajectories of all processes) must split "
                             f"into {n} equal shares, each a multiple of train.micro_batch_size "
                             f"({t.micro_batch_size}, per process)")

    def _build_models(self, ckpt: Path | None) -> Models:
        from zerosearch.lm.models import load_model

        t, base = self.t, self.cfg.base
        trust, dtype = base.trust_remote_code, master_dtype(self._deepspeed_plugin() is not None)
        source = ckpt / "policy" if ckpt is not None and not t.lora.enabled else base.policy_model
        policy, tokenizer = load_model(str(source), dtype=dtype, trust_remote_code=trust,
                                       attn_implementation=base.attn_implementation)
        reference = None
        if t.lora.enabled:
            policy = self._with_lora(policy, ckpt)
        elif t.kl_coef > 0:  # a resumed run loads it as a fresh run copies it: in the policy's dtype
            reference = (load_model(base.policy_model, dtype=dtype, trust_remote_code=trust,
                                    attn_implementation=base.attn_implementation)[0]
                         if ckpt else copy.deepcopy(policy))
            reference.requires_grad_(False).eval()
        # before anything is placed on the GPU (prepare): say so when the model states cannot fit
        warn_if_over_memory(policy, t, processes=self.accelerator.num_processes,
                            deepspeed=self._deepspeed_plugin() is not None, device=self.accelerator.device)
        if t.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
            if t.lora.enabled:
                policy.enable_input_require_grads()
        trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=t.lr, betas=(0.9, 0.999), weight_decay=0.01)
        warmup = math.ceil(t.warmup_ratio * t.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, constant_with_warmup(warmup))
        critic = critic_optimizer = critic_scheduler = None
        if self.spec.critic:
            critic = self._load_critic(ckpt, dtype)
            critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=t.critic_lr, weight_decay=0.01)
            critic_warmup = math.ceil(t.critic_warmup_ratio * t.total_steps)  # 0: the constant critic_lr
            critic_scheduler = torch.optim.lr_scheduler.LambdaLR(critic_optimizer, constant_with_warmup(critic_warmup))
        acc = self.accelerator
        plugin = self._deepspeed_plugin()
        if plugin is not None:  # integers before prepare: "auto" needs a dataloader there (accelerate raises)
            values = deepspeed_values(t, acc.num_processes, acc.mixed_precision)
            apply_deepspeed_values(plugin.deepspeed_config, values)
            acc.gradient_accumulation_steps = values["gradient_accumulation_steps"]
        # The scheduler stays the trainer's, stepped once per training step: accelerate's wrapper
        # would step it num_processes times per call (accelerate scheduler.py, split_batches=False).
        policy, optimizer = acc.prepare(policy, optimizer)
        if reference is not None:
            reference = acc.prepare_model(reference, evaluation_mode=True)
        if critic is not None:
            critic, critic_optimizer = acc.prepare(critic, critic_optimizer)
        return Models(policy, tokenizer, optimizer, scheduler, reference, critic, critic_optimizer, t.lora.enabled,
                      critic_scheduler)

    def _deepspeed_plugin(self):
        """The DeepSpeed plugin of an ``accelerate launch`` with a DeepSpeed config, else None."""
        return getattr(self.accelerator.state, "deepspeed_plugin", None)

    def _with_lora(self, policy, ckpt: Path | None):
        from peft import PeftModel

        from zerosearch.lm.models import with_lora

        if ckpt is not None:
            return PeftModel.from_pretrained(policy, ckpt / "policy", is_trainable=True)
        return with_lora(policy, self.t.lora)

    def _load_critic(self, ckpt: Path | None, dtype: torch.dtype | str):
        """The critic, with its head's dropout off: transformers falls back to 0.1 when the config has
        none, which would be active in the update while the old values are computed in eval mode
        (veRL loads its critic with ``classifier_dropout=0.0`` too)."""
        from transformers import AutoConfig, AutoModelForTokenClassification

        source = ckpt / "critic" if ckpt is not None else self.cfg.base.policy_model
        trust = self.cfg.base.trust_remote_code
        config = AutoConfig.from_pretrained(str(source), num_labels=1, trust_remote_code=trust)
        config.classifier_dropout = 0.0  # not a from_pretrained keyword: the model's __init__ would refuse it
        critic = AutoModelForTokenClassification.from_pretrained(
            str(source), config=config, dtype=dtype, use_safetensors=True, trust_remote_code=trust)
        if self.t.gradient_checkpointing:
            critic.gradient_checkpointing_enable()
        return critic

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> list[dict[str, float]]:
        """Run from the first step not yet done to ``total_steps``; returns the metric history."""
        start = self.setup(resume)
        self.validate_if_due(start)  # step 0: the policy before training; on resume, if not done yet
        with progress(f"train {self.t.algorithm}", self.t.total_steps, completed=start) as bar:
            for step in range(start, self.t.total_steps):
                metrics = self.train_step(step)
                self.history.append({"step": step, **metrics})
                done = step + 1
                self.validate_if_due(done)  # before the checkpoint, which keeps it
                t_log = time.perf_counter()
                if self.accelerator.is_main_process:  # the metrics are over all processes already
                    self.tracker.log_metrics(metrics, step=step)
                if self.on_step:
                    self.on_step(step, metrics)
                if done % self.t.save_every == 0 or done == self.t.total_steps:
                    self.save(done)
                # logging, the stage's per-step files, checkpoints: reported with the next step
                self._logging_seconds = time.perf_counter() - t_log
                bar.update(1, info=f"reward {metrics['reward_mean']:.3f} em {metrics['em']:.3f}")
        return self.history

    def validation_due(self, n: int) -> bool:
        """Whether the policy after ``n`` updates is validated (``validation.validation_due``)."""
        return self.validation is not None and validation_due(n, self.t.val_every, self.t.total_steps)

    def validate_if_due(self, n: int) -> dict[str, float] | None:
        """Validate the policy after ``n`` updates when due and not done yet (a resumed run has
        the checkpoint's); logs ``val_*`` at step ``n`` and keeps them in ``validations``."""
        if not self.validation_due(n) or any(v["step"] == n for v in self.validations):
            return None
        t0 = time.perf_counter()
        metrics = self.validate()
        metrics["val_seconds"] = time.perf_counter() - t0
        self.validations.append({"step": n, **metrics})
        if self.accelerator.is_main_process:
            self.tracker.log_metrics(metrics, step=n)
        return metrics

    def validate(self) -> dict[str, float]:
        """The current policy's greedy answers to the validation questions, over all processes
        (``validation.validate_policy``)."""
        acc = self.accelerator
        policy = acc.unwrap_model(self.m.policy)
        return validate_policy(self.validation, policy, self.m.tokenizer, self.rollout_settings,
                               self._greedy_generator(policy), batch_size=self.cfg.eval.batch_size,
                               rank=acc.process_index, world_size=acc.num_processes)

    def _greedy_generator(self, policy):
        """Validation's generator: greedy over ``policy``'s current weights (``hf``: in the
        rollouts' compute dtype; ``vllm``: the run's engine, weights synced, temperature 0)."""
        if self.t.rollout_backend == "hf":
            return HFGenerator(policy, self.m.tokenizer, do_sample=False, dtype=self._compute_dtype())
        greedy = copy.copy(self.generator(policy))  # generator() loads the current weights into the engine
        greedy.temperature = 0.0
        return greedy

    def sample_rows(self, step: int) -> list[dict]:
        """This process's prompts of the step: a seeded draw of ``batch_prompts`` without
        replacement (the same for a resumed run), split across processes by prompt, so a
        prompt's whole group is on one process (data parallel under ``accelerate launch``)."""
        rng = random.Random(self.cfg.train.seed * 1_000_003 + step)
        drawn = rng.sample(self.rows, min(self.t.batch_prompts, len(self.rows)))
        acc = self.accelerator
        return drawn[acc.process_index::acc.num_processes]

    def rollout(self, step: int) -> tuple[RolloutBatch, list[int]]:
        t = self.t
        rows = self.sample_rows(step)
        group = [i for i in range(len(rows)) for _ in range(t.group_size)]
        policy = self.accelerator.unwrap_model(self.m.policy)
        policy.eval()
        generator = self.timer.wrap(self.generator(policy), {"generate": "policy_generate"})
        engine = self.timer.wrap(self.engine, {"search": "search"})
        batch = run_rollouts(generator, self.m.tokenizer, engine, [rows[i]["question"] for i in group],
                             [rows[i]["golden_answers"] for i in group], self.rollout_settings, step=step,
                             prompts=[rows[i].get("prompt") for i in group])  # the data's prompt, if any
        return batch, group

    def generator(self, policy):
        """The rollout generator over ``policy``'s current weights (``train.rollout_backend``)."""
        t = self.t
        if t.rollout_backend == "hf":
            return HFGenerator(policy, self.m.tokenizer, temperature=t.temperature, top_p=t.top_p,
                               dtype=self._compute_dtype())
        if self._vllm is None:
            from zerosearch.lm.vllm_generator import VLLMGenerator

            acc = self.accelerator
            self._vllm = VLLMGenerator.create(
                self.cfg.base.policy_model, self.m.tokenizer, gpu_memory_utilization=t.vllm_gpu_memory_utilization,
                temperature=t.temperature, top_p=t.top_p, seed=self.cfg.train.seed + acc.process_index,
                rank=acc.process_index,
                local_rank=acc.local_process_index, world_size=acc.num_processes, max_model_len=t.max_prompt_tokens)
            acc.wait_for_everyone()  # engines are built at different speeds; TRL syncs here too
        self._vllm.sync_weights(policy)  # the engine samples from the weights being trained
        return self._vllm

    def _compute_dtype(self) -> torch.dtype | None:
        """The rollout's compute dtype: that of mixed precision (the weights stay fp32), else None."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(getattr(self.accelerator, "mixed_precision", "no"))

    def scores(self, batch: RolloutBatch) -> Tensor:
        completions = [self.m.tokenizer.decode(tr.response_ids, skip_special_tokens=False) for tr in batch.trajectories]
        golden = [tr.golden_answers for tr in batch.trajectories]
        return torch.tensor(self.reward_fn(completions, golden), dtype=torch.float32)

    def train_step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        timer = self.timer
        timer.take()
        with simulator_timed(self.engine, timer), timer.section("rollout"):
            batch, group = self.rollout(step)
        with timer.section("score"):
            scores = self.scores(batch)
        with timer.section("experience"):
            exp = self.make_experience(batch, scores, group)
        with timer.section("update"):
            update = self.update(exp, step)
            self.m.scheduler.step()
            if self.m.critic_scheduler is not None:
                self.m.critic_scheduler.step()
        phases = step_phases(timer.take())
        times = {"step_seconds": time.perf_counter() - t0, "rollout_seconds": phases.pop("time_rollout"),
                 **phases, "time_logging_previous": self._logging_seconds}
        self._logging_seconds = 0.0
        return self.step_metrics(batch, scores, exp, update, times)

    def step_metrics(self, batch: RolloutBatch, scores: Tensor, exp: Experience, update: dict[str, float],
                     times: dict[str, float]) -> dict[str, float]:
        """The step's metrics over all processes: rewards and EM of every rollout, per-trajectory
        means averaged (each process has as many trajectories), counts and the update's loss
        statistics (each process's token share) summed, gradient norms as they are (the same
        on every process), times of the slowest process."""
        em = torch.tensor([exact_match(tr.answer, tr.golden_answers) for tr in batch.trajectories], dtype=torch.float32)
        scores, em = self._gather(scores), self._gather(em).tolist()
        norms = {k: update.pop(k) for k in ("grad_norm", "critic_grad_norm") if k in update}
        stats = batch.stats()
        counts = {k: stats.pop(k) for k in COUNTED_STATS}
        times = self._reduce(times, "max")
        sampled = self._reduce({"sampled": float(batch.loss_mask[:, 1:].sum())}, "sum")["sampled"]
        return {
            "reward_mean": float(scores.mean()), "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
            "em": sum(em) / len(em), **self._reduce(stats, "mean"), **self._reduce(counts, "sum"),
            **self._reduce(update, "sum"), **norms, "lr": self.m.scheduler.get_last_lr()[0], **self._critic_lr(), **times,
            "tokens_per_s": sampled / max(times["step_seconds"], 1e-9),
        }

    def _critic_lr(self) -> dict[str, float]:
        scheduler = self.m.critic_scheduler
        return {"critic_lr": scheduler.get_last_lr()[0]} if scheduler is not None else {}

    def _gather(self, values: Tensor) -> Tensor:
        """``values`` of every process, concatenated in process order (``(n,)`` -> ``(N * n,)``)."""
        acc = self.accelerator
        return values if acc.num_processes == 1 else acc.gather(values.to(acc.device)).cpu()

    def _reduce(self, values: dict[str, float], how: str) -> dict[str, float]:
        """``values`` (the same keys on every process) summed (``sum``), averaged (``mean``) or
        maxed (``max``) over processes."""
        acc = self.accelerator
        if acc.num_processes == 1 or not values:
            return values
        keys = sorted(values)
        local = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=acc.device)
        total = acc.gather(local[None]).max(0).values if how == "max" else acc.reduce(local, reduction=how)
        return dict(zip(keys, total.tolist(), strict=True))

    # ------------------------------------------------------------------ experience

    def on_policy(self, n_rollouts: int) -> bool:
        """One pass, one mini-batch and no KL in the reward: the behaviour log-probs equal the
        current ones, so the extra forward pass is skipped (the update detaches its own)."""
        t = self.t
        kl_reward = self.spec.kl_in_reward and t.kl_coef > 0
        return (t.ppo_epochs == 1 and local_mini_batch(t, self.accelerator.num_processes) >= n_rollouts
                and not kl_reward)

    @torch.no_grad()
    def make_experience(self, batch: RolloutBatch, scores: Tensor, group: list[int]) -> Experience:
        t, m = self.t, self.m
        device = self.accelerator.device
        ids, attn = batch.input_ids.to(device), batch.attention_mask.to(device)
        mask = batch.trained_mask(t.mask_observations)[:, 1:].float().to(device)
        start = first_scored_position(mask)
        need_old = not self.on_policy(len(ids))
        m.policy.eval()
        if m.critic is not None:
            m.critic.eval()
        micros = length_sorted(torch.arange(len(ids)), attn.sum(-1)).split(t.micro_batch_size)
        per_row = functools.partial(rows_by_micro_batch, ids, attn, micros)
        old_log_probs = (per_row(lambda i, a: token_log_probs(m.policy, i, a, t.temperature, start=start)[0])
                         if need_old else None)
        ref_log_probs = per_row(lambda i, a: self._reference_log_probs(i, a, start)) if t.kl_coef > 0 else None
        old_values = per_row(lambda i, a: critic_values(m.critic, i, a)) if m.critic is not None else None
        kl = None
        if self.spec.kl_in_reward and ref_log_probs is not None:
            kl = get_kl(t.kl_estimator)(old_log_probs, ref_log_probs)
        advantages, returns = get_advantage(self.spec.advantage)(
            scores.to(device), mask, group_ids=torch.tensor(group, device=device), values=old_values,
            kl=kl, gamma=t.gamma, lam=t.lam, kl_coef=t.kl_coef if kl is not None else 0.0)
        return Experience(ids, attn, mask, old_log_probs, ref_log_probs, old_values, advantages, returns)

    def _reference_log_probs(self, ids: Tensor, attn: Tensor, start: int) -> Tensor:
        m = self.m
        if m.lora:
            with self.accelerator.unwrap_model(m.policy).disable_adapter():
                return token_log_probs(m.policy, ids, attn, self.t.temperature, start=start)[0]
        return token_log_probs(m.reference, ids, attn, self.t.temperature, start=start)[0]

    # ------------------------------------------------------------------ update

    def update(self, exp: Experience, step: int) -> dict[str, float]:
        """The step's optimizer steps (``zerosearch.rl.update``); mean loss statistics, this
        process's token share of each (``train_step`` sums them over processes)."""
        return self.updater.run(exp, step)

    # ------------------------------------------------------------------ outputs

    def save(self, step: int) -> Path:
        """Checkpoint after ``step`` steps (atomic; keeps the newest two)."""
        m, acc = self.m, self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:  # one writer under `accelerate launch`
            return checkpoint_path(self.checkpoint_dir, step)
        return save_checkpoint(
            self.checkpoint_dir, step, policy=acc.unwrap_model(m.policy), tokenizer=m.tokenizer,
            critic=acc.unwrap_model(m.critic) if m.critic is not None else None, trainer_state=self._trainer_state(),
            state={"config": self.cfg.model_dump(), "history": self.history, "validations": self.validations})

    def _trainer_state(self) -> dict[str, Any]:
        """Optimizer(s) and scheduler state for a checkpoint. Under DeepSpeed the optimizer's
        ``state_dict`` is this process's ZeRO partition only: it is left out (``None``; such a
        checkpoint is not resumed, ``check_deepspeed``)."""
        m = self.m
        deepspeed = self._deepspeed_plugin() is not None
        state = {"optimizer": None if deepspeed else m.optimizer.state_dict(), "scheduler": m.scheduler.state_dict()}
        if m.critic_optimizer is not None:
            state["critic_optimizer"] = m.critic_optimizer.state_dict()
            state["critic_scheduler"] = m.critic_scheduler.state_dict()
        return state

    def final_policy(self):
        """The trained policy as a plain HF model (LoRA adapters merged into a copy)."""
        policy = self.accelerator.unwrap_model(self.m.policy)
        if self.m.lora:
            return copy.deepcopy(policy).merge_and_unload()
        return policy
