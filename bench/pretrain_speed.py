"""Bench: seconds per base-stage pretraining step in each precision / compile mode, in one process.

Builds what the base stage trains on (``pretraining_texts``, the tokenizer, the packed chunks of
``tiny_models.policy_pretrain.seq_len``) from the params file and the data stage's corpus, then
times ``--steps`` steps of the base stage's own training loop (``train_causal_lm``: AdamW, the
params' learning-rate schedule) on a fresh policy (``tiny_causal_lm``) per mode, the first
``--warmup`` steps left out, and prints a table with the ratio against the first mode:

    fp32     the default: everything in float32
    bf16     forward and backward under bf16 autocast (``precision: bf16``), weights fp32
    compile  fp32 through ``torch.compile`` (its compile time is in the warm-up steps)

    python bench/pretrain_speed.py [--params params.yaml] [--steps 25] [--warmup 5] [--modes fp32,bf16,compile]

Needs the data stage (``dvc repro data``). Run it alone on the machine: other PyTorch work on
the same cores distorts every number.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from zerosearch.config import PretrainRun
from zerosearch.lm.supervised import train_causal_lm

MODES = ("fp32", "bf16", "compile")


def seconds_per_step(model: torch.nn.Module, chunks: tuple[torch.Tensor, torch.Tensor], run: PretrainRun,
                     mode: str, warmup: int) -> tuple[float, float]:
    """``run.steps`` steps of ``train_causal_lm`` (the base stage's loop) in ``mode``: the mean
    seconds per step after ``warmup`` steps (from the loop's own tokens/s), and the last loss."""
    if mode == "compile":
        model = torch.compile(model)
    run = run.model_copy(update={"precision": "bf16" if mode == "bf16" else "fp32"})
    seconds: list[float] = []
    on_step = lambda step, m: seconds.append(run.batch_size * run.seq_len / m["tokens_per_s"])  # noqa: E731
    losses = train_causal_lm(model, chunks, run, seed=0, desc=f"pretrain ({mode})", on_step=on_step)
    kept = seconds[warmup:]
    return sum(kept) / len(kept), losses[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps", type=int, default=25, help="timed steps per mode, warm-up included")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the mean")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"unknown mode(s) {unknown}: choose from {list(MODES)}")
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")

    from zerosearch.agent.pretraining import pretraining_texts
    from zerosearch.config import load_config
    from zerosearch.lm.models import tiny_causal_lm, train_tokenizer
    from zerosearch.lm.supervised import pack_examples

    cfg = load_config(args.params)
    tm = cfg.tiny_models
    texts = pretraining_texts(cfg)
    tokenizer = train_tokenizer(texts.tokenizer_texts(), tm.vocab_size)
    chunks = pack_examples(tokenizer, texts.policy_examples(cfg.base.seed), tm.policy_pretrain.seq_len)
    run = tm.policy_pretrain.model_copy(update={"steps": args.steps})
    rows = []
    for mode in modes:
        model = tiny_causal_lm(tm.policy, len(tokenizer), tokenizer, cfg.base.seed)
        rows.append((mode, *seconds_per_step(model, chunks, run, mode, args.warmup)))
    table = Table(title=f"pretraining step, batch {tm.policy_pretrain.batch_size} x {tm.policy_pretrain.seq_len} tokens, "
                        f"{torch.get_num_threads()} threads")
    for col in ("mode", "s/step", f"vs {rows[0][0]}", "tokens/s", "last loss"):
        table.add_column(col)
    tokens = tm.policy_pretrain.batch_size * tm.policy_pretrain.seq_len
    for mode, sec, loss in rows:
        table.add_row(mode, f"{sec:.3f}", f"{sec / rows[0][1]:.2f}x", f"{tokens / sec:,.0f}", f"{loss:.3f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
