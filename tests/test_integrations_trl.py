"""r3hf.integrations.trl against a test-only transcription of TRL 1.12's PPO rollout loop.

TRL removed PPOTrainer in 1.13 and the shared venv has a newer TRL, so `peer_trl` below restates
steps 3–6 of trl/experimental/ppo/ppo_trainer.py (1.12.0) as plain per-row loops, written for
this test. TRL has no multi-turn holes: its rows are a response, EOS, then padding.
"""

import pytest
import torch

from r3hf.integrations import trl as adapter

from peer_batches import SHAPES, assert_close, logprobs, randn

INVALID = 1.0

# --- the peer, restated -------------------------------------------------------------------


def _peer_whiten(x, keep, shift_mean=True):
    n = keep.sum()
    mean = (x * keep).sum() / n
    var = (((x - mean) ** 2) * keep).sum() / n * (n / (n - 1))
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out + mean if not shift_mean else out


def peer_trl(scores, values, lp, ref, seq, kl_coef, estimator, gamma, lam, whiten_rewards):
    B, L = values.shape
    lp, ref, values = lp.clone(), ref.clone(), values.clone()
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad_p1 = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        for t in range(L):
            if t > seq[b]:
                pad[b, t] = True
                lp[b, t] = ref[b, t] = INVALID
            if t > seq[b] + 1:
                pad_p1[b, t] = True
                values[b, t] = 0.0
    log_ratio = ref - lp
    kl = -log_ratio if estimator == "k1" else (torch.exp(log_ratio) - 1) - log_ratio
    rewards = -kl_coef * kl
    for b in range(B):
        where = seq[b] + 1 if seq[b] + 1 < L else seq[b]
        rewards[b, where] += scores[b]
    if whiten_rewards:
        rewards = _peer_whiten(rewards, (~pad_p1).float(), shift_mean=False)
        rewards[pad_p1] = 0.0
    advantages, returns = peer_gae_whiten(rewards, values, seq, gamma, lam)
    return rewards, advantages, returns


def peer_gae_whiten(rewards, values, seq, gamma, lam):
    """TRL's step 6: values zeroed from seq + 2, the plain GAE loop, advantages whitened over t <= seq."""
    B, L = rewards.shape
    values = values.clone()
    pad = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        for t in range(L):
            pad[b, t] = t > seq[b]
            if t > seq[b] + 1:
                values[b, t] = 0.0
    advantages = torch.zeros(B, L)
    for b in range(B):
        running = 0.0
        for t in range(L - 1, -1, -1):
            next_value = values[b, t + 1] if t + 1 < L else 0.0
            running = rewards[b, t] + gamma * next_value - values[b, t] + gamma * lam * running
            advantages[b, t] = running
    returns = advantages + values
    advantages = _peer_whiten(advantages, (~pad).float())
    advantages[pad] = 0.0
    return advantages, returns


def peer_dense(reward_logits, C, seq, lp, ref, kl_coef, estimator):
    """R3HF token rewards by definition, then the same KL term: t <= seq only."""
    B, L = lp.shape
    out = torch.zeros(B, L)
    for b in range(B):
        for t in range(int(seq[b]) + 1):
            d = lp[b, t] - ref[b, t]
            kl = d if estimator == "k1" else torch.exp(-d) - 1 + d
            out[b, t] = reward_logits[b, C + t, 0] - reward_logits[b, C + t - 1, 0] - kl_coef * kl
    return out


# --- batches ------------------------------------------------------------------------------


def _batch(B, L, seed, C=4):
    gen = torch.Generator().manual_seed(seed)
    # every kind of row: truncated (L-1), score just inside (L-2), empty (-1), first token only, random
    kinds = [L - 1, L - 2, -1, 0]
    seq = torch.tensor(
        [kinds[b] if b < len(kinds) else int(torch.randint(-1, L, (1,), generator=gen)) for b in range(B)]
    ).clamp(-1, L - 1)
    lp, ref = logprobs(B, L, gen=gen), logprobs(B, L, gen=gen)
    # what the trainer has: raw logprobs with garbage after EOS (the adapter pads them itself)
    return dict(
        scores=randn(B, gen=gen, scale=2.0),
        values=randn(B, L, gen=gen),
        logprobs=lp.clamp_min(-5.0),
        ref_logprobs=ref.clamp_min(-5.0),
        sequence_lengths=seq,
        reward_logits=randn(B, C + L, 1, gen=gen),
        C=C,
    )


@pytest.mark.parametrize("B,L", SHAPES[1:])
@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("whiten_rewards", [False, True])
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5)])
def test_sparse_mode_equals_trl_loop(B, L, estimator, whiten_rewards, gamma, lam):
    b = _batch(B, L, seed=B * 100 + L)
    if whiten_rewards and int((b["sequence_lengths"] + 2).clamp(max=L).sum()) < 2:
        pytest.skip("TRL cannot whiten fewer than two positions")
    inputs = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
    got = adapter.compute_rewards_and_advantages(
        b["scores"], b["values"], b["logprobs"], b["ref_logprobs"], b["sequence_lengths"], kl_coef=0.05,
        kl_estimator=estimator, gamma=gamma, lam=lam, whiten_rewards=whiten_rewards,
    )
    want = peer_trl(
        b["scores"], b["values"], b["logprobs"], b["ref_logprobs"], b["sequence_lengths"].tolist(), 0.05, estimator,
        gamma, lam, whiten_rewards,
    )
    for name, g, w in zip(("rewards", "advantages", "returns"), got, want):
        assert_close(g, w, name)
    for k, v in b.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, inputs[k]), f"{k} was modified"


