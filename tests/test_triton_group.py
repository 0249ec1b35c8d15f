"""Triton backend of reward_to_go, group_advantages and fused_reward_group_advantages vs the
torch reference (issue 12), and its passes vs _group_stats' torch form of them.

Without a GPU these run under Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py), in
fp32, on small shapes; R3HF_TRITON_CHUNK=16 makes rows of 47 and 280 positions cross several
chunks (280 also crosses the 16-map carry blocks). Tests marked `gpu` need CUDA: other dtypes,
long rows against a float64 loop with both scan paths, large batches.
"""

from __future__ import annotations

import pytest
import torch

import r3hf.ops as ops
from batches import TOLERANCES, make_batch
from r3hf import _group_stats

pytest.importorskip("triton")
from r3hf.kernels import group as _kgroup  # noqa: E402
from r3hf.kernels import returns as _kreturns  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

ESTIMATORS = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_process")


def close(got, ref, dtype=torch.float32, tol=1.0):
    rtol, atol = TOLERANCES[dtype]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=rtol * tol, atol=atol * tol)


def both(op, *args, **kw):
    fn = getattr(ops, op)
    return fn(*args, backend="triton", **kw), fn(*args, backend="torch", **kw)


def check(op, *args, dtype=torch.float32, tol=1.0, **kw):
    got, ref = both(op, *args, **kw)
    if isinstance(ref, tuple):
        for g, r in zip(got, ref):
            close(g, r, dtype, tol)
    else:
        close(got, ref, dtype, tol)
    return got


@pytest.fixture(params=["default", "16"])
def chunk(request, monkeypatch):
    if request.param != "default":
        monkeypatch.setenv("R3HF_TRITON_CHUNK", request.param)
    return request.param


