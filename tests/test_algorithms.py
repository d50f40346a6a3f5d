"""Hand-computed checks of the RL core: advantages, losses, KL estimators, aggregation."""

from __future__ import annotations

import math

import pytest
import torch

from zerosearch.rl import (
    ADVANTAGES,
    aggregate,
    entropy_from_logits,
    get_advantage,
    get_kl,
    masked_mean,
    masked_whiten,
    policy_loss,
    register_advantage,
    value_loss,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(actual, expected, atol=1e-4):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ------------------------------------------------------------------ aggregation, whitening


X = t([1, 2, 3], [4, 5, 6], [7, 8, 9])
M = t([1, 1, 0], [1, 0, 0], [0, 0, 0])  # the third row has no token: left out of seq means


def test_masked_mean_all_and_per_row():
    close(masked_mean(X, M), 7 / 3)  # (1 + 2 + 4) / 3
    close(masked_mean(X, M, dim=-1), [1.5, 4.0, 0.0])  # empty row -> 0, not NaN


@pytest.mark.parametrize(("mode", "expected"), [
    ("token-mean", 7 / 3),  # (1 + 2 + 4) / 3 tokens
    ("seq-mean-token-mean", 2.75),  # rows: (1+2)/2 = 1.5 and 4/1 = 4 -> (1.5 + 4) / 2
    ("seq-mean-token-sum", 3.5),  # rows: 1+2 = 3 and 4 -> (3 + 4) / 2
])
def test_aggregate_modes(mode, expected):
    close(aggregate(X, M, mode), expected)


def test_aggregate_ignores_nan_under_the_mask():
    x = t([1, float("nan")], [3, float("inf")])
    close(aggregate(x, t([1, 0], [1, 0])), 2.0)


def test_masked_whiten():
    # masked entries 1, 2, 3: mean 2, population var (1 + 0 + 1) / 3 = 2/3, std 0.816497
    x, mask = t([1, 2, 3, 100]), t([1, 1, 1, 0])
    s = math.sqrt(2 / 3)
    close(masked_whiten(x, mask), [[-1 / s, 0, 1 / s, 0]])
    close(masked_whiten(x, mask, shift_mean=False), [[2 - 1 / s, 2, 2 + 1 / s, 0]])


# ------------------------------------------------------------------ advantages


def test_grpo_two_groups_unbiased_std_and_singleton():
    # group 0: scores [1, 0]: mean 0.5, unbiased std sqrt((0.25 + 0.25) / 1) = 0.707107
    #   -> +0.5 / 0.707107 = +0.707107, -0.707107
    # group 1: scores [1, 1, 0]: mean 2/3, deviations 1/3, 1/3, -2/3,
    #   unbiased var (1/9 + 1/9 + 4/9) / 2 = 1/3, std 0.577350
    #   -> (1/3) / 0.57735 = 0.577350, (-2/3) / 0.57735 = -1.154701
    # group 2: a single rollout -> 0
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    mask = t([1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1])
    adv, ret = get_advantage("grpo")(scores, mask, group_ids=["a", "a", "b", "b", "b", "c"])
    per_row = torch.tensor([0.707107, -0.707107, 0.577350, 0.577350, -1.154701, 0.0])
    close(adv, per_row[:, None] * mask)  # broadcast over tokens, 0 where masked
    assert torch.equal(adv, ret)


def test_grpo_without_std_and_tensor_group_ids():
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    mask = torch.ones(5, 2)
    adv, _ = get_advantage("grpo")(scores, mask, group_ids=torch.tensor([7, 7, 3, 3, 3]),
                                   norm_by_std=False)
    close(adv[:, 0], [0.5, -0.5, 1 / 3, 1 / 3, -2 / 3])  # s - group mean


def test_gae_skips_masked_middle_token():
    # gamma = lam = 1, score 1 on the last token (t=2), the middle token is a retrieved
    # document (mask 0) with a garbage value 9.
    # t=2: delta = 1 + 0 - 0.2 = 0.8              A2 = 0.8, R2 = 0.8 + 0.2 = 1.0
    # t=1: masked -> A1 = 0, chain passes through (next value stays V2 = 0.2, not 9)
    # t=0: delta = 0 + 0.2 - 0.5 = -0.3           A0 = -0.3 + 0.8 = 0.5, R0 = 1.0
    # (without the skip: delta0 = 0 + 9 - 0.5 = 8.5 -> very different)
    # whitened over {0.5, 0.8}: mean 0.65, population std 0.15 -> [-1, 0, +1]
    mask = t([1, 0, 1])
    adv, ret = get_advantage("gae")(torch.tensor([1.0]), mask, values=t([0.5, 9.0, 0.2]))
    close(ret, [[1.0, 0.0, 1.0]])
    close(adv, [[-1.0, 0.0, 1.0]])


def test_gae_discounted_with_kl_penalty():
    # gamma = lam = 0.5, kl_coef 0.5, kl [0.2, 0.4, 0] -> rewards [-0.1, -0.2, 0 + 1]
    # values [0.2, 0.4, 0.6]
    # t=2: delta = 1.0 - 0.6 = 0.4                        A2 = 0.4     R2 = 1.0
    # t=1: delta = -0.2 + 0.5*0.6 - 0.4 = -0.3            A1 = -0.3 + 0.25*0.4 = -0.2   R1 = 0.2
    # t=0: delta = -0.1 + 0.5*0.4 - 0.2 = -0.1            A0 = -0.1 + 0.25*-0.2 = -0.15 R0 = 0.05
    # second row: score 0, padded last token, values 0 -> all zero
    mask = t([1, 1, 1], [1, 1, 0])
    values = t([0.2, 0.4, 0.6], [0, 0, 5.0])
    kl = t([0.2, 0.4, 0.0], [0, 0, 0])
    adv, ret = get_advantage("gae")(torch.tensor([1.0, 0.0]), mask, values=values, kl=kl,
                                    kl_coef=0.5, gamma=0.5, lam=0.5)
    close(ret, [[0.05, 0.2, 1.0], [0, 0, 0]])
    # raw advantages [-0.15, -0.2, 0.4, 0, 0] over the 5 mask-1 tokens, whitened
    raw = torch.tensor([-0.15, -0.2, 0.4, 0.0, 0.0])
    w = (raw - raw.mean()) / raw.std(unbiased=False)
    close(adv, [[w[0], w[1], w[2]], [w[3], w[4], 0.0]])


def test_gae_requires_values():
    with pytest.raises(ValueError, match="values"):
        get_advantage("gae")(torch.tensor([1.0]), t([1, 1]))


def test_reinforce_pp_returns_with_gamma_kl_and_masked_token():
    # row 0: mask [1, 1, 0, 1], kl [0.2, 0.4, 5 (masked, ignored), 0.2], kl_coef 0.5, score 1
    #   rewards [-0.1, -0.2, 0, -0.1 + 1 = 0.9]; gamma 0.5, the masked token is skipped:
    #   G3 = 0.9; G2 = 0 (masked); G1 = -0.2 + 0.5*0.9 = 0.25; G0 = -0.1 + 0.5*0.25 = 0.025
    # row 1: score 0, no kl -> returns 0 on its 3 tokens
    # advantages: whitened over all 6 mask-1 tokens {0.025, 0.25, 0.9, 0, 0, 0}:
    #   mean 0.195833, population std 0.327369 -> [-0.52184, 0.16546, 2.15099], 3 x -0.59821
    mask = t([1, 1, 0, 1], [1, 1, 1, 0])
    kl = t([0.2, 0.4, 5.0, 0.2], [0, 0, 0, 0])
    adv, ret = get_advantage("reinforce_pp")(torch.tensor([1.0, 0.0]), mask, kl=kl,
                                             kl_coef=0.5, gamma=0.5)
    close(ret, [[0.025, 0.25, 0.0, 0.9], [0, 0, 0, 0]])
    close(adv, [[-0.52184, 0.16546, 0.0, 2.15099], [-0.59821, -0.59821, -0.59821, 0.0]])


def test_reinforce_pp_gamma_one_no_kl_is_the_score():
    _, ret = get_advantage("reinforce_pp")(torch.tensor([2.0]), t([1, 0, 1, 0]))
    close(ret, [[2.0, 0.0, 2.0, 0.0]])


def test_reinforce_is_the_raw_score_on_every_sampled_token():
    # the paper's vanilla REINFORCE: scores [0.5, 0, 1] broadcast over each row's mask-1 tokens,
    # no baseline (row 1 keeps 0, not 0 - mean), no whitening (row 2 keeps 1.0), group ids ignored
    mask = t([1, 0, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0])
    adv, ret = get_advantage("reinforce")(torch.tensor([0.5, 0.0, 1.0]), mask, group_ids=[0, 0, 0],
                                          gamma=0.5, kl=torch.ones(3, 4), kl_coef=1.0)
    close(adv, [[0.5, 0.0, 0.5, 0.5], [0, 0, 0, 0], [0.0, 1.0, 1.0, 0.0]])
    close(ret, adv)
    assert ret.data_ptr() != adv.data_ptr()


def test_reinforce_spec_and_its_loss_terms():
    """``reinforce``: KL as a loss term (not in the reward), no critic; its clipped policy loss on
    the raw-score advantages. Two tokens, score 1, old log-probs 0, ratios [1.5, 0.5], clip 0.2:
    per token max(-r, -clip(r)) = [max(-1.5, -1.2), max(-0.5, -0.8)] = [-1.2, -0.5] -> mean -0.85."""
    from zerosearch.rl.algorithms import ALGORITHMS

    spec = ALGORITHMS["reinforce"]
    assert (spec.advantage, spec.kl_in_reward, spec.critic) == ("reinforce", False, False)
    assert ALGORITHMS["reinforce_pp"].kl_in_reward  # REINFORCE++ unchanged: KL in the reward
    mask = torch.ones(1, 2)
    adv, _ = get_advantage("reinforce")(torch.tensor([1.0]), mask)
    loss, stats = policy_loss(torch.log(t([1.5, 0.5])), torch.zeros(1, 2), adv, mask, clip_ratio=0.2)
    close(loss, -0.85)
    assert stats["clip_fraction"] == pytest.approx(0.5)


def test_unknown_names_list_known_ones():
    with pytest.raises(ValueError, match=r"known: gae, grpo, reinforce, reinforce_pp"):
        get_advantage("ppo2")
    with pytest.raises(ValueError, match=r"k1, k2, k3, low_var_kl"):
        get_kl("k4")
    with pytest.raises(ValueError, match=r"seq-mean-token-mean"):
        aggregate(X, M, "sum")  # type: ignore[arg-type]


def test_register_advantage_and_duplicates():
    @register_advantage("zero_test")
    def zero(scores, response_mask, **_):
        return torch.zeros_like(response_mask), torch.zeros_like(response_mask)

    try:
        assert get_advantage("zero_test") is zero
        with pytest.raises(ValueError, match="already registered"):
            register_advantage("zero_test")(zero)
    finally:
        ADVANTAGES.pop("zero_test")


# ------------------------------------------------------------------ losses


def test_policy_loss_clipping():
    # old log-probs 0, ratios [1.5, 0.5, 0.5, 1.5], advantages [1, 1, -1, -1], clip 0.2
    # t0 A=+1 r=1.5: unclipped -1.5, clipped -1.2 -> max -1.2   (clipped active)
    # t1 A=+1 r=0.5: unclipped -0.5, clipped -0.8 -> max -0.5   (below range, A>0: not clipped)
    # t2 A=-1 r=0.5: unclipped  0.5, clipped  0.8 -> max  0.8   (clipped active)
    # t3 A=-1 r=1.5: unclipped  1.5, clipped  1.2 -> max  1.5   (above range, A<0: not clipped)
    # token-mean: (-1.2 - 0.5 + 0.8 + 1.5) / 4 = 0.15; clip fraction 2/4
    # approx_kl = mean(old - new) = -(2 ln 1.5 + 2 ln 0.5) / 4 = -0.5 ln 0.75 = 0.143841
    log_probs = torch.log(t([1.5, 0.5, 0.5, 1.5]))
    loss, stats = policy_loss(log_probs, torch.zeros(1, 4), t([1, 1, -1, -1]), torch.ones(1, 4))
    close(loss, 0.15)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    assert stats["approx_kl"] == pytest.approx(-0.5 * math.log(0.75), abs=1e-5)
    assert isinstance(stats["approx_kl"], float)


def test_policy_loss_clip_higher():
    # A=+1, r=1.5, clip_ratio_high 0.28 -> max(-1.5, -1.28) = -1.28
    loss, _ = policy_loss(torch.log(t([1.5])), torch.zeros(1, 1), t([1.0]), torch.ones(1, 1),
                          clip_ratio_high=0.28)
    close(loss, -1.28)


def test_policy_loss_dual_clip():
    # c = 3
    # t0 A=-1 r=5: max(5, 1.2) = 5 -> min(5, 3*1) = 3  (dual clip active)
    # t1 A=-1 r=2: max(2, 1.2) = 2 -> min(2, 3) = 2
    # t2 A=+1 r=5: max(-5, -1.2) = -1.2 (dual clip only for A<0)
    log_probs = torch.log(t([5.0, 2.0, 5.0]))
    loss, stats = policy_loss(log_probs, torch.zeros(1, 3), t([-1, -1, 1]), torch.ones(1, 3),
                              dual_clip_c=3.0, agg="seq-mean-token-sum")
    close(loss, 3 + 2 - 1.2)  # one sequence: the token sum
    assert stats["dual_clip_fraction"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="dual_clip_c"):
        policy_loss(log_probs, torch.zeros(1, 3), t([-1, -1, 1]), torch.ones(1, 3), dual_clip_c=1.0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_policy_loss_masked_tokens_get_exactly_zero_gradient(agg):
    torch.manual_seed(0)
    log_probs = (torch.randn(3, 5) - 1.0).requires_grad_()
    old = log_probs.detach() + 0.05 * torch.randn(3, 5)  # ratios near 1: inside the clip range
    old[0, 2] = -1e4  # garbage behaviour log-prob under the mask (ratio clamps, no NaN)
    advantages = torch.randn(3, 5)
    mask = t([1, 1, 0, 1, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0])
    loss, _ = policy_loss(log_probs, old, advantages, mask, agg=agg)
    loss.backward()
    grad = log_probs.grad
    assert torch.all(grad[mask == 0] == 0)
    assert torch.all(grad[mask == 1] != 0)


def test_value_loss_clipping():
    # old values 0, clip 0.2
    # t0 v=0.5 R=1.0: err (0.5-1)^2 = 0.25, v_clip 0.2 -> (0.2-1)^2 = 0.64 -> 0.32 (clipped)
    # t1 v=0.1 R=1.0: within range, both 0.81 -> 0.405
    # t2 v=0.5 R=0.3: err 0.04, v_clip 0.2 -> 0.01; max 0.04 -> 0.02 (clipping can't lower it)
    # t3 masked
    # token-mean: (0.32 + 0.405 + 0.02) / 3 = 0.248333; clip fraction 1/3
    values = t([0.5, 0.1, 0.5, 7.0]).requires_grad_()
    loss, stats = value_loss(values, torch.zeros(1, 4), t([1.0, 1.0, 0.3, 0.0]), t([1, 1, 1, 0]))
    close(loss, 0.745 / 3)
    assert stats["vf_clip_fraction"] == pytest.approx(1 / 3)
    loss.backward()
    # t0: the clipped branch is active -> no gradient; t1: (0.1 - 1) / 3; t2: (0.5 - 0.3) / 3
    close(values.grad, [[0.0, -0.3, 0.2 / 3, 0.0]])


# ------------------------------------------------------------------ KL, entropy


def test_kl_estimators():
    # d = log p - log ref: 0.5 and -1.0
    # k1 = d = [0.5, -1];  k2 = 0.5 d^2 = [0.125, 0.5]
    # k3 = exp(-d) + d - 1 = [e^-0.5 - 0.5 = 0.106531, e^1 - 2 = 0.718282]
    logp, ref = t([-1.0, -2.0]), t([-1.5, -1.0])
    close(get_kl("k1")(logp, ref), [[0.5, -1.0]])
    close(get_kl("k2")(logp, ref), [[0.125, 0.5]])
    close(get_kl("k3")(logp, ref), [[0.106531, 0.718282]])
    assert get_kl("low_var_kl") is get_kl("k3")


def test_k3_is_clamped_and_nonnegative():
    # ref - logp = 100 is clamped to 10 -> e^10 - 10 - 1 = 22015.4658
    k3 = get_kl("k3")(t([-100.0, -1.0]), t([0.0, -1.0]))
    close(k3, [[math.exp(10) - 11, 0.0]], atol=1e-2)


def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])  # (B=1, T=2, V=4)
    close(entropy_from_logits(logits), [[math.log(4), 0.0]])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_probs_and_entropy_over_chunks_of_positions_equal_the_whole_computation(temperature):
    """C1: chunks of 2 positions (and of 1) give the log-probs, the entropy and their gradients of
    the one-chunk computation within 1e-6 in fp32."""
    from zerosearch.rl.algorithms import log_probs_from_logits

    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 7, 50, generator=gen)).requires_grad_()
    targets = torch.randint(0, 50, (3, 7), generator=gen)
    weights = torch.rand(3, 7, generator=gen)

    def run(chunk_elements, entropy):
        logits.grad = None
        lp, ent = log_probs_from_logits(logits, targets, temperature=temperature, entropy=entropy,
                                        chunk_elements=chunk_elements)
        ((lp + (ent if entropy == "grad" else 0)) * weights).sum().backward()
        return lp.detach(), ent, logits.grad.clone()

    for entropy in ("grad", "detached", None):
        whole = run(10**9, entropy)
        assert whole[0].shape == (3, 7) and whole[0].dtype == torch.float32
        for chunk in (3 * 50 * 2, 1):  # 2 positions a chunk; 1 position (the minimum)
            chunked = run(chunk, entropy)
            torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=1e-6)
            torch.testing.assert_close(chunked[2], whole[2], rtol=0, atol=1e-6)
            if entropy is None:
                assert chunked[1] is None and whole[1] is None
            else:
                torch.testing.assert_close(chunked[1].detach(), whole[1].detach(), rtol=0, atol=1e-6)
                assert chunked[1].requires_grad == whole[1].requires_grad == (entropy == "grad")
    z = logits.detach() / temperature
    torch.testing.assert_close(whole[0], z.log_softmax(-1).gather(-1, targets[..., None])[..., 0], rtol=1e-6, atol=1e-6)


def test_log_probs_of_bf16_logits_are_fp32_and_chunked_alike():
    from zerosearch.rl.algorithms import log_probs_from_logits

    logits = torch.randn(2, 5, 40, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    targets = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(2))
    whole, ent = log_probs_from_logits(logits, targets, entropy="detached")
    chunked, ent_chunked = log_probs_from_logits(logits, targets, entropy="detached", chunk_elements=80)
    assert whole.dtype == ent.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(ent_chunked, ent, rtol=0, atol=1e-6)
