"""The RL trainer on the micro micro_world: steps, checkpoints, exact resume, PPO critic, LoRA, the stage."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import SearchOnceThenAnswer, micro_config, untimed
from zerosearch.agent.evaluation import predict_agent
from zerosearch.data.schema import read_qa_parquet
from zerosearch.rl.checkpoint import (
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    read_trainer_state,
)
from zerosearch.rl.experience import Experience, token_log_probs
from zerosearch.rl.trainer import RLTrainer
from zerosearch.rl.update import local_mini_batch
from zerosearch.rl.validation import Validation, validation_metrics
from zerosearch.search.factory import make_engine
from zerosearch.stages import train as train_stage
from zerosearch.tracker import MemoryTracker

TRAIN = ["train.engine=bm25", "train.batch_prompts=2", "train.group_size=2", "train.mini_batch_size=2",
         "train.micro_batch_size=1", "train.total_steps=4", "train.save_every=2", "train.lr=0.001",
         "train.warmup_ratio=0.25", "train.kl_coef=0.01", "train.gradient_checkpointing=false",
         "train.max_turns=1", "train.max_response_tokens=16"]


def _cfg(root: Path, tmp: Path, *extra: str):
    return micro_config(root, *TRAIN, f"base.paths.models={tmp}/models", f"base.paths.metrics={tmp}/metrics",
                        f"base.policy_model={root}/models/base/policy",
                        f"base.simulator_model={root}/models/base/simulator", f"base.paths.data={root}/data", *extra)


def _trainer(cfg, ckpt_dir: Path) -> RLTrainer:
    rows = read_qa_parquet(cfg.path("data") / "train.parquet")
    return RLTrainer(cfg, make_engine(cfg, "bm25"), rows, checkpoint_dir=ckpt_dir)


def test_grpo_steps_log_metrics_checkpoint_and_change_the_policy(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path)
    trainer = _trainer(cfg, tmp_path / "ckpt")
    history = trainer.fit()
    assert [h["step"] for h in history] == [0, 1, 2, 3]
    for key in ("reward_mean", "em", "response_tokens", "searches_per_trajectory", "noisy_fraction", "kl",
                "entropy", "clip_fraction", "grad_norm", "step_seconds", "tokens_per_s", "lr"):
        assert key in history[0] and math.isfinite(history[0][key]), key
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["step_000002", "step_000004"]
    # warmup: 1 step (ceil(0.25 * 4)), then constant at lr
    assert history[0]["lr"] == pytest.approx(1e-3)
    before = AutoModelForCausalLM.from_pretrained(cfg.base.policy_model)
    after = trainer.final_policy()
    changed = [n for n, p in after.named_parameters() if not torch.equal(p, before.state_dict()[n])]
    assert changed, "no parameter moved"


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path)
    full = _trainer(cfg, tmp_path / "a").fit()

    interrupted = _trainer(cfg, tmp_path / "b")

    def stop_after_two(step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    interrupted.on_step = stop_after_two
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert latest_checkpoint(tmp_path / "b").name == "step_000002"

    resumed = _trainer(cfg, tmp_path / "b")
    history = resumed.fit(resume=True)
    assert resumed.start_step == 2
    assert [h["step"] for h in history] == [0, 1, 2, 3]
    for a, b in zip(full[2:], history[2:], strict=True):
        for key in ("reward_mean", "em", "kl", "policy_loss", "grad_norm", "response_tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_resume_refuses_a_changed_config(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "train.total_steps=2")
    _trainer(cfg, tmp_path / "c").fit()
    changed = _cfg(micro_world, tmp_path, "train.total_steps=2", "train.lr=0.01")
    with pytest.raises(ValueError, match="train.lr"):
        _trainer(changed, tmp_path / "c").fit(resume=True)


def test_ppo_trains_a_critic_and_checkpoints_it(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "train.algorithm=ppo", "train.total_steps=2")
    trainer = _trainer(cfg, tmp_path / "ckpt")
    history = trainer.fit()
    assert all(math.isfinite(h["value_loss"]) and h["critic_grad_norm"] >= 0 for h in history)
    assert (latest_checkpoint(tmp_path / "ckpt") / "critic" / "model.safetensors").exists()
    resumed = _trainer(cfg, tmp_path / "ckpt")
    assert resumed.setup(resume=True) == 2 and resumed.m.critic is not None


def test_reinforce_pp_runs_without_critic(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "train.algorithm=reinforce_pp", "train.total_steps=1")
    trainer = _trainer(cfg, tmp_path / "ckpt")
    history = trainer.fit()
    assert trainer.m.critic is None and "value_loss" not in history[0]


def test_lora_trains_adapters_only_and_merges(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "train.lora.enabled=true", "train.lora.r=4", "train.lora.alpha=8",
               "train.total_steps=2", "train.lr=0.05", "train.entropy_coef=0.5")  # entropy moves B off 0
    trainer = _trainer(cfg, tmp_path / "ckpt")
    trainer.fit()
    assert trainer.m.reference is None  # the reference is the policy with adapters disabled
    trainable = [n for n, p in trainer.m.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert (latest_checkpoint(tmp_path / "ckpt") / "policy" / "adapter_model.safetensors").exists()
    merged = trainer.final_policy()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(cfg.base.policy_model).state_dict()
    assert any(not torch.equal(p, base[n]) for n, p in merged.named_parameters())


def test_experience_masks_only_policy_tokens_and_old_log_probs_match(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path)
    trainer = _trainer(cfg, tmp_path / "ckpt")
    trainer.setup()
    batch, group = trainer.rollout(0)
    exp = trainer.make_experience(batch, trainer.scores(batch), group)
    assert torch.equal(exp.mask, batch.loss_mask[:, 1:].float())
    assert group == [0, 0, 1, 1]
    # GRPO: advantages zero off the mask, equal within a row on it
    assert torch.all(exp.advantages[exp.mask == 0] == 0)
    logp, _ = token_log_probs(trainer.m.policy, exp.input_ids, exp.attention_mask)
    on = exp.mask.bool()
    assert torch.allclose(logp[on], exp.old_log_probs[on], atol=1e-5)


def test_mask_observations_false_trains_on_observations_never_on_the_prompt(micro_world, tmp_path):
    """train.mask_observations: true (state masking, today's) trains on sampled tokens only; false
    (the paper's ablation) adds the <information> tokens, and GRPO's advantages follow that mask."""
    from zerosearch.agent.rollout import run_rollouts

    exps = {}
    for flag in (True, False):
        cfg = _cfg(micro_world, tmp_path / str(flag), f"train.mask_observations={str(flag).lower()}")
        trainer = _trainer(cfg, tmp_path / str(flag) / "ckpt")
        trainer.setup()
        rows = trainer.rows[:2]
        questions = [r["question"] for r in rows for _ in range(2)]
        golden = [r["golden_answers"] for r in rows for _ in range(2)]
        batch = run_rollouts(SearchOnceThenAnswer(trainer.m.tokenizer), trainer.m.tokenizer, trainer.engine,
                             questions, golden, trainer.rollout_settings)
        assert batch.num_searches.tolist() == [1, 1, 1, 1]
        exps[flag] = (batch, trainer.make_experience(batch, torch.tensor([1.0, 0.0, 0.0, 1.0]), [0, 0, 1, 1]))
        if not flag:
            stats = trainer.update(exps[flag][1], step=0)
            assert math.isfinite(stats["policy_loss"]) and math.isfinite(stats["kl"])
    (batch, masked), (_, unmasked) = exps[True], exps[False]
    sampled, response = batch.loss_mask[:, 1:].float(), batch.response_mask[:, 1:].float()
    assert torch.equal(masked.mask, sampled)  # today's mask
    assert torch.equal(unmasked.mask, response)
    observed = (response - sampled).bool()
    assert int(observed.sum()) == sum(len(t.response_ids) - sum(t.loss_mask) for t in batch.trajectories) > 0
    for i, p in enumerate(batch.prompt_lengths.tolist()):
        assert unmasked.mask[i, : p - 1].sum() == 0  # position t scores token t + 1: the prompt never
        assert unmasked.mask[i, p - 1] == 1  # the first response token
    # GRPO: each row's advantage on every trained token, 0 elsewhere; observations only without masking
    assert torch.equal(unmasked.advantages != 0, unmasked.mask.bool())
    assert torch.all(masked.advantages[observed] == 0) and torch.all(unmasked.advantages[observed] != 0)
    on = masked.mask.bool()
    assert torch.allclose(masked.advantages[on], unmasked.advantages[on])


def test_train_stage_writes_policy_curve_and_summary(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "train.total_steps=2")
    summary = train_stage.run(cfg)
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "models" / "policy")
    assert policy.config.model_type == "qwen2"
    lines = (tmp_path / "metrics" / "train_curve.csv").read_text().splitlines()
    assert lines[0].startswith("step,reward_mean,em") and len(lines) == 3
    assert summary["steps"] == 2 and summary["engine"] == "bm25" and summary["resumed_from_step"] == 0
    json.dumps(summary)  # serializable for metrics/train.json


def test_one_update_raises_the_rewarded_trajectory_and_lowers_the_others(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "train.kl_coef=0.0", "train.lr=0.01", "train.warmup_ratio=0.0")
    trainer = _trainer(cfg, tmp_path / "ckpt")
    trainer.setup()
    batch, group = trainer.rollout(0)
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])  # group 0: row 0 wins; group 1: row 3 wins
    exp = trainer.make_experience(batch, scores, group)
    trainer.update(exp, step=0)
    with torch.no_grad():
        logp, _ = token_log_probs(trainer.m.policy, exp.input_ids, exp.attention_mask)
    seq = lambda lp: (lp * exp.mask).sum(-1)
    delta = seq(logp) - seq(exp.old_log_probs)
    assert delta[0] > 0 and delta[3] > 0
    assert delta[1] < 0 and delta[2] < 0


def test_log_probs_from_a_later_start_match_the_full_computation(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path)
    trainer = _trainer(cfg, tmp_path / "ckpt")
    trainer.setup()
    batch, _ = trainer.rollout(0)
    start = int(batch.prompt_lengths.min()) - 1
    full, ent_full = token_log_probs(trainer.m.policy, batch.input_ids, batch.attention_mask, with_entropy=True)
    part, ent_part = token_log_probs(trainer.m.policy, batch.input_ids, batch.attention_mask, with_entropy=True,
                                     start=start)
    assert part.shape == full.shape
    assert torch.allclose(part[:, start:], full[:, start:], atol=1e-5)
    assert torch.allclose(ent_part[:, start:], ent_full[:, start:], atol=1e-5)
    assert torch.all(part[:, :start] == 0)


def test_on_policy_update_skips_the_extra_forward_and_gives_the_same_step(micro_world, tmp_path, monkeypatch):
    overrides = ("train.mini_batch_size=4", "train.micro_batch_size=2", "train.kl_coef=0.0")
    params = []
    for skip in (True, False):
        trainer = _trainer(_cfg(micro_world, tmp_path, *overrides), tmp_path / f"ckpt{skip}")
        if not skip:
            monkeypatch.setattr(trainer, "on_policy", lambda n: False)
        trainer.setup()
        batch, group = trainer.rollout(0)
        exp = trainer.make_experience(batch, torch.tensor([1.0, 0.0, 0.0, 1.0]), group)
        assert (exp.old_log_probs is None) == skip
        trainer.update(exp, step=0)
        params.append(torch.cat([p.detach().flatten() for p in trainer.m.policy.parameters()]))
    assert torch.allclose(params[0], params[1], atol=1e-6)


def test_rollouts_use_the_chat_template_when_the_params_say_so(tmp_path, monkeypatch):
    """base.chat_prompt (instruct policies) reaches the rollout loop."""
    import types

    from zerosearch.agent.rollout import RolloutSettings
    from zerosearch.rl import trainer as trainer_module

    seen = {}
    monkeypatch.setattr(trainer_module, "run_rollouts",
                        lambda *a, **kw: seen.update(settings=a[5], step=kw["step"]) or "batch")
    rows = [{"question": "q", "golden_answers": ["a"]}] * 4
    acc = types.SimpleNamespace(process_index=0, num_processes=1, unwrap_model=lambda m: m,
                                state=types.SimpleNamespace(deepspeed_plugin=None))
    for flag in (False, True):
        cfg = micro_config(tmp_path, f"base.chat_prompt={str(flag).lower()}")
        t = trainer_module.RLTrainer(cfg, None, rows, checkpoint_dir=tmp_path, accelerator=acc)
        t.m = types.SimpleNamespace(policy=torch.nn.Linear(1, 1), tokenizer=None)
        monkeypatch.setattr(t, "generator", lambda policy: None)
        t.rollout(3)
        assert seen["settings"].chat is flag
        # the whole rollout configuration comes from the config, and the step reaches the engine
        assert seen["settings"] == RolloutSettings.from_config(cfg) and seen["step"] == 3
        assert seen["settings"].max_context_tokens == cfg.train.max_prompt_tokens


def _count_backwards(trainer, monkeypatch) -> list[tuple[bool, float]]:
    """(sync_gradients, loss value) of every backward the trainer runs."""
    acc, calls = trainer.accelerator, []
    backward = acc.backward

    def counting(loss, **kwargs):
        calls.append((acc.sync_gradients, float(loss.detach())))
        return backward(loss, **kwargs)

    monkeypatch.setattr(acc, "backward", counting)
    return calls


def test_one_optimizer_step_per_mini_batch_one_lr_step_per_training_step(micro_world, tmp_path, monkeypatch):
    """4 rollouts, mini-batches of 2 in micro-batches of 1, 2 epochs: 4 optimizer steps per training step,
    gradients synced (and DeepSpeed stepped) only on each mini-batch's last micro-batch; 1 LR step."""
    cfg = _cfg(micro_world, tmp_path, "train.ppo_epochs=2", "train.warmup_ratio=0.75")  # warmup: 3 of 4 steps
    trainer = _trainer(cfg, tmp_path / "ckpt")
    trainer.setup()
    steps = []
    trainer.m.optimizer.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    calls = _count_backwards(trainer, monkeypatch)
    assert isinstance(trainer.m.scheduler, torch.optim.lr_scheduler.LambdaLR)  # not accelerate's wrapper
    lrs = []
    for step in range(2):
        trainer.train_step(step)
        lrs.append(trainer.m.scheduler.get_last_lr()[0])
        assert len(steps) == 4 * (step + 1) and trainer.m.scheduler.last_epoch == step + 1
    assert [sync for sync, _ in calls] == [False, True] * 8
    assert lrs == [pytest.approx(1e-3 * 2 / 3), pytest.approx(1e-3)]  # (k + 1) / 3 after k LR steps


def test_a_micro_batch_without_sampled_tokens_still_runs_forward_and_backward(micro_world, tmp_path, monkeypatch):
    """A9: a zero-weight micro-batch is run with its loss times 0 (other processes would wait for its
    collectives); its gradient is exactly nothing: the step equals the step on the other row alone."""
    cfg = _cfg(micro_world, tmp_path, "train.mini_batch_size=4", "train.micro_batch_size=1", "train.kl_coef=0.0")
    trainer = _trainer(cfg, tmp_path / "ckpt")
    trainer.setup()
    batch, group = trainer.rollout(0)
    exp = trainer.make_experience(batch, torch.tensor([1.0, 0.0, 0.0, 1.0]), group)
    exp.mask[1:] = 0.0  # only row 0 has sampled tokens
    start = {k: v.clone() for k, v in trainer.m.policy.state_dict().items()}
    calls = _count_backwards(trainer, monkeypatch)
    trainer.update(exp, step=0)
    assert len(calls) == 4 and sorted(loss == 0.0 for _, loss in calls) == [False, True, True, True]
    with_zeros = [p.detach().clone() for p in trainer.m.policy.parameters()]

    trainer.m.policy.load_state_dict(start)
    trainer.m.optimizer.optimizer.state.clear()
    trainer.update(exp.select(torch.tensor([0])), step=0)
    alone = list(trainer.m.policy.parameters())
    assert any(not torch.equal(a, start[n]) for (n, _), a in zip(trainer.m.policy.named_parameters(), alone))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(with_zeros, alone))


def _planted_pickle(marker: Path) -> bytes:
    """A pickle that, loaded with weights_only=False, runs a command creating ``marker``."""
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"optimizer": Payload()})


