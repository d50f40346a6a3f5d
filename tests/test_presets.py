"""Every paper preset, resolved, against the reference's values written out here key by key.

The tables are the reference behaviour of /work/shared/ZEROSEARCH.md ("Reference behaviour") and
the reference's training scripts (ZeroSearch's train_{grpo,ppo,reinforce}.sh and the veRL
defaults they run on). A preset's expected values are ``COMMON``, then its family's row of
``FAMILY`` (the file name's first word), then its policy's row of ``POLICY``: add keys (e.g. the
simulator's) to the row they belong to.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from zerosearch.config import flatten, load_config

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p for p in (REPO / "configs" / "paper").glob("*.yaml") if p.stem != "base")

# Every algorithm: 203 steps of 64 prompts x 5 rollouts (320 trajectories) in actor mini-batches of 256
# (two optimizer steps per RL step), one epoch, AdamW lr 1e-6, grad clip 1.0, PPO clip 0.2, entropy
# bonus 0.001, KL coefficient 0.001, rollouts sampled at temperature 1.0 with top_p 0.95, F1 reward.
COMMON = {
    "train.engine": "simulated",
    "train.reward": "f1",
    "train.total_steps": 203,
    "train.lr": 1e-6,
    "train.batch_prompts": 64,
    "train.group_size": 5,
    "train.mini_batch_size": 256,
    "train.ppo_epochs": 1,
    "train.temperature": 1.0,
    "train.top_p": 0.95,
    "train.clip_ratio": 0.2,
    "train.max_grad_norm": 1.0,
    "train.entropy_coef": 0.001,
    "train.kl_coef": 0.001,
    "simulator.curriculum.base": 4.0,
}

FAMILY = {
    # train_grpo.sh: lr_warmup_steps_ratio 0.95, use_kl_loss with low_var_kl (k3)
    "grpo": {"train.algorithm": "grpo", "train.warmup_ratio": 0.95, "train.kl_estimator": "k3"},
    # train_ppo.sh: GAE (gamma = lam = 1), actor warmup 0.285, critic lr 1e-5 with warmup 0.015, value
    # clip 0.5, KL in the reward with veRL's kl_penalty "kl" (the log-ratio, k1); 5 rollouts per prompt too
    "ppo": {"train.algorithm": "ppo", "train.warmup_ratio": 0.285, "train.critic_lr": 1e-5,
            "train.critic_warmup_ratio": 0.015, "train.kl_estimator": "k1", "train.gamma": 1.0, "train.lam": 1.0,
            "train.value_clip": 0.5},
    # train_reinforce.sh: adv_estimator reinforce (the raw score, vanilla; not REINFORCE++), warmup 0.95,
    # KL loss low_var_kl (k3)
    "reinforce": {"train.algorithm": "reinforce", "train.warmup_ratio": 0.95, "train.kl_estimator": "k3"},
}

# Curriculum per policy (ZEROSEARCH.md, the latest paper version). It names no value for
# Qwen2.5-3B-Instruct: its preset takes Qwen2.5-3B's.
POLICY = {
    "Qwen/Qwen2.5-3B": {"simulator.curriculum.p_start": 0.0, "simulator.curriculum.p_end": 0.25},
    "Qwen/Qwen2.5-3B-Instruct": {"simulator.curriculum.p_start": 0.0, "simulator.curriculum.p_end": 0.25,
                                 "base.chat_prompt": True},
    "Qwen/Qwen2.5-7B": {"simulator.curriculum.p_start": 0.0, "simulator.curriculum.p_end": 0.75},
    "meta-llama/Llama-3.2-3B": {"simulator.curriculum.p_start": 0.25, "simulator.curriculum.p_end": 0.5},
}


def expected(cfg, family: str) -> dict:
    return {**COMMON, **FAMILY[family], **POLICY[cfg.base.policy_model]}


def test_there_are_17_presets_of_the_three_families():
    assert len(PRESETS) == 17
    assert {p.stem.split("-")[0] for p in PRESETS} == set(FAMILY)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_has_the_reference_values(path):
    cfg = load_config(path)
    values = flatten(cfg.model_dump())
    want = expected(cfg, path.stem.split("-")[0])
    assert {k: values[k] for k in want} == want

