"""The reference against small cases computed by hand."""

import pytest
import torch

import r3hf.ops as ops

T = torch.tensor


def test_prefix_scores_by_hand():
    hidden = T([[[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]])  # [1, 3, 2]
    weight = T([[2.0, 1.0]])  # HF score.weight shape [1, D]
    scores = ops.prefix_scores(hidden, weight, 0.5, backend="torch")
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, T([[4.5, 5.5, 2.0]]))
    torch.testing.assert_close(ops.prefix_scores(hidden, weight[0], T([0.5])), scores)
    torch.testing.assert_close(ops.prefix_scores(hidden, weight[0]), scores - 0.5)


# scores for a 2-token prompt and 4 response positions: positions 0..5
SCORES = T([[0.0, 1.0, 3.0, 2.0, 6.0, 10.0]])


def test_contiguous_mask_is_the_difference_of_consecutive_scores():
    mask = T([[1, 1, 1, 1]])
    r = ops.redistribute(SCORES, mask, 2)
    torch.testing.assert_close(r, T([[2.0, -1.0, 4.0, 4.0]]))
    assert r.sum() == SCORES[0, 5] - SCORES[0, 1]


def test_first_zero_uses_zero_baseline():
    r = ops.redistribute(SCORES, T([[1, 1, 1, 1]]), 2, first="zero")
    torch.testing.assert_close(r, T([[3.0, -1.0, 4.0, 4.0]]))


def test_trailing_padding_ends_at_last_generated_token():
    r = ops.redistribute(SCORES, T([[1, 1, 0, 0]]), 2)
    torch.testing.assert_close(r, T([[2.0, -1.0, 0.0, 0.0]]))


def test_hole_is_credited_to_the_generated_token_before_it():
    # response positions 2,3,4,5; position 3 is an observation token (masked).
    # Φ_1 = s[1] = 1, Φ_2 = s[4 - 1] = 2, Φ_3 = s[5 - 1] = 6, Φ_4 = s[5] = 10.
    r = ops.redistribute(SCORES, T([[1, 0, 1, 1]]), 2)
    torch.testing.assert_close(r, T([[1.0, 0.0, 4.0, 4.0]]))
    assert r.sum() == 10.0 - 1.0


def test_leading_masked_span_is_credited_to_the_first_generated_token():
    r = ops.redistribute(SCORES, T([[0, 0, 1, 1]]), 2)
    # Φ_1 = s[1] = 1, Φ_2 = s[5 - 1] = 6, Φ_3 = s[5] = 10
    torch.testing.assert_close(r, T([[0.0, 0.0, 5.0, 4.0]]))


def test_sparse_mix_puts_final_score_on_last_token():
    mask = T([[1, 1, 1, 0]])
    sparse = ops.redistribute(SCORES, mask, 2, beta_c=0.0)
    torch.testing.assert_close(sparse, T([[0.0, 0.0, 6.0, 0.0]]))
    half = ops.redistribute(SCORES, mask, 2, beta_c=0.5)
    dense = ops.redistribute(SCORES, mask, 2)
    torch.testing.assert_close(half, 0.5 * dense + 0.5 * sparse)


def test_all_masked_row_is_zero():
    scores = torch.cat([SCORES, SCORES + 1])
    mask = T([[1, 1, 1, 1], [0, 0, 0, 0]])
    r = ops.redistribute(scores, mask, 2, beta_c=0.3)
    assert torch.equal(r[1], torch.zeros(4))


def test_per_row_prompt_len():
    scores = T([[0.0, 1.0, 3.0, 2.0, 6.0], [5.0, 1.0, 3.0, 2.0, 6.0]])
    r = ops.redistribute(scores, T([[1, 1], [1, 1]]), T([1, 3]))
    torch.testing.assert_close(r, T([[1.0, 2.0], [-1.0, 4.0]]))


@pytest.mark.parametrize(
    "estimator, expected",
    [
        ("k1", lambda d: d),
        ("k2", lambda d: d * d / 2),
        ("k3", lambda d: torch.exp(-d) - 1 + d),
        ("abs", lambda d: d.abs()),
    ],
)
def test_kl_estimators(estimator, expected):
    lp = T([[-1.0, -0.5, -2.0]])
    ref = T([[-1.5, -0.5, -0.25]])
    torch.testing.assert_close(ops.kl_penalty(lp, ref, estimator), expected(lp - ref))


