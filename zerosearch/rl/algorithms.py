"""The RL core as pure tensor functions: advantages, policy/value losses, KL, entropy.

Token-level tensors are ``(batch, response_len)`` = ``(B, T)``. ``response_mask`` is binary:
1 on tokens the policy sampled, 0 on padding AND on context the policy did not write
(``<information>`` documents injected in the middle of a response, corrective messages).
Every loss is aggregated through :func:`aggregate`, so mask-0 tokens get exactly zero
gradient; every advantage estimator zeroes its output where the mask is 0.

Registries (one lookup by name, an unknown name raises ``ValueError`` listing known ones):
``ADVANTAGES`` (``grpo``, ``gae``, ``reinforce``, ``reinforce_pp``), ``KL_ESTIMATORS`` (``k1``,
``k2``, ``k3`` alias ``low_var_kl``), the aggregation modes of :func:`aggregate`, and ``ALGORITHMS``
(``grpo``, ``ppo``, ``reinforce``, ``reinforce_pp``: which advantage, KL in the loss or the reward,
critic or not).

Departures from the papers / the reference implementation (Search-R1's old veRL):

- GRPO (Shao et al. 2024): the group std is the unbiased (Bessel, ``n - 1``) one, as
  ``torch.std`` in the reference; a group of size 1 gets advantage 0 (the reference uses
  mean 0 / std 1 there, i.e. the raw score). ``norm_by_std=False`` gives the mean-only
  variant (Dr. GRPO, Liu et al. 2025).
- GAE (PPO) and REINFORCE++ reward-to-go run over mask-1 tokens only: a mask-0 token is
  skipped by the backward recursion (the "next value" of a token is the value of the next
  *mask-1* token), so retrieved documents neither receive an advantage nor cut the
  bootstrap chain. Plain GAE over every position would bootstrap from values the critic
  predicts on document tokens.
- The outcome score is placed on the last mask-1 token of each response.
- Whitening (:func:`masked_whiten`) uses the population variance (``n``) over the masked
  entries of the whole batch; veRL uses the Bessel-corrected one (negligible difference at
  batch scale, and exact hand-checkable values here).
- ``k3`` clamps the log-ratio ``ref - logp`` to ``[-10, 10]`` before ``exp`` (veRL clamps
  the result instead), so it stays finite and keeps its gradient in the clamped range.
- REINFORCE++ (Hu 2025) puts the per-token KL penalty in the reward; GRPO ignores ``kl``
  (its KL goes into the loss through ``KL_ESTIMATORS``).
- ``reinforce`` is the paper's REINFORCE (the reference's ``adv_estimator=reinforce``): the raw
  outcome score is the advantage of every response token, with no baseline, no whitening and
  no discounting; its KL, like GRPO's, is a loss term. It is not REINFORCE++.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
AdvantageFn = Callable[..., tuple[Tensor, Tensor]]
KLFn = Callable[[Tensor, Tensor], Tensor]

ADVANTAGES: dict[str, AdvantageFn] = {}
KL_ESTIMATORS: dict[str, KLFn] = {}

_K3_LOG_RATIO_CLAMP = 10.0
_LOG_RATIO_CLAMP = 20.0


def _lookup(registry: dict, name: str, kind: str):
    """``registry[name]``, or ``ValueError`` naming the known entries."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}") from None


def _register(registry: dict, kind: str, *names: str) -> Callable:
    """Decorator adding a function to ``registry`` under each of ``names``; a taken name raises."""

    def decorator(fn):
        for name in names:
            if name in registry:
                raise ValueError(f"{kind} {name!r} is already registered")
            registry[name] = fn
        return fn

    return decorator


