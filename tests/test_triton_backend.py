"""Triton backend vs the torch reference.

Without a GPU these run under Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py), in
fp32, on small shapes; R3HF_TRITON_CHUNK=16 makes rows of 47 and 300 positions cross several
chunks (and the 16-summary carry blocks). Tests marked `gpu` need CUDA: other dtypes, long
rows, large batches and the reverse-scan guard (Triton issue #4362).
"""

from __future__ import annotations

import pytest
import torch

import r3hf.ops as ops
from batches import TOLERANCES, make_batch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from r3hf.kernels.scan import backward_scan5, chunk_offsets, gae_elements  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def close(got, ref, dtype=torch.float32, scale=1.0):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(got, ref, rtol=rtol * scale, atol=atol * scale)


def both(op, *args, **kw):
    fn = getattr(ops, op)
    return fn(*args, backend="triton", **kw), fn(*args, backend="torch", **kw)


def check(op, *args, dtype=torch.float32, scale=1.0, **kw):
    got, ref = both(op, *args, **kw)
    if isinstance(ref, tuple):
        for g, r in zip(got, ref):
            assert g.dtype == torch.float32
            close(g, r, dtype, scale)
    else:
        assert got.dtype == torch.float32
        close(got, ref, dtype, scale)
    return got


@pytest.fixture(params=["default", "16"])
def chunk(request, monkeypatch):
    if request.param != "default":
        monkeypatch.setenv("R3HF_TRITON_CHUNK", request.param)
    return request.param


