"""The group-advantage reference (r3hf.reference.returns / group): hand-computed cases and properties.

Also pins the contract layer (r3hf._group_stats: row pass -> group statistics -> finish) to the
reference, so the C++/Triton backends that plug their passes into it inherit the spec.
"""

import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import r3hf._group_stats as gs
import r3hf.ops
import r3hf.reference as ref


class _TorchOps:
    """r3hf.ops pinned to backend="torch": this file checks the spec itself (validated entry points)."""

    def __getattr__(self, name):
        return functools.partial(getattr(r3hf.ops, name), backend="torch")


ops = _TorchOps()

EPS = 1e-6
ESTIMATORS = gs.ESTIMATORS
SUMMING = ("grpo", "rloo")  # estimators whose baseline and scale only see each row's sum s_i


def _t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def _close(a, b, atol=1e-5, rtol=1e-5, what=""):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=torch.float32), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


# --- hand-computed cases ------------------------------------------------------------------------


def test_reward_to_go_hole_rules_by_hand():
    r = _t([[1.0, 2.0, 3.0, 4.0]])
    m = _t([[1, 0, 1, 1]], torch.bool)
    # skip: the hole carries R; its own reward (2) is ignored and it does not discount.
    _close(ops.reward_to_go(r, m, 0.5, holes="skip"), [[1 + 0.5 * 5, 0, 3 + 0.5 * 4, 4]])
    # discount: the hole has reward 0 but discounts once more.
    _close(ops.reward_to_go(r, m, 0.5, holes="discount"), [[1 + 0.5 * (0.5 * 5), 0, 5, 4]])
    # γ = 1: both are the reverse cumulative sum of the masked rewards.
    for holes in ("skip", "discount"):
        _close(ops.reward_to_go(r, m, 1.0, holes=holes), [[8, 0, 7, 4]])


# rows: score 1 (2 tokens), score 3 (3 tokens), score 5 in a singleton group (1 token)
SPARSE = _t([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [5.0, 0.0, 0.0]])
MASK = _t([[1, 1, 0], [1, 1, 1], [1, 0, 0]], torch.bool)
INDEX = torch.tensor([7, 7, 9])


def test_grpo_by_hand():
    a = ops.group_advantages(SPARSE, MASK, INDEX, "grpo")
    lo, hi = -1 / (math.sqrt(2) + EPS), 1 / (math.sqrt(2) + EPS)
    _close(a, [[lo, lo, 0], [hi, hi, hi], [5 / (1 + EPS), 0, 0]])
    # Dr. GRPO: no division; the singleton keeps its score (mean 0).
    _close(ops.group_advantages(SPARSE, MASK, INDEX, "grpo", scale="none"), [[-1, -1, 0], [1, 1, 1], [5, 0, 0]])
    # batch std of s = std(1, 3, 5) = 2
    sb = 2 + EPS
    _close(ops.group_advantages(SPARSE, MASK, INDEX, "grpo", scale="batch"),
           [[-1 / sb, -1 / sb, 0], [1 / sb, 1 / sb, 1 / sb], [5 / sb, 0, 0]])


def test_grpo_dense_rewards_by_hand():
    # Same scores, spread over the tokens: the first token agrees with the sparse case, later
    # tokens lose what the earlier ones already earned (Φ as a state baseline).
    dense = _t([[0.25, 0.75, 0.0], [1.0, 1.0, 1.0], [5.0, 0.0, 0.0]])
    d = math.sqrt(2) + EPS
    _close(ops.group_advantages(dense, MASK, INDEX, "grpo"),
           [[-1 / d, (0.75 - 2) / d, 0], [1 / d, 0, -1 / d], [5 / (1 + EPS), 0, 0]])


def test_rloo_by_hand():
    _close(ops.group_advantages(SPARSE, MASK, INDEX, "rloo"), [[-2, -2, 0], [2, 2, 2], [5, 0, 0]])
    # group of 3: leave-one-out means
    r = _t([[1.0], [2.0], [6.0]])
    m = torch.ones(3, 1, dtype=torch.bool)
    _close(ops.group_advantages(r, m, 3, "rloo"), [[1 - 4], [2 - 3.5], [6 - 1.5]])


