"""beta_c="auto": potential β(t)·Φ_t with β(t) = clip(Cov(R, Φ_t)/Var(Φ_t), 0, 1), leave-one-out
over the batch. Property: the return's variance is never above sparse's by more than estimation
noise, whether Φ is useless or perfect; with a perfect Φ it is far below."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r3hf import ops
from r3hf._dispatch import BackendUnavailableError
from r3hf.reference.rewards import auto_beta


def synthetic(B: int, L: int, kind: str, seed: int, scale: float = 1.0):
    """Prefix scores [B, P + L] of a process whose final score R = prompt term + Σ_t x_t.

    perfect: Φ_t = E[R | prefix] (prompt term + credit so far); useless: Φ_t is noise independent
    of R (with the right final score at the last position, as any reward model has).
    """
    g = torch.Generator().manual_seed(seed)
    P = 3
    prompt = torch.randn(B, generator=g)
    x = torch.randn(B, L, generator=g) * scale
    credit = prompt[:, None] + x.cumsum(1)  # R(x, y≤t)
    scores = torch.zeros(B, P + L)
    scores[:, P - 1] = prompt
    if kind == "perfect":
        scores[:, P:] = credit
    else:
        scores[:, P - 1] = 3.0 * torch.randn(B, generator=g)
        scores[:, P:] = 3.0 * torch.randn(B, L, generator=g)
        scores[:, -1] = credit[:, -1]
    return scores, P


def returns(scores, mask, P, beta_c):
    """Critic-free per-token returns (γ = λ = 1, zero values): the reward-to-go of each token."""
    r = ops.token_rewards(scores, mask, P, beta_c=beta_c)
    adv, _ = ops.gae(r, torch.zeros_like(r), mask, 1.0, 1.0)
    return adv


@settings(deadline=None)
@given(B=st.integers(64, 400), L=st.integers(1, 24), kind=st.sampled_from(["perfect", "useless"]),
       seed=st.integers(0, 10_000), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_auto_never_adds_variance_beyond_noise(B, L, kind, seed, scale):
    scores, P = synthetic(B, L, kind, seed, scale)
    mask = torch.ones(B, L, dtype=torch.bool)
    sparse = returns(scores, mask, P, 0.0).var(0)
    auto = returns(scores, mask, P, "auto").var(0)
    # Estimation noise of a leave-one-out β on B rows adds O(Var(R)/B) at worst.
    assert bool((auto <= sparse * (1 + 10.0 / B) + 1e-6).all()), (auto / sparse).max()
    if kind == "perfect" and L >= 4:
        # A perfect Φ is used: late positions keep far less than sparse's variance.
        assert float(auto[-1] / sparse[-1]) < 0.5
        r3hf = returns(scores, mask, P, 1.0).var(0)
        torch.testing.assert_close(auto, r3hf, rtol=0.1, atol=1e-3 * float(sparse.max()))


def test_useless_phi_gets_beta_near_zero_and_perfect_phi_near_one():
    B, L = 512, 6
    for kind, lo, hi in (("useless", 0.0, 0.1), ("perfect", 0.9, 1.0)):
        scores, P = synthetic(B, L, kind, 0)
        phi = scores[:, P - 1: P - 1 + L]
        beta = auto_beta(phi, scores[:, -1], torch.ones(B, L, dtype=torch.bool))
        assert lo <= float(beta[:, 1:].mean()) <= hi, (kind, beta.mean(0))


def test_rows_telescope_and_leave_one_out():
    B, L = 40, 7
    scores, P = synthetic(B, L, "perfect", 1)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 2:4] = False  # a hole (multi-turn observation)
    mask[1, 5:] = False  # a shorter row
    mask[2] = False  # an empty row
    r = ops.token_rewards(scores, mask, P, beta_c="auto")
    phi = torch.stack([scores[:, P - 1 + j] for j in range(L)], 1)
    phi[0, 4] = scores[0, P + 1]  # the token after a hole is differenced against the token before it
    final = torch.tensor([scores[b, P + int(mask[b].nonzero().max())] if mask[b].any() else 0.0 for b in range(B)])
    beta = auto_beta(phi, final, mask)
    # Σ_t r_t = R − β(first token)·Φ_first: shaping changes only where the return starts
    for b in (0, 1, 5):
        torch.testing.assert_close(r[b].sum(), final[b] - beta[b, 0] * phi[b, 0], rtol=1e-5, atol=1e-5)
    assert bool((r[2] == 0).all())
    # Leave-one-out: row 5's β does not move when row 5's own scores do
    moved = scores.clone()
    moved[5] *= 7.0
    phi2 = phi.clone()
    phi2[5] *= 7.0
    final2 = final.clone()
    final2[5] *= 7.0
    torch.testing.assert_close(auto_beta(phi2, final2, mask)[5], beta[5], rtol=0, atol=0)
    assert bool(((beta >= 0) & (beta <= 1)).all())
    # Too few other rows: β = 0, i.e. sparse
    two = ops.token_rewards(scores[:2, :], torch.ones(2, L, dtype=torch.bool), P, beta_c="auto")
    torch.testing.assert_close(two, ops.token_rewards(scores[:2], torch.ones(2, L, dtype=torch.bool), P, beta_c=0.0))


def test_auto_through_every_op_and_backend_fallback():
    B, L, D = 16, 5, 8
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(B, 3 + L, D, generator=g)
    weight = torch.randn(D, generator=g)
    values = torch.randn(B, L, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[3, 2:] = False
    logp, ref = -torch.rand(B, L, generator=g), -torch.rand(B, L, generator=g)
    scores = ops.prefix_scores(hidden, weight)
    r = ops.token_rewards(scores, mask, 3, beta_c="auto", logprobs=logp, ref_logprobs=ref, kl_coef=0.1)
    red = ops.redistribute(scores, mask, 3, beta_c="auto")
    kl = ops.kl_penalty(logp, ref)
    torch.testing.assert_close(r, torch.where(mask, red - 0.1 * kl, 0.0), rtol=1e-5, atol=1e-6)
    rewards, adv, ret = ops.fused_reward_gae(hidden, weight, None, values, mask, 3, beta_c="auto", logprobs=logp,
                                             ref_logprobs=ref, kl_coef=0.1)
    torch.testing.assert_close(rewards, r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((adv, ret), ops.gae(r, values, mask), rtol=1e-5, atol=1e-6)
    # Native backends do not implement it: "auto" falls back to torch, an explicit request refuses.
    for name in ("cpp", "triton"):
        with pytest.raises(BackendUnavailableError, match="beta_c_auto|cannot run"):
            ops.token_rewards(scores, mask, 3, beta_c="auto", backend=name)
    with pytest.raises(ValueError, match='beta_c must be a float in \\[0, 1\\] or "auto"'):
        ops.redistribute(scores, mask, 3, beta_c="adaptive")
    with pytest.raises(ValueError, match="beta_c"):
        ops.redistribute(scores, mask, 3, beta_c=1.5)


def test_auto_in_ppo_config_and_redistributor():
    from r3hf.ppo import PPOConfig, Rollout, compute_advantages

    B, L, P = 12, 4, 3
    scores, _ = synthetic(B, L, "perfect", 5)
    mask = torch.ones(B, L, dtype=torch.bool)
    zeros = torch.zeros(B, L)
    ro = Rollout(torch.zeros(B, P + L, dtype=torch.long), P, mask, zeros, zeros, zeros, scores=scores)
    cfg = PPOConfig(reward="r3hf", beta_c="auto", whiten_advantages=False, kl_coef=0.0)
    assert cfg.effective_beta_c == "auto" and PPOConfig(reward="sparse", beta_c="auto").effective_beta_c == 0.0
    got = compute_advantages(ro, cfg)
    torch.testing.assert_close(got.rewards, ops.token_rewards(scores, mask, P, beta_c="auto"))
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from r3hf.models import RewardRedistributor, prefix_scores

    torch.manual_seed(0)
    rm = GPT2ForSequenceClassification(GPT2Config(vocab_size=30, n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                                  num_labels=1, pad_token_id=0, bos_token_id=1, eos_token_id=1)).eval()
    ids = torch.randint(2, 30, (B, P + L), generator=torch.Generator().manual_seed(0))
    rr = RewardRedistributor(rm, beta_c="auto")
    expect = ops.token_rewards(prefix_scores(rm, ids), mask, P, beta_c="auto")
    torch.testing.assert_close(rr(ids, P, mask), expect)
    fused, _, _ = rr.fused_reward_gae(ids, P, mask, values=zeros)
    torch.testing.assert_close(fused, expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="beta_c"):
        RewardRedistributor(rm, beta_c="sometimes")


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp_baseline"])
def test_auto_in_the_fused_group_op(estimator):
    B, L, D, G = 16, 6, 8, 4
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(B, 2 + L, D, generator=g)
    weight = torch.randn(D, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[5, 3:] = False
    rewards, adv = ops.fused_reward_group_advantages(hidden, weight, None, mask, 2, G, estimator, beta_c="auto")
    expect = ops.token_rewards(ops.prefix_scores(hidden, weight), mask, 2, beta_c="auto")
    torch.testing.assert_close(rewards, expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(adv, ops.group_advantages(expect, mask, G, estimator), rtol=1e-5, atol=1e-6)
    with pytest.raises(BackendUnavailableError):
        ops.fused_reward_group_advantages(hidden, weight, None, mask, 2, G, estimator, beta_c="auto", backend="cpp")
