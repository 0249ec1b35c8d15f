"""Triton baseline="position" (issue 21) vs the torch reference and vs _group_stats' torch form of
the passes (steps 1p/3p of its module docstring).

Without a GPU these run under Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py), in
fp32 (one bf16 input case), on small shapes. R3HF_TRITON_CHUNK=16 ("chunk" fixture) splits rows of
29..64 positions into several chunks, so a token's position comes from the earlier chunks'
counts (row pass: the stored moments; finish: _chunk_counts_kernel). The oracle-level checks
(loop oracle, unbiasedness, equal-length leave-one-out, packed == padded, gradients, compile)
run for this backend in tests/test_group_position.py, which picks up every backend listing the
option. Tests marked `gpu` need CUDA (bf16/fp16, long rows, large batches, atomics' run-to-run
spread).
"""

from __future__ import annotations

import pytest
import torch

import r3hf.ops as ops
from batches import TOLERANCES
from r3hf import _group_stats as gs

pytest.importorskip("triton")
from r3hf.kernels import group as _kgroup  # noqa: E402
from r3hf.kernels import returns as _kreturns  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

CONFIGS = [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("rloo", "group"),
           ("reinforce_pp_baseline", "group")]


@pytest.fixture(params=["default", "16"])
def chunk(request, monkeypatch):
    if request.param != "default":
        monkeypatch.setenv("R3HF_TRITON_CHUNK", request.param)
    return request.param


def batch(B, L, seed, group_size=3, dtype=torch.float32):
    """Unequal lengths, holes, an all-masked row, a singleton group, shuffled non-dense ids."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, L, generator=gen).to(dtype)
    lengths = torch.randint(0, L + 1, (B,), generator=gen)
    mask = (torch.arange(L)[None, :] < lengths[:, None]) & (torch.rand(B, L, generator=gen) > 0.25)
    if B > 2:
        mask[1] = False
    mask[0, 0] = True
    if L > 1:
        mask[0, 1] = True  # the whitening estimator needs 2 generated tokens in the batch
    ids = torch.arange(B) // group_size
    if B > 3:
        ids[-1] = 1000
    ids = ids[torch.randperm(B, generator=gen)] * 5 - 2
    return rewards.to(DEV), mask.to(DEV), ids.to(DEV)


def close(got, want, tol=1.0, dtype=torch.float32):
    rtol, atol = TOLERANCES[dtype]
    assert got.dtype == torch.float32 and got.shape == want.shape
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got, want.float(), rtol=rtol * tol, atol=atol * tol * scale)


def both(op, *args, **kw):
    fn = getattr(ops, op)
    return fn(*args, backend="triton", baseline="position", **kw), fn(*args, backend="torch", baseline="position",
                                                                      **kw)


def pack(rewards, mask, prompt=3, extra=True):
    """Rows -> a packed stream: each row's prompt (masked) then its response up to its last
    generated token (holes kept); with `extra`, an empty sequence and a prompt-only one in front.
    -> (rewards [T], mask [T], cu_seqlens [N + 1], index positions of the padded rows in N)."""
    parts_r, parts_m, lens, rows = [], [], [], []
    if extra:
        for n in (0, 4):
            parts_r.append(torch.zeros(n, device=DEV))
            parts_m.append(torch.zeros(n, dtype=torch.bool, device=DEV))
            lens.append(n)
    for i in range(mask.shape[0]):
        gen = torch.nonzero(mask[i])[:, 0]
        start = int(gen[0]) if gen.numel() else 0
        end = int(gen[-1]) + 1 if gen.numel() else 0
        parts_r += [torch.zeros(prompt, device=DEV), rewards[i, start:end].float()]
        parts_m += [torch.zeros(prompt, dtype=torch.bool, device=DEV), mask[i, start:end]]
        rows.append(len(lens))
        lens.append(prompt + end - start)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int64, device=DEV)
    return torch.cat(parts_r), torch.cat(parts_m), cu, rows


def packed_index(ids, rows, N):
    """Index [N]: the padded rows' ids, and ids of their own for the extra sequences."""
    out = torch.arange(N, device=DEV) + 10_000
    out[torch.tensor(rows, device=DEV)] = ids
    return out


# --- the passes vs _group_stats' torch form ------------------------------------------------------


