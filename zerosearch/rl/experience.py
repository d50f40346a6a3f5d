"""A training step's experience: the rollouts as tensors with what the update needs, and the
per-token log-probs, values and micro-batching they are computed with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from zerosearch.rl.algorithms import log_probs_from_logits


@dataclass
class Experience:
    """One step's rollouts with what the update needs. ``L`` = padded sequence length;
    token tensors are ``(B, T)`` with ``T = L - 1``: position ``t`` scores token ``t + 1``."""

    input_ids: Tensor  # (B, L)
    attention_mask: Tensor  # (B, L)
    mask: Tensor  # (B, T) float, 1 on trained tokens: those the policy sampled (+ observations if not masked)
    old_log_probs: Tensor | None  # (B, T); None on-policy (the update uses its own, detached)
    ref_log_probs: Tensor | None  # (B, T), None without a KL term
    old_values: Tensor | None  # (B, T), PPO only
    advantages: Tensor  # (B, T)
    returns: Tensor  # (B, T)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: Tensor) -> Experience:
        """Rows ``index``, trimmed to their longest real sequence."""
        width = int(self.attention_mask[index].sum(-1).max())
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                value = value[index][:, : width if f.name in ("input_ids", "attention_mask") else width - 1]
            out[f.name] = value
        return Experience(**out)


def token_log_probs(model, input_ids: Tensor, attention_mask: Tensor, temperature: float = 1.0,
                    with_entropy: bool | str = False, start: int = 0) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each next token, ``(B, L - 1)``, and optionally the entropy there
    (``with_entropy="grad"``: with its gradient, for an entropy bonus; ``True``: detached).

    Only positions ``>= start`` are computed (``logits_to_keep``: with a 150k vocabulary the
    prompt's logits would dominate memory); earlier positions are 0. Log-probs and entropy are
    computed over chunks of positions (``log_probs_from_logits``); no KV cache is built.
    """
    length = input_ids.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=length - start,
                   use_cache=False).logits[:, :-1]
    entropy_mode = "grad" if with_entropy == "grad" else ("detached" if with_entropy else None)
    log_probs, entropy = log_probs_from_logits(logits, input_ids[:, start + 1:], temperature=temperature,
                                               entropy=entropy_mode)
    pad = (lambda x: torch.nn.functional.pad(x, (start, 0))) if start else (lambda x: x)
    return pad(log_probs), (pad(entropy) if entropy is not None else None)


def length_sorted(index: Tensor, lengths: Tensor) -> Tensor:
    """``index`` ordered by its rows' ``lengths`` (stable): consecutive micro-batches then hold
    sequences of similar length, each trimmed to its own longest (``Experience.select``), so
    far less padding is computed (half the positions of a tiny step's rollouts are padding)."""
    return index[torch.sort(lengths[index], stable=True).indices]


def rows_by_micro_batch(ids: Tensor, attn: Tensor, micros: Sequence[Tensor],
                        fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``fn`` (ids, attention mask -> ``(b, w - 1)`` per-token values) on each micro-batch of
    rows, trimmed to its longest sequence ``w``; the ``(B, L - 1)`` result in row order, zero
    past each micro-batch's width."""
    out: Tensor | None = None
    for idx in micros:
        width = int(attn[idx].sum(-1).max())
        values = fn(ids[idx][:, :width], attn[idx][:, :width])
        if out is None:
            out = values.new_zeros((ids.shape[0], ids.shape[1] - 1))
        out[idx, : width - 1] = values
    assert out is not None, "no micro-batch"
    return out


def first_scored_position(mask: Tensor) -> int:
    """The first column of a ``(B, T)`` loss mask any row trains on (0 if none)."""
    cols = mask.any(0)
    return int(cols.float().argmax()) if bool(cols.any()) else 0


def critic_values(critic, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The critic's value of each prefix, aligned with ``token_log_probs``: ``(B, L - 1)``."""
    return critic(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1, 0].float()