# --------------------------------------------------------------------------- aggregation


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1.

    Args:
        x: any shape, e.g. ``(B, T)``.
        mask: same shape as ``x``, binary (bool or 0/1 numbers).
        dim: reduce over this dimension only; ``None`` reduces everything to a scalar.

    Returns:
        A scalar (``dim=None``) or ``x`` reduced over ``dim``, e.g. ``(B,)`` for ``dim=-1``.
        Where no entry is selected the mean is 0 (never NaN). Masked-out entries are
        replaced by 0 before summing, so NaN/inf there neither leak into the value nor the
        gradient of the selected entries, and their own gradient is exactly 0.
    """
    keep = mask.bool()
    total = torch.where(keep, x, 0.0)
    if dim is None:
        return total.sum() / keep.sum().clamp(min=1)
    return total.sum(dim) / keep.sum(dim).clamp(min=1)


def _token_mean(loss: Tensor, mask: Tensor) -> Tensor:
    return masked_mean(loss, mask)


def _seq_mean_token_mean(loss: Tensor, mask: Tensor) -> Tensor:
    return masked_mean(masked_mean(loss, mask, dim=-1), mask.bool().any(-1))


def _seq_mean_token_sum(loss: Tensor, mask: Tensor) -> Tensor:
    per_seq = torch.where(mask.bool(), loss, 0.0).sum(-1)
    return masked_mean(per_seq, mask.bool().any(-1))


_AGGREGATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
}


def aggregate(loss: Tensor, mask: Tensor, mode: AggMode = "token-mean") -> Tensor:
    """Reduce a per-token loss ``(B, T)`` to a scalar over mask-1 tokens; used by every loss.

    Modes:
        ``token-mean``: sum of masked tokens / number of masked tokens (every token weighs
        the same; DAPO's choice).
        ``seq-mean-token-mean``: per sequence the mean over its masked tokens, then the mean
        over sequences (GRPO paper; long responses weigh less per token).
        ``seq-mean-token-sum``: per sequence the sum over its masked tokens, then the mean
        over sequences (Dr. GRPO-style, no length normalization).
    Sequences with no mask-1 token are left out of the sequence means.

    Raises:
        ValueError: unknown ``mode`` (the message lists the known ones).
    """
    return _lookup(_AGGREGATORS, mode, "aggregation mode")(loss, mask)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalize ``x`` to mean 0, std 1 over its masked entries (batch normalization).

    Args:
        x: ``(B, T)`` values, e.g. raw advantages.
        mask: ``(B, T)`` binary; the mean and the (population) variance are taken over the
            entries where it is 1, across the whole batch.
        shift_mean: when False the mean is added back (only the scale is normalized).
        eps: added to the variance under the square root.

    Returns:
        ``(B, T)``: ``(x - mean) / sqrt(var + eps)`` (``+ mean`` if not ``shift_mean``)
        where ``mask`` is 1, and 0 where it is 0.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


# --------------------------------------------------------------------------- advantages


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator adding an advantage estimator to ``ADVANTAGES`` under ``name``.

    Every estimator has the signature of :func:`grpo_advantage` (``scores``,
    ``response_mask``, then keyword arguments it may ignore) and returns
    ``(advantages (B, T), returns (B, T))``, both 0 where the mask is 0.

    Raises:
        ValueError: ``name`` is already registered.
    """

    return _register(ADVANTAGES, "advantage estimator", name)


def get_advantage(name: str) -> AdvantageFn:
    """The advantage estimator registered as ``name``; ``ValueError`` listing known names."""
    return _lookup(ADVANTAGES, name, "advantage estimator")


def _group_index(group_ids: Tensor | Sequence[Hashable] | None, like: Tensor) -> Tensor:
    """``(B,)`` int64 group index in ``[0, n_groups)``; ``None`` = the whole batch is one group."""
    batch = like.shape[0]
    if group_ids is None:
        return torch.zeros(batch, dtype=torch.long, device=like.device)
    if not isinstance(group_ids, Tensor):
        first_seen: dict[Hashable, int] = {}
        group_ids = torch.tensor([first_seen.setdefault(g, len(first_seen)) for g in group_ids])
    if group_ids.shape != (batch,):
        raise ValueError(f"group_ids must have shape ({batch},), got {tuple(group_ids.shape)}")
    return torch.unique(group_ids.to(like.device), return_inverse=True)[1]


def _last_token_scores(scores: Tensor, response_mask: Tensor) -> Tensor:
    """``(B, T)`` zeros with ``scores[b]`` on the last mask-1 token of row ``b`` (none if empty)."""
    mask = response_mask.bool()
    last = mask.shape[1] - 1 - mask.flip(-1).int().argmax(-1)
    placed = scores.new_zeros(mask.shape)
    placed[torch.arange(mask.shape[0], device=mask.device), last] = scores
    return torch.where(mask, placed, 0.0)


def _masked_gae_scan(rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float,
                     lam: float) -> Tensor:
    """Backward GAE recursion over mask-1 tokens only; ``(B, T)`` advantages, 0 where masked.

    ``delta_t = r_t + gamma * V_next - V_t`` and ``A_t = delta_t + gamma * lam * A_next``,
    where "next" is the next mask-1 token of the row (0 after the last one). Mask-0 tokens
    carry ``V_next`` and ``A_next`` through unchanged. With ``values = 0`` and ``lam = 1``
    this is the discounted reward-to-go.
    """
    mask = response_mask.bool()
    next_value = rewards.new_zeros(rewards.shape[0])
    next_adv = torch.zeros_like(next_value)
    out = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        out[:, t] = torch.where(mask[:, t], adv, 0.0)
        next_value = torch.where(mask[:, t], values[:, t], next_value)
        next_adv = torch.where(mask[:, t], adv, next_adv)
    return out


def _outcome_rewards(scores: Tensor, response_mask: Tensor, kl: Tensor | None,
                     kl_coef: float) -> Tensor:
    """``(B, T)`` token rewards: score on the last mask-1 token, minus ``kl_coef * kl``."""
    rewards = _last_token_scores(scores, response_mask)
    if kl is not None and kl_coef:
        rewards = rewards - kl_coef * torch.where(response_mask.bool(), kl, 0.0)
    return rewards


@register_advantage("grpo")
def grpo_advantage(scores: Tensor, response_mask: Tensor, *,
                   group_ids: Tensor | Sequence[Hashable] | None = None,
                   values: Tensor | None = None, kl: Tensor | None = None, gamma: float = 1.0,
                   lam: float = 1.0, kl_coef: float = 0.0, norm_by_std: bool = True,
                   eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """GRPO outcome advantage: each score normalized within its group of rollouts.

    Args:
        scores: ``(B,)`` outcome reward of each trajectory.
        response_mask: ``(B, T)`` binary, 1 on policy-sampled tokens.
        group_ids: ``(B,)`` (tensor or sequence of hashables, e.g. prompt uids); rows with
            the same id are the n rollouts of one prompt. ``None``: the batch is one group.
        norm_by_std: ``(s - mean_g) / (std_g + eps)`` if True (paper), ``s - mean_g`` if
            False (Dr. GRPO). ``std_g`` is unbiased (``n - 1``).
        values, kl, gamma, lam, kl_coef: ignored (GRPO puts its KL in the loss).

    Returns:
        ``(advantages, returns)``, both ``(B, T)``, equal: the row's normalized score on
        every mask-1 token, 0 elsewhere. A group of size 1 gets advantage 0.
    """
    scores = scores.float()
    index = _group_index(group_ids, scores)
    n_groups = int(index.max()) + 1 if index.numel() else 0
    counts = torch.bincount(index, minlength=n_groups).to(scores.dtype)
    mean = scores.new_zeros(n_groups).index_add(0, index, scores) / counts
    centered = scores - mean[index]
    sq_sum = scores.new_zeros(n_groups).index_add(0, index, centered**2)
    std = (sq_sum / (counts - 1).clamp(min=1)).sqrt()
    adv = centered / (std[index] + eps) if norm_by_std else centered
    adv = torch.where(counts[index] > 1, adv, 0.0)
    adv = torch.where(response_mask.bool(), adv[:, None], 0.0)
    return adv, adv.clone()


@register_advantage("gae")
def gae_advantage(scores: Tensor, response_mask: Tensor, *,
                  group_ids: Tensor | Sequence[Hashable] | None = None,
                  values: Tensor | None = None, kl: Tensor | None = None, gamma: float = 1.0,
                  lam: float = 1.0, kl_coef: float = 0.0, norm_by_std: bool = True,
                  eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """PPO's generalized advantage estimation (Schulman et al. 2016) over mask-1 tokens.

    Token reward: ``scores[b]`` on the last mask-1 token, minus ``kl_coef * kl`` on every
    mask-1 token. The recursion skips mask-0 tokens (see :func:`_masked_gae_scan`).

    Args:
        scores: ``(B,)`` outcome reward.
        response_mask: ``(B, T)`` binary.
        values: ``(B, T)`` critic values (required); ignored where the mask is 0.
        kl: ``(B, T)`` per-token KL to the reference, or None.
        gamma, lam: discount and GAE lambda (paper: 1, 1).
        kl_coef: weight of the KL penalty in the reward.
        group_ids, norm_by_std, eps: ignored.

    Returns:
        ``(advantages, returns)``, ``(B, T)``: returns = raw advantages + values;
        advantages whitened over the batch's mask-1 tokens. Both 0 where the mask is 0.

    Raises:
        ValueError: ``values`` is None.
    """
    if values is None:
        raise ValueError("gae needs critic values of shape (batch, response_len)")
    mask = response_mask.bool()
    values = torch.where(mask, values.float(), 0.0)
    rewards = _outcome_rewards(scores.float(), mask, kl, kl_coef)
    raw = _masked_gae_scan(rewards, values, mask, gamma, lam)
    returns = torch.where(mask, raw + values, 0.0)
    return masked_whiten(raw, mask), returns


@register_advantage("reinforce")
def reinforce_advantage(scores: Tensor, response_mask: Tensor, *,
                        group_ids: Tensor | Sequence[Hashable] | None = None,
                        values: Tensor | None = None, kl: Tensor | None = None, gamma: float = 1.0,
                        lam: float = 1.0, kl_coef: float = 0.0, norm_by_std: bool = True,
                        eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Vanilla REINFORCE (Williams 1992) as the ZeroSearch paper runs it: the raw outcome score
    as the advantage of every token the policy sampled; no baseline, no whitening, no critic.

    Args:
        scores: ``(B,)`` outcome reward (F1 in the paper).
        response_mask: ``(B, T)`` binary, 1 on policy-sampled tokens.
        group_ids, values, kl, gamma, lam, kl_coef, norm_by_std, eps: ignored (the KL goes
            into the loss; with an outcome-only reward and ``gamma = 1`` the reward-to-go of
            every token is the score itself).

    Returns:
        ``(advantages, returns)``, both ``(B, T)``, equal: ``scores[b]`` on every mask-1 token
        of row ``b``, 0 elsewhere.
    """
    adv = torch.where(response_mask.bool(), scores.float()[:, None], 0.0)
    return adv, adv.clone()


@register_advantage("reinforce_pp")
def reinforce_pp_advantage(scores: Tensor, response_mask: Tensor, *,
                           group_ids: Tensor | Sequence[Hashable] | None = None,
                           values: Tensor | None = None, kl: Tensor | None = None,
                           gamma: float = 1.0, lam: float = 1.0, kl_coef: float = 0.0,
                           norm_by_std: bool = True,
                           eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025): discounted reward-to-go, whitened over the whole batch.

    Token reward: ``-kl_coef * kl`` on every mask-1 token plus ``scores[b]`` on the last
    mask-1 token. ``G_t = r_t + gamma * G_next`` where "next" is the next mask-1 token.

    Args:
        scores: ``(B,)`` outcome reward.
        response_mask: ``(B, T)`` binary.
        kl: ``(B, T)`` per-token KL to the reference, or None.
        gamma: discount; kl_coef: weight of the KL penalty in the reward.
        group_ids, values, lam, norm_by_std, eps: ignored.

    Returns:
        ``(advantages, returns)``, ``(B, T)``: returns = reward-to-go, advantages = returns
        whitened over all mask-1 tokens of the batch. Both 0 where the mask is 0.
    """
    mask = response_mask.bool()
    rewards = _outcome_rewards(scores.float(), mask, kl, kl_coef)
    returns = _masked_gae_scan(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    return masked_whiten(returns, mask), returns


# --------------------------------------------------------------------------- losses


def policy_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor,
                response_mask: Tensor, *, clip_ratio: float = 0.2,
                clip_ratio_high: float | None = None, dual_clip_c: float | None = None,
                agg: AggMode = "token-mean") -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017), optionally dual-clipped (Ye et al. 2020).

    Per token, with ``ratio = exp(log_probs - old_log_probs)`` (log-ratio clamped to ±20):
    ``l = max(-A * ratio, -A * clip(ratio, 1 - clip_ratio, 1 + clip_ratio_high))``;
    with ``dual_clip_c = c > 1``, tokens with ``A < 0`` use ``min(l, -c * A)``, bounding
    the loss when the ratio explodes.

    Args:
        log_probs: ``(B, T)`` current policy log-probs of the sampled tokens (with grad).
        old_log_probs: ``(B, T)`` behaviour-policy log-probs (no grad needed).
        advantages: ``(B, T)``.
        response_mask: ``(B, T)`` binary; mask-0 tokens get exactly zero gradient.
        clip_ratio: lower clip epsilon (and the upper one unless ``clip_ratio_high``).
        clip_ratio_high: upper clip epsilon (DAPO's clip-higher), or None.
        dual_clip_c: the dual-clip constant, > 1, or None for no dual clip.
        agg: aggregation mode, see :func:`aggregate`.

    Returns:
        ``(loss, stats)``: scalar loss; stats as python floats: ``clip_fraction`` (tokens
        where the clipped term is the active one), ``dual_clip_fraction``, ``approx_kl``
        (masked mean of ``old - new`` log-probs).

    Raises:
        ValueError: ``dual_clip_c`` is not > 1.
    """
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    log_ratio = (log_probs - old_log_probs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_ratio, 1.0 + high)
    loss = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip_c is not None:
        dual_bound = -advantages * dual_clip_c
        dual_active = (advantages < 0) & (loss > dual_bound)
        loss = torch.where(dual_active, dual_bound, loss)
    stats = {
        "clip_fraction": masked_mean((clipped > unclipped).float(), response_mask).item(),
        "dual_clip_fraction": masked_mean(dual_active.float(), response_mask).item(),
        "approx_kl": masked_mean((old_log_probs - log_probs).detach(), response_mask).item(),
    }
    return aggregate(loss, response_mask, agg), stats


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, response_mask: Tensor, *,
               clip_range: float = 0.2,
               agg: AggMode = "token-mean") -> tuple[Tensor, dict[str, float]]:
    """Clipped critic loss: ``0.5 * max((V - R)^2, (V_clip - R)^2)`` per token.

    ``V_clip = old_values + clip(values - old_values, -clip_range, clip_range)``.

    Args:
        values: ``(B, T)`` current critic predictions (with grad).
        old_values: ``(B, T)`` predictions at rollout time.
        returns: ``(B, T)`` targets (from the advantage estimator).
        response_mask: ``(B, T)`` binary.
        clip_range: how far the new value may move from the old one before clipping.
        agg: aggregation mode, see :func:`aggregate`.

    Returns:
        ``(loss, stats)``: scalar loss; stats as floats: ``vf_clip_fraction`` (tokens where
        the clipped error is the larger one), ``vpred_mean``.
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * torch.maximum(err, err_clipped)
    stats = {
        "vf_clip_fraction": masked_mean((err_clipped > err).float(), response_mask).item(),
        "vpred_mean": masked_mean(values.detach(), response_mask).item(),
    }
    return aggregate(loss, response_mask, agg), stats


# --------------------------------------------------------------------------- KL, entropy


def register_kl(*names: str) -> Callable[[KLFn], KLFn]:
    """Decorator adding a KL estimator ``fn(log_probs, ref_log_probs) -> (B, T)`` under names."""

    return _register(KL_ESTIMATORS, "KL estimator", *names)


def get_kl(name: str) -> KLFn:
    """The KL estimator registered as ``name``; ``ValueError`` listing known names."""
    return _lookup(KL_ESTIMATORS, name, "KL estimator")


@register_kl("k1")
def kl_k1(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """``log p - log q_ref`` per token, ``(B, T)``: unbiased for KL(p || ref), high variance."""
    return log_probs - ref_log_probs


@register_kl("k2")
def kl_k2(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """``0.5 * (log p - log q_ref)^2`` per token, ``(B, T)``: biased, low variance, >= 0."""
    return 0.5 * (log_probs - ref_log_probs) ** 2


@register_kl("k3", "low_var_kl")
def kl_k3(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """Schulman's ``exp(d) - d - 1`` with ``d = log q_ref - log p`` per token, ``(B, T)``.

    Unbiased for KL(p || ref) under samples from p, always >= 0 (the GRPO paper's estimator).
    ``d`` is clamped to ``[-10, 10]`` before ``exp``.
    """
    d = (ref_log_probs - log_probs).clamp(-_K3_LOG_RATIO_CLAMP, _K3_LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1.0


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position.

    Args:
        logits: ``(B, T, V)`` unnormalized log-probabilities.

    Returns:
        ``(B, T)``: ``logsumexp(z) - sum(softmax(z) * z)`` (= ``-sum p log p``).
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


# Logits entries (rows x positions x vocabulary) per chunk of ``log_probs_from_logits``: 512 MiB
# in fp32. A micro-batch of 16 with a 152k vocabulary is then ~55 positions a chunk; the tiny
# world's micro-batches (1k vocabulary) are one chunk.
LOG_PROB_CHUNK_ELEMENTS = 2**27

EntropyMode = Literal["grad", "detached"]


def log_probs_from_logits(logits: Tensor, targets: Tensor, *, temperature: float = 1.0,
                          entropy: EntropyMode | None = None,
                          chunk_elements: int = LOG_PROB_CHUNK_ELEMENTS) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each target token under ``softmax(logits / temperature)``, and optionally the
    entropy there, over chunks of positions: only one chunk's fp32 copy and softmax exist at a
    time, where the whole ``(B, T, V)`` would take tens of GB at 150k vocabulary entries.

    Args:
        logits: ``(B, T, V)``, any float dtype (bf16 from a model under mixed precision).
        targets: ``(B, T)`` token ids.
        entropy: ``None`` (not computed), ``"grad"`` (differentiable: an entropy bonus) or
            ``"detached"`` (for logging: computed without autograd).
        chunk_elements: logits entries per chunk. Logits that fit are one chunk, computed by the
            same ops as without chunking; under autograd a chunk is recomputed in the backward
            (``torch.utils.checkpoint``) instead of keeping its fp32 copy.

    Returns:
        ``(B, T)`` log-probs (fp32) and ``(B, T)`` entropy or ``None``.
    """
    rows, length, vocab = logits.shape
    width = max(1, chunk_elements // max(1, rows * vocab))
    if width >= length:
        return _chunk_log_probs(logits, targets, temperature, entropy)
    parts = [_checkpointed_log_probs(logits[:, i: i + width], targets[:, i: i + width], temperature, entropy)
             for i in range(0, length, width)]
    log_probs = torch.cat([lp for lp, _ in parts], 1)
    return log_probs, (torch.cat([e for _, e in parts], 1) if entropy is not None else None)


def _scaled_fp32(logits: Tensor, temperature: float) -> Tensor:
    z = logits.float()
    return z / temperature if temperature != 1.0 else z


def _chunk_log_probs(logits: Tensor, targets: Tensor, temperature: float,
                     entropy: EntropyMode | None) -> tuple[Tensor, Tensor | None]:
    z = _scaled_fp32(logits, temperature)
    log_probs = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)
    if entropy is None:
        return log_probs, None
    if entropy == "grad":
        return log_probs, entropy_from_logits(z)
    with torch.no_grad():
        return log_probs, entropy_from_logits(z)


def _checkpointed_log_probs(logits: Tensor, targets: Tensor, temperature: float,
                            entropy: EntropyMode | None) -> tuple[Tensor, Tensor | None]:
    """One chunk; under autograd its fp32 intermediates are recomputed in the backward."""
    if not (torch.is_grad_enabled() and logits.requires_grad):
        return _chunk_log_probs(logits, targets, temperature, entropy)
    grad_entropy = entropy == "grad"
    log_probs, ent = checkpoint(_chunk_log_probs, logits, targets, temperature, "grad" if grad_entropy else None,
                                use_reentrant=False)
    if entropy == "detached":
        with torch.no_grad():
            ent = entropy_from_logits(_scaled_fp32(logits, temperature))
    return log_probs, ent


# Algorithms by name for the trainer: which advantage, KL in the loss or in the reward, critic or not.
@dataclass(frozen=True)
class AlgorithmSpec:
    """How an algorithm name maps onto the pure functions."""

    advantage: str  # name in ADVANTAGES
    kl_in_reward: bool  # True: KL penalty folded into token rewards; False: a KL loss term
    critic: bool


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "grpo": AlgorithmSpec(advantage="grpo", kl_in_reward=False, critic=False),
    "ppo": AlgorithmSpec(advantage="gae", kl_in_reward=True, critic=True),
    "reinforce": AlgorithmSpec(advantage="reinforce", kl_in_reward=False, critic=False),
    "reinforce_pp": AlgorithmSpec(advantage="reinforce_pp", kl_in_reward=True, critic=False),
}
