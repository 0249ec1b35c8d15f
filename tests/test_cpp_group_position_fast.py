"""The C++ backend's fast per-position paths (issue 21, "Speed"): `group_position_affine` (step 2p
in one pass per group) against the torch form `_group_stats.affine_position`, and
`group_position_advantages` (steps 1p-3p in one pass per group, used for every position estimator
without `group=` or `cu_seqlens`) against the three-op path it replaces, over odd shapes, holes,
all-masked rows, singleton, uneven and non-adjacent groups, groups larger than one scan block, rows
without holes (the kernel's fast form: scan fused with the per-position sums) mixed with rows with
holes, and 1/2/3 threads. rloo and grpo (every scale) are bitwise the three-op path.
reinforce_pp_baseline is not: the one-pass kernel writes G − float(mu) and whitens it in place,
((G − float(mu)) − float(mean))·inv_std, where the three-op path rounds float(mu + mean) once, and
it sums the batch moments over positions in 4 lanes where the three-op path has one chain; so it is
checked at a few ulps against the three-op path and bitwise across thread counts.
"""

from __future__ import annotations

import os

import pytest
import torch

from batches import make_mask

if os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1: the C++ extension is deliberately not built", allow_module_level=True)

import r3hf.ops as ops  # noqa: E402
from r3hf import _group_stats as gs  # noqa: E402
from r3hf.backends import cpp  # noqa: E402,F401  (loads the ops)

OPTIONS = [("rloo", "group"), ("grpo", "group"), ("grpo", "none"), ("grpo", "batch"),
           ("reinforce_pp_baseline", "group")]
FUSED = [o for o in OPTIONS if o[0] in ("rloo", "grpo")]  # bitwise the three-op path


