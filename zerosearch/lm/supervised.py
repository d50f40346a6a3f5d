"""Supervised causal-LM training: pretraining the tiny base models and the simulator SFT.

Texts are tokenized, joined with EOS and packed into fixed-length chunks; batches are drawn with
a seeded generator; AdamW (weight decay on matrices only) with linear warmup and cosine decay;
fp32, or with ``precision: bf16`` the forward and backward under bf16 autocast (weights,
gradients and optimizer state stay fp32)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from zerosearch.config import PretrainRun
from zerosearch.progress import progress
from zerosearch.protocol import Segment


def pack_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Sequence[Segment]], seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize each example's segments, end it with EOS, concatenate everything and cut into
    ``(n_chunks, seq_len)`` input ids and labels; labels are -100 on untrained segments."""
    flat = [text for ex in examples for text, _ in ex]
    encoded = iter(tokenizer(flat, add_special_tokens=False)["input_ids"])
    ids: list[int] = []
    labels: list[int] = []
    for ex in examples:
        for (_, trained), enc in zip(ex, encoded):
            ids.extend(enc)
            labels.extend(enc if trained else [-100] * len(enc))
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    n_chunks = len(ids) // seq_len
    if n_chunks == 0:
        raise ValueError(f"not enough text to fill one chunk of {seq_len} tokens ({len(ids)} tokens)")
    shape = (n_chunks, seq_len)
    return (torch.tensor(ids[: n_chunks * seq_len]).view(shape),
            torch.tensor(labels[: n_chunks * seq_len]).view(shape))


def pack_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pack_examples`` for plain texts, every token trained."""
    return pack_examples(tokenizer, [[(t, True)] for t in texts], seq_len)


def lr_lambda(warmup_steps: int, total_steps: int, floor: float = 0.1) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine decay to ``floor``."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: ``weight_decay`` on matrices (embeddings, projections), none on
    vectors (norm gains, biases), as is usual for transformer pretraining."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def train_causal_lm(
    model: torch.nn.Module,
    chunks: tuple[torch.Tensor, torch.Tensor],
    run: PretrainRun,
    seed: int,
    desc: str = "train",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> list[float]:
    """``run.steps`` AdamW steps on random batches of ``chunks`` (input ids, labels from
    ``pack_examples``); returns the loss per step.
    ``on_step(step, metrics)`` receives loss, lr and tokens/s after each step."""
    ids, labels = chunks
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(decay_groups(model, run.weight_decay), lr=run.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(run.warmup_steps, run.steps))
    model.train()
    losses: list[float] = []
    with progress(desc, run.steps) as bar:
        for step in range(run.steps):
            t0 = time.perf_counter()
            pick = torch.randint(len(ids), (run.batch_size,), generator=gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16"):
                loss = model(input_ids=ids[pick].to(device), labels=labels[pick].to(device)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            metrics = {"loss": losses[-1], "lr": sched.get_last_lr()[0],
                       "tokens_per_s": ids[pick].numel() / (time.perf_counter() - t0)}
            if on_step:
                on_step(step, metrics)
            bar.update(1, info=f"loss {losses[-1]:.3f}")
    model.eval()
    return losses