@pytest.mark.parametrize("L", [1, 29, 64])
@pytest.mark.parametrize("squares", [True, False])
def test_row_pass_tables(L, squares, chunk):
    r, m, ids = batch(9, L, seed=L + 1)
    pos = gs.Positions(gs.dense_ids(ids), 9, L, squares)  # n_groups = B: an upper bound, as on CUDA
    G, stats, sums, last = _kreturns.row_pass(r, m, 0.93, positions=pos)
    G0, stats0, sums0, last0 = gs.row_pass(r, m, 0.93, positions=pos)
    close(G, G0)
    cols = list(gs.POSITION_COLUMNS)
    torch.testing.assert_close(stats[:, cols], stats0[:, cols], rtol=1e-6, atol=1e-6)
    assert sums.shape == (2, 9, L) and sums.dtype == torch.float64 and sums.is_contiguous()
    planes = 2 if squares else 1  # without squares, sums[1] may hold anything (contract)
    torch.testing.assert_close(sums[:planes], sums0[:planes], rtol=1e-6, atol=1e-5)
    assert last.dtype == torch.float64 and last.shape == (9,)
    torch.testing.assert_close(last, last0, rtol=1e-6, atol=1e-6)
    assert float(last[1]) == 0.0  # the all-masked row


def test_row_pass_tables_packed(chunk):
    r, m, ids = batch(7, 40, seed=3)
    pr, pm, cu, rows = pack(r, m)
    index = packed_index(ids, rows, cu.numel() - 1)
    pos = gs.position_layout(index, pm, "grpo", "group", None, cu)
    got = _kreturns.row_pass(pr, pm, 0.9, cu, positions=pos)
    want = gs.row_pass(pr, pm, 0.9, cu, positions=pos)
    close(got[0], want[0])
    for g, w in zip(got[2:], want[2:]):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("L", [1, 29, 64])
def test_finish_tables(L, chunk):
    r, m, ids = batch(8, L, seed=L + 7)
    dense = gs.dense_ids(ids)
    gen = torch.Generator().manual_seed(L)
    shift = torch.randn(8, L, generator=gen).to(DEV)
    scale = (torch.rand(8, L, generator=gen) + 0.5).to(DEV)
    G, _ = _kreturns.row_pass(r, m, 0.9)
    got = _kreturns.finish(r, G, m, shift, scale, 0.9, False, ids=dense)
    close(got, gs.finish(r, G, m, shift, scale, 0.9, False, ids=dense))
    pr, pm, cu, rows = pack(r, m)
    pidx = gs.dense_ids(packed_index(ids, rows, cu.numel() - 1))
    pshift = torch.randn(int(pidx.max()) + 1, L, generator=gen).to(DEV)
    pscale = torch.rand(int(pidx.max()) + 1, L, generator=gen).to(DEV)
    PG, _ = _kreturns.row_pass(pr, pm, 0.9, cu)
    close(_kreturns.finish(pr, PG, pm, pshift, pscale, 0.9, False, cu, ids=pidx),
          gs.finish(pr, PG, pm, pshift, pscale, 0.9, False, cu, ids=pidx))


# --- group_advantages ---------------------------------------------------------------------------


@pytest.mark.parametrize("L", [1, 29, 64])
@pytest.mark.parametrize("estimator,scale", CONFIGS)
def test_group_advantages(L, estimator, scale, chunk):
    r, m, ids = batch(10, L, seed=L + 20)
    got, want = both("group_advantages", r, m, ids, estimator, scale=scale, gamma=0.95)
    close(got, want)
    got, want = both("group_advantages", r, m, 5, estimator, scale=scale)  # an int G
    close(got, want)


@pytest.mark.parametrize("scan", ["flip", "reverse"])
def test_scan_paths(scan, chunk, monkeypatch):
    """Positions count in position order whichever way the chunk's lanes run (FLIP: backwards)."""
    monkeypatch.setenv("R3HF_TRITON_SCAN", scan)
    r, m, ids = batch(8, 45, seed=41)
    for estimator, scale in [("rloo", "group"), ("grpo", "group")]:
        close(*both("group_advantages", r, m, ids, estimator, scale=scale, gamma=0.9))
    pr, pm, cu, rows = pack(r, m)
    close(*both("group_advantages", pr, pm, packed_index(ids, rows, cu.numel() - 1), "rloo", cu_seqlens=cu))