def test_reinforce_pp_by_hand():
    r = _t([[1.0, 1.0], [0.0, 2.0]])
    m = torch.ones(2, 2, dtype=torch.bool)
    # G = [[2, 1], [2, 2]]: mean 1.75, unbiased var 0.25
    k = 1 / math.sqrt(0.25 + EPS)
    _close(ops.group_advantages(r, m, 2, "reinforce_pp"), [[0.25 * k, -0.75 * k], [0.25 * k, 0.25 * k]])
    # with a baseline: s = (2, 2), group mean 2, G − 2 = [[0, −1], [0, 0]] has the same spread
    _close(ops.group_advantages(r, m, 2, "reinforce_pp_baseline"), [[0.25 * k, -0.75 * k], [0.25 * k, 0.25 * k]])
    # two singletons: no baseline, so reinforce_pp_baseline is reinforce_pp
    _close(ops.group_advantages(r, m, 1, "reinforce_pp_baseline"), ops.group_advantages(r, m, 1, "reinforce_pp"))


def test_grpo_process_by_hand():
    r = _t([[1.0, 3.0], [4.0, 9.0]])
    m = _t([[1, 1], [1, 0]], torch.bool)
    # tokens 1, 3, 4 (the masked 9 is not one): mean 8/3, unbiased std sqrt(7/3)
    mu, sd = 8 / 3, math.sqrt(7 / 3) + EPS
    n = [[(1 - mu) / sd, (3 - mu) / sd], [(4 - mu) / sd, 0.0]]
    want = [[n[0][0] + n[0][1], n[0][1]], [n[1][0], 0.0]]
    _close(ops.group_advantages(r, m, 2, "grpo_process"), want)
    # γ: the normalised rewards are discounted like any reward
    _close(ops.group_advantages(r, m, 2, "grpo_process", gamma=0.5), [[n[0][0] + 0.5 * n[0][1], n[0][1]], [n[1][0], 0]])
    # a group with one generated token: mean 0, std 1 (veRL's rule for fewer than 2 values)
    one = ops.group_advantages(_t([[2.0, 7.0]]), _t([[1, 0]], torch.bool), 1, "grpo_process")
    _close(one, [[2 / (1 + EPS), 0]])


def test_all_masked_row_is_zero_and_counts_in_its_group():
    # veRL counts every row of a uid, an empty response scoring 0.
    r = _t([[2.0, 0.0], [0.0, 0.0]])
    m = _t([[1, 1], [0, 0]], torch.bool)
    a = ops.group_advantages(r, m, 2, "grpo")
    d = math.sqrt(2) + EPS  # s = (2, 0): mean 1, std √2
    _close(a, [[(2 - 1) / d, (0 - 1) / d], [0, 0]])
    _close(ops.group_advantages(r, m, 2, "rloo"), [[2, 0], [0, 0]])


