"""Bench: RL speed of our loop and trainer, in one process on one model.

(a) Rollout loop vs plain ``generate``: policy tokens/s of ``zerosearch.agent.rollout.run_rollouts``
    (``HFGenerator``, BM25 engine, ``train.max_turns`` searches + the answer turn, ``--max-new-tokens`` each) against
    one batched ``model.generate`` on the same prompts with the same sampling, forced (min = max
    new tokens, so EOS cannot stop it) to the loop's mean number of policy tokens per trajectory.
    Only policy-sampled tokens count (the rollout's ``loss_mask``). One warm-up, median of repeats.
(a') The same loop with ``HFGenerator`` (KV cache kept between turns, stopped rows cut out,
    equal rows prefilled once, the ``kv_forward`` step) vs with one ``model.generate`` per turn
    (``GenerateEachTurn``, the first generator); and with ``HFGenerator`` on the transformers
    forward step (``kv_forward.transformers_step``, what models without the Llama layout get).
(b) Seconds per GRPO step, single turn (``train.max_turns=0``: no search, the answer turn only): our ``RLTrainer`` vs TRL's
    ``GRPOTrainer`` with the same model, prompts (``policy_prompt(question)``), prompts per step,
    group size, max completion length, temperature 1.0, F1 reward, one optimizer step per
    generation batch, no KL (beta = kl_coef = 0: no reference model on either side), no gradient
    checkpointing. Mean over ``--steps`` steps after one warm-up step.

    python bench/rl_speed.py [--params params.yaml] [--policy PATH] [--prompts 8] [--group 4]
                             [--max-new-tokens 48] [--steps 3] [--skip-trl] [--micro] [--threads N]

``--micro`` builds a micro world and model in a temp dir (as tests/test_trainer.py) and runs
both benches at toy sizes (seconds). TRL is a bench-only dependency: ``pip install -e .[bench]``.

Targets: (a) loop overhead (plain tokens/s / loop tokens/s - 1) <= 25%;
         (b) ours s/step <= TRL s/step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from zerosearch.agent.rollout import RolloutSettings, run_rollouts
from zerosearch.config import load_config
from zerosearch.data.schema import read_qa_parquet
from zerosearch.lm.generation import HFGenerator
from zerosearch.lm.kv_forward import transformers_step
from zerosearch.lm.models import left_pad, load_model
from zerosearch.protocol import policy_prompt
from zerosearch.rewards import get_reward
from zerosearch.search.bm25 import BM25Engine

REPO = Path(__file__).resolve().parents[1]


class GenerateEachTurn:
    """The loop's first generator, kept here as the in-process reference for (a'): one
    ``model.generate`` per turn, the whole context prefilled again each turn, every row decoded
    until the longest one of the turn stops."""

    def __init__(self, model, tok, stop_ids: list[int], pad_id: int):
        self.model, self.stop_ids, self.pad_id = model, stop_ids, pad_id

    @torch.no_grad()
    def generate(self, contexts, max_new_tokens, keys=None):
        ids, mask = left_pad(list(contexts), self.pad_id)
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  eos_token_id=self.stop_ids, pad_token_id=self.pad_id, do_sample=True,
                                  temperature=1.0, top_k=0)[:, ids.shape[1]:].tolist()
        cut = []
        for row in out:
            stop = next((i for i, t in enumerate(row) if t in self.stop_ids), None)
            cut.append(row[: stop + 1] if stop is not None else [t for t in row if t != self.pad_id])
        return cut


def bench_rollout(cfg, engine, rows, prompts: int, group: int, max_new: int, repeats: int) -> dict:
    """(a): the multi-turn loop vs one plain batched generate producing as many tokens, and
    (a'): the loop with ``HFGenerator`` vs the loop with one ``generate`` per turn."""
    model, tok = load_model(cfg.base.policy_model)
    model.eval()
    gen = HFGenerator(model, tok, temperature=1.0)
    per_turn = GenerateEachTurn(model, tok, gen.stop_ids, gen.pad_id)
    hf_step = HFGenerator(model, tok, temperature=1.0)
    hf_step.step = transformers_step(model)
    qs = [r for r in rows[:prompts] for _ in range(group)]
    ids, mask = left_pad([tok(policy_prompt(r["question"]), add_special_tokens=False)["input_ids"] for r in qs],
                         gen.pad_id)

    # The train stage's settings with this bench's turn length and no context window (as before).
    settings = dataclasses.replace(RolloutSettings.from_config(cfg), max_response_tokens=max_new,
                                   max_context_tokens=None, chat=False)

    def loop(generator) -> tuple[int, float, dict]:
        t0 = time.perf_counter()
        batch = run_rollouts(generator, tok, engine, [r["question"] for r in qs], [r["golden_answers"] for r in qs],
                             settings)
        secs = time.perf_counter() - t0
        policy = batch.loss_mask.sum(1)
        env = batch.attention_mask.sum(1) - policy - batch.prompt_lengths  # documents + corrective messages
        return int(policy.sum()), secs, {"searches": batch.stats()["searches_per_trajectory"],
                                         "longest": int(policy.max()), "env": float(env.float().mean())}

    @torch.no_grad()
    def plain(n: int) -> tuple[int, float]:
        t0 = time.perf_counter()  # same sampling as HFGenerator; min_new_tokens keeps EOS from ending rows
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             eos_token_id=gen.stop_ids, pad_token_id=gen.pad_id, do_sample=True, temperature=1.0,
                             top_k=0)
        return (out.shape[1] - ids.shape[1]) * len(qs), time.perf_counter() - t0

    torch.manual_seed(0)
    warm_tokens = loop(gen)[0]
    loop(per_turn)
    loop(hf_step)
    plain(max(1, round(warm_tokens / len(qs))))
    loop_tps, turn_tps, hf_step_tps, plain_tps, per_traj, info = [], [], [], [], [], []
    for r in range(repeats):
        torch.manual_seed(r + 1)
        n, secs, extra = loop(gen)
        loop_tps.append(n / secs)
        per_traj.append(n / len(qs))
        info.append(extra)
        torch.manual_seed(r + 1)
        m, secs, _ = loop(per_turn)
        turn_tps.append(m / secs)
        torch.manual_seed(r + 1)
        m, secs, _ = loop(hf_step)
        hf_step_tps.append(m / secs)
        torch.manual_seed(r + 1)
        m, secs = plain(max(1, round(n / len(qs))))
        plain_tps.append(m / secs)
    loop_med, plain_med = statistics.median(loop_tps), statistics.median(plain_tps)
    turn_med = statistics.median(turn_tps)
    return {"loop": loop_med, "plain": plain_med, "overhead": plain_med / loop_med - 1, "batch": len(qs),
            "per_turn": turn_med, "speedup": loop_med / turn_med, "hf_step": statistics.median(hf_step_tps),
            "tokens": statistics.mean(per_traj), "searches": statistics.mean(i["searches"] for i in info),
            "longest": statistics.mean(i["longest"] for i in info), "env": statistics.mean(i["env"] for i in info),
            "repeats": repeats}


