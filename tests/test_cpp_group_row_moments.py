"""The C++ row pass's one-pass moments (issue 21): M2_R and M2_G from sums around a per-row shift
(the row's value at its last generated position), and SUM_G/M2_G reduced inside the reverse scan
without writing G (csrc/cpu/group_rows.h: masked_sum_sq, scan_moments8).

Checked against the contract's torch row pass (float64, two passes around the mean), on data
where a one-pass formula around zero would cancel badly; and that a row's statistics are the same
bits whether it is scanned in an 8-row block or alone, for any thread count.
"""

from __future__ import annotations

import os

import pytest
import torch

import r3hf.ops as ops
from batches import make_mask

if os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1: the C++ extension is deliberately not built", allow_module_level=True)

from r3hf import _group_stats as gs  # noqa: E402
import r3hf.backends.cpp  # noqa: E402,F401  (registers the ops)

LENGTHS = [1, 47, 1000]
M2 = [gs.STAT_M2_R, gs.STAT_M2_G]


def batch(B, L, seed, offset=0.0, spread=1.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    r = (offset + spread * torch.randn(B, L, generator=gen, dtype=torch.float64)).to(dtype)
    return r, make_mask(B, L, gen=gen)


@pytest.mark.parametrize("gamma", [1.0, 0.7])
@pytest.mark.parametrize("L", LENGTHS)
def test_block_rows_equal_single_rows_bitwise(gamma, L):
    # 19 rows: two 8-row blocks (the AVX2 scan) and 3 rows alone (the scalar scan); the same rows
    # again as 1-row batches must give the same bits.
    r, m = batch(19, L, seed=L)
    m[3] = False  # an all-masked row inside a block
    m[9, : L // 2] = False  # leading holes
    got = torch.ops.r3hf.group_row_pass(r, m, gamma)
    for i in range(19):
        alone = torch.ops.r3hf.group_row_pass(r[i:i + 1].clone(), m[i:i + 1].clone(), gamma)
        assert torch.equal(alone[0], got[i]), (i, alone[0], got[i])
    assert torch.equal(got[3], torch.zeros(gs.N_STATS, dtype=torch.float64))


@pytest.mark.parametrize("gamma", [1.0, 0.99, 0.5])
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("offset,spread", [(0.0, 1.0), (1e3, 1e-2), (-50.0, 3e-3), (0.0, 1e-4)])
def test_moments_where_sums_around_zero_cancel(gamma, L, offset, spread):
    # |mean| >> std: Σx² − (Σx)²/n in double would lose ~log2((mean/std)²) bits; around the shift it
    # must match the two-pass float64 statistics closely.
    r, m = batch(16, L, seed=7 * L + 1, offset=offset, spread=spread)
    _, want = gs.row_pass(r, m, gamma)
    got = torch.ops.r3hf.group_row_pass(r, m, gamma)
    torch.testing.assert_close(got[:, [gs.STAT_COUNT, gs.STAT_SUM_R, gs.STAT_SUM_G]],
                               want[:, [gs.STAT_COUNT, gs.STAT_SUM_R, gs.STAT_SUM_G]], rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(got[:, M2], want[:, M2], rtol=1e-8, atol=1e-12 * float(want[:, M2].abs().max()))
    assert (got[:, M2] >= 0).all()


def test_geometric_returns_with_an_outlying_shift():
    # γ < 1 and one reward at the end: G decays geometrically, so the shift (the last generated
    # token's G) is far above the row mean; still the contract's M2_G.
    L = 4096
    r = torch.zeros(9, L)
    r[:, -1] = torch.arange(1, 10, dtype=torch.float32)
    m = torch.ones(9, L, dtype=torch.bool)
    _, want = gs.row_pass(r, m, 0.99)
    got = torch.ops.r3hf.group_row_pass(r, m, 0.99)
    torch.testing.assert_close(got[:, gs.STAT_M2_G], want[:, gs.STAT_M2_G], rtol=1e-9, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_rewards_are_read_as_fp32(dtype):
    r, m = batch(11, 47, seed=3, dtype=dtype)
    got = torch.ops.r3hf.group_row_pass(r, m, 1.0)
    assert torch.equal(got, torch.ops.r3hf.group_row_pass(r.float(), m, 1.0))
    _, want = gs.row_pass(r.float(), m, 1.0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("estimator", ["reinforce_pp", "reinforce_pp_baseline", "grpo_process"])
def test_thread_count_does_not_change_bits_at_gamma_one(estimator):
    # 70 rows: several tasks and a short last block.
    r, m = batch(70, 1003, seed=5)
    index = torch.randint(0, 9, (70,), generator=torch.Generator().manual_seed(5))
    threads = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out.append((torch.ops.r3hf.group_row_pass(r, m, 1.0),
                        ops.group_advantages(r, m, index, estimator, gamma=1.0, backend="cpp")))
    finally:
        torch.set_num_threads(threads)
    for stats, adv in out[1:]:
        assert torch.equal(stats, out[0][0]) and torch.equal(adv, out[0][1])


def test_single_row_groups_and_all_masked_rows():
    r, m = batch(10, 47, seed=9)
    m[[0, 5]] = False
    index = torch.arange(10) // 2  # groups of 2: group 0 has a masked row
    for est in ("reinforce_pp", "reinforce_pp_baseline", "grpo_process"):
        got = ops.group_advantages(r, m, index, est, backend="cpp")
        want = ops.group_advantages(r, m, index, est, backend="torch")
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * (1 + float(want.abs().max())))
        assert (got[~m] == 0).all()
    got = ops.group_advantages(r, m, 1, "grpo_process", backend="cpp")  # every row a singleton
    want = ops.group_advantages(r, m, 1, "grpo_process", backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * (1 + float(want.abs().max())))
