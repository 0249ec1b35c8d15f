"""r3hf.integrations.openrlhf against a test-only transcription of OpenRLHF 0.11's documented loop,
and against OpenRLHF's own source where it is installed.

The `peer_*` functions below restate OpenRLHF's behaviour (openrlhf/models/utils.py and
trainer/ppo_utils/experience_maker.py of 0.11) as plain per-row loops, written for this test.
Where openrlhf is installed (`pip install --no-deps openrlhf==0.11.0`; CI does so in
.ci/steps/41-openrlhf.sh), the real `compute_approx_kl` / `compute_reward` are also compared,
loaded by tests/openrlhf_real.py with OpenRLHF's unused heavy imports (deepspeed, ...) stubbed.
"""


import pytest
import torch

from r3hf.integrations import openrlhf as adapter

from peer_batches import SHAPES, assert_close, logprobs, randn, response_mask

# --- the peer, restated -------------------------------------------------------------------


def peer_kl(log_probs, log_probs_base, estimator):
    d = log_probs.float() - log_probs_base.float()
    if estimator == "k1":
        value = d
    elif estimator == "k2":
        value = d * d / 2.0
    else:  # k3, with the log ratio floored at −10 before the exponential
        floored = torch.clamp(d, min=-10.0)
        value = torch.exp(-floored) - 1.0 + floored
    return torch.clamp(value, -10.0, 10.0)


def peer_compute_reward(r, kl_coef, kl, mask, clip):
    kl_coef = kl_coef if kl_coef > 0 else 0.0
    if clip:
        r = r.clamp(clip[0], clip[1])
    B, A = kl.shape
    score = torch.zeros(B, A)
    for b in range(B):
        where = A - 1  # no action token: the last position
        for t in range(A - 1, -1, -1):
            if mask[b, t]:
                where = t
                break
        score[b, where] = r[b]
    return score + (-kl_coef * kl)


def peer_gae(values, rewards, mask, gamma, lambd):
    m = mask.float()
    values, rewards = values * m, rewards * m
    B, A = rewards.shape
    advantages = torch.zeros(B, A)
    running = torch.zeros(B)
    for t in range(A - 1, -1, -1):
        next_value = values[:, t + 1] if t + 1 < A else torch.zeros(B)
        running = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lambd * running
        advantages[:, t] = running
    return advantages, advantages + values


def peer_normalize(advantages_list, masks_list):
    flat = torch.cat([a.flatten() for a in advantages_list]).float()
    flat_mask = torch.cat([m.flatten() for m in masks_list]).float()
    n = flat_mask.sum()
    mean = (flat * flat_mask).sum() / n
    var = ((flat - mean) ** 2 * flat_mask).sum() / n
    rstd = torch.clamp(var, min=1e-8).rsqrt()
    return [(a - mean) * rstd for a in advantages_list]


def peer_dense_reward(scores, kl_coef, kl, mask, clip, first, beta_c):
    """R3HF in OpenRLHF's layout, by its definition: action a is sequence token a + 1."""
    B, A = kl.shape
    out = torch.zeros(B, A)
    for b in range(B):
        actions = [a for a in range(A) if mask[b, a]]
        for k, a in enumerate(actions):
            phi_in = scores[b, a] if (k > 0 or first == "prompt") else torch.tensor(0.0)
            phi_out = scores[b, actions[k + 1]] if k + 1 < len(actions) else scores[b, a + 1]
            sparse = scores[b, a + 1] if k + 1 == len(actions) else torch.tensor(0.0)
            value = beta_c * (phi_out - phi_in) + (1 - beta_c) * sparse if beta_c != 1.0 else phi_out - phi_in
            out[b, a] = value.clamp(clip[0], clip[1]) if clip else value
    kl_coef = kl_coef if kl_coef > 0 else 0.0
    return out + (-kl_coef * kl)


# --- batches in OpenRLHF's layout: prompt positions (0), turns with holes, padding ----------


