"""The C++ step 2 for baseline="row" (`r3hf::group_row_affine`, issue 21) against the torch form
`r3hf._group_stats.affine` (the contract), and the C++ backend's group_advantages that uses it
against the reference: every estimator and scale, shuffled non-contiguous ids, singleton groups,
all-masked rows, one group, every row its own group."""

from __future__ import annotations

import os

import pytest
import torch

import r3hf.ops as ops
from batches import make_mask

if os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1: the C++ extension is deliberately not built", allow_module_level=True)

from r3hf import _group_stats as gs  # noqa: E402
from r3hf.backends import cpp  # noqa: E402

VALID = [(e, "group") for e in gs.ESTIMATORS] + [
    ("grpo", "batch"), ("grpo", "none"), ("grpo_process", "batch"), ("grpo_process", "none"),
]
# the public op refuses a scale these estimators ignore; step 2 itself must still agree
SETTINGS = VALID + [("reinforce_pp", "batch"), ("rloo", "none")]


def case(kind: str, B: int = 23, L: int = 47, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(B, L, generator=gen) * 3 + 1
    m = make_mask(B, L, gen=gen)
    m[B // 2] = False  # an all-masked row (its score 0 counts in its group)
    if kind == "shuffled":  # groups of 1, 2, 3 and more, ids far apart and out of order
        sizes = [1, 2, 3, 5, 1, 4, 7]
        ids = torch.cat([torch.full((k,), 1000 - 37 * g) for g, k in enumerate(sizes)])
        index = ids[torch.randperm(B, generator=gen)]
    elif kind == "one_group":
        index = torch.zeros(B, dtype=torch.int64)
    elif kind == "singletons":
        index = torch.arange(B) * 3
    else:  # contiguous groups of 4 and a last group of 3
        index = torch.arange(B) // 4
    return r, m, index


@pytest.mark.parametrize("kind", ["shuffled", "one_group", "singletons", "contiguous"])
@pytest.mark.parametrize("estimator,scale", SETTINGS)
def test_affine_matches_torch_form(kind, estimator, scale):
    r, m, index = case(kind)
    _, stats = gs.row_pass(r, m, 1.0)
    want_shift, want_mult, want_on = gs.affine(stats, index, estimator, 1e-6, scale)
    got_shift, got_mult, got_on = cpp._affine(stats, index, estimator, 1e-6, scale)
    assert got_on == want_on and got_shift.dtype == got_mult.dtype == torch.float32
    torch.testing.assert_close(got_shift, want_shift, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_mult, want_mult, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["shuffled", "singletons"])
@pytest.mark.parametrize("L", [1, 47, 1000])
@pytest.mark.parametrize("estimator,scale", VALID)
def test_group_advantages_match_reference(kind, L, estimator, scale):
    r, m, index = case(kind, L=L, seed=L)
    kw = dict(scale=scale, gamma=0.9)
    try:
        want = ops.group_advantages(r, m, index, estimator, backend="torch", **kw)
    except ValueError as e:  # too few tokens for whitening: the C++ path must refuse the same way
        with pytest.raises(ValueError):
            ops.group_advantages(r, m, index, estimator, backend="cpp", **kw)
        assert "token" in str(e)
        return
    got = ops.group_advantages(r, m, index, estimator, backend="cpp", **kw)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * (1 + float(want.abs().max())))


def test_bad_arguments_are_named():
    stats = torch.zeros(4, gs.N_STATS, dtype=torch.float64)
    with pytest.raises(ValueError, match="estimator"):
        torch.ops.r3hf.group_row_affine(stats, torch.zeros(4, dtype=torch.int64), "ppo", 1e-6, "group")
    with pytest.raises(ValueError, match="scale"):
        torch.ops.r3hf.group_row_affine(stats, torch.zeros(4, dtype=torch.int64), "grpo", 1e-6, "rows")
    with pytest.raises(ValueError, match="index"):
        torch.ops.r3hf.group_row_affine(stats, torch.zeros(3, dtype=torch.int64), "grpo", 1e-6, "group")
    with pytest.raises(ValueError, match="stats"):
        torch.ops.r3hf.group_row_affine(stats[:, :4], torch.zeros(4, dtype=torch.int64), "grpo", 1e-6, "group")


def test_opcheck():
    r, m, index = case("shuffled")
    _, stats = gs.row_pass(r, m, 1.0)
    torch.library.opcheck(torch.ops.r3hf.group_row_affine.default, (stats, index, "grpo_process", 1e-6, "group"))