def test_sparse_score_placement():
    """The score lands right after EOS when inside the response, else on the last token."""
    L = 6
    seq = torch.tensor([2, 4, 5, -1])
    zeros = torch.zeros(4, L)
    r = adapter.compute_rewards_and_advantages(
        torch.tensor([1.0, 2.0, 3.0, 4.0]), zeros, zeros, zeros, seq, kl_coef=0.0
    ).rewards
    want = torch.zeros(4, L)
    want[0, 3], want[1, 5], want[2, 5], want[3, 0] = 1.0, 2.0, 3.0, 4.0
    assert torch.equal(r, want)


@pytest.mark.parametrize("B,L", SHAPES[1:])
@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("whiten_rewards", [False, True])
def test_r3hf_mode(B, L, estimator, whiten_rewards):
    b = _batch(B, L, seed=B + 7 * L)
    if int((b["sequence_lengths"] + 2).clamp(max=L).sum()) < 2:
        pytest.skip("TRL cannot whiten fewer than two positions")
    got = adapter.compute_rewards_and_advantages(
        None, b["values"], b["logprobs"], b["ref_logprobs"], b["sequence_lengths"], b["C"], kl_coef=0.05,
        kl_estimator=estimator, whiten_rewards=whiten_rewards, mode="r3hf", reward_logits=b["reward_logits"],
    )
    dense = peer_dense(
        b["reward_logits"], b["C"], b["sequence_lengths"], b["logprobs"], b["ref_logprobs"], 0.05, estimator
    )
    # TRL's reward whitening, value, GAE and advantage conventions, applied to the dense rewards.
    want_rewards = dense
    if whiten_rewards:
        pad_p1 = torch.arange(L)[None, :] > (b["sequence_lengths"] + 1)[:, None]
        want_rewards = _peer_whiten(dense, (~pad_p1).float(), shift_mean=False).masked_fill(pad_p1, 0.0)
    assert_close(got.rewards, want_rewards, "rewards")
    want_adv, want_ret = peer_gae_whiten(want_rewards, b["values"], b["sequence_lengths"].tolist(), 1.0, 0.95)
    assert_close(got.advantages, want_adv, "advantages")
    assert_close(got.returns, want_ret, "returns")


def test_r3hf_rows_sum_to_score_minus_prompt_score_with_penalty():
    b = _batch(6, 47, seed=3)
    seq, C = b["sequence_lengths"], b["C"]
    rl = b["reward_logits"][..., 0]
    final = rl.gather(1, (C + seq).clamp_min(0)[:, None]).squeeze(1)
    penalised = final - 1.5 * (seq % 2 == 0)  # a missing_eos_penalty on some rows
    zeros = torch.zeros(6, 47)
    got = adapter.compute_rewards_and_advantages(
        penalised, zeros, zeros, zeros, seq, C, kl_coef=0.05, mode="r3hf", reward_logits=b["reward_logits"]
    )
    has = seq >= 0
    want = torch.where(has, penalised - rl[:, C - 1], torch.zeros(6))
    assert_close(got.rewards.sum(1), want, "row sums")


def test_bad_inputs():
    z = torch.zeros(2, 5)
    seq = torch.tensor([1, 4])
    with pytest.raises(ValueError, match="kl_estimator"):
        adapter.compute_rewards_and_advantages(torch.zeros(2), z, z, z, seq, kl_estimator="k2")
    with pytest.raises(ValueError, match="mode"):
        adapter.compute_rewards_and_advantages(torch.zeros(2), z, z, z, seq, mode="dense")
    with pytest.raises(ValueError, match="reward_logits"):
        adapter.compute_rewards_and_advantages(torch.zeros(2), z, z, z, seq, mode="r3hf")
    with pytest.raises(ValueError, match="sequence_lengths"):
        adapter.compute_rewards_and_advantages(torch.zeros(2), z, z, z, torch.tensor([1, 5]))
    with pytest.raises(ValueError, match="scores"):
        adapter.compute_rewards_and_advantages(None, z, z, z, seq)
    with pytest.raises(ValueError, match="ref_logprobs"):
        adapter.compute_rewards_and_advantages(torch.zeros(2), z, z, torch.zeros(2, 4), seq)


def test_padding_masks():
    pm, pm1 = adapter.padding_masks(torch.tensor([1, -1, 3]), 4)
    assert pm.tolist() == [[False, False, True, True], [True] * 4, [False] * 4]
    assert pm1.tolist() == [[False, False, False, True], [False, True, True, True], [False] * 4]