def bench_ours(cfg, engine, rows, steps: int, workdir: Path) -> dict:
    """(b), ours: wall time of ``train_step`` for steps 1..N after warm-up step 0."""
    from accelerate import Accelerator

    from zerosearch.rl.trainer import RLTrainer

    trainer = RLTrainer(cfg, engine, rows, checkpoint_dir=workdir / "ours", accelerator=Accelerator(cpu=True))
    trainer.setup()
    times, lengths, searches = [], [], []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        metrics = trainer.train_step(step)
        if step:
            times.append(time.perf_counter() - t0)
            lengths.append(metrics["response_tokens"])
            searches.append(metrics["searches_per_trajectory"])
    return {"s_per_step": statistics.mean(times), "tokens": statistics.mean(lengths),
            "searches": statistics.mean(searches)}


def bench_trl(cfg, rows, steps: int, workdir: Path) -> dict:
    """(b), TRL: time between consecutive optimizer steps (``on_step_end``) after the first."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    t = cfg.train
    model, tok = load_model(cfg.base.policy_model)
    # Stop where HFGenerator stops: TRL takes every eos id in the model's generation config.
    model.generation_config.eos_token_id = HFGenerator(model, tok).stop_ids
    f1 = get_reward(t.reward)

    def f1_reward(completions, golden_answers, **kw):
        # TRL decodes completions with skip_special_tokens=True, which drops <answer> (a special token in the
        # tiny tokenizer); re-decode the ids as our trainer does.
        return f1([tok.decode(ids, skip_special_tokens=False) for ids in kw["completion_ids"]], golden_answers)

    class Timer(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []
            self.lengths: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    data = Dataset.from_list([{"prompt": policy_prompt(r["question"]), "golden_answers": list(r["golden_answers"])}
                              for r in rows])
    rollouts = t.batch_prompts * t.group_size
    args = GRPOConfig(
        output_dir=str(workdir / "trl"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=cfg.base.seed, max_steps=steps + 1,
        per_device_train_batch_size=t.micro_batch_size,  # completions per forward pass (= our micro batch)
        gradient_accumulation_steps=rollouts // t.micro_batch_size,  # steps_per_generation follows: 1 gen/step
        num_generations=t.group_size, max_completion_length=t.max_response_tokens,
        temperature=t.temperature, top_p=1.0, top_k=0, beta=t.kl_coef, num_iterations=t.ppo_epochs,
        epsilon=t.clip_ratio, loss_type="dapo",  # token-mean over the accumulated batch, like ours
        learning_rate=t.lr, lr_scheduler_type="constant", weight_decay=0.01, optim="adamw_torch",
        max_grad_norm=t.max_grad_norm, activation_checkpointing=t.gradient_checkpointing, entropy_coef=t.entropy_coef)
    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=f1_reward, args=args, train_dataset=data, processing_class=tok,
                          callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout
    trainer.train()
    gaps = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    return {"s_per_step": statistics.mean(gaps), "tokens": statistics.mean(timer.lengths[1:] or timer.lengths)}


def add_rollout_rows(table: Table, a: dict, max_turns: int, max_new: int) -> None:
    """The (a), (a') and (a'') rows, from ``bench_rollout``'s result."""
    table.add_row("(a) rollout loop vs generate", f"{a['loop']:.0f} tok/s", f"{a['plain']:.0f} tok/s (generate)",
                  f"overhead {a['overhead']:+.1%}", "<= 25%",
                  f"{a['batch']} traj, {max_turns} searches + answer x {max_new} tok, {a['tokens']:.1f} policy "
                  f"tok/traj, {a['searches']:.2f} searches/traj, median of {a['repeats']}")
    table.add_row("(a') loop: HFGenerator vs generate per turn", f"{a['loop']:.0f} tok/s",
                  f"{a['per_turn']:.0f} tok/s (generate per turn)", f"speedup {a['speedup']:.2f}x", "-",
                  f"same loop; per trajectory: longest {a['longest']:.0f} policy tok, {a['env']:.0f} document/"
                  f"corrective tok encoded (plain generate has neither)")
    table.add_row("(a'') loop: HFGenerator, lean vs transformers step", f"{a['loop']:.0f} tok/s",
                  f"{a['hf_step']:.0f} tok/s (transformers forward)", f"speedup {a['loop'] / a['hf_step']:.2f}x", "-",
                  "same loop and generator; the model step: llama_step vs transformers_step (both on KV buffers)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--policy", default=None, help="policy model dir (default: base.policy_model)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step/batch (8; micro 2)")
    ap.add_argument("--group", type=int, default=None, help="rollouts per prompt (4; micro 2)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="per turn / completion (48; micro 12)")
    ap.add_argument("--fwd-batch", type=int, default=None, help="sequences per forward pass (default: all)")
    ap.add_argument("--steps", type=int, default=3, help="timed GRPO steps after one warm-up step")
    ap.add_argument("--repeats", type=int, default=None, help="timed rollout repeats (3; micro 2)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--micro", action="store_true", help="micro world + model in a temp dir, toy sizes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    small = args.micro
    prompts = args.prompts or (2 if small else 8)
    group = args.group or (2 if small else 4)
    max_new = args.max_new_tokens or (12 if small else 48)
    repeats = args.repeats or (2 if small else 3)
    fwd = args.fwd_batch or prompts * group
    train = [f"train.{k}={v}" for k, v in {
        "algorithm": "grpo", "engine": "bm25", "reward": "f1", "batch_prompts": prompts, "group_size": group,
        "mini_batch_size": prompts * group, "micro_batch_size": fwd, "ppo_epochs": 1, "max_turns": 0,
        "max_response_tokens": max_new, "temperature": 1.0, "kl_coef": 0.0, "entropy_coef": 0.0,
        "warmup_ratio": 0.0, "total_steps": args.steps + 1, "gradient_checkpointing": False,
        "lora.enabled": False}.items()]
    if args.policy:
        train.append(f"base.policy_model={args.policy}")

    with tempfile.TemporaryDirectory(prefix="rl_speed_") as tmp:
        work = Path(tmp)
        if small:
            os.environ.setdefault("ZEROSEARCH_TRACKING", "off")
            sys.path.insert(0, str(REPO))
            from tests.conftest import micro_config
            from zerosearch.stages import base as base_stage
            from zerosearch.stages import data as data_stage

            base_cfg = micro_config(work)
            data_stage.run(base_cfg)
            base_stage.run(base_cfg)
            make = lambda extra: micro_config(work, *extra)  # noqa: E731
        else:
            make = lambda extra: load_config(args.params, extra)  # noqa: E731
        cfg_a = make([o for o in train if o.startswith("base.")])  # (a): the params' max_turns
        cfg_b = make(train)
        engine = BM25Engine.load(cfg_b.path("data") / "bm25", top_k=cfg_b.search.top_k)
        rows = read_qa_parquet(cfg_b.path("data") / "train.parquet")

        a = bench_rollout(cfg_a, engine, rows, prompts, group, max_new, repeats)
        ours = bench_ours(cfg_b, engine, rows, args.steps, work)
        trl = None if args.skip_trl else bench_trl(cfg_b, rows, args.steps, work)

    table = Table(title=f"RL speed, policy {cfg_b.base.policy_model}{' (micro)' if small else ''}")
    for col in ("bench", "ours", "baseline", "ratio", "target", "setup"):
        table.add_column(col)
    add_rollout_rows(table, a, cfg_a.train.max_turns, max_new)
    setup = (f"{prompts} prompts x {group}, max completion {max_new}, fwd batch {fwd}, KL beta 0.0 (no ref), "
             f"mean of {args.steps} steps; completion tok ours {ours['tokens']:.1f}")
    if trl is None:
        table.add_row("(b) GRPO step", f"{ours['s_per_step']:.3f} s/step", "TRL skipped", "-", "ours <= TRL", setup)
    else:
        table.add_row("(b) GRPO step", f"{ours['s_per_step']:.3f} s/step", f"{trl['s_per_step']:.3f} s/step (TRL)",
                      f"ours/TRL {ours['s_per_step'] / trl['s_per_step']:.2f}x", "ours <= TRL",
                      f"{setup} / TRL {trl['tokens']:.1f}; ours searches/traj {ours['searches']:.2f}")
    console = Console(width=200)
    console.print(table)
    console.print(f"machine: torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
                  f"{os.cpu_count()} CPUs, device cpu")


if __name__ == "__main__":
    main()