def spanning_mask(L: int) -> torch.Tensor:
    """Rows whose holes cross chunk boundaries (chunk 16): generated tokens far apart."""
    m = torch.zeros(4, L, dtype=torch.bool)
    for i, pos in enumerate([[0, L - 1], [3, 40 % L, L // 2], [L - 1], [1, 2, 17, 33, 34]]):
        for q in pos:
            if q < L:
                m[i, q] = True
    return m


@triton.jit
def _scan_probe_kernel(r_ptr, v_ptr, m_ptr, out_ptr, N: tl.constexpr, FLIP: tl.constexpr):
    """One chunk's backward GAE scan with a zero carry: the advantage is the scanned ka."""
    o = chunk_offsets(0, N, FLIP)
    r = tl.load(r_ptr + o)
    v = tl.load(v_ptr + o)
    m = tl.load(m_ptr + o) != 0
    al, be, mu, ka, kv = gae_elements(r, v, m, 0.9, 0.8)
    al, be, mu, ka, kv = backward_scan5(al, be, mu, ka, kv, FLIP)
    tl.store(out_ptr + o, ka)


# --- dispatch ---------------------------------------------------------------------------


def test_backend_reported():
    report = ops.backends()
    assert report["triton"]["available"], report["triton"]
    assert "Triton" in report["triton"]["detail"]
    # auto never picks the interpreter for CPU tensors
    assert report["ops"]["gae"]["cpu"] != "triton"
    if CUDA:
        assert report["ops"]["fused_reward_gae"]["cuda"] == "triton"
        assert report["ops"]["gae"]["cuda"] == "triton"


# --- single ops -------------------------------------------------------------------------


@pytest.mark.parametrize("B,S,D", [(1, 1, 1), (3, 47, 40), (2, 300, 64)])
def test_prefix_scores(B, S, D):
    gen = torch.Generator().manual_seed(S)
    h = torch.randn(B, S, D, generator=gen).to(DEV)
    w = torch.randn(1, D, generator=gen).to(DEV)
    check("prefix_scores", h, w, 0.25)
    check("prefix_scores", h, w[0], None)
    # non-contiguous hidden (a transposed view) and weight (a strided view)
    ht = torch.randn(B, D, S, generator=gen).to(DEV).transpose(1, 2)
    w2 = torch.randn(2 * D, generator=gen).to(DEV)[::2]
    check("prefix_scores", ht, w2, torch.tensor([0.5], device=DEV))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "abs"])
@pytest.mark.parametrize("clamp", [None, 0.2, (-0.1, 0.3)])
def test_kl_penalty(estimator, clamp):
    b = make_batch(3, 47, device=DEV)
    check("kl_penalty", b["logprobs"], b["ref_logprobs"], estimator, clamp)
    tiny = b["logprobs"] * 1e-5  # k3 near d = 0
    check("kl_penalty", tiny, tiny * 0.5, estimator, clamp)


@pytest.mark.parametrize("L", [1, 47, 300])
@pytest.mark.parametrize("first,beta_c", [("prompt", 1.0), ("zero", 0.3), ("prompt", 0.0)])
def test_redistribute(L, first, beta_c, chunk):
    b = make_batch(4, L, seed=L, device=DEV)
    check("redistribute", b["scores"], b["response_mask"], b["prompt_len"], first=first, beta_c=beta_c)


TOKEN_OPTIONS = [
    dict(),
    dict(first="zero", beta_c=0.5),
    dict(reward_clip=0.5, kl_coef=0.05, kl_estimator="k1"),
    dict(reward_clip=(-0.2, 1.0), kl_coef=0.1, kl_estimator="k2", kl_clamp=0.3),
    dict(kl_coef=0.02, kl_estimator="k3", kl_clamp=10.0, beta_c=0.7),
    dict(kl_coef=-0.3, kl_estimator="abs", first="zero"),
]


@pytest.mark.parametrize("L", [47, 300])
@pytest.mark.parametrize("opts", TOKEN_OPTIONS, ids=range(len(TOKEN_OPTIONS)))
def test_token_rewards(L, opts, monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    b = make_batch(4, L, seed=L + 1, device=DEV)
    check("token_rewards", b["scores"], b["response_mask"], b["prompt_len"], logprobs=b["logprobs"],
          ref_logprobs=b["ref_logprobs"], **opts)


def test_token_rewards_spanning_holes_and_int_prompt(monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    for L in (47, 64):
        b = make_batch(4, L, per_row_prompt=False, seed=3, device=DEV)
        m = spanning_mask(L).to(DEV)
        for first in ("prompt", "zero"):
            check("token_rewards", b["scores"], m, b["prompt_len"], first=first, beta_c=0.6)
    # first="zero" with prompt_len 0 on some rows (the response starts at position 0)
    b = make_batch(4, 47, seed=5, device=DEV)
    p = torch.tensor([0, 2, 0, 5])
    check("token_rewards", b["scores"], b["response_mask"], p, first="zero")


@pytest.mark.parametrize("L", [1, 47, 300])
@pytest.mark.parametrize("gamma,lam,boot", [(1.0, 0.95, None), (0.99, 0.9, "tensor"), (1.0, 1.0, 0.5), (0.0, 0.0, None)])
def test_gae(L, gamma, lam, boot, chunk):
    b = make_batch(4, L, seed=L + 2, device=DEV)
    bootstrap = torch.randn(4).to(DEV) if boot == "tensor" else boot
    check("gae", b["rewards"], b["values"], b["response_mask"], gamma, lam, bootstrap)


@pytest.mark.parametrize("scan", ["flip", "reverse"])
def test_gae_scan_paths_and_spanning_holes(scan, monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_SCAN", scan)
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    b = make_batch(4, 300, seed=9, device=DEV)
    check("gae", b["rewards"], b["values"], b["response_mask"], 0.97, 0.93, torch.randn(4).to(DEV))
    m = spanning_mask(47).to(DEV)
    b = make_batch(4, 47, seed=10, device=DEV)
    check("gae", b["rewards"], b["values"], m, 0.99, 0.95, 1.5)


FUSED_OPTIONS = [
    dict(),
    dict(first="zero", beta_c=0.3, reward_clip=(-0.5, 0.7), gamma=0.99, lam=0.9, bootstrap="tensor"),
    dict(kl_coef=0.1, kl_estimator="k3", kl_clamp=(-0.2, 0.3), gamma=1.0, lam=1.0),
    dict(kl_coef=0.05, kl_estimator="k2", reward_clip=1.0, beta_c=0.0, bootstrap=0.25),
    dict(kl_coef=0.05, kl_estimator="abs", kl_clamp=0.1, first="zero"),
]


@pytest.mark.parametrize("L", [1, 47, 300])
@pytest.mark.parametrize("opts", FUSED_OPTIONS, ids=range(len(FUSED_OPTIONS)))
def test_fused_reward_gae(L, opts, monkeypatch):
    if L == 300:
        monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    b = make_batch(3, L, D=24, seed=L + 4, device=DEV)
    opts = dict(opts)
    if opts.get("bootstrap") == "tensor":
        opts["bootstrap"] = torch.randn(3).to(DEV)
    kl = {} if "kl_coef" not in opts else dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"])
    check("fused_reward_gae", b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"],
          b["prompt_len"], **kl, **opts)


@pytest.mark.parametrize("scan", ["flip", "reverse"])
@pytest.mark.parametrize("chunk", ["16", "default"])
def test_fused_spanning_holes_noncontiguous_unchanged(scan, chunk, monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_SCAN", scan)
    if chunk != "default":
        monkeypatch.setenv("R3HF_TRITON_CHUNK", chunk)
    L = 47
    b = make_batch(4, L, D=20, seed=11, device=DEV)
    mask = spanning_mask(L).to(DEV)
    hidden = b["hidden"].transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    values = b["values"].t().contiguous().t()
    before = [t.clone() for t in (hidden, values, mask, b["logprobs"])]
    check("fused_reward_gae", hidden, b["weight"][None], torch.tensor([0.1], device=DEV), values,
          mask, b["prompt_len"], logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05,
          gamma=0.98, lam=0.9, bootstrap=torch.randn(4).to(DEV))
    for t, t0 in zip((hidden, values, mask, b["logprobs"]), before):
        assert torch.equal(t, t0)
    # a float mask with holes, all rows empty, and an int prompt_len
    b = make_batch(2, L, D=8, per_row_prompt=False, seed=12, device=DEV)
    check("fused_reward_gae", b["hidden"], b["weight"], None, b["values"], torch.zeros(2, L, device=DEV),
          b["prompt_len"])


def test_empty_shapes():
    b = make_batch(2, 5, D=4, device=DEV)
    r, a, g = ops.fused_reward_gae(b["hidden"], b["weight"], 0.0, b["values"][:, :0], b["response_mask"][:, :0],
                                   b["prompt_len"], backend="triton")
    assert r.shape == a.shape == g.shape == (2, 0)
    a, g = ops.gae(b["rewards"][:0], b["values"][:0], b["response_mask"][:0], backend="triton")
    assert a.shape == (0, 5)


# --- GPU only ---------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_dtypes(dtype):
    b = make_batch(8, 1000, D=256, dtype=dtype, seed=21, device="cuda")
    kl = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05, kl_estimator="k3")
    check("prefix_scores", b["hidden"], b["weight"], b["bias"], dtype=dtype)
    check("token_rewards", b["scores"], b["response_mask"], b["prompt_len"], dtype=dtype, **kl)
    check("gae", b["rewards"], b["values"], b["response_mask"], 0.99, 0.95, dtype=dtype, scale=10)
    check("fused_reward_gae", b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"],
          b["prompt_len"], dtype=dtype, scale=10, **kl)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("B", [1, 2, 7, 64, 512])
def test_gpu_batch_sizes(B):
    b = make_batch(B, 777, D=64, seed=B, device="cuda")
    check("gae", b["rewards"], b["values"], b["response_mask"], 0.99, 0.95, torch.randn(B, device="cuda"))
    check("fused_reward_gae", b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"],
          b["prompt_len"], gamma=0.99, lam=0.95)


def _double_gae(r, v, m, gamma, lam):
    """The reference loop in float64 (a tight baseline for long rows)."""
    from r3hf.reference import gae as ref_gae

    a, g = ref_gae(r.double(), v.double(), m, gamma, lam)
    return a.float(), g.float()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("scan", ["flip", "reverse"])
@pytest.mark.parametrize("B,L", [(1, 131072), (8, 16384)])
def test_gpu_long_rows(B, L, scan, monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_SCAN", scan)
    gen = torch.Generator().manual_seed(L)
    r = torch.randn(B, L, generator=gen).cuda()
    v = torch.randn(B, L, generator=gen).cuda()
    m = (torch.rand(B, L, generator=gen) > 0.1).cuda()
    a, g = ops.gae(r, v, m, 0.99, 0.95, backend="triton")
    ra, rg = _double_gae(r.cpu(), v.cpu(), m.cpu(), 0.99, 0.95)
    torch.testing.assert_close(a.cpu(), ra, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g.cpu(), rg, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [16, 128, 1024])
def test_reverse_scan_guard(n):
    """tl.associative_scan(reverse=True) of the GAE combine vs the flipped forward scan and a loop.

    Runs everywhere (under the interpreter without a GPU); on a GPU it is the guard for Triton
    issue #4362 (wrong reverse scans of this recurrence, Triton 3.0). If the reverse path fails
    there, keep R3HF_TRITON_SCAN=flip (the default)."""
    gen = torch.Generator().manual_seed(n)
    r = torch.randn(n, generator=gen)
    v = torch.randn(n, generator=gen)
    m = torch.rand(n, generator=gen) > 0.2
    expect, _ = _double_gae(r[None], v[None], m[None], 0.9, 0.8)
    expect = torch.where(m, expect[0], 0.0)
    for flip in (True, False):
        out = torch.empty(n, device=DEV)
        _scan_probe_kernel[(1,)](r.to(DEV), v.to(DEV), m.to(DEV).view(torch.uint8), out, N=n, FLIP=flip)
        got = torch.where(m, out.cpu(), 0.0)
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5, msg=lambda s: f"flip={flip}: {s}")