def test_kl_clamp_forms():
    lp, ref = T([[3.0, -3.0, 0.5]]), T([[0.0, 0.0, 0.0]])
    torch.testing.assert_close(ops.kl_penalty(lp, ref, clamp=1.0), T([[1.0, -1.0, 0.5]]))
    torch.testing.assert_close(ops.kl_penalty(lp, ref, clamp=(-2.0, 0.25)), T([[0.25, -2.0, 0.25]]))


def test_token_rewards_clip_applies_to_reward_model_part_only():
    mask = T([[1, 1, 1, 0]])
    lp = T([[-1.0, -1.0, -1.0, 7.0]])
    ref = T([[-2.0, -1.0, 0.0, 1.0]])  # k1 = 1, 0, -1, (masked)
    r = ops.token_rewards(SCORES, mask, 2, logprobs=lp, ref_logprobs=ref, kl_coef=0.5, reward_clip=3.0)
    # redistributed 2, -1, 4 -> clipped 2, -1, 3; minus 0.5·kl
    torch.testing.assert_close(r, T([[1.5, -1.0, 3.5, 0.0]]))


def test_gae_by_hand():
    r = T([[1.0, 0.0, 2.0]])
    v = T([[0.5, 1.0, -1.0]])
    mask = T([[1, 1, 1]])
    g, lam = 0.9, 0.5
    d2 = 2.0 - (-1.0)
    d1 = 0.0 + g * -1.0 - 1.0
    d0 = 1.0 + g * 1.0 - 0.5
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    adv, ret = ops.gae(r, v, mask, gamma=g, lam=lam)
    torch.testing.assert_close(adv, T([[a0, a1, a2]]))
    torch.testing.assert_close(ret, T([[a0 + 0.5, a1 + 1.0, a2 - 1.0]]))


def test_gae_hole_carries_value_and_advantage():
    r = T([[1.0, 5.0, 2.0]])
    v = T([[0.5, 9.0, -1.0]])
    mask = T([[1, 0, 1]])
    g, lam = 0.9, 0.5
    a2 = 2.0 - (-1.0)
    a0 = (1.0 + g * -1.0 - 0.5) + g * lam * a2  # the masked position is skipped entirely
    adv, ret = ops.gae(r, v, mask, gamma=g, lam=lam)
    torch.testing.assert_close(adv, T([[a0, 0.0, a2]]))
    torch.testing.assert_close(ret, T([[a0 + 0.5, 0.0, a2 - 1.0]]))


def test_gae_bootstrap():
    adv, _ = ops.gae(T([[0.0]]), T([[1.0]]), T([[1]]), gamma=0.5, lam=1.0, bootstrap=4.0)
    torch.testing.assert_close(adv, T([[0.5 * 4.0 - 1.0]]))
    adv2, _ = ops.gae(T([[0.0], [0.0]]), T([[1.0], [1.0]]), T([[1], [1]]), gamma=0.5, bootstrap=T([4.0, 2.0]))
    torch.testing.assert_close(adv2, T([[1.0], [0.0]]))


def test_masked_whiten_by_hand():
    x = T([[1.0, 2.0, 3.0, 100.0]])
    mask = T([[1, 1, 1, 0]])
    var = 1.0  # unbiased variance of 1, 2, 3
    out = ops.masked_whiten(x, mask, eps=0.0)
    torch.testing.assert_close(out, T([[-1.0, 0.0, 1.0, 0.0]]) / var**0.5)
    biased = ops.masked_whiten(x, mask, unbiased=False, eps=0.0)
    torch.testing.assert_close(biased, T([[-1.0, 0.0, 1.0, 0.0]]) / (2 / 3) ** 0.5)
    kept = ops.masked_whiten(x, mask, shift_mean=False, eps=0.0)
    torch.testing.assert_close(kept, T([[1.0, 2.0, 3.0, 0.0]]))


def test_fused_equals_composition():
    from batches import make_batch

    b = make_batch(B=3, L=11, P=4, D=8, seed=3)
    kw = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, kl_estimator="k3")
    rewards, adv, ret = ops.fused_reward_gae(
        b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"], gamma=0.99, lam=0.9, **kw
    )
    scores = ops.prefix_scores(b["hidden"], b["weight"], b["bias"])
    r2 = ops.token_rewards(scores, b["response_mask"], b["prompt_len"], **kw)
    adv2, ret2 = ops.gae(r2, b["values"], b["response_mask"], gamma=0.99, lam=0.9)
    torch.testing.assert_close(rewards, r2)
    torch.testing.assert_close(adv, adv2)
    torch.testing.assert_close(ret, ret2)