def shuffled_index(B: int, seed: int) -> torch.Tensor:
    """Group ids in shuffled order with groups of 3, 2 and singletons (B >= 6)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([7, 7, 7, 2, 2] + list(range(10, 10 + B - 5)))
    return ids[torch.randperm(B, generator=gen)].to(DEV)


def spanning_mask(B: int, L: int) -> torch.Tensor:
    """Generated tokens far apart (holes across chunk boundaries at chunk 16) and one empty row."""
    m = torch.zeros(B, L, dtype=torch.bool)
    for i, pos in enumerate([[0, L - 1], [3, 40 % L, L // 2], [], [1, 2, 17, 33, 34], [L - 1]]):
        for q in pos:
            m[i % B, q] = True
    return m.to(DEV)


# --- reward_to_go -----------------------------------------------------------------------


@pytest.mark.parametrize("L", [1, 47, 280])
@pytest.mark.parametrize("holes", ["skip", "discount"])
@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
def test_reward_to_go(L, holes, gamma, chunk):
    b = make_batch(4, L, seed=L + 30, device=DEV)
    check("reward_to_go", b["rewards"], b["response_mask"], gamma, holes=holes)


@pytest.mark.parametrize("scan", ["flip", "reverse"])
def test_reward_to_go_scan_paths_spanning_holes(scan, monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_SCAN", scan)
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    for L in (47, 64):
        r = torch.randn(5, L, generator=torch.Generator().manual_seed(L)).to(DEV)
        m = spanning_mask(5, L)
        for holes in ("skip", "discount"):
            check("reward_to_go", r, m, 0.97, holes=holes)


def test_reward_to_go_dtypes_strides_unchanged():
    b = make_batch(3, 47, seed=33, device=DEV)
    r16 = b["rewards"].half()
    got = ops.reward_to_go(r16, b["response_mask"], 0.99, backend="triton")
    close(got, ops.reward_to_go(r16.float(), b["response_mask"], 0.99, backend="torch"))
    rt = b["rewards"].t().contiguous().t()  # same values, strided
    before = rt.clone(), b["response_mask"].clone()
    check("reward_to_go", rt, b["response_mask"], 0.9, holes="discount")
    assert torch.equal(rt, before[0]) and torch.equal(b["response_mask"], before[1])
    # values at masked positions are never read: NaN/inf there change nothing
    dirty = torch.where(b["response_mask"], b["rewards"], torch.tensor(float("nan"), device=DEV))
    dirty[0, -1] = float("inf") if not b["response_mask"][0, -1] else dirty[0, -1]
    for holes in ("skip", "discount"):
        close(ops.reward_to_go(dirty, b["response_mask"], 0.9, holes=holes, backend="triton"),
              ops.reward_to_go(b["rewards"], b["response_mask"], 0.9, holes=holes, backend="torch"))
    G, stats = _kreturns.row_pass(dirty, b["response_mask"], 0.9)
    assert torch.isfinite(G).all() and torch.isfinite(stats).all()


# --- the passes vs _group_stats' torch form ---------------------------------------------


@pytest.mark.parametrize("L", [1, 47, 280])
def test_row_pass_and_finish(L, chunk):
    b = make_batch(5, L, seed=L + 40, device=DEV)
    r, m = b["rewards"], b["response_mask"]
    G, stats = _kreturns.row_pass(r, m, 0.95)
    G0, stats0 = _group_stats.row_pass(r, m, 0.95)
    close(G, G0)
    assert stats.dtype == torch.float64 and stats.shape == (5, _group_stats.N_STATS)
    torch.testing.assert_close(stats, stats0, rtol=1e-5, atol=1e-5)
    shift = torch.randn(5).to(DEV)
    scale = (torch.rand(5) + 0.5).to(DEV)
    for on_rewards in (False, True):
        A = _kreturns.finish(r, G, m, shift, scale, 0.95, on_rewards)
        close(A, _group_stats.finish(r, G0, m, shift, scale, 0.95, on_rewards))


def test_fused_row_pass_stats(chunk):
    b = make_batch(4, 47, D=16, seed=41, device=DEV)
    args = (b["hidden"], b["weight"], torch.tensor([b["bias"]], device=DEV), b["response_mask"], b["prompt_len"],
            b["logprobs"], b["ref_logprobs"], 0.05, "k3", None, "prompt", 1.0, None, 0.9)
    rew, G, stats = _kgroup.fused_row_pass(*args)
    rew0, G0, stats0 = _group_stats.fused_row_pass(*args)
    close(rew, rew0)
    close(G, G0)
    torch.testing.assert_close(stats, stats0, rtol=1e-5, atol=1e-5)


# --- group_advantages -------------------------------------------------------------------


@pytest.mark.parametrize("L", [1, 47])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_group_advantages(L, estimator, chunk):
    B = 8
    b = make_batch(B, L, seed=L + 50, device=DEV)
    m = b["response_mask"]
    m[0, 0] = True  # at least 2 generated tokens in the batch (whitening estimators)
    m[3, -1] = True
    check("group_advantages", b["rewards"], m, shuffled_index(B, L), estimator, gamma=0.95)


@pytest.mark.parametrize("estimator", ["reinforce_pp_baseline", "grpo_process"])  # G's moments; the rescan
def test_group_advantages_multi_chunk(estimator, monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")  # 18 chunks: crosses the 16-map carry blocks
    b = make_batch(6, 280, seed=55, device=DEV)
    check("group_advantages", b["rewards"], b["response_mask"], shuffled_index(6, 2), estimator, gamma=0.97)


@pytest.mark.parametrize("estimator,scale", [("grpo", "batch"), ("grpo", "none"), ("grpo_process", "batch"),
                                             ("grpo_process", "none")])
def test_group_advantages_scales(estimator, scale, monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    b = make_batch(6, 47, seed=60, device=DEV)
    eps = {} if scale == "none" else dict(eps=1e-4)  # TRL's eps; unused (so rejected) without a division
    check("group_advantages", b["rewards"], b["response_mask"], shuffled_index(6, 1), estimator, scale=scale, **eps)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_group_advantages_int_groups_holes_unchanged(estimator, monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    r = torch.randn(6, 47, generator=torch.Generator().manual_seed(61)).to(DEV)
    m = torch.cat([spanning_mask(5, 47), torch.ones(1, 47, dtype=torch.bool, device=DEV)])
    before = r.clone(), m.clone()
    check("group_advantages", r, m, 3, estimator, gamma=0.9)  # an int G: contiguous groups of 3
    check("group_advantages", r, m, 1, estimator)  # singletons only
    assert torch.equal(r, before[0]) and torch.equal(m, before[1])
    # equal scores in a group: grpo's std is 0, the advantage is then 0 (not NaN) at eps
    same = torch.zeros(6, 47, device=DEV)
    same[:, 10] = 1.5
    check("group_advantages", same, torch.ones(6, 47, dtype=torch.bool, device=DEV), 3, estimator)


# --- fused_reward_group_advantages -------------------------------------------------------

FUSED_OPTIONS = [
    dict(),
    dict(first="zero", beta_c=0.3, reward_clip=(-0.5, 0.7), gamma=0.99),
    dict(kl_coef=0.1, kl_estimator="k3", kl_clamp=(-0.2, 0.3)),
    dict(kl_coef=0.05, kl_estimator="k2", reward_clip=1.0, beta_c=0.0, scale="batch"),
    dict(kl_coef=0.05, kl_estimator="abs", kl_clamp=0.1, first="zero", scale="none"),
    dict(eps=1e-4, gamma=0.9),
]


@pytest.mark.parametrize("L,estimator", [(L, e) for L in (1, 47) for e in ESTIMATORS]
                         + [(150, "reinforce_pp"), (150, "grpo_process")])  # 150: 10 chunks of 16
def test_fused_reward_group_advantages(L, estimator, monkeypatch):
    if L == 150:
        monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    B = 6
    b = make_batch(B, L, D=16, seed=L + 70, device=DEV)
    m = b["response_mask"]
    m[0, 0] = True
    m[3, -1] = True
    check("fused_reward_group_advantages", b["hidden"], b["weight"], b["bias"], m, b["prompt_len"],
          shuffled_index(B, L), estimator, logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05)


@pytest.mark.parametrize("opts", FUSED_OPTIONS, ids=range(len(FUSED_OPTIONS)))
@pytest.mark.parametrize("estimator", ["grpo", "grpo_process"])
def test_fused_options(opts, estimator, chunk):
    b = make_batch(6, 47, D=16, seed=80, device=DEV)
    kl = {} if "kl_coef" not in opts else dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"])
    check("fused_reward_group_advantages", b["hidden"], b["weight"], b["bias"], b["response_mask"],
          b["prompt_len"], 2, estimator, **kl, **opts)


def test_fused_spanning_holes_noncontiguous_unchanged(monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    b = make_batch(5, 47, D=20, seed=81, device=DEV)
    m = spanning_mask(5, 47)
    hidden = b["hidden"].transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    before = [t.clone() for t in (hidden, m, b["logprobs"], b["ref_logprobs"])]
    index = torch.tensor([3, 1, 3, 1, 9], device=DEV)
    check("fused_reward_group_advantages", hidden, b["weight"][None], torch.tensor([0.1], device=DEV), m,
          b["prompt_len"], index, "reinforce_pp_baseline", logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"],
          kl_coef=0.05, gamma=0.98)
    for t, t0 in zip((hidden, m, b["logprobs"], b["ref_logprobs"]), before):
        assert torch.equal(t, t0)


def test_backends_rows():
    report = ops.backends()
    for op in ("reward_to_go", "group_advantages", "fused_reward_group_advantages"):
        assert op in report["ops"]
        assert report["ops"][op]["cpu"] != "triton"  # auto never picks the interpreter
        if CUDA:
            assert report["ops"][op]["cuda"] == "triton"


# --- GPU only ---------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_dtypes(dtype):
    b = make_batch(16, 1000, D=256, dtype=dtype, seed=91, device="cuda")
    index = torch.arange(16, device="cuda") // 4
    kl = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05, kl_estimator="k3")
    check("reward_to_go", b["rewards"], b["response_mask"], 0.99, dtype=dtype, tol=10)
    for estimator in ESTIMATORS:
        check("group_advantages", b["rewards"], b["response_mask"], index, estimator, dtype=dtype, tol=10)
        check("fused_reward_group_advantages", b["hidden"], b["weight"], b["bias"], b["response_mask"],
              b["prompt_len"], index, estimator, dtype=dtype, tol=10, **kl)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("B", [1, 7, 64, 512])
def test_gpu_batch_sizes(B):
    b = make_batch(B, 777, D=64, seed=B, device="cuda")
    b["response_mask"][0, :2] = True  # the whitening estimators need 2 generated tokens in the batch
    index = torch.randperm(B, device="cuda") // 4
    for estimator in ESTIMATORS:
        check("group_advantages", b["rewards"], b["response_mask"], index, estimator, gamma=0.99)
        check("fused_reward_group_advantages", b["hidden"], b["weight"], b["bias"], b["response_mask"],
              b["prompt_len"], index, estimator)


def _rtg64(r, m, gamma, holes):
    """Reward-to-go in float64 without a loop: with w_k = γ^(number of discounting steps before k),
    G_t = Σ_{k≥t} w_k·m_k·r_k / w_t (γ^-steps stays in float64 range for these rows)."""
    steps = (m.cumsum(1) - m.long()) if holes == "skip" else torch.arange(r.shape[1]).expand_as(r)
    w = torch.tensor(gamma, dtype=torch.float64) ** steps.double()
    tail = (w * torch.where(m, r.double(), 0.0)).flip(1).cumsum(1).flip(1)
    return torch.where(m, tail / w, 0.0)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("scan", ["flip", "reverse"])
@pytest.mark.parametrize("B,L", [(1, 131072), (8, 16384)])
def test_gpu_long_rows(B, L, scan, monkeypatch):
    """Long rows (many chunks and carry blocks) against float64."""
    monkeypatch.setenv("R3HF_TRITON_SCAN", scan)
    gen = torch.Generator().manual_seed(L)
    r = torch.randn(B, L, generator=gen)
    m = torch.rand(B, L, generator=gen) > 0.1
    for holes in ("skip", "discount"):
        got = ops.reward_to_go(r.cuda(), m.cuda(), 0.999, holes=holes, backend="triton").cpu()
        torch.testing.assert_close(got, _rtg64(r, m, 0.999, holes).float(), rtol=1e-4, atol=1e-3)
    G, stats = _kreturns.row_pass(r.cuda(), m.cuda(), 0.999)
    G64 = _rtg64(r, m, 0.999, "skip")
    torch.testing.assert_close(G.cpu(), G64.float(), rtol=1e-4, atol=1e-3)
    n = m.sum(1).double()
    sum_g = G64.sum(1)
    m2_g = torch.where(m, G64 - (sum_g / n)[:, None], 0.0).pow(2).sum(1)
    torch.testing.assert_close(stats[:, 0].cpu(), n)
    torch.testing.assert_close(stats[:, 3].cpu(), sum_g, rtol=1e-4, atol=1e-1)
    torch.testing.assert_close(stats[:, 4].cpu(), m2_g, rtol=1e-4, atol=1e-1)


def test_rtg64_matches_reference():
    """The float64 closed form above agrees with the reference loop (so the GPU test's baseline is right)."""
    from r3hf.reference import reward_to_go as ref_rtg

    r = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    m = spanning_mask(3, 40).cpu() | (torch.rand(3, 40, generator=torch.Generator().manual_seed(2)) > 0.5)
    for holes in ("skip", "discount"):
        torch.testing.assert_close(_rtg64(r, m, 0.9, holes).float(), ref_rtg(r, m, 0.9, holes), rtol=1e-5, atol=1e-5)