def test_int_index_is_contiguous_groups():
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(6, 5, generator=gen)
    m = torch.rand(6, 5, generator=gen) > 0.3
    for est in ESTIMATORS:
        assert torch.equal(ops.group_advantages(r, m, 3, est), ops.group_advantages(r, m, torch.arange(6) // 3, est))


def test_equal_scores_give_zero_grpo_advantage_in_the_sparse_case():
    r = torch.zeros(4, 3)
    r[:, -1] = 0.7
    a = ops.group_advantages(r, torch.ones(4, 3, dtype=torch.bool), 4, "grpo")
    assert torch.equal(a, torch.zeros(4, 3))


def test_tied_group_divides_the_dense_shaping_by_eps():
    """Documented hazard (docs/group.md): equal scores give σ_g = 0; sparse advantages are 0 but
    the dense part −(Φ_t − Φ_1) is divided by eps. scale="none"/"batch" keep it at its scale."""
    dense = _t([[0.5, 0.5], [1.5, -0.5]])  # both rows score 1
    m = torch.ones(2, 2, dtype=torch.bool)
    # G = [[1, 0.5], [1, −0.5]], s = (1, 1)
    _close(ops.group_advantages(dense, m, 2, "grpo"), [[0, -0.5 / EPS], [0, -1.5 / EPS]], rtol=1e-4)
    _close(ops.group_advantages(dense, m, 2, "grpo", scale="none"), [[0, -0.5], [0, -1.5]])
    _close(ops.group_advantages(dense, m, 2, "rloo"), [[0, -0.5], [0, -1.5]])


# --- properties ---------------------------------------------------------------------------------


@st.composite
def batches(draw, max_B=9, max_L=12):
    B = draw(st.integers(1, max_B))
    L = draw(st.integers(1 if B > 1 else 2, max_L))  # room for the 2 tokens whitening needs
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, L + 1, (B,), generator=gen)
    mask = torch.arange(L)[None] < lengths[:, None]
    if draw(st.booleans()):
        mask &= torch.rand(B, L, generator=gen) > 0.3  # holes
    if not mask.any():
        mask[0, 0] = True
    if int(mask.sum()) < 2:  # the whitening estimators need two tokens
        mask[0, -1] = mask[-1, 0] = True
    n_groups = draw(st.integers(1, B))
    index = torch.randint(0, n_groups, (B,), generator=gen) * 3 - 5  # any ids, shuffled order
    rewards = torch.randn(B, L, generator=gen)
    if draw(st.booleans()):  # equal scores inside a group
        rewards = torch.zeros(B, L)
        last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & mask
        rewards[last] = (index[:, None].float() * 0.5).expand(B, L)[last]
    return dict(
        rewards=rewards, mask=mask, index=index,
        gamma=draw(st.sampled_from([1.0, 0.9, 0.0])),
        scale=draw(st.sampled_from(gs.SCALES)),
    )


def _options(est, scale):
    return dict(scale=scale) if est in ("grpo", "grpo_process") else {}


@given(batches())
def test_contract_layer_equals_reference(b):
    """_group_stats' torch row pass + statistics + finish == the reference, for every estimator."""
    for est in ESTIMATORS:
        scale = b["scale"] if est in ("grpo", "grpo_process") else "group"
        want = ref.group_advantages(b["rewards"], b["mask"], b["index"], est, b["gamma"], EPS, scale)
        got = gs.group_advantages(gs.row_pass, gs.finish, b["rewards"], b["mask"], b["index"], est, b["gamma"], EPS,
                                  scale, None)
        big = 1.0 + float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * big, msg=lambda m: f"{est}/{scale}: {m}")


@given(batches())
def test_affine_reads_only_the_estimators_columns(b):
    """A row pass may leave the columns an estimator does not need as NaN (gs.COLUMNS)."""
    _, stats = gs.row_pass(b["rewards"], b["mask"], b["gamma"])
    for est in ESTIMATORS:
        for scale in (gs.SCALES if est in ("grpo", "grpo_process") else ("group",)):
            holes = stats.clone()
            unused = [c for c in range(gs.N_STATS) if c not in gs.COLUMNS[est]]
            holes[:, unused] = float("nan")
            for x, y in zip(gs.affine(stats, b["index"], est, EPS, scale), gs.affine(holes, b["index"], est, EPS, scale)):
                assert x == y if isinstance(x, bool) else torch.equal(x, y), est


