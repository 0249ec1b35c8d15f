"""r3hf.ppo: losses against hand-computed values, the sparse/R3HF flag wiring, and one update."""

import math

import pytest
import torch

from r3hf import ops
from r3hf.ppo import (
    PPOConfig,
    Rollout,
    compute_advantages,
    masked_mean,
    policy_loss,
    position_scores,
    ppo_update,
    response_logprobs,
    response_values,
    value_loss,
)


def test_policy_loss_hand_computed():
    # ratios e^0.5 = 1.6487 (clipped to 1.2), e^-0.5 = 0.6065 (clipped to 0.8), 1, masked token
    logprobs = torch.tensor([[0.5, -0.5, 0.0, 3.0]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss, stats = policy_loss(logprobs, old, adv, mask, cliprange=0.2)
    # token 0: max(-1.6487, -1.2) = -1.2 (clipped); token 1: max(-0.6065, -0.8) = -0.6065; token 2: 2
    expected = (-1.2 - math.exp(-0.5) + 2.0) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["clipfrac"] == pytest.approx(1 / 3)
    assert stats["approx_kl"] == pytest.approx(0.5 * (0.25 + 0.25 + 0) / 3)


def test_value_loss_hand_computed():
    values = torch.tensor([[1.0, 0.0, 0.5]])
    old = torch.tensor([[0.0, 0.0, 0.4]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True]])
    loss, stats = value_loss(values, old, returns, mask, cliprange_value=0.2)
    # token 0: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 3.24; token 1: 1 and 1 -> 1;
    # token 2: unclipped 0.25, clipped (0.5-0)^2 = 0.25 (inside the clip range) -> 0.25
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.0 + 0.25) / 3, abs=1e-6)
    assert stats["vf_clipfrac"] == pytest.approx(1 / 3)


