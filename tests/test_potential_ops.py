"""A separate shaping potential (issue 24, item 2): `potential=` on redistribute/token_rewards and a
potential head (`potential_weight=`, `potential_bias=`) on the fused ops.

Spec (r3hf.reference.rewards.redistribute): with u_1 < … < u_n the generated tokens of a row, Φ'
the potential and R = scores[u_n], token u_k (k < n) gets Φ'[u_{k+1} − 1] − Φ'_k and u_n gets
R − Φ'_n, where Φ'_1 = Φ'[prompt_len − 1] (or 0) and Φ'_k = Φ'[u_k − 1]. Every backend is compared
with the unfused reference: prefix_scores for R and Φ' -> token_rewards(potential=) -> gae/group.
"""

from __future__ import annotations

import pytest
import torch

import r3hf.ops as ops
from r3hf import reference as ref
from r3hf.reference.rewards import auto_beta

from backends_here import runnable
from batches import TOLERANCES, make_batch
from packed_batches import packed_batch

BACKENDS = runnable()


def _close(got, want, dtype=torch.float32):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def _batch(B=5, L=47, D=16, seed=0, dtype=torch.float32, **kw):
    b = make_batch(B, L, D=D, seed=seed, dtype=dtype, **kw)
    gen = torch.Generator().manual_seed(seed + 100)
    b["potential_weight"] = (torch.randn(D, generator=gen) / D**0.5).to(dtype)
    b["potential_bias"] = float(torch.randn((), generator=gen))
    b["potential"] = torch.randn(b["scores"].shape, generator=gen).to(dtype)
    return b


def _plen(b):
    p = b["prompt_len"]
    return p if isinstance(p, torch.Tensor) else torch.full((b["response_mask"].shape[0],), p)


# --- the rule, by hand --------------------------------------------------------------------


def _by_hand(scores, potential, mask, prompt_len, first="prompt"):
    """The issue's rule row by row in plain Python (holes: a masked span goes to the token before it)."""
    B, L = mask.shape
    out = torch.zeros(B, L)
    for b in range(B):
        p = int(prompt_len[b])
        u = [j for j in range(L) if mask[b, j]]
        for k, j in enumerate(u):
            phi_in = (float(potential[b, p - 1]) if first == "prompt" else 0.0) if k == 0 else float(potential[b, p + j - 1])
            phi_out = float(potential[b, p + u[k + 1] - 1]) if k + 1 < len(u) else float(scores[b, p + j])
            out[b, j] = phi_out - phi_in
    return out


@pytest.mark.parametrize("first", ["prompt", "zero"])
def test_reference_is_the_issue_rule(first):
    b = _batch(B=6, L=13)
    got = ref.redistribute(b["scores"], b["response_mask"], _plen(b), first, potential=b["potential"])
    want = _by_hand(b["scores"], b["potential"], b["response_mask"], _plen(b), first)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("first", ["prompt", "zero"])
def test_row_sum_is_R_minus_phi0(backend, first):
    b = _batch(B=7, L=31, seed=3)
    mask, p = b["response_mask"], _plen(b)
    r = ops.redistribute(b["scores"], mask, b["prompt_len"], first=first, potential=b["potential"], backend=backend)
    last = torch.where(mask, torch.arange(mask.shape[1]), -1).max(1).values
    has = last >= 0
    R = b["scores"].gather(1, (p + last.clamp_min(0))[:, None])[:, 0]
    phi0 = b["potential"].gather(1, (p - 1)[:, None])[:, 0] if first == "prompt" else torch.zeros_like(R)
    torch.testing.assert_close(r.sum(1), torch.where(has, R - phi0, 0.0), rtol=1e-5, atol=1e-5)
    assert torch.all(r[~mask] == 0)


