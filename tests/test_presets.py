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
    # the paper's method, not its ablations: the exponential curriculum, state masking, a simulator
    # fine-tuned from a pretrained model
    "simulator.curriculum.schedule": "exponential",
    "train.mask_observations": True,
    "simulator_sft.init": "policy_copy",
    # the rollout (ZEROSEARCH.md, "Reference behaviour"): the row's prompt through the tokenizer's
    # chat template whenever it has one; MAX_TURNS 5 searches with documents plus an answer turn;
    # 500 tokens per turn, 2048 per observation, a 4096 window; the reference's corrective message and
    # <information> layout; top 5 documents
    "base.chat_prompt": "auto",
    "train.max_turns": 5,
    "train.max_response_tokens": 500,
    "train.max_obs_tokens": 2048,
    "train.max_prompt_tokens": 4096,
    "train.corrective_message": "reference",
    "train.information_layout": "reference",
    "search.top_k": 5,
    # the simulator request: chat endpoint, an empty system message, temperature 0.8, 600 tokens
    "simulator.api": "chat",
    "simulator.system_message": "",
    "simulator.temperature": 0.8,
    "simulator.max_tokens": 600,
    # what the paper reports: substring EM of greedy validation on ZeroSearch's test.parquet every 50
    # steps (test_freq 50), on a real engine
    "eval.headline_metric": "substring_em",
    "data.validation": "zerosearch_test",
    "train.val_every": 50,
    "train.val_max_samples": 0,
    "eval.engine": "web",
}

# Simulator per preset kind (the file name's last part): the released 14B SFT simulator with the
# input it was fine-tuned on, or Qwen2.5-14B-Instruct in prompt mode.
SIMULATOR = {
    "sft": {"base.simulator_model": "sunhaonlp/SearchSimulation_14B", "simulator.prompt": "zerosearch-sft"},
    "prompt": {"base.simulator_model": "Qwen/Qwen2.5-14B-Instruct", "simulator.prompt": "zerosearch-prompt"},
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
    "Qwen/Qwen2.5-3B-Instruct": {"simulator.curriculum.p_start": 0.0, "simulator.curriculum.p_end": 0.25},
    "Qwen/Qwen2.5-7B": {"simulator.curriculum.p_start": 0.0, "simulator.curriculum.p_end": 0.75},
    "meta-llama/Llama-3.2-3B": {"simulator.curriculum.p_start": 0.25, "simulator.curriculum.p_end": 0.5},
}


def expected(cfg, family: str, kind: str) -> dict:
    return {**COMMON, **FAMILY[family], **POLICY[cfg.base.policy_model], **SIMULATOR[kind]}


def test_there_are_17_presets_of_the_three_families():
    assert len(PRESETS) == 17
    assert {p.stem.split("-")[0] for p in PRESETS} == set(FAMILY)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_has_the_reference_values(path):
    cfg = load_config(path)
    values = flatten(cfg.model_dump())
    want = expected(cfg, path.stem.split("-")[0], path.stem.split("-")[-1])
    assert {k: values[k] for k in want} == want

