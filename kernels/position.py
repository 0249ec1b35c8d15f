"""Per-position group baselines (issue 21, `baseline="position"`): the Triton pieces of
r3hf/_group_stats.py's steps 1p and 3p (semantics: r3hf.reference.group).

Position p of a generated token = the generated tokens before it in its row (holes and padding
skipped). A chunk's p is its row's generated count in the earlier chunks (`prefix_count`, from
per-chunk counts already in memory) plus an exclusive count within the chunk (`chunk_positions`,
a forward cumsum in lane order, also on the flipped scan path).

Row pass (`accumulate_positions`, called by the kernels of kernels/returns.py and
kernels/group.py under their POS switch, where G of a chunk is in registers): for each generated
token, sums[0, ids_i, p] += G and (SQUARES) sums[1, ids_i, p] += G², float64 atomics; the lane
holding the row's last generated token stores G into last[i]. The atomics make the GPU sums
order-dependent in the last bits of float64 (rows of a group add in scheduling order). Sums of
fp32 G in float64 are exact, so order-free, while a group's values at a position lie within ~2^29
of each other in magnitude; the squares (48-bit products) are not, so with grpo's group std and
reinforce_pp_baseline two runs can differ in the tables' last bits, which the float32 cast of
the affine map almost always absorbs: do not expect bit-identical GPU runs. The interpreter runs
programs in order, so it is deterministic.

Finish: `_chunk_counts_kernel` writes each chunk's generated count (int32, one byte read per
token), then kernels/returns.py's `_affine_kernel` under POS reads the earlier chunks' counts,
and A = m·(G − shift[ids_i, p])·scale[ids_i, p]. No host sync anywhere: ids, the tables and the
counts stay on the device; n_groups (an upper bound) and W come from the layout.
VARLEN (packed): the same over kernels/varlen.py's chunk index, a sequence being a row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .varlen import locate_chunk

BLOCK_C = 16  # chunk counts summed per step


@triton.jit
def prefix_count(cnt_ptr, base, n_chunks, BLOCK_C: tl.constexpr):
    """Σ of the counts at chunk ids base … base + n_chunks − 1 (any numeric type), as int32."""
    n = tl.zeros((), tl.int32)
    for c0 in range(0, n_chunks, BLOCK_C):
        cid = c0 + tl.arange(0, BLOCK_C)
        n += tl.sum(tl.load(cnt_ptr + base + cid, mask=cid < n_chunks, other=0).to(tl.int32), axis=0)
    return n


@triton.jit
def chunk_positions(b_m, FLIP: tl.constexpr):
    """Exclusive count of generated lanes before each lane, in position order, int32."""
    m = b_m.to(tl.int32)
    c = tl.cumsum(m, 0)
    if FLIP:  # lanes run backwards in position: lane k's cumsum counts it and the later positions
        return tl.sum(m, axis=0) - c
    else:
        return c - m


@triton.jit
def accumulate_positions(b_g, b_m, p0, n_row, i_n, ids_ptr, ps_ptr, last_ptr, W, ps_plane,
                         SQUARES: tl.constexpr, FLIP: tl.constexpr):
    """Add one chunk's G (fp32, lanes b_m generated) to the per-position tables at row i_n's group;
    p0: the row's generated tokens before this chunk; n_row: its generated count (last lane)."""
    p = p0 + chunk_positions(b_m, FLIP)
    ok = b_m & (p < W)
    o_s = tl.load(ids_ptr + i_n) * W + p  # int64: n_groups·W may pass 2^31
    g = b_g.to(tl.float64)
    tl.atomic_add(ps_ptr + o_s, g, mask=ok, sem="relaxed")
    if SQUARES:
        tl.atomic_add(ps_ptr + ps_plane + o_s, g * g, mask=ok, sem="relaxed")
    # one lane at most holds the row's last generated token (all-masked rows keep last = 0)
    tl.store(last_ptr + i_n + tl.zeros_like(p), g, mask=b_m & (p == n_row - 1))


@triton.jit
def _chunk_counts_kernel(m_ptr, cnt_ptr, ci_ptr, cu_ptr, L, nC, BLOCK: tl.constexpr, VARLEN: tl.constexpr):
    """cnt[chunk id] = generated tokens of the chunk, int32; the affine finish's chunks (padded
    grid (nC, B), ids i_b·nC + i_c; VARLEN over the chunk index)."""
    i_n, i_c, bos, T_n, nC_n, base = locate_chunk(ci_ptr, cu_ptr, L, nC, BLOCK, VARLEN)
    if i_c < 0:
        return
    o_t = i_c * BLOCK + tl.arange(0, BLOCK)
    m_t = o_t < T_n
    b_m = tl.load(m_ptr + bos + o_t, mask=m_t, other=0) != 0
    tl.store(cnt_ptr + base + i_c, tl.sum(b_m.to(tl.int32), axis=0))


def position_args(positions, B: int, device, dummy: torch.Tensor):
    """-> (kernel pointer/scalar args dict, sums, last): zeroed tables for step 1p, or dummies."""
    if positions is None:
        return dict(ids_ptr=dummy, ps_ptr=dummy, last_ptr=dummy, W=1, ps_plane=0, POS=False, SQUARES=False), None, None
    ids, n_groups, W, squares = positions
    sums = torch.empty((2, n_groups, W), dtype=torch.float64, device=device)
    (sums if squares else sums[0]).zero_()  # sums[1] is never read without squares (contract)
    last = torch.zeros(B, dtype=torch.float64, device=device)
    args = dict(ids_ptr=ids.to(torch.int64).contiguous(), ps_ptr=sums, last_ptr=last, W=int(W),
                ps_plane=n_groups * W, POS=True, SQUARES=bool(squares))
    return args, sums, last


def chunk_counts(m8: torch.Tensor, grid, ci, cu, L: int, nC: int, plane: int, BLOCK: int, varlen: bool):
    """Per-chunk generated counts int32 [plane] for the POS finish (same grid as _affine_kernel)."""
    cnt = torch.empty(plane, dtype=torch.int32, device=m8.device)
    _chunk_counts_kernel[grid](m8, cnt, ci, cu, L, nC, BLOCK=BLOCK, VARLEN=varlen, num_warps=4)
    return cnt


__all__ = ["prefix_count", "chunk_positions", "accumulate_positions", "position_args", "chunk_counts"]