def test_a_planted_trainer_state_is_refused_on_resume_and_runs_nothing(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "train.total_steps=2")
    _trainer(cfg, tmp_path / "ckpt").fit()
    ckpt = latest_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    (ckpt / "trainer_state.pt").write_bytes(_planted_pickle(marker))
    with pytest.raises(ValueError, match=r"every checkpoint is damaged:\n  .*step_000002: trainer_state\.pt is not a trainer state"):
        _trainer(cfg, tmp_path / "ckpt").fit(resume=True)
    assert not marker.exists()
    (ckpt / "trainer_state.pt").write_bytes(b"\x80\x04truncated")  # a foreign or cut file: the same clear error
    with pytest.raises(ValueError, match=r"step_000002: trainer_state\.pt is not a trainer state"):
        _trainer(cfg, tmp_path / "ckpt").fit(resume=True)
    with pytest.raises(ValueError, match=r"cannot resume from .*step_000002/trainer_state\.pt: not a trainer state"):
        read_trainer_state(ckpt)  # read directly: the file named, nothing run


def _cut(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage", ["policy weights cut", "trainer state cut", "state.json cut", "policy config gone"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_intact_one(micro_world, tmp_path, capsys, damage):
    cfg = _cfg(micro_world, tmp_path, "train.total_steps=2", "train.save_every=1")
    trainer = _trainer(cfg, tmp_path / "ckpt")
    trainer.fit()
    first = [dict(h) for h in trainer.history][:1]
    newest = latest_checkpoint(tmp_path / "ckpt")
    assert newest.name == "step_000002"
    target = {"policy weights cut": next((newest / "policy").glob("*.safetensors")),
              "trainer state cut": newest / "trainer_state.pt", "state.json cut": newest / "state.json",
              "policy config gone": newest / "policy" / "config.json"}[damage]
    target.unlink() if damage == "policy config gone" else _cut(target)
    assert checkpoint_problem(newest) is not None
    resumed = _trainer(cfg, tmp_path / "ckpt")
    assert resumed.setup(resume=True) == 1  # the intact step_000001, and it says why
    out = capsys.readouterr().out
    assert f"{newest} is damaged" in out and target.name in out and "resuming from step_000001" in out
    assert [untimed(h) for h in resumed.history] == [untimed(h) for h in first]


def test_the_config_is_checked_before_the_trainer_state_is_read(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "train.total_steps=2")
    _trainer(cfg, tmp_path / "ckpt").fit()
    (latest_checkpoint(tmp_path / "ckpt") / "trainer_state.pt").write_bytes(_planted_pickle(tmp_path / "pwned"))
    changed = _cfg(micro_world, tmp_path, "train.total_steps=2", "train.lr=0.01")
    with pytest.raises(ValueError, match="the config changed"):
        _trainer(changed, tmp_path / "ckpt").fit(resume=True)


def test_vanilla_reinforce_uses_the_raw_scores_and_adds_the_kl_loss(micro_world, tmp_path, monkeypatch):
    """``reinforce``: every sampled token's advantage is its trajectory's raw score, no critic, and the
    loss is ``policy_loss - entropy_coef * entropy + kl_coef * kl`` (the KL ADDED: the reference actor
    subtracts it, which rewards drifting from the reference model)."""
    cfg = _cfg(micro_world, tmp_path, "train.algorithm=reinforce", "train.entropy_coef=0.01", "train.kl_coef=0.5")
    trainer = _trainer(cfg, tmp_path / "ckpt")
    trainer.setup()
    assert trainer.m.critic is None
    batch, group = trainer.rollout(0)
    scores = torch.tensor([0.75, 0.0, 0.25, 1.0])
    exp = trainer.make_experience(batch, scores, group)
    assert torch.equal(exp.advantages, scores[:, None] * exp.mask) and torch.equal(exp.returns, exp.advantages)
    assert exp.ref_log_probs is not None
    exp.ref_log_probs = exp.ref_log_probs - 0.3  # the policy still equals its reference: move the reference
    losses = []
    monkeypatch.setattr(trainer.updater, "backward", lambda loss: losses.append(float(loss.detach())))
    trainer.m.policy.train()
    stats = trainer.updater.micro_step(exp.select(torch.arange(4)), 1.0)
    assert stats["kl"] > 0
    assert losses == [pytest.approx(stats["policy_loss"] - 0.01 * stats["entropy"] + 0.5 * stats["kl"], abs=1e-6)]


def _synthetic_experience(trainer, rows: int, length: int = 10) -> Experience:
    """``rows`` random trajectories of ``length`` tokens, the last 4 sampled, random advantages."""
    gen = torch.Generator().manual_seed(0)
    vocab = trainer.accelerator.unwrap_model(trainer.m.policy).config.vocab_size
    ids = torch.randint(0, vocab, (rows, length), generator=gen)
    mask = torch.zeros(rows, length - 1)
    mask[:, -4:] = 1.0
    adv = torch.randn(rows, length - 1, generator=gen) * mask
    with torch.no_grad():
        old = token_log_probs(trainer.m.policy, ids, torch.ones_like(ids))[0]
    return Experience(ids, torch.ones_like(ids), mask, old, None, None, adv, adv.clone())


def test_a_mini_batch_size_that_does_not_divide_the_batch_steps_on_the_remainder(micro_world, tmp_path, monkeypatch):
    """The paper's 64 prompts x 5 = 320 trajectories in mini-batches of 256: two optimizer steps, on 256
    then 64 (consecutive chunks of one shuffle, every trajectory once), each the token mean of its own
    tokens (its micro-batch weights sum to 1), gradients synced on each one's last micro-batch."""
    cfg = _cfg(micro_world, tmp_path, "train.batch_prompts=64", "train.group_size=5", "train.mini_batch_size=256",
               "train.micro_batch_size=64", "train.kl_coef=0.0")
    trainer = _trainer(cfg, tmp_path / "ckpt")
    trainer.setup()
    exp = _synthetic_experience(trainer, 320)
    assert not trainer.on_policy(320)  # the second mini-batch runs after a step: behaviour log-probs needed
    steps, minis, weights = [], [], []
    trainer.m.optimizer.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    update_mini, micro_step = trainer.updater.mini_batch, trainer.updater.micro_step
    monkeypatch.setattr(trainer.updater, "mini_batch", lambda e, mini: minis.append(mini) or update_mini(e, mini))
    monkeypatch.setattr(trainer.updater, "micro_step", lambda e, w: weights.append((len(e), w)) or micro_step(e, w))
    calls = _count_backwards(trainer, monkeypatch)
    trainer.update(exp, step=0)
    assert len(steps) == 2 and [len(m) for m in minis] == [256, 64]
    assert sorted(torch.cat(minis).tolist()) == list(range(320))
    assert [n for n, _ in weights] == [64] * 5
    assert sum(w for _, w in weights[:4]) == pytest.approx(1.0) and weights[4][1] == pytest.approx(1.0)
    assert [sync for sync, _ in calls] == [False, False, False, True, True]

    # over 2 processes each trains on 128 + 32 of its 160; 3 processes cannot split 64 prompts
    from tests.test_gpu_path import fake_accelerator

    rows = read_qa_parquet(cfg.path("data") / "train.parquet")
    two = RLTrainer(cfg, None, rows, checkpoint_dir=tmp_path, accelerator=fake_accelerator(0, 2))
    two._check_process_split()
    assert local_mini_batch(two.t, 2) == 128 and [len(c) for c in torch.arange(160).split(128)] == [128, 32]
    three = RLTrainer(cfg, None, rows, checkpoint_dir=tmp_path, accelerator=fake_accelerator(0, 3))
    with pytest.raises(ValueError, match=r"batch_prompts \(64\) must be a multiple of the 3 processes"):
        three._check_process_split()


def test_the_tiny_batch_is_still_one_mini_batch(micro_world, tmp_path):
    """params.yaml's 12 x 5 = 60 in mini-batches of 60: one optimizer step, on-policy (unchanged)."""
    from zerosearch.config import load_config

    t = load_config(Path(__file__).resolve().parents[1] / "params.yaml").train
    assert (t.batch_prompts * t.group_size, t.mini_batch_size, t.top_p, t.critic_warmup_ratio) == (60, 60, 1.0, 0.0)
    assert [len(c) for c in torch.arange(60).split(t.mini_batch_size)] == [60]


def test_ppo_critic_lr_warms_up_linearly_and_resumes(micro_world, tmp_path):
    """train.critic_warmup_ratio 0.5 of 4 steps: the critic's LR is (k + 1) / 2 of critic_lr at step k,
    then critic_lr (both optimizer steps of a training step, 2 mini-batches of 2); the policy's follows
    warmup_ratio (0.25: 1 step) on its own; resume restores the critic's schedule."""
    cfg = _cfg(micro_world, tmp_path, "train.algorithm=ppo", "train.critic_warmup_ratio=0.5", "train.critic_lr=0.002")
    trainer = _trainer(cfg, tmp_path / "ckpt")
    trainer.setup()
    for opt in (trainer.m.optimizer, trainer.m.critic_optimizer):  # the reference's AdamW settings
        group = opt.param_groups[0]
        assert (type(opt.optimizer), group["weight_decay"], group["betas"]) == (torch.optim.AdamW, 0.01, (0.9, 0.999))
    seen = []
    trainer.m.critic_optimizer.optimizer.register_step_pre_hook(
        lambda opt, *_: seen.append(opt.param_groups[0]["lr"]))
    history = [trainer.train_step(k) for k in range(2)]
    assert seen == [pytest.approx(0.001)] * 2 + [pytest.approx(0.002)] * 2  # 1/2 then 2/2 of critic_lr
    assert [h["critic_lr"] for h in history] == [pytest.approx(0.002), pytest.approx(0.002)]  # after the LR step
    assert [h["lr"] for h in history] == [pytest.approx(1e-3), pytest.approx(1e-3)]
    trainer.save(2)
    resumed = _trainer(cfg, tmp_path / "ckpt")
    assert resumed.setup(resume=True) == 2 and resumed.m.critic_scheduler.last_epoch == 2
    # without critic warmup (params.yaml's 0.0) the critic steps at critic_lr from the first step
    flat = _trainer(_cfg(micro_world, tmp_path, "train.algorithm=ppo", "train.critic_lr=0.002"), tmp_path / "flat")
    flat.setup()
    assert flat.m.critic_optimizer.param_groups[0]["lr"] == 0.002


# ---------------------------------------------------------------- validation during training



def _validation(cfg):
    return Validation(train_stage.validation_rows(cfg), make_engine(cfg, "bm25"))


def test_validation_runs_at_its_steps_and_changes_nothing_in_training(micro_world, tmp_path):
    """val_every 2 over 4 steps: the policy after 0, 2 and 4 updates is validated, per data
    source and averaged, logged at those steps; training (metrics and weights) is the same
    as without validation, and the last validation is the final policy's greedy score."""
    cfg = _cfg(micro_world, tmp_path, "train.val_every=2", "train.val_max_samples=3")
    plain = _trainer(cfg, tmp_path / "a")
    plain_history = plain.fit()
    tracker = MemoryTracker()
    validated = RLTrainer(cfg, make_engine(cfg, "bm25"), read_qa_parquet(cfg.path("data") / "train.parquet"),
                          checkpoint_dir=tmp_path / "b", tracker=tracker, validation=_validation(cfg))
    history = validated.fit()
    for a, b in zip(plain_history, history, strict=True):
        assert untimed(a) == untimed(b)
    for (name, p), q in zip(plain.final_policy().named_parameters(), validated.final_policy().parameters(), strict=True):
        assert torch.equal(p, q), name
    assert plain.validations == [] and [v["step"] for v in validated.validations] == [0, 2, 4]
    sources = ["tiny_single", "tiny_multi", "tiny_ood"]
    keys = {f"val_{m}" for m in ("em", "substring_em", "f1")} | {"val_seconds"} | {
        f"val_{s}_{m}" for s in sources for m in ("em", "substring_em", "f1")}
    assert all(set(v) == keys | {"step"} for v in validated.validations)
    logged = [(step, m) for step, m in tracker.metrics if "val_em" in m]
    assert [step for step, _ in logged] == [0, 2, 4]
    assert all(not any(k.startswith("val_") for k in m) for _, m in tracker.metrics if "reward_mean" in m)
    # the step-4 validation is the final policy answering the same 9 questions greedily
    rows = train_stage.validation_rows(cfg)
    assert len(rows) == 9 and [r["data_source"] for r in rows] == [s for s in sources for _ in range(3)]
    records = predict_agent(validated.final_policy(), validated.m.tokenizer, make_engine(cfg, "bm25"), rows,
                            validated.rollout_settings)
    expected = validation_metrics([{**r, "data_source": row["data_source"]} for r, row in zip(records, rows, strict=True)])
    last = validated.validations[-1]
    assert {k: last[k] for k in expected} == pytest.approx(expected)
    assert last["val_em"] == pytest.approx(sum(last[f"val_{s}_em"] for s in sources) / 3)


def test_validation_draws_no_random_numbers_and_is_due_at_0_every_k_and_the_end(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "train.val_every=2", "train.val_max_samples=2", "train.total_steps=3")
    trainer = RLTrainer(cfg, make_engine(cfg, "bm25"), read_qa_parquet(cfg.path("data") / "train.parquet"),
                        checkpoint_dir=tmp_path / "c", validation=_validation(cfg))
    assert [n for n in range(5) if trainer.validation_due(n)] == [0, 2, 3]
    trainer.setup()
    torch_before, py_before = torch.get_rng_state(), random.getstate()
    trainer.validate()
    assert torch.equal(torch.get_rng_state(), torch_before) and random.getstate() == py_before
    off = _cfg(micro_world, tmp_path, "train.val_every=0")
    assert train_stage.validation(off) is None
    assert not RLTrainer(off, None, [{"question": "q", "golden_answers": ["a"]}], checkpoint_dir=tmp_path,
                         validation=_validation(cfg)).validation_due(0)


def test_validations_survive_an_interruption_and_resume(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "train.val_every=2", "train.val_max_samples=2")
    full = RLTrainer(cfg, make_engine(cfg, "bm25"), read_qa_parquet(cfg.path("data") / "train.parquet"),
                     checkpoint_dir=tmp_path / "a", validation=_validation(cfg))
    full.fit()

    def stop_after_two(step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    interrupted = RLTrainer(cfg, make_engine(cfg, "bm25"), read_qa_parquet(cfg.path("data") / "train.parquet"),
                            checkpoint_dir=tmp_path / "b", on_step=stop_after_two, validation=_validation(cfg))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert [v["step"] for v in interrupted.validations] == [0, 2]  # the checkpoint after 2 steps holds both
    tracker = MemoryTracker()
    resumed = RLTrainer(cfg, make_engine(cfg, "bm25"), read_qa_parquet(cfg.path("data") / "train.parquet"),
                        checkpoint_dir=tmp_path / "b", tracker=tracker, validation=_validation(cfg))
    resumed.fit(resume=True)
    assert resumed.start_step == 2
    # 0 and 2 come from the checkpoint (not run again), 4 is run after the resumed steps
    assert [step for step, m in tracker.metrics if "val_em" in m] == [4]
    assert [v["step"] for v in resumed.validations] == [0, 2, 4]
    for a, b in zip(full.validations, resumed.validations, strict=True):
        assert {k: v for k, v in a.items() if k != "val_seconds"} == pytest.approx(
            {k: v for k, v in b.items() if k != "val_seconds"})


def test_train_stage_writes_the_validation_file_and_summary_and_keeps_them_on_resume(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "train.total_steps=2", "train.val_every=1", "train.val_max_samples=2")
    summary = train_stage.run(cfg)
    path = tmp_path / "metrics" / "train_validation.csv"
    table = pd.read_csv(path)
    assert list(table["step"]) == [0, 1, 2]
    assert list(table.columns[:4]) == ["step", "val_em", "val_substring_em", "val_f1"]
    assert {"val_tiny_single_em", "val_tiny_ood_substring_em", "val_tiny_multi_f1"} <= set(table.columns)
    assert summary["val"] == {"step": 2, "headline_metric": "em", "headline": pytest.approx(table["val_em"].iloc[-1]),
                              "em": pytest.approx(table["val_em"].iloc[-1]),
                              "substring_em": pytest.approx(table["val_substring_em"].iloc[-1]),
                              "f1": pytest.approx(table["val_f1"].iloc[-1])}
    # the train curve itself is unchanged: no validation columns
    assert "val_em" not in (tmp_path / "metrics" / "train_curve.csv").read_text().splitlines()[0]
    before = path.read_text()
    path.unlink()
    resumed = train_stage.run(cfg, resume=True)  # nothing left to do: rebuilt from the checkpoint
    assert resumed["resumed_from_step"] == 2 and path.read_text() == before
    # validation off: a header-only file (the evaluate stage depends on it)
    off = _cfg(micro_world, tmp_path, "train.total_steps=1", "train.val_every=0")
    assert "val" not in train_stage.run(off)
    assert path.read_text().strip() == "step"


def test_validation_with_a_simulator_engine_is_refused_before_training(micro_world, tmp_path):
    cfg = _cfg(micro_world, tmp_path, "eval.engine=simulated", "train.val_every=2")
    with pytest.raises(ValueError, match="validation needs a real engine"):
        train_stage.run(cfg)


def test_validation_with_the_web_engine_and_no_key_says_why_training_needs_it(micro_world, tmp_path, monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    cfg = _cfg(micro_world, tmp_path, "eval.engine=web", "train.val_every=2")
    with pytest.raises(ValueError, match=r"validation \(train.val_every=2\) searches with eval.engine=web: .*SERPER_API_KEY"):
        train_stage.validation(cfg)


def test_validation_under_vllm_is_the_runs_engine_at_temperature_zero(tmp_path, monkeypatch):
    """The vllm backend validates with the run's engine (weights synced by generator()), through
    a copy at temperature 0: the sampling engine itself keeps its temperature."""
    import types

    engine = types.SimpleNamespace(temperature=1.0, llm="the engine")
    synced = []
    cfg = micro_config(tmp_path, "train.rollout_backend=vllm")
    acc = types.SimpleNamespace(process_index=0, num_processes=1, unwrap_model=lambda m: m,
                                state=types.SimpleNamespace(deepspeed_plugin=None))
    t = RLTrainer(cfg, None, [{"question": "q", "golden_answers": ["a"]}], checkpoint_dir=tmp_path, accelerator=acc)
    monkeypatch.setattr(t, "generator", lambda policy: synced.append(policy) or engine)
    greedy = t._greedy_generator("policy")
    assert greedy.temperature == 0.0 and greedy.llm == "the engine" and engine.temperature == 1.0
    assert synced == ["policy"]


def _first_rollout(cfg, ckpt_dir: Path) -> list:
    trainer = _trainer(cfg, ckpt_dir)
    trainer.setup()
    batch, _ = trainer.rollout(0)
    return batch.input_ids.tolist()


def test_train_seed_alone_decides_the_rl_run_base_seed_does_not(micro_world, tmp_path):
    """train.seed seeds the RL run's draws (batch order, sampling); base.seed, which built the
    world and the base models, does not enter them: one base model serves many RL seeds."""
    runs = {(b, t): _first_rollout(_cfg(micro_world, tmp_path / f"{b}{t}", f"base.seed={b}", f"train.seed={t}"),
                                   tmp_path / f"c{b}{t}")
            for b, t in [(0, 0), (5, 0), (0, 1)]}
    assert runs[(0, 0)] == runs[(5, 0)]
    assert runs[(0, 0)] != runs[(0, 1)]


def test_a_step_reports_its_time_breakdown_in_disjoint_parts(micro_world, tmp_path):
    from zerosearch.rl.step_timing import PHASES

    trainer = _trainer(_cfg(micro_world, tmp_path), tmp_path / "ckpt")
    trainer.setup()
    m = trainer.train_step(0)
    parts = [m[f"time_{p}"] for p in PHASES]
    assert all(p >= 0 for p in parts) and m["time_policy_generate"] > 0 and m["time_update"] > 0
    assert m["time_simulator_generate"] == 0.0  # BM25: no simulator
    assert sum(parts) <= m["step_seconds"] + 1e-6 and m["time_logging_previous"] == 0.0


def test_length_sorted_micro_batches_give_the_full_batch_values_in_row_order():
    from zerosearch.rl.experience import length_sorted, rows_by_micro_batch

    lengths = torch.tensor([5, 2, 7, 3, 7, 4])
    assert length_sorted(torch.tensor([0, 2, 3, 5]), lengths).tolist() == [3, 5, 0, 2]
    width = 7
    attn = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids = torch.arange(6 * width).view(6, width) * attn
    seen_widths = []

    def fn(i, a):  # a per-token value that depends on the token only
        seen_widths.append(i.shape[1])
        return (i[:, 1:] * a[:, 1:]).float()

    micros = length_sorted(torch.arange(6), lengths).split(2)
    out = rows_by_micro_batch(ids, attn, micros, fn)
    assert torch.equal(out, (ids[:, 1:] * attn[:, 1:]).float())
    assert seen_widths == [3, 5, 7]  # each micro-batch computed at its own longest length
