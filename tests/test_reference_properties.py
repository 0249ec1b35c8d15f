"""Properties of the reference: the math the spec promises, checked on random batches."""

import torch
from hypothesis import given
from hypothesis import strategies as st

import r3hf.ops as ops
# The TRL/OpenRLHF loop (padding zeroed, every position visited), as benchmarked against.
from r3hf.bench.baselines import plain_loop_gae as _plain_loop


@st.composite
def batches(draw, max_B=5, max_L=24):
    B = draw(st.integers(1, max_B))
    L = draw(st.integers(1, max_L))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    per_row = draw(st.booleans())
    if per_row:
        prompt_len = torch.randint(1, 6, (B,), generator=gen)
        P = int(prompt_len.max())
    else:
        prompt_len = P = draw(st.integers(1, 5))
    S = P + L + draw(st.integers(0, 3))
    kind = draw(st.sampled_from(["full", "trailing", "holes", "random"]))
    lengths = torch.randint(0, L + 1, (B,), generator=gen)
    if kind == "full":
        mask = torch.ones(B, L, dtype=torch.bool)
    elif kind == "trailing":
        mask = torch.arange(L)[None] < lengths[:, None]
    elif kind == "holes":
        mask = (torch.arange(L)[None] < lengths[:, None]) & (torch.rand(B, L, generator=gen) > 0.3)
    else:
        mask = torch.rand(B, L, generator=gen) > 0.5
    return dict(
        scores=torch.randn(B, S, generator=gen),
        rewards=torch.randn(B, L, generator=gen),
        values=torch.randn(B, L, generator=gen),
        mask=mask,
        prompt_len=prompt_len,
        kind=kind,
    )


def _row_prompt_len(prompt_len, b):
    return int(prompt_len[b]) if isinstance(prompt_len, torch.Tensor) else int(prompt_len)


def _definition(scores, mask, prompt_len, first):
    """The potentials of the spec, one row at a time, in plain Python."""
    B, L = mask.shape
    out = torch.zeros(B, L)
    for b in range(B):
        P = _row_prompt_len(prompt_len, b)
        u = [P + j for j in range(L) if mask[b, j]]
        if not u:
            continue
        phi = [float(scores[b, P - 1]) if first == "prompt" else 0.0]
        phi += [float(scores[b, t - 1]) for t in u[1:]]
        phi.append(float(scores[b, u[-1]]))
        for k, t in enumerate(u):
            out[b, t - P] = phi[k + 1] - phi[k]
    return out


@given(batches(), st.sampled_from(["prompt", "zero"]))
def test_redistribute_matches_the_definition_row_by_row(batch, first):
    r = ops.redistribute(batch["scores"], batch["mask"], batch["prompt_len"], first=first)
    torch.testing.assert_close(r, _definition(batch["scores"], batch["mask"], batch["prompt_len"], first))


@given(batches())
def test_dense_rewards_telescope(batch):
    scores, mask, prompt_len = batch["scores"], batch["mask"], batch["prompt_len"]
    r = ops.redistribute(scores, mask, prompt_len)
    for b in range(mask.shape[0]):
        P = _row_prompt_len(prompt_len, b)
        gen = mask[b].nonzero().flatten()
        expected = 0.0 if len(gen) == 0 else float(scores[b, P + gen[-1]] - scores[b, P - 1])
        torch.testing.assert_close(r[b].sum(), torch.tensor(expected), atol=1e-5, rtol=1e-5)


@given(batches())
def test_beta_zero_is_pure_sparse(batch):
    scores, mask, prompt_len = batch["scores"], batch["mask"], batch["prompt_len"]
    r = ops.redistribute(scores, mask, prompt_len, beta_c=0.0)
    expected = torch.zeros_like(r)
    for b in range(mask.shape[0]):
        gen = mask[b].nonzero().flatten()
        if len(gen):
            expected[b, gen[-1]] = scores[b, _row_prompt_len(prompt_len, b) + gen[-1]]
    torch.testing.assert_close(r, expected)


@given(batches(), st.floats(0, 1))
def test_beta_mixes_linearly(batch, beta):
    args = (batch["scores"], batch["mask"], batch["prompt_len"])
    mixed = ops.redistribute(*args, beta_c=beta)
    expected = beta * ops.redistribute(*args) + (1 - beta) * ops.redistribute(*args, beta_c=0.0)
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=1e-5)


@given(batches(), st.floats(-2, 2))
def test_gamma_lambda_one_is_reward_to_go_minus_value(batch, bootstrap):
    r, v, mask = batch["rewards"], batch["values"], batch["mask"]
    adv, ret = ops.gae(r, v, mask, gamma=1.0, lam=1.0, bootstrap=bootstrap)
    to_go = torch.where(mask, r, 0).flip(1).cumsum(1).flip(1) + bootstrap
    torch.testing.assert_close(adv, torch.where(mask, to_go - v, 0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, torch.where(mask, to_go, 0), atol=1e-5, rtol=1e-5)


@given(batches(), st.floats(0, 1), st.floats(0, 1))
def test_trailing_padding_equals_the_plain_loop(batch, gamma, lam):
    B, L = batch["mask"].shape
    lengths = batch["mask"].sum(1)
    mask = torch.arange(L)[None] < lengths[:, None]
    adv, ret = ops.gae(batch["rewards"], batch["values"], mask, gamma=gamma, lam=lam)
    adv2, ret2 = _plain_loop(batch["rewards"], batch["values"], mask.float(), gamma, lam)
    torch.testing.assert_close(adv, adv2 * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, ret2 * mask, atol=1e-5, rtol=1e-5)


@given(batches(), st.floats(0, 1), st.floats(0, 1))
def test_holes_follow_the_carry_rule(batch, gamma, lam):
    """Masked positions are skipped: GAE over a row equals GAE over its generated tokens alone."""
    r, v, mask = batch["rewards"], batch["values"], batch["mask"]
    adv, ret = ops.gae(r, v, mask, gamma=gamma, lam=lam)
    for b in range(mask.shape[0]):
        idx = mask[b].nonzero().flatten()
        assert torch.all(adv[b][~mask[b]] == 0) and torch.all(ret[b][~mask[b]] == 0)
        if len(idx) == 0:
            continue
        a, rt = _plain_loop(r[b, idx][None], v[b, idx][None], torch.ones(1, len(idx)), gamma, lam)
        torch.testing.assert_close(adv[b, idx], a[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ret[b, idx], rt[0], atol=1e-5, rtol=1e-5)


@given(batches(), st.booleans(), st.booleans())
def test_whiten_has_zero_mean_unit_variance_over_the_mask(batch, unbiased, shift_mean):
    x, mask = batch["values"], batch["mask"]
    n = int(mask.sum())
    if n < 3:
        return
    out = ops.masked_whiten(x * 3 + 1, mask, shift_mean=shift_mean, unbiased=unbiased, eps=0.0)
    sel = out[mask].double()
    mean = float((x * 3 + 1)[mask].double().mean())
    center = 0.0 if shift_mean else mean
    assert abs(float(sel.mean()) - center) < 1e-4
    assert abs(float(sel.var(unbiased=unbiased)) - 1.0) < 1e-3
    assert torch.all(out[~mask] == 0)