@pytest.mark.parametrize("beta_c", [1.0, 0.3, 0.0, "auto"])
def test_potential_equal_scores_reproduces_today_exactly(beta_c):
    b = _batch(B=6, L=29, seed=5)
    kw = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05, beta_c=beta_c, reward_clip=3.0)
    for backend in BACKENDS:
        if beta_c == "auto" and backend != "torch":
            continue
        base = ops.token_rewards(b["scores"], b["response_mask"], b["prompt_len"], backend=backend, **kw)
        same = ops.token_rewards(b["scores"], b["response_mask"], b["prompt_len"], potential=b["scores"],
                                 backend=backend, **kw)
        assert torch.equal(base, same), backend
    # fused: a potential head equal to the reward head
    args = (b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"])
    for backend in BACKENDS:
        if beta_c == "auto" and backend != "torch":
            continue
        base = ops.fused_reward_gae(*args, beta_c=beta_c, backend=backend)
        same = ops.fused_reward_gae(*args, beta_c=beta_c, potential_weight=b["weight"], potential_bias=b["bias"],
                                    backend=backend)
        for x, y in zip(base, same):
            assert torch.equal(x, y), backend


def test_beta_c_number_shapes_with_beta_times_potential():
    """β_c = c: c·dense' + (1 − c)·sparse, i.e. shaping of the sparse reward with potential c·Φ'."""
    b = _batch(B=6, L=23, seed=7)
    m, p = b["response_mask"], b["prompt_len"]
    dense = ref.redistribute(b["scores"], m, _plen(b), potential=b["potential"])
    sparse = ref.redistribute(b["scores"], m, _plen(b), beta_c=0.0, potential=b["potential"])
    # β_c = 0 ignores the potential: the final score at the last generated token
    assert torch.equal(sparse, ref.redistribute(b["scores"], m, _plen(b), beta_c=0.0))
    got = ops.redistribute(b["scores"], m, p, beta_c=0.4, potential=b["potential"])
    torch.testing.assert_close(got, 0.4 * dense + 0.6 * sparse, rtol=1e-6, atol=1e-6)
    # the same as the full rule with the potential scaled by 0.4 (R unscaled)
    scaled = ref.redistribute(b["scores"], m, _plen(b), potential=0.4 * b["potential"].float())
    torch.testing.assert_close(got, scaled, rtol=1e-5, atol=1e-5)


def test_beta_c_auto_reward_to_go_is_R_minus_beta_phi():
    """"auto": reward-to-go from u_k = R − β(u_k)·Φ'_k, β = auto_beta(Φ', R) over the batch."""
    b = _batch(B=9, L=17, seed=11, holes=True)
    m, p = b["response_mask"], _plen(b)
    r = ops.redistribute(b["scores"], m, b["prompt_len"], beta_c="auto", potential=b["potential"])
    L = m.shape[1]
    idx = (p[:, None] + torch.arange(L) - 1).clamp_min(0)
    phi = b["potential"].gather(1, idx)
    is_first = m & (m.cumsum(1) == 1)
    phi = torch.where(is_first, b["potential"].gather(1, (p - 1)[:, None]), phi)
    last = torch.where(m, torch.arange(L), -1).max(1).values
    R = torch.where(last >= 0, b["scores"].gather(1, (p + last.clamp_min(0))[:, None])[:, 0], 0.0)
    beta = auto_beta(phi, R, m)
    rtg = r.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(rtg[m], (R[:, None] - beta * phi).expand_as(rtg)[m], rtol=1e-5, atol=1e-5)


# --- every backend against the unfused reference -------------------------------------------


def _unfused(b, cu_seqlens=None, **kw):
    """prefix_scores for R and Φ' -> token_rewards(potential=) (torch reference)."""
    h = b["hidden"]
    scores = ref.prefix_scores(h, b["weight"], torch.tensor([b["bias"]]))
    pbias = b.get("potential_bias")
    potential = ref.prefix_scores(h, b["potential_weight"], None if pbias is None else torch.tensor([float(pbias)]))
    plen = None if cu_seqlens is not None else _plen(b)
    return ref.token_rewards(scores, b["response_mask"], plen, b.get("logprobs"), b.get("ref_logprobs"),
                             kw.get("kl_coef", 0.0), kw.get("kl_estimator", "k1"), None, kw.get("first", "prompt"),
                             kw.get("beta_c", 1.0), None, cu_seqlens=cu_seqlens, potential=potential)


SHAPES = [(1, 1), (3, 47), (5, 130)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_gae_two_heads_equals_unfused(backend, B, L, dtype):
    if backend == "triton" and (dtype != torch.float32 or L > 64):
        pytest.skip("Triton interpreter: small fp32 only")
    b = _batch(B=B, L=L, D=24, seed=B * 7 + L, dtype=dtype)
    kw = dict(kl_coef=0.1, kl_estimator="k3", first="prompt", beta_c=0.7)
    rewards, adv, ret = ops.fused_reward_gae(
        b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"],
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], gamma=0.99, lam=0.9, backend=backend,
        potential_weight=b["potential_weight"], potential_bias=b["potential_bias"], **kw)
    want_r = _unfused(b, **kw)
    want_adv, want_ret = ref.gae(want_r, b["values"], b["response_mask"], 0.99, 0.9)
    for got, want in ((rewards, want_r), (adv, want_adv), (ret, want_ret)):
        _close(got, want, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp_baseline"])
@pytest.mark.parametrize("first", ["prompt", "zero"])
def test_fused_group_two_heads_equals_unfused(backend, estimator, first):
    B, L = 6, 47 if backend != "triton" else 33
    b = _batch(B=B, L=L, D=20, seed=13)
    b["potential_bias"] = None  # the head without a bias
    rewards, adv = ops.fused_reward_group_advantages(
        b["hidden"], b["weight"], b["bias"], b["response_mask"], b["prompt_len"], 3, estimator, first=first,
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05, backend=backend,
        potential_weight=b["potential_weight"][None])
    want_r = _unfused(b, kl_coef=0.05, first=first)
    index = torch.arange(B) // 3
    want = ref.group_advantages(want_r, b["response_mask"], index, estimator)
    _close(rewards, want_r)
    _close(adv, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_rewards_potential_every_backend(backend):
    b = _batch(B=5, L=40, seed=17)
    kw = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, beta_c=0.6, reward_clip=2.0)
    want = ref.token_rewards(b["scores"], b["response_mask"], _plen(b), b["logprobs"], b["ref_logprobs"], 0.1, "k1",
                             None, "prompt", 0.6, (-2.0, 2.0), potential=b["potential"])
    got = ops.token_rewards(b["scores"], b["response_mask"], b["prompt_len"], potential=b["potential"],
                            backend=backend, **kw)
    _close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [1, 47, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("first,beta_c", [("prompt", 1.0), ("zero", 0.3)])
def test_redistribute_potential_odd_shapes_every_backend(backend, L, dtype, first, beta_c):
    """T = 1, 47, 1000; holes and all-masked rows (make_batch); every float dtype."""
    if backend == "triton" and (dtype != torch.float32 or L > 47):
        pytest.skip("Triton interpreter: small fp32 only")
    b = _batch(B=4, L=L, seed=L + 3, dtype=dtype)
    b["response_mask"][1] = False  # an all-masked row
    if L > 5:
        b["response_mask"][2, 2:5] = False  # a hole
    plen = _plen(b)
    want = ref.redistribute(b["scores"], b["response_mask"], plen, first, beta_c, potential=b["potential"])
    got = ops.redistribute(b["scores"], b["response_mask"], b["prompt_len"], first=first, beta_c=beta_c,
                           potential=b["potential"], backend=backend)
    _close(got, want, dtype)
    if dtype == torch.float32 and first == "prompt":
        torch.testing.assert_close(got, _by_hand(b["scores"], b["potential"], b["response_mask"], plen), rtol=1e-5,
                                   atol=1e-5)
    if backend == "cpp":
        pot = b["potential"].clone()
        ops.redistribute(b["scores"], b["response_mask"], b["prompt_len"], potential=pot, backend=backend)
        assert torch.equal(pot, b["potential"])  # inputs untouched


def test_auto_runs_cpp_on_cpu_where_built():
    from r3hf._dispatch import choose

    cpu = torch.device("cpu")
    picked = choose("token_rewards", "auto", cpu, ("potential",))
    assert picked == ("cpp" if "cpp" in BACKENDS else "torch") or picked == "triton"
    b = _batch(B=3, L=9)
    got = ops.token_rewards(b["scores"], b["response_mask"], b["prompt_len"], potential=b["potential"])
    want = ref.token_rewards(b["scores"], b["response_mask"], _plen(b), potential=b["potential"])
    _close(got, want)


# --- packed ---------------------------------------------------------------------------------


def _packed(N=9, seed=0, D=8):
    b = packed_batch(N, 40, seed=seed, D=D)
    gen = torch.Generator().manual_seed(seed + 1)
    b["potential_weight"] = torch.randn(D, generator=gen) / D**0.5
    b["potential_bias"] = 0.25
    b["potential"] = torch.randn(b["scores"].shape, generator=gen)
    b["bias"] = float(b["bias"])
    return b


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_equals_padded_and_unfused(backend):
    from r3hf.reference.packed import Packing

    b = _packed(seed=4)
    cu, m = b["cu_seqlens"], b["response_mask"]
    got = ops.token_rewards(b["scores"], m, cu_seqlens=cu, potential=b["potential"], backend=backend)
    pk = Packing(cu, m)
    padded = ref.token_rewards(pk.sequences(b["scores"]), pk.rows(m), pk.prompt_len,
                               potential=pk.sequences(b["potential"]))
    _close(got, pk.unpack(padded))
    got = ops.redistribute(b["scores"], m, cu_seqlens=cu, potential=b["potential"], beta_c=0.4, backend=backend)
    _close(got, ref.redistribute(b["scores"], m, None, "prompt", 0.4, cu_seqlens=cu, potential=b["potential"]))
    kw = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1)
    rew, adv, ret = ops.fused_reward_gae(b["hidden"], b["weight"], b["bias"], b["values"], m, cu_seqlens=cu,
                                         bootstrap=b["bootstrap"], backend=backend,
                                         potential_weight=b["potential_weight"], potential_bias=b["potential_bias"],
                                         **kw)
    want_r = _unfused(b, cu_seqlens=cu, kl_coef=0.1)
    want_adv, want_ret = ref.gae(want_r, b["values"], m, 1.0, 0.95, b["bootstrap"], cu_seqlens=cu)
    for got, want in ((rew, want_r), (adv, want_adv), (ret, want_ret)):
        _close(got, want)
    rew, adv = ops.fused_reward_group_advantages(b["hidden"], b["weight"], b["bias"], m, index=b["index"],
                                                 estimator="rloo", cu_seqlens=cu, backend=backend,
                                                 potential_weight=b["potential_weight"],
                                                 potential_bias=b["potential_bias"], **kw)
    _close(rew, want_r)
    _close(adv, ref.group_advantages(want_r, m, b["index"], "rloo", cu_seqlens=cu))


# --- autograd, compile --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_autograd_kl_path_and_potential_head(backend):
    b = _batch(B=4, L=21, seed=23)
    lp = b["logprobs"].clone().requires_grad_(True)
    pw = b["potential_weight"].clone().requires_grad_(True)
    args = (b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"])
    kw = dict(ref_logprobs=b["ref_logprobs"], kl_coef=0.2, kl_estimator="k2", gamma=0.9, lam=0.8)
    rew, adv, ret = ops.fused_reward_gae(*args, logprobs=lp, potential_weight=pw, backend=backend, **kw)
    g = torch.randn(3, *rew.shape, generator=torch.Generator().manual_seed(0))
    loss = (rew * g[0] + adv * g[1] + ret * g[2]).sum()
    got_lp, got_pw = torch.autograd.grad(loss, (lp, pw))

    lp2 = b["logprobs"].clone().requires_grad_(True)
    pw2 = b["potential_weight"].clone().requires_grad_(True)
    r2, a2, t2 = ref.fused_reward_gae(b["hidden"], b["weight"], torch.tensor([b["bias"]]), b["values"],
                                      b["response_mask"], _plen(b), lp2, b["ref_logprobs"], 0.2, "k2", None, 0.9, 0.8,
                                      potential_weight=pw2)
    want_lp, want_pw = torch.autograd.grad((r2 * g[0] + a2 * g[1] + t2 * g[2]).sum(), (lp2, pw2))
    _close(got_lp, want_lp)
    torch.testing.assert_close(got_pw, want_pw, rtol=1e-4, atol=1e-4)


def test_autograd_through_potential_tensor():
    b = _batch(B=3, L=11, seed=29)
    pot = b["potential"].clone().requires_grad_(True)
    r = ops.token_rewards(b["scores"], b["response_mask"], b["prompt_len"], potential=pot)
    (g,) = torch.autograd.grad(r.sum(), pot)
    # a row's sum is R − Φ'_0: only Φ'(prompt_len − 1) of rows with a generated token has gradient −1
    want = torch.zeros_like(pot)
    has = b["response_mask"].any(1)
    want[torch.arange(3)[has], (_plen(b) - 1)[has]] = -1.0
    torch.testing.assert_close(g, want)


def test_compile_fullgraph():
    b = _batch(B=4, L=19, seed=31)

    def fn(hidden, weight, pw, values, mask, scores, potential):
        r, a, t = ops.fused_reward_gae(hidden, weight, None, values, mask, 3, potential_weight=pw,
                                       potential_bias=0.5)
        tr = ops.token_rewards(scores, mask, 3, potential=potential)
        return r, a, t, tr

    inputs = (b["hidden"], b["weight"], b["potential_weight"], b["values"], b["response_mask"], b["scores"],
              b["potential"])
    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    for x, y in zip(compiled(*inputs), fn(*inputs)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# --- validation -----------------------------------------------------------------------------


def test_bad_input_named():
    b = _batch(B=3, L=9)
    s, m, p = b["scores"], b["response_mask"], b["prompt_len"]
    with pytest.raises(ValueError, match=r"potential must have the shape of scores"):
        ops.token_rewards(s, m, p, potential=b["potential"][:, :-1])
    with pytest.raises(TypeError, match=r"potential must be a floating-point tensor"):
        ops.redistribute(s, m, p, potential=b["potential"].long())
    with pytest.raises(TypeError, match=r"potential must be a torch.Tensor"):
        ops.redistribute(s, m, p, potential=1.0)
    args = (b["hidden"], b["weight"], None, b["values"], m, p)
    with pytest.raises(ValueError, match=r"potential_weight must be \[D\] or \[1, D\] with D = 16"):
        ops.fused_reward_gae(*args, potential_weight=torch.randn(15))
    with pytest.raises(ValueError, match=r"potential_bias is set but potential_weight is None"):
        ops.fused_reward_gae(*args, potential_bias=0.1)
    with pytest.raises(ValueError, match=r"potential_bias must be None, a float or a \[1\] tensor"):
        ops.fused_reward_group_advantages(b["hidden"], b["weight"], None, m, p, 3, potential_weight=b["weight"],
                                          potential_bias=torch.zeros(2))
    with pytest.raises(TypeError, match=r"potential_weight must be a floating-point tensor"):
        ops.fused_reward_gae(*args, potential_weight=torch.ones(16, dtype=torch.int64))
    pk = _packed()
    with pytest.raises(ValueError, match=r"potential must have the shape of scores"):
        ops.redistribute(pk["scores"], pk["response_mask"], cu_seqlens=pk["cu_seqlens"], potential=pk["potential"][1:])


def test_inputs_not_modified():
    b = _batch(B=3, L=9)
    keep = {k: v.clone() for k, v in b.items() if isinstance(v, torch.Tensor)}
    for backend in BACKENDS:
        ops.fused_reward_gae(b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"],
                             potential_weight=b["potential_weight"], backend=backend)
        ops.token_rewards(b["scores"], b["response_mask"], b["prompt_len"], potential=b["potential"],
                          backend=backend)
    for k, v in keep.items():
        assert torch.equal(b[k], v), k


# --- GPU: the CUDA kernels (Triton, and CUDA C++ for fused_reward_gae) ---------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _to(b, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("backend", ["triton", "cpp", "auto"])
def test_gpu_two_heads_equal_unfused(dtype, backend):
    from r3hf._dispatch import _why_not

    b = _batch(B=8, L=1000, D=256, seed=41, dtype=dtype)
    want_r = _unfused(b, kl_coef=0.05, kl_estimator="k3")
    want_adv, want_ret = ref.gae(want_r, b["values"], b["response_mask"], 0.99, 0.95)
    want_group = ref.group_advantages(want_r, b["response_mask"], torch.arange(8) // 4, "grpo")
    c = _to(b, "cuda")
    kl = dict(logprobs=c["logprobs"], ref_logprobs=c["ref_logprobs"], kl_coef=0.05, kl_estimator="k3")
    heads = dict(potential_weight=c["potential_weight"], potential_bias=c["potential_bias"])
    ran = backend == "triton"
    if _why_not(backend, "fused_reward_gae", torch.device("cuda"), ("potential_weight",)) is None or backend == "auto":
        ran = True
        out = ops.fused_reward_gae(c["hidden"], c["weight"], c["bias"], c["values"], c["response_mask"],
                                   c["prompt_len"], gamma=0.99, lam=0.95, backend=backend, **kl, **heads)
        for got, want in zip(out, (want_r, want_adv, want_ret)):
            _close(got.cpu(), want, dtype)
    if _why_not(backend, "fused_reward_group_advantages", torch.device("cuda"), ("potential_weight",)) is None \
            or backend == "auto":
        ran = True
        rew, adv = ops.fused_reward_group_advantages(c["hidden"], c["weight"], c["bias"], c["response_mask"],
                                                     c["prompt_len"], 4, "grpo", backend=backend, **kl, **heads)
        _close(rew.cpu(), want_r, dtype)
        _close(adv.cpu(), want_group, dtype)
    if backend == "triton":
        got = ops.token_rewards(c["scores"], c["response_mask"], c["prompt_len"], potential=c["potential"],
                                backend=backend, **kl)
        want = ref.token_rewards(b["scores"], b["response_mask"], _plen(b), b["logprobs"], b["ref_logprobs"], 0.05,
                                 "k3", potential=b["potential"])
        _close(got.cpu(), want, dtype)
    if backend == "cpp" and _cpp_cuda():
        # The CUDA C++ row kernel's potential (Φ' from potential, R from scores), called directly:
        # r3hf.ops does not route potential= to it yet (OPTION_DEVICES) until this has run on a GPU.
        ran = True
        got = torch.ops.r3hf.token_rewards(c["scores"], c["response_mask"], _plen(b).cuda(), c["logprobs"],
                                           c["ref_logprobs"], 0.05, "k3", None, "prompt", 1.0, None, c["potential"])
        want = ref.token_rewards(b["scores"], b["response_mask"], _plen(b), b["logprobs"], b["ref_logprobs"], 0.05,
                                 "k3", potential=b["potential"])
        _close(got.cpu(), want, dtype)
    if not ran:
        pytest.skip(f"backend {backend} has no CUDA kernel with a potential head here")


def _cpp_cuda():
    from r3hf.backends import cpp

    return cpp.build_info().get("cuda", False)


@pytest.mark.gpu
@gpu
def test_gpu_packed_two_heads_equal_unfused():
    b = _packed(N=64, seed=43, D=128)
    c = _to(b, "cuda")
    want_r = _unfused(b, cu_seqlens=b["cu_seqlens"], kl_coef=0.1)
    rew, adv, ret = ops.fused_reward_gae(c["hidden"], c["weight"], c["bias"], c["values"], c["response_mask"],
                                         cu_seqlens=c["cu_seqlens"], logprobs=c["logprobs"],
                                         ref_logprobs=c["ref_logprobs"], kl_coef=0.1, backend="triton",
                                         potential_weight=c["potential_weight"], potential_bias=c["potential_bias"])
    _close(rew.cpu(), want_r)
    want_adv, _ = ref.gae(want_r, b["values"], b["response_mask"], 1.0, 0.95, cu_seqlens=b["cu_seqlens"])
    _close(adv.cpu(), want_adv)