def _batch(B, A, seed, prompt=True):
    gen = torch.Generator().manual_seed(seed)
    P = 3 if prompt and A > 4 else 0
    mask = torch.cat([torch.zeros(B, P, dtype=torch.bool), response_mask(B, A - P, gen=gen)], dim=1)
    return dict(
        mask=mask,
        values=randn(B, A, gen=gen),
        rewards=randn(B, A, gen=gen),
        r=randn(B, gen=gen, scale=3.0),
        log_probs=logprobs(B, A, gen=gen),
        log_probs_base=logprobs(B, A, gen=gen),
        scores=randn(B, A + 1, gen=gen),
    )


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("B,A", SHAPES)
def test_approx_kl(estimator, B, A):
    b = _batch(B, A, seed=A)
    got = adapter.compute_approx_kl(b["log_probs"], b["log_probs_base"], estimator)
    assert_close(got, peer_kl(b["log_probs"], b["log_probs_base"], estimator), estimator)


def test_approx_kl_clamps_every_estimator_and_rejects_abs():
    lp = torch.tensor([[0.0, -30.0, 0.0]])
    base = torch.tensor([[-30.0, 0.0, 0.0]])
    assert adapter.compute_approx_kl(lp, base, "k1").tolist() == [[10.0, -10.0, 0.0]]
    assert adapter.compute_approx_kl(lp, base, "k3")[0, 1].item() == 10.0
    with pytest.raises(ValueError, match="kl_estimator"):
        adapter.compute_approx_kl(lp, base, "abs")


@pytest.mark.parametrize("B,A", SHAPES)
@pytest.mark.parametrize("kl_coef,clip", [(0.05, None), (0.0, (-1.0, 1.0)), (-0.3, None), (0.1, (-0.5, 2.0))])
def test_compute_reward(B, A, kl_coef, clip):
    b = _batch(B, A, seed=B + A)
    kl = adapter.compute_approx_kl(b["log_probs"], b["log_probs_base"], "k3")
    got = adapter.compute_reward(b["r"], kl_coef, kl, action_mask=b["mask"], reward_clip_range=clip)
    assert_close(got, peer_compute_reward(b["r"], kl_coef, kl, b["mask"], clip), "reward")


def test_compute_reward_without_mask_and_float_score():
    kl = torch.randn(3, 5)
    got = adapter.compute_reward(2.0, 0.1, kl)
    want = peer_compute_reward(torch.full((3,), 2.0), 0.1, kl, torch.ones(3, 5, dtype=torch.bool), None)
    assert_close(got, want)


@pytest.mark.parametrize("B,A", SHAPES)
@pytest.mark.parametrize("gamma,lambd", [(1.0, 1.0), (0.99, 0.95), (0.7, 0.0)])
@pytest.mark.parametrize("prompt", [True, False])
def test_gae_and_normalisation(B, A, gamma, lambd, prompt):
    b = _batch(B, A, seed=3 * A + B, prompt=prompt)
    inputs = {k: v.clone() for k, v in b.items()}
    adv, ret = adapter.get_advantages_and_returns(b["values"], b["rewards"], b["mask"], gamma, lambd)
    want_adv, want_ret = peer_gae(b["values"], b["rewards"], b["mask"], gamma, lambd)
    assert_close(adv, want_adv, "advantages")
    assert_close(ret, want_ret, "returns")
    if b["mask"].any():
        norm = adapter.normalize_advantages(adv, b["mask"])
        assert_close(norm, peer_normalize([want_adv], [b["mask"]])[0], "normalised advantages")
    for k in b:
        assert torch.equal(b[k], inputs[k]), f"{k} was modified"


def test_normalisation_over_experiences_of_different_lengths():
    gen = torch.Generator().manual_seed(0)
    advs = [randn(1, n, gen=gen) for n in (5, 1, 47, 12)]
    masks = [response_mask(1, n, gen=gen) | (torch.arange(n) == 0) for n in (5, 1, 47, 12)]
    got = adapter.normalize_advantages(advs, masks)
    want = peer_normalize(advs, masks)
    assert [g.shape for g in got] == [a.shape for a in advs]
    for g, w in zip(got, want):
        assert_close(g, w)