@pytest.mark.parametrize("estimator,scale", CONFIGS)
def test_singletons_all_masked_equal_lengths(estimator, scale, monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    r, m, _ = batch(6, 40, seed=5)
    close(*both("group_advantages", r, m, 1, estimator, scale=scale))  # singletons only
    empty_group = m.clone()
    empty_group[3:] = False  # a whole group without a generated token
    close(*both("group_advantages", r, empty_group, 3, estimator, scale=scale))
    full = torch.ones(6, 40, dtype=torch.bool, device=DEV)
    got, want = both("group_advantages", r, full, 3, estimator, scale=scale, gamma=0.9)
    close(got, want)
    if estimator == "rloo":  # equal lengths, no holes: G − the other rows' mean G at the same t
        G = ops.reward_to_go(r, full, 0.9, backend="torch").view(2, 3, 40)
        loo = (G.sum(1, keepdim=True) - G) / 2
        close(got, (G - loo).view(6, 40))


@pytest.mark.parametrize("estimator,scale", CONFIGS)
def test_packed(estimator, scale, chunk):
    r, m, ids = batch(9, 45, seed=11)
    pr, pm, cu, rows = pack(r, m)
    index = packed_index(ids, rows, cu.numel() - 1)
    got, want = both("group_advantages", pr, pm, index, estimator, scale=scale, gamma=0.97, cu_seqlens=cu)
    close(got, want)


def test_bf16_rewards_inputs_unchanged(monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    r, m, ids = batch(8, 37, seed=13, dtype=torch.bfloat16)
    before = r.clone(), m.clone(), ids.clone()
    for estimator, scale in CONFIGS:
        got = ops.group_advantages(r, m, ids, estimator, scale=scale, baseline="position", backend="triton")
        want = ops.group_advantages(r.float(), m, ids, estimator, scale=scale, baseline="position", backend="torch")
        close(got, want)  # rewards are read as fp32 exactly: the fp32 tolerance applies
    assert torch.equal(r, before[0]) and torch.equal(m, before[1]) and torch.equal(ids, before[2])


# --- fused_reward_group_advantages --------------------------------------------------------------


def fused_batch(B, L, D, seed):
    gen = torch.Generator().manual_seed(seed)
    S = L + 5
    hidden = torch.randn(B, S, D, generator=gen).to(DEV)
    weight = torch.randn(D, generator=gen).to(DEV)
    _, m, ids = batch(B, L, seed)
    lp = (torch.randn(B, L, generator=gen) * 0.1 - 1).to(DEV)
    ref = (torch.randn(B, L, generator=gen) * 0.1 - 1).to(DEV)
    return hidden, weight, m, torch.full((B,), S - L, dtype=torch.int64, device=DEV), ids, lp, ref


@pytest.mark.parametrize("L", [1, 29])
@pytest.mark.parametrize("estimator,scale", CONFIGS)
def test_fused(L, estimator, scale, chunk):
    hidden, weight, m, plen, ids, lp, ref = fused_batch(7, L, 8, seed=L + 30)
    kw = dict(logprobs=lp, ref_logprobs=ref, kl_coef=0.05, kl_estimator="k3", gamma=0.96, scale=scale)
    (rew, adv), (rew0, adv0) = both("fused_reward_group_advantages", hidden, weight, 0.2, m, plen, ids, estimator,
                                    **kw)
    close(rew, rew0)
    close(adv, adv0)


def test_fused_row_pass_tables(chunk):
    hidden, weight, m, plen, ids, lp, ref = fused_batch(6, 40, 8, seed=2)
    pos = gs.Positions(gs.dense_ids(ids), 6, 40, True)
    args = (hidden, weight, torch.tensor([0.1], device=DEV), m, plen, lp, ref, 0.05, "k1", None, "prompt", 1.0,
            None, 0.9)
    got = _kgroup.fused_row_pass(*args, positions=pos)
    want = gs.fused_row_pass(*args, positions=pos)
    close(got[0], want[0])
    close(got[1], want[1])
    for g, w in zip(got[3:], want[3:]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator,scale", [("rloo", "group"), ("grpo", "group"), ("reinforce_pp_baseline", "group")])
def test_fused_packed(estimator, scale, chunk):
    gen = torch.Generator().manual_seed(9)
    lens = [0, 12, 40, 7, 3, 33, 21]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int64)
    T = int(cu[-1])
    mask = torch.zeros(T, dtype=torch.bool)
    for i, n in enumerate(lens):
        if n > 2:
            mask[int(cu[i]) + 2 : int(cu[i + 1])] = torch.rand(n - 2, generator=gen) > 0.25
            mask[int(cu[i]) + 2] = True
    hidden = torch.randn(T, 6, generator=gen).to(DEV)
    weight = torch.randn(6, generator=gen).to(DEV)
    index = torch.tensor([4, 1, 1, 4, 1, 4, 9], device=DEV)
    (rew, adv), (rew0, adv0) = both("fused_reward_group_advantages", hidden, weight, None, mask.to(DEV), None, index,
                                    estimator, scale=scale, cu_seqlens=cu.to(DEV), gamma=0.95)
    close(rew, rew0)
    close(adv, adv0)


# --- dispatch and compile -----------------------------------------------------------------------


def test_dispatch_lists_position_mode():
    from r3hf._dispatch import _why_not
    from r3hf.backends import triton as tb

    for op in ("group_advantages", "fused_reward_group_advantages"):
        assert "baseline" in tb.OPTIONS[op]
        if CUDA:  # auto on CUDA runs position mode on Triton (no torch fallback, no host sync)
            assert _why_not("triton", op, torch.device("cuda"), ("baseline", "cu_seqlens")) is None


def test_compile_fullgraph_packed_and_fused():
    r, m, ids = batch(6, 20, seed=17)
    pr, pm, cu, rows = pack(r, m)
    index = packed_index(ids, rows, cu.numel() - 1)

    def f(x, mk, i, c):
        return ops.group_advantages(x, mk, i, "rloo", baseline="position", cu_seqlens=c, backend="triton") + 1.0

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(pr, pm, index, cu), f(pr, pm, index, cu))
    hidden, weight, fm, plen, fids, _, _ = fused_batch(6, 12, 4, seed=3)

    def g(h, w, mk, p, i):
        return ops.fused_reward_group_advantages(h, w, None, mk, p, i, "grpo", baseline="position",
                                                 backend="triton")[1] * 2.0

    compiled = torch.compile(g, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(hidden, weight, fm, plen, fids), g(hidden, weight, fm, plen, fids))


# --- GPU only -----------------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_dtypes_long_rows(dtype):
    gen = torch.Generator().manual_seed(1)
    B, L = 64, 3000
    r = torch.randn(B, L, generator=gen).to(dtype).cuda()
    lengths = torch.randint(1, L + 1, (B,), generator=gen)
    m = ((torch.arange(L)[None] < lengths[:, None]) & (torch.rand(B, L, generator=gen) > 0.1)).cuda()
    index = torch.randperm(B, generator=gen).cuda() // 8
    for estimator, scale in CONFIGS:
        got, want = both("group_advantages", r, m, index, estimator, scale=scale, gamma=0.999)
        close(got, want, tol=10)
        pr, pm, cu, rows = pack(r[:16], m[:16], extra=True)
        pidx = packed_index(index[:16], rows, cu.numel() - 1)
        got, want = both("group_advantages", pr, pm, pidx, estimator, scale=scale, cu_seqlens=cu)
        close(got, want, tol=10)


@pytest.mark.gpu
@gpu
def test_gpu_atomics_spread_is_below_fp32():
    """float64 atomics add a group's rows in scheduling order: two runs may differ in the tables'
    last bits, which must stay far below the fp32 advantages' resolution."""
    gen = torch.Generator().manual_seed(2)
    r = torch.randn(512, 2048, generator=gen).cuda()
    m = (torch.rand(512, 2048, generator=gen) > 0.05).cuda()
    index = torch.arange(512, device="cuda") // 16
    runs = [ops.group_advantages(r, m, index, "grpo", baseline="position", backend="triton") for _ in range(3)]
    for other in runs[1:]:
        torch.testing.assert_close(other, runs[0], rtol=1e-6, atol=1e-6)