def test_masked_mean_ignores_masked_and_empty():
    x = torch.tensor([[1.0, 100.0], [3.0, 5.0]])
    assert masked_mean(x, torch.tensor([[True, False], [True, True]])).item() == pytest.approx(3.0)
    assert masked_mean(x, torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0


def _rollout_from_scores(scores, P, mask, values=None, **kw):
    B, L = mask.shape
    z = torch.zeros(B, L)
    return Rollout(
        query_responses=torch.zeros(B, scores.shape[1], dtype=torch.long), prompt_len=P, response_mask=mask,
        logprobs=kw.get("logprobs", z), ref_logprobs=kw.get("ref_logprobs", z),
        values=values if values is not None else z, scores=scores,
    )


def test_sparse_and_r3hf_hand_computed():
    # P = 2 prompt positions, 3 response tokens; prefix scores 0.1 (prompt), 0.5, 0.2, 1.0
    scores = torch.tensor([[0.0, 0.1, 0.5, 0.2, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    rollout = _rollout_from_scores(scores, 2, mask)
    base = dict(kl_coef=0.0, gamma=1.0, lam=1.0, whiten_advantages=False)
    sparse = compute_advantages(rollout, PPOConfig(reward="sparse", **base))
    dense = compute_advantages(rollout, PPOConfig(reward="r3hf", **base))
    torch.testing.assert_close(sparse.rewards, torch.tensor([[0.0, 0.0, 1.0]]))
    torch.testing.assert_close(dense.rewards, torch.tensor([[0.4, -0.3, 0.8]]))
    # γ = λ = 1, V = 0: advantages are rewards-to-go
    torch.testing.assert_close(sparse.advantages, torch.tensor([[1.0, 1.0, 1.0]]))
    torch.testing.assert_close(dense.advantages, torch.tensor([[0.9, 0.5, 0.8]]))
    half = compute_advantages(rollout, PPOConfig(reward="r3hf", beta_c=0.5, **base))
    torch.testing.assert_close(half.rewards, 0.5 * dense.rewards + 0.5 * sparse.rewards)
    # the sparse flag ignores beta_c
    assert PPOConfig(reward="sparse", beta_c=1.0).effective_beta_c == 0.0


def test_flag_wiring_matches_ops_and_fused_path():
    gen = torch.Generator().manual_seed(0)
    B, P, L, D = 3, 4, 6, 8
    S = P + L
    hidden = torch.randn(B, S, D, generator=gen)
    weight = torch.randn(1, D, generator=gen)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:3] = False
    values = torch.randn(B, L, generator=gen)
    logprobs = -torch.rand(B, L, generator=gen)
    ref = -torch.rand(B, L, generator=gen)
    scores = ops.prefix_scores(hidden, weight)
    for reward, beta in (("sparse", 0.0), ("r3hf", 1.0)):
        cfg = PPOConfig(reward=reward, kl_coef=0.1, gamma=0.99, lam=0.9, whiten_advantages=True)
        common = dict(query_responses=torch.zeros(B, S, dtype=torch.long), prompt_len=P, response_mask=mask,
                      logprobs=logprobs, ref_logprobs=ref, values=values)
        fused = compute_advantages(Rollout(**common, rm_hidden=hidden, rm_weight=weight), cfg)
        split = compute_advantages(Rollout(**common, scores=scores), cfg)
        r = ops.token_rewards(scores, mask, P, logprobs=logprobs, ref_logprobs=ref, kl_coef=0.1, beta_c=beta)
        a, ret = ops.gae(r, values, mask, 0.99, 0.9)
        for got in (fused, split):
            torch.testing.assert_close(got.rewards, r)
            torch.testing.assert_close(got.returns, ret)
            torch.testing.assert_close(got.advantages, ops.masked_whiten(a, mask))


def test_config_and_rollout_errors():
    with pytest.raises(ValueError, match="reward"):
        PPOConfig(reward="dense")
    mask = torch.ones(1, 2, dtype=torch.bool)
    r = _rollout_from_scores(torch.zeros(1, 4), 2, mask)
    r.scores = None
    with pytest.raises(ValueError, match="rm_hidden"):
        compute_advantages(r, PPOConfig())


def _tiny_models():
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = dict(vocab_size=12, n_positions=16, n_embd=16, n_layer=1, n_head=2, pad_token_id=0,
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    policy = GPT2LMHeadModel(GPT2Config(**cfg))
    critic = GPT2ForSequenceClassification(GPT2Config(num_labels=1, **cfg))
    return policy, critic


def test_response_logprobs_values_match_manual():
    policy, critic = _tiny_models()
    ids = torch.randint(1, 12, (2, 7), generator=torch.Generator().manual_seed(1))
    P, L = 3, 4
    with torch.no_grad():
        logprobs, entropy = response_logprobs(policy, ids, P, L)
        logits = policy(ids).logits
        values = response_values(critic, ids, torch.tensor([P, P]), L)
        full = position_scores(critic, ids)
    for b in range(2):
        for j in range(L):
            lp = torch.log_softmax(logits[b, P + j - 1], -1)
            assert logprobs[b, j].item() == pytest.approx(lp[ids[b, P + j]].item(), abs=1e-5)
            assert entropy[b, j].item() == pytest.approx(-(lp.exp() * lp).sum().item(), abs=1e-5)
            assert values[b, j].item() == pytest.approx(full[b, P + j - 1].item(), abs=1e-6)
    # the critic's head at the last position is the model's own sequence score (no padding)
    with torch.no_grad():
        assert full[:, -1].tolist() == pytest.approx(critic(ids).logits[:, 0].tolist(), abs=1e-5)


def test_ppo_update_moves_policy_towards_positive_advantage():
    policy, critic = _tiny_models()
    gen = torch.Generator().manual_seed(2)
    B, P, L = 8, 3, 4
    ids = torch.randint(1, 12, (B, P + L), generator=gen)
    mask = torch.ones(B, L, dtype=torch.bool)
    with torch.no_grad():
        old, _ = response_logprobs(policy, ids, P, L)
        values = response_values(critic, ids, P, L)
    rollout = Rollout(ids, P, mask, old, old.clone(), values, scores=torch.randn(B, P + L, generator=gen))
    cfg = PPOConfig(ppo_epochs=2, num_minibatches=2, whiten_advantages=False)
    adv = compute_advantages(rollout, cfg)
    adv.advantages = torch.where(torch.arange(B)[:, None] < B // 2, 1.0, -1.0).expand(B, L).clone()
    opt = torch.optim.Adam(list(policy.parameters()) + list(critic.parameters()), lr=1e-2)
    snapshot = [t.clone() for t in (ids, mask, old, values)]
    metrics = ppo_update(policy, critic, opt, rollout, adv, cfg, generator=torch.Generator().manual_seed(0))
    for a, b in zip(snapshot, (ids, mask, old, values)):
        assert torch.equal(a, b)  # the rollout is not modified
    for key in ("loss", "pg_loss", "vf_loss", "entropy", "clipfrac", "approx_kl", "vf_clipfrac", "kl_to_ref"):
        assert math.isfinite(metrics[key]), key
    assert metrics["kl_to_ref"] == 0.0
    with torch.no_grad():
        new, _ = response_logprobs(policy, ids, P, L)
    delta = (new - old).sum(1)
    assert delta[: B // 2].mean() > delta[B // 2:].mean()