def test_normalisation_floors_the_variance():
    # Nearly constant advantages: var < 1e-8, where max(var, eps) and var + eps differ by ~0.5%.
    gen = torch.Generator().manual_seed(1)
    adv = 1e-5 * randn(4, 30, gen=gen)  # var ~1e-10, below the 1e-8 floor
    mask = torch.ones(4, 30, dtype=torch.bool)
    mask[0, 10:] = False
    assert_close(adapter.normalize_advantages(adv, mask), peer_normalize([adv], [mask])[0])


@pytest.mark.parametrize("B,A", SHAPES)
@pytest.mark.parametrize("first,beta_c,clip", [("prompt", 1.0, None), ("zero", 1.0, None), ("prompt", 0.5, (-1, 1))])
def test_dense_reward(B, A, first, beta_c, clip):
    b = _batch(B, A, seed=7 * A + B)
    kl = adapter.compute_approx_kl(b["log_probs"], b["log_probs_base"], "k1")
    got = adapter.compute_dense_reward(
        b["scores"], 0.05, kl, b["mask"], clip, advantage_estimator="gae", first=first, beta_c=beta_c
    )
    assert_close(got, peer_dense_reward(b["scores"], 0.05, kl, b["mask"], clip, first, beta_c), "dense reward")


def test_dense_reward_sparse_limit_is_compute_reward():
    """beta_c = 0: the final prefix score on the last action token, as compute_reward places r."""
    b = _batch(5, 47, seed=9)
    kl = adapter.compute_approx_kl(b["log_probs"], b["log_probs_base"], "k2")
    m = b["mask"]
    has = m.any(1)
    last = 46 - m.flip(1).to(torch.int64).argmax(1)
    final = b["scores"].gather(1, (last + 1)[:, None]).squeeze(1)
    dense = adapter.compute_dense_reward(b["scores"], 0.1, kl, m, advantage_estimator="reinforce", beta_c=0.0)
    sparse = adapter.compute_reward(final, 0.1, kl, action_mask=m)
    assert_close(dense[has], sparse[has])


def test_bad_inputs():
    kl = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="action_mask"):
        adapter.compute_reward(torch.zeros(2), 0.1, kl, action_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="r must be"):
        adapter.compute_reward(torch.zeros(3), 0.1, kl)
    with pytest.raises(ValueError, match="scores"):
        adapter.compute_dense_reward(torch.zeros(2, 4), 0.1, kl, torch.ones(2, 4), advantage_estimator="gae")


# --- the real package, where it can be loaded ---------------------------------------------


def _real_models_utils():
    import openrlhf_real

    modules = openrlhf_real.load()
    return None if modules is None else modules["openrlhf.models.utils"]


@pytest.fixture(scope="module")
def real():
    module = _real_models_utils()
    if module is None:
        pytest.skip("openrlhf 0.11 is not installed")
    return module


@pytest.mark.parametrize("B,A", SHAPES)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("kl_coef,clip", [(0.05, None), (-0.1, (-1.0, 1.0)), (0.2, (-0.5, 2.0))])
def test_real_openrlhf_kl_and_reward(real, B, A, estimator, kl_coef, clip):
    b = _batch(B, A, seed=A + 31 * B)
    want_kl = real.compute_approx_kl(b["log_probs"], b["log_probs_base"], kl_estimator=estimator)
    kl = adapter.compute_approx_kl(b["log_probs"], b["log_probs_base"], estimator)
    assert_close(kl, want_kl, "kl")
    want = real.compute_reward(b["r"], kl_coef, want_kl, action_mask=b["mask"], reward_clip_range=clip)
    assert_close(adapter.compute_reward(b["r"], kl_coef, kl, action_mask=b["mask"], reward_clip_range=clip), want)
    # and the transcription agrees with the real package
    assert_close(peer_compute_reward(b["r"], kl_coef, want_kl, b["mask"], clip), want, "transcription")