def batch(B, L, G, seed, shuffle=True, holes="all"):
    """holes: "all" (every row may have holes), "none" (trailing padding only: the fast form) or
    "some" (holes in every third row only, so scan blocks of 8 mix both forms)."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(B, L, generator=gen)
    m = make_mask(B, L, gen=gen, holes=holes != "none")  # trailing padding, holes, one all-masked row
    if holes == "some":
        m[1::3] = make_mask(B, L, gen=gen, holes=False, empty_rows=False)[1::3]
        m[5] = True  # a full row
    index = torch.arange(B) // G
    index[0] = B + 5  # a singleton group
    if shuffle:
        index = index[torch.randperm(B, generator=gen)]
    return r, m, index


def three_ops(r, m, index, estimator, scale, gamma, eps=1e-6):
    pos = gs.position_layout(index, m, estimator, scale)
    stats, sums, last = torch.ops.r3hf.group_position_row_pass(r, m, pos.ids, pos.n_groups, pos.width, gamma,
                                                                 pos.squares)
    shift, mult = torch.ops.r3hf.group_position_affine(stats, sums, last, pos.ids, estimator, eps, scale)
    return pos, (stats, sums, last), (shift, mult), torch.ops.r3hf.group_position_finish(r, m, pos.ids, shift, mult,
                                                                                           gamma)


@pytest.mark.parametrize("estimator,scale", OPTIONS)
@pytest.mark.parametrize("B,L,G", [(12, 1, 3), (12, 47, 3), (30, 1000, 11), (17, 300, 8)])
def test_affine_matches_torch_form(estimator, scale, B, L, G):
    r, m, index = batch(B, L, G, seed=B + L)
    pos, (stats, sums, last), (shift, mult), _ = three_ops(r, m, index, estimator, scale, 0.97)
    want = gs.affine_position(stats, sums, last, pos, estimator, 1e-6, scale)
    for got, w in zip((shift, mult), want):
        assert got.shape == w.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("estimator,scale", FUSED)
@pytest.mark.parametrize("B,L,G", [(12, 1, 3), (12, 47, 3), (30, 1000, 11), (17, 300, 8), (64, 130, 16)])
@pytest.mark.parametrize("gamma", [1.0, 0.93])
@pytest.mark.parametrize("holes", ["all", "none", "some"])
def test_one_pass_is_bitwise_the_three_ops(estimator, scale, B, L, G, gamma, holes):
    r, m, index = batch(B, L, G, seed=3 * B + L, holes=holes)
    pos, _, _, want = three_ops(r, m, index, estimator, scale, gamma)
    got = torch.ops.r3hf.group_position_advantages(r, m, pos.ids, pos.n_groups, pos.width, gamma, estimator, 1e-6,
                                                   scale)
    assert torch.equal(got, want)
    # and the public op takes the one-pass path and stays the reference's within its tolerance
    public = ops.group_advantages(r, m, index, estimator, gamma=gamma, scale=scale, baseline="position",
                                  backend="cpp")
    assert torch.equal(public, want)
    ref = ops.group_advantages(r, m, index, estimator, gamma=gamma, scale=scale, baseline="position",
                               backend="torch")
    torch.testing.assert_close(public, ref, rtol=1e-4, atol=2e-5 * max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize("holes", ["all", "none", "some"])
def test_bitwise_across_threads(holes):
    r, m, index = batch(70, 4100, 8, seed=5, holes=holes)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append([ops.group_advantages(r, m, index, e, scale=s, baseline="position", backend="cpp")
                            for e, s in OPTIONS])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert torch.equal(x, y)


def test_inputs_unchanged_and_compile():
    r, m, index = batch(12, 47, 3, seed=7)
    before = [t.clone() for t in (r, m, index)]
    for e, s in OPTIONS:
        ops.group_advantages(r, m, index, e, scale=s, baseline="position", backend="cpp")
    for x, y in zip(before, (r, m, index)):
        assert torch.equal(x, y)
    pos = gs.position_layout(index, m, "rloo", "group")
    args = (r, m, pos.ids, pos.n_groups, pos.width, 1.0, "rloo", 1e-6, "group")
    torch.library.opcheck(torch.ops.r3hf.group_position_advantages.default, args)
    _, (stats, sums, last), _, _ = three_ops(r, m, index, "grpo", "group", 1.0)
    torch.library.opcheck(torch.ops.r3hf.group_position_affine.default,
                          (stats, sums, last, pos.ids, "grpo", 1e-6, "group"))


@pytest.mark.parametrize("call,match", [
    (lambda r, m, ids: torch.ops.r3hf.group_position_advantages(r, m, ids, 4, 47, 1.0, "grpo_process",
                                                                1e-6, "group"), "baseline='position'"),
    (lambda r, m, ids: torch.ops.r3hf.group_position_advantages(r, m, ids, 4, 47, 1.0, "grpo", 1e-6, "token"),
     "scale must be one of"),
    (lambda r, m, ids: torch.ops.r3hf.group_position_advantages(r, m, ids, 2, 47, 1.0, "rloo", 1e-6, "group"),
     "dense ids"),
    (lambda r, m, ids: torch.ops.r3hf.group_position_advantages(r, m, ids, 4, 40, 1.0, "rloo", 1e-6, "group"),
     "width"),
    (lambda r, m, ids: torch.ops.r3hf.group_position_affine(torch.zeros(12, 5, dtype=torch.float64),
                                                            torch.zeros(2, 4, 47, dtype=torch.float64),
                                                            torch.zeros(12, dtype=torch.float64), ids, "grpo_process",
                                                            1e-6, "group"), "baseline='position'"),
])
def test_kernel_argument_errors(call, match):
    r, m, _ = batch(12, 47, 3, seed=8, shuffle=False)
    ids = torch.arange(12) // 3
    with pytest.raises(ValueError, match=match):
        call(r, m, ids)


@pytest.mark.parametrize("B,L,G", [(12, 1, 3), (12, 47, 3), (30, 1000, 11), (17, 300, 8), (64, 130, 16)])
@pytest.mark.parametrize("gamma", [1.0, 0.93])
@pytest.mark.parametrize("holes", ["all", "none", "some"])
def test_one_pass_reinforce_pp_baseline(B, L, G, gamma, holes):
    r, m, index = batch(B, L, G, seed=5 * B + L, holes=holes)
    _, _, _, want = three_ops(r, m, index, "reinforce_pp_baseline", "group", gamma)
    got = ops.group_advantages(r, m, index, "reinforce_pp_baseline", gamma=gamma, baseline="position", backend="cpp")
    assert torch.equal(got == 0, want == 0) and torch.equal(got[~m], torch.zeros_like(got[~m]))
    # two fp32 roundings of the shift instead of one, times inv_std: a few ulps of |G|·inv_std
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(want.abs().max())))
    ref = ops.group_advantages(r, m, index, "reinforce_pp_baseline", gamma=gamma, baseline="position",
                               backend="torch")
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=2e-5 * max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize("estimator,scale", OPTIONS)
def test_uneven_groups_and_lengths(estimator, scale):
    """Groups of 1, 3, 8, 9 and 17 rows (a partial scan block after whole ones), rows of every length
    from 0 to L without holes, one holed row, the rows of a group spread over the batch."""
    gen = torch.Generator().manual_seed(11)
    sizes = [1, 3, 8, 9, 17, 1]
    B, L = sum(sizes), 61
    r = torch.randn(B, L, generator=gen)
    lengths = torch.randint(0, L + 1, (B,), generator=gen)
    lengths[:4] = torch.tensor([0, L, 1, L - 1])
    m = torch.arange(L)[None] < lengths[:, None]
    m[7, 3] = False
    index = torch.repeat_interleave(torch.arange(len(sizes)) * 7, torch.tensor(sizes))
    index = index[torch.randperm(B, generator=gen)]
    _, _, _, want = three_ops(r, m, index, estimator, scale, 0.97)
    got = ops.group_advantages(r, m, index, estimator, gamma=0.97, scale=scale, baseline="position", backend="cpp")
    if estimator == "reinforce_pp_baseline":
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(want.abs().max())))
    else:
        assert torch.equal(got, want)
    ref = ops.group_advantages(r, m, index, estimator, gamma=0.97, scale=scale, baseline="position", backend="torch")
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=2e-5 * max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("estimator,scale", OPTIONS)
def test_half_inputs(dtype, tol, estimator, scale):
    r, m, index = batch(24, 47, 4, seed=13, holes="some")
    r = r.to(dtype)
    got = ops.group_advantages(r, m, index, estimator, scale=scale, baseline="position", backend="cpp")
    ref = ops.group_advantages(r.float(), m, index, estimator, scale=scale, baseline="position", backend="torch")
    assert got.dtype == torch.float32 and got.shape == r.shape
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * max(1.0, float(ref.abs().max())))
