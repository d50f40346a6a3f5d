"""Bench: the RL trainer on a GPU: tokens/s and peak memory, in one process.

Two rows, both GRPO against the BM25 engine of the tiny world (``data/`` from ``dvc repro data``):

1. the tiny world's policy (``base.policy_model``, ~1.6M parameters), the train stage's params;
2. a ~0.5B-parameter Qwen2 (the Qwen2.5-0.5B shape: hidden 896, 24 layers, 14 heads, 2 KV heads,
   MLP 4864) with random weights and the tiny tokenizer: a model size where the GPU is busy.

Each runs ``--steps`` steps after one warm-up step with ``train.mixed_precision`` bf16 on CUDA
(``--precision``), the ``hf`` rollout backend, and reports seconds per step, policy tokens/s
(sampled tokens per second of the whole step: rollout + update), rollout share of the step, and
``torch.cuda.max_memory_allocated``.

    python bench/gpu_train.py [--steps 5] [--precision bf16] [--prompts 16] [--group 5]
    python bench/gpu_train.py --device cpu --layers 2 --hidden 64 --steps 1   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from zerosearch.config import load_config
from zerosearch.data.schema import read_qa_parquet
from zerosearch.lm.models import count_parameters, load_model
from zerosearch.search.bm25 import BM25Engine


def random_qwen2(tokenizer_dir: str, out: Path, hidden: int, layers: int, heads: int, kv_heads: int,
                 intermediate: int) -> int:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _, tok = load_model(tokenizer_dir)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
                         max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=tok.eos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return count_parameters(model)


def run(cfg, engine, rows, steps: int, device: str, workdir: Path) -> dict:
    from accelerate import Accelerator

    from zerosearch.rl.launch import resolve_mixed_precision
    from zerosearch.rl.trainer import RLTrainer

    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision))
    trainer = RLTrainer(cfg, engine, rows, checkpoint_dir=workdir, accelerator=accelerator)
    trainer.setup()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, tokens, rollout = [], [], []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        metrics = trainer.train_step(step)
        if step:  # step 0 warms up (CUDA kernels, allocator)
            seconds.append(time.perf_counter() - t0)
            tokens.append(metrics["response_tokens"] * cfg.train.batch_prompts * cfg.train.group_size)
            rollout.append(metrics["rollout_seconds"])
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"params": count_parameters(accelerator.unwrap_model(trainer.m.policy)),
            "s_per_step": statistics.mean(seconds), "tokens_per_s": sum(tokens) / sum(seconds),
            "rollout_share": sum(rollout) / sum(seconds), "peak_gib": peak,
            "precision": accelerator.mixed_precision}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="auto", help="train.mixed_precision: auto | no | bf16 | fp16")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=4864)
    args = ap.parse_args()
    rollouts = args.prompts * args.group
    common = ["train.engine=bm25", "train.algorithm=grpo", f"train.total_steps={args.steps + 1}",
              f"train.batch_prompts={args.prompts}", f"train.group_size={args.group}",
              f"train.mini_batch_size={rollouts}", f"train.micro_batch_size={min(rollouts, 20)}",
              f"train.mixed_precision={args.precision}", "train.rollout_backend=hf", "train.warmup_ratio=0.0"]
    base_cfg = load_config(args.params, common)
    engine = BM25Engine.load(base_cfg.path("data") / "bm25", top_k=base_cfg.search.top_k)
    rows = read_qa_parquet(base_cfg.path("data") / "train.parquet")
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu_train_") as tmp:
        tmp = Path(tmp)
        results["tiny policy"] = run(base_cfg, engine, rows, args.steps, args.device, tmp / "tiny")
        big = tmp / "qwen2-random"
        random_qwen2(base_cfg.base.policy_model, big, args.hidden, args.layers, args.heads, args.kv_heads,
                     args.intermediate)
        big_cfg = load_config(args.params, [*common, f"base.policy_model={big}", "train.gradient_checkpointing=true",
                                            "train.lr=1e-6"])
        name = f"random Qwen2 ({args.hidden} x {args.layers} layers)"
        results[name] = run(big_cfg, engine, rows, args.steps, args.device, tmp / "big")

    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    table = Table(title=f"RL trainer on {device}: GRPO, {args.prompts} prompts x {args.group}, BM25, "
                        f"mean of {args.steps} steps after 1 warm-up")
    for col in ("policy", "parameters", "precision", "s/step", "policy tok/s", "rollout share", "peak GiB"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, f"{r['params'] / 1e6:.1f}M", r["precision"], f"{r['s_per_step']:.2f}",
                      f"{r['tokens_per_s']:.0f}", f"{r['rollout_share']:.0%}", f"{r['peak_gib']:.2f}")
    Console(width=160).print(table)
    print(f"torch {torch.__version__}, device {device}")


if __name__ == "__main__":
    main()