@given(batches())
def test_row_pass_statistics(b):
    r, m = b["rewards"], b["mask"]
    returns, stats = gs.row_pass(r, m, b["gamma"])
    assert returns.dtype == torch.float32 and stats.dtype == torch.float64 and stats.shape == (r.shape[0], gs.N_STATS)
    assert torch.equal(returns, ref.reward_to_go(r, m, b["gamma"]))
    for i in range(r.shape[0]):
        x, g = r[i][m[i]].double(), returns[i][m[i]].double()
        want = [x.numel(), x.sum(), ((x - x.mean()) ** 2).sum() if x.numel() else 0.0, g.sum(),
                ((g - g.mean()) ** 2).sum() if g.numel() else 0.0]
        torch.testing.assert_close(stats[i], torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def _sparse(rewards, mask):
    """Each row's score Σ m·r at its last generated token, 0 elsewhere."""
    s = torch.where(mask, rewards, 0.0).sum(1)
    last = mask & (mask.cumsum(1) == mask.sum(1, keepdim=True))
    return torch.where(last, s[:, None], 0.0)


@given(batches())
def test_summing_estimators_dense_equals_sparse_at_first_token(b):
    """The trap: grpo/rloo on dense rewards give the sparse advantages at each row's first token;
    later tokens differ by the rewards already earned, scaled like the advantage."""
    r, m, idx = b["rewards"], b["mask"], b["index"]
    first = m & (m.cumsum(1) == 1)
    for est in SUMMING:
        opts = _options(est, b["scale"])
        dense = ops.group_advantages(r, m, idx, est, **opts)
        sparse = ops.group_advantages(_sparse(r, m), m, idx, est, **opts)
        big = 1.0 + float(sparse.abs().max())
        torch.testing.assert_close(dense[first], sparse[first], rtol=1e-4, atol=1e-5 * big)
        # at every token: dense = sparse − k_i·(s_i − G_t), k_i the row's scale (1 for rloo)
        _, stats = gs.row_pass(r, m, 1.0)
        _, k, _ = gs.affine(stats, idx, est, EPS, opts.get("scale", "group"))
        s = torch.where(m, r, 0.0).sum(1, keepdim=True)
        want = torch.where(m, sparse - k[:, None] * (s - ops.reward_to_go(r, m)), 0.0)
        torch.testing.assert_close(dense, want, rtol=1e-4, atol=1e-4 * big)


@given(st.integers(1, 6), st.integers(1, 10), st.integers(0, 2**31 - 1), st.booleans())
def test_returns_are_score_minus_prefix_potential(B, L, seed, holes):
    """G_{i,t} = s_i − (Φ_{i,t} − Φ_{i,1}) for γ = 1 without KL, Φ_{i,t} the RM's score before token t."""
    gen = torch.Generator().manual_seed(seed)
    P = 3
    scores = torch.randn(B, P + L + 1, generator=gen)
    prompt_len = torch.randint(1, P + 1, (B,), generator=gen)
    mask = torch.arange(L)[None] < torch.randint(0, L + 1, (B,), generator=gen)[:, None]
    if holes:
        mask &= torch.rand(B, L, generator=gen) > 0.3
    rewards = ops.token_rewards(scores, mask, prompt_len)
    G = ops.reward_to_go(rewards, mask)
    s = rewards.sum(1)
    for i in range(B):
        pos = torch.nonzero(mask[i]).flatten().tolist()
        for k, t in enumerate(pos):
            phi_t = scores[i, prompt_len[i] - 1] if k == 0 else scores[i, prompt_len[i] + t - 1]
            phi_1 = scores[i, prompt_len[i] - 1]
            assert abs(float(G[i, t] - (s[i] - (phi_t - phi_1)))) < 1e-4
        assert torch.all(G[i][~mask[i]] == 0)


@given(batches())
def test_row_order_and_group_labels_do_not_matter(b):
    r, m, idx = b["rewards"], b["mask"], b["index"]
    perm = torch.randperm(r.shape[0], generator=torch.Generator().manual_seed(1))
    relabel = idx * 7 + 100
    for est in ESTIMATORS:
        opts = _options(est, b["scale"])
        a = ops.group_advantages(r, m, idx, est, gamma=b["gamma"], **opts)
        assert torch.isfinite(a).all() and torch.all(a[~m] == 0)
        p = ops.group_advantages(r[perm], m[perm], relabel[perm], est, gamma=b["gamma"], **opts)
        big = 1.0 + float(a.abs().max())
        torch.testing.assert_close(p, a[perm], rtol=1e-5, atol=1e-5 * big)


@given(batches())
def test_group_baselines_centre_each_group(b):
    """Sparse, γ = 1: the grpo and rloo advantages of a group's rows sum to 0 (groups of ≥ 2 rows,
    all with a generated token, so that each row's advantage is visible)."""
    r, m, idx = _sparse(b["rewards"], b["mask"]), b["mask"], b["index"]
    first = m.float().argmax(1, keepdim=True)
    for est, opts in (("grpo", {}), ("grpo", dict(scale="none")), ("rloo", {})):
        per_row = ops.group_advantages(r, m, idx, est, **opts).gather(1, first)[:, 0].double()
        for g in torch.unique(idx):
            rows = idx == g
            if int(rows.sum()) > 1 and bool(m[rows].any(1).all()):
                assert abs(float(per_row[rows].sum())) < 1e-4 * (1 + float(per_row.abs().max()))


@given(batches())
def test_reinforce_pp_is_whitened(b):
    r, m = b["rewards"], b["mask"]
    a = ops.group_advantages(r, m, b["index"], "reinforce_pp", gamma=b["gamma"], eps=1e-12)
    x = a[m].double()
    G = ops.reward_to_go(r, m, b["gamma"])[m].double()
    if G.var() > 1e-6:
        assert abs(float(x.mean())) < 1e-4 and abs(float(x.var()) - 1) < 1e-3


@given(batches(max_B=5, max_L=8))
def test_fused_equals_composition(b):
    B, L = b["mask"].shape
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(B, L + 4, 6, generator=gen)
    weight, prompt_len = torch.randn(6, generator=gen), torch.randint(1, 4, (B,), generator=gen)
    lp, rlp = -torch.rand(B, L, generator=gen), -torch.rand(B, L, generator=gen)
    kl = dict(logprobs=lp, ref_logprobs=rlp, kl_coef=0.1, kl_estimator="k3", beta_c=0.8)
    for est in ESTIMATORS:
        opts = _options(est, b["scale"])
        rewards, adv = ops.fused_reward_group_advantages(hidden, weight, 0.3, b["mask"], prompt_len, b["index"], est,
                                                         gamma=b["gamma"], **kl, **opts)
        want_r = ops.token_rewards(ops.prefix_scores(hidden, weight, 0.3), b["mask"], prompt_len, **kl)
        assert torch.equal(rewards, want_r)
        assert torch.equal(adv, ops.group_advantages(want_r, b["mask"], b["index"], est, gamma=b["gamma"], **opts))
        # and the contract layer's fused wiring gives the same
        got_r, got = gs.fused_reward_group_advantages(
            gs.fused_row_pass, gs.finish, hidden, weight, torch.tensor([0.3]), b["mask"], prompt_len, b["index"], est,
            lp, rlp, 0.1, "k3", None, "prompt", 0.8, None, b["gamma"], EPS, opts.get("scale", "group"), None)
        assert torch.equal(got_r, rewards)
        torch.testing.assert_close(got, adv, rtol=1e-4, atol=1e-5 * (1 + float(adv.abs().max())))


def test_inputs_untouched_and_deterministic():
    gen = torch.Generator().manual_seed(4)
    r = torch.randn(6, 7, generator=gen).to(torch.bfloat16)
    m = (torch.rand(6, 7, generator=gen) > 0.2).float()
    idx = torch.tensor([1, 0, 1, 0, 2, 2], dtype=torch.int32)
    keep = (r.clone(), m.clone(), idx.clone())
    for est in ESTIMATORS:
        a = ops.group_advantages(r, m, idx, est)
        assert a.dtype == torch.float32 and torch.equal(a, ops.group_advantages(r, m, idx, est))
    assert all(torch.equal(x, y) for x, y in zip(keep, (r, m, idx)))


@pytest.mark.parametrize("holes", ["skip", "discount"])
def test_reward_to_go_trailing_padding_rules_agree(holes):
    gen = torch.Generator().manual_seed(5)
    r = torch.randn(4, 9, generator=gen)
    m = torch.arange(9)[None] < torch.tensor([[0], [3], [9], [5]])
    want = torch.where(m, torch.where(m, r, 0.0).flip(1).cumsum(1).flip(1), 0.0)
    _close(ops.reward_to_go(r, m, holes=holes), want)
