"""Masked reward-to-go as a chunked backward associative scan, and the two backend passes of the
group advantages around r3hf/_group_stats.py (semantics: r3hf.reference.reward_to_go and
group_advantages; the row statistics' format is _group_stats' docstring).

The scan. Walking a row backwards, position t maps the running return R arriving from t + 1 to
the one it hands to t − 1:

    holes="skip"      generated t: R ← γ·R + r_t;   masked t: identity (R carried unchanged)
    holes="discount"  every t:     R ← γ·R + m_t·r_t

so each position is a pair (a, b) of R ← a·R + b, and positions past the row's end are the
identity. Compositions keep this form; with x = the later positions (the scan's accumulator, see
kernels/scan.py for the argument order Triton uses) and y = the earlier one:

    y ∘ x = (a_y·a_x,  a_y·b_x + b_y)

The scan value at t is the map of positions t..chunk end, and G_t = a_t·R_carry + b_t with
R_carry the return arriving from the later chunks. G is written 0 at masked positions.

Launches (one program per (chunk, row); no host sync; any L):
- `_rtg_row_kernel`: scans its chunk and stores the chunk's composed map [2, B, nC] — or, when a
  row is one chunk, writes G at once. With STATS it also stores the chunk's moments of r (and of G
  when the row is one chunk): count, sum, M2 about the chunk mean, float64 [6, B, nC];
- `_rtg_final_kernel` (rows of several chunks): composes the later chunks' maps into the carry
  (16 per step), rescans its chunk, writes G, and with STATS stores G's chunk moments;
- `_row_stats_kernel`, one program per row: merges the chunk moments around the row mean (Chan
  et al.) in float64 into _group_stats' stats [B, 5];
- finish: `_affine_kernel` A = m·(G − shift_i)·scale_i, or (grpo_process) the scan again on
  x = m·(r − shift_i)·scale_i, transformed as it is loaded (TRANSFORM).
With TRANSFORM the map kernels read the per-row shift and scale (fp32 [B] each).
VARLEN (packed [T] with cu_seqlens): every kernel runs over kernels/varlen.py's chunk index, a
sequence being a row (chunk maps and moments [.., G], stats [N, 5], shift/scale [N]).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, _env_chunk, flip_scans, gae_chunk, varlen_chunk
from .position import accumulate_positions, chunk_counts, position_args, prefix_count
from .scan import chunk_offsets, first_lane, lane_value
from .varlen import chunk_index, launch_args, locate_chunk

BLOCK_C = 16  # chunk maps composed per step when gathering the carry (tests cross it)
N_MOMENTS = 6  # planes of the chunk moments: (count, sum, M2) of r, then of G
N_STATS = 5  # _group_stats.N_STATS: COUNT, SUM_R, M2_R, SUM_G, M2_G


@triton.jit
def rtg_combine(a_x, b_x, a_y, b_y):
    # x = acc (later positions), y = new (earlier position): y ∘ x (see the module doc).
    return a_y * a_x, a_y * b_x + b_y


@triton.jit
def rtg_elements(x, m, m_t, gamma, SKIP: tl.constexpr):
    """(a, b) of each lane from rewards x (fp32), generated mask m and in-row mask m_t."""
    one = tl.full(x.shape, 1.0, tl.float32)
    if SKIP:
        a = tl.where(m, one * gamma, one)
    else:
        a = tl.where(m_t, one * gamma, one)
    b = tl.where(m, x, 0.0)  # where, not m·x: a masked NaN/inf never leaks in
    return a, b


@triton.jit
def backward_scan2(a, b, FLIP: tl.constexpr):
    if FLIP:
        return tl.associative_scan((a, b), 0, rtg_combine)
    else:
        return tl.associative_scan((a, b), 0, rtg_combine, reverse=True)


@triton.jit
def rtg_carry(s_ptr, plane, base, i_c, nC, BLOCK_C: tl.constexpr):
    """The return arriving at chunk i_c of a row: the maps of chunks nC − 1 … i_c + 1 (later
    first; s_ptr fp32 [2, plane], the row's chunk j at id base + j, kernels/varlen.py) applied to 0,
    BLOCK_C maps per step composed with a forward scan of the same combine, so any number of
    chunks works."""
    R = tl.zeros((), tl.float32)
    lane = tl.arange(0, BLOCK_C)
    for blk in range(0, nC - 1 - i_c, BLOCK_C):
        cid = nC - 1 - blk - lane
        ok = cid > i_c
        p = s_ptr + base + cid
        sa = tl.load(p, mask=ok, other=1.0)
        sb = tl.load(p + plane, mask=ok, other=0.0)
        sa, sb = tl.associative_scan((sa, sb), 0, rtg_combine)
        R = lane_value(sa, BLOCK_C - 1, BLOCK_C) * R + lane_value(sb, BLOCK_C - 1, BLOCK_C)
    return R


@triton.jit
def store_moments(st_ptr, plane, base, i_c, x, m):
    """Chunk moments of x over the lanes where m is set: count, sum, M2 about the chunk mean, in
    float64 (a row's score s_i = Σ r then matches the reference's float64 sum, which matters where
    a group's scores are nearly equal and their std is divided by)."""
    x = x.to(tl.float64)
    n = tl.sum(m.to(tl.float64), axis=0)
    s = tl.sum(tl.where(m, x, 0.0), axis=0)
    d = tl.where(m, x - s / tl.maximum(n, 1.0), 0.0)
    p = st_ptr + base + i_c
    tl.store(p, n)
    tl.store(p + plane, s)
    tl.store(p + 2 * plane, tl.sum(d * d, axis=0))


@triton.jit
def rtg_chunk_tail(b_x, b_m, m_t, o_x, s_ptr, st_ptr, out_ptr, base, i_c, plane, gamma, SKIP: tl.constexpr,
                   MULTI: tl.constexpr, STATS: tl.constexpr, BLOCK_T: tl.constexpr, FLIP: tl.constexpr,
                   i_n, ids_ptr, ps_ptr, last_ptr, W, ps_plane, POS: tl.constexpr, SQUARES: tl.constexpr):
    """Row pass of one chunk whose rewards b_x (fp32, any value where masked) are in registers:
    the chunk's map (several chunks) or G itself (one chunk, carry 0), and the moments. POS: a
    one-chunk row also adds its G to the per-position tables (kernels/position.py); rows of
    several chunks do that in `_rtg_final_kernel`, where G is known."""
    a, b = rtg_elements(b_x, b_m, m_t, gamma, SKIP)
    a, b = backward_scan2(a, b, FLIP)
    if MULTI:
        k = first_lane(BLOCK_T, FLIP)
        p_s = s_ptr + base + i_c
        tl.store(p_s, lane_value(a, k, BLOCK_T))
        tl.store(p_s + plane, lane_value(b, k, BLOCK_T))
    else:
        tl.store(out_ptr + o_x, tl.where(b_m, b, 0.0), mask=m_t)
        if POS:
            accumulate_positions(b, b_m, 0, tl.sum(b_m.to(tl.int32), axis=0), i_n, ids_ptr, ps_ptr, last_ptr, W,
                                 ps_plane, SQUARES, FLIP)
    if STATS:
        store_moments(st_ptr, plane, base, i_c, b_x, b_m)
        if not MULTI:
            store_moments(st_ptr + 3 * plane, plane, base, i_c, b, b_m)


@triton.jit
def _load_chunk(r_ptr, m_ptr, shift_ptr, scale_ptr, i_n, bos, i_c, T_n, TRANSFORM: tl.constexpr,
                BLOCK_T: tl.constexpr, FLIP: tl.constexpr):
    o_t = chunk_offsets(i_c * BLOCK_T, BLOCK_T, FLIP)
    m_t = o_t < T_n
    o_x = bos + o_t
    b_m = (tl.load(m_ptr + o_x, mask=m_t, other=0) != 0) & m_t
    b_x = tl.load(r_ptr + o_x, mask=b_m, other=0.0).to(tl.float32)
    if TRANSFORM:  # grpo_process: x = (r − shift)·scale, the rewards normalised per row
        b_x = (b_x - tl.load(shift_ptr + i_n)) * tl.load(scale_ptr + i_n)
    return o_x, m_t, b_m, b_x


@triton.jit
def _rtg_row_kernel(r_ptr, m_ptr, shift_ptr, scale_ptr, s_ptr, st_ptr, out_ptr, ci_ptr, cu_ptr, plane, L, nC, gamma,
                    ids_ptr, ps_ptr, last_ptr, W, ps_plane,
                    SKIP: tl.constexpr, TRANSFORM: tl.constexpr, MULTI: tl.constexpr, STATS: tl.constexpr,
                    BLOCK_T: tl.constexpr, FLIP: tl.constexpr, VARLEN: tl.constexpr, POS: tl.constexpr,
                    SQUARES: tl.constexpr):
    i_n, i_c, bos, T_n, nC_n, base = locate_chunk(ci_ptr, cu_ptr, L, nC, BLOCK_T, VARLEN)
    if i_c < 0:
        return
    o_x, m_t, b_m, b_x = _load_chunk(r_ptr, m_ptr, shift_ptr, scale_ptr, i_n, bos, i_c, T_n, TRANSFORM, BLOCK_T,
                                     FLIP)
    rtg_chunk_tail(b_x, b_m, m_t, o_x, s_ptr, st_ptr, out_ptr, base, i_c, plane, gamma, SKIP, MULTI, STATS,
                   BLOCK_T, FLIP, i_n, ids_ptr, ps_ptr, last_ptr, W, ps_plane, POS, SQUARES)


@triton.jit
def _rtg_final_kernel(r_ptr, m_ptr, shift_ptr, scale_ptr, s_ptr, st_ptr, out_ptr, ci_ptr, cu_ptr, plane, L, nC,
                      gamma, ids_ptr, ps_ptr, last_ptr, W, ps_plane, SKIP: tl.constexpr, TRANSFORM: tl.constexpr,
                      STATS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, FLIP: tl.constexpr,
                      VARLEN: tl.constexpr, POS: tl.constexpr, SQUARES: tl.constexpr):
    i_n, i_c, bos, T_n, nC_n, base = locate_chunk(ci_ptr, cu_ptr, L, nC, BLOCK_T, VARLEN)
    if i_c < 0:
        return
    R = rtg_carry(s_ptr, plane, base, i_c, nC_n, BLOCK_C)
    o_x, m_t, b_m, b_x = _load_chunk(r_ptr, m_ptr, shift_ptr, scale_ptr, i_n, bos, i_c, T_n, TRANSFORM, BLOCK_T,
                                     FLIP)
    a, b = rtg_elements(b_x, b_m, m_t, gamma, SKIP)
    a, b = backward_scan2(a, b, FLIP)
    b_g = a * R + b
    tl.store(out_ptr + o_x, tl.where(b_m, b_g, 0.0), mask=m_t)
    if STATS:
        store_moments(st_ptr + 3 * plane, plane, base, i_c, b_g, b_m)
    if POS:  # positions from the r counts the row kernel stored (plane 0 of the moments; POS needs STATS)
        p0 = prefix_count(st_ptr, base, i_c, BLOCK_C)
        n_row = p0 + prefix_count(st_ptr, base + i_c, nC_n - i_c, BLOCK_C)
        accumulate_positions(b_g, b_m, p0, n_row, i_n, ids_ptr, ps_ptr, last_ptr, W, ps_plane, SQUARES, FLIP)


@triton.jit
def _merge_moments(st_ptr, plane, base, nC, BLOCK_C: tl.constexpr):
    """float64 (count, sum, M2) of one row from its chunks' (count, sum, M2 about the chunk
    mean), ids base … base + nC − 1: M2 = Σ M2_c + Σ n_c·(mean_c − mean)² (Chan et al.)."""
    n = tl.zeros((), tl.float64)
    s = tl.zeros((), tl.float64)
    for c0 in range(0, nC, BLOCK_C):
        cid = c0 + tl.arange(0, BLOCK_C)
        ok = cid < nC
        n += tl.sum(tl.load(st_ptr + base + cid, mask=ok, other=0.0).to(tl.float64), axis=0)
        s += tl.sum(tl.load(st_ptr + plane + base + cid, mask=ok, other=0.0).to(tl.float64), axis=0)
    mean = s / tl.maximum(n, 1.0)
    m2 = tl.zeros((), tl.float64)
    for c0 in range(0, nC, BLOCK_C):
        cid = c0 + tl.arange(0, BLOCK_C)
        ok = cid < nC
        n_c = tl.load(st_ptr + base + cid, mask=ok, other=0.0).to(tl.float64)
        s_c = tl.load(st_ptr + plane + base + cid, mask=ok, other=0.0).to(tl.float64)
        m2_c = tl.load(st_ptr + 2 * plane + base + cid, mask=ok, other=0.0).to(tl.float64)
        d = s_c / tl.maximum(n_c, 1.0) - mean
        m2 += tl.sum(m2_c + n_c * d * d, axis=0)
    return n, s, m2


@triton.jit
def _row_stats_kernel(st_ptr, stats_ptr, starts_ptr, cu_ptr, plane, nC, BLOCK_C: tl.constexpr,
                      BLOCK_T: tl.constexpr, VARLEN: tl.constexpr):
    """stats[b] = (COUNT, SUM_R, M2_R, SUM_G, M2_G) float64, from the chunk moments [6, plane];
    one program per row (padded: nC chunks at b·nC; VARLEN: a sequence's chunks from its first
    chunk id starts[n], cdiv(len, BLOCK_T) of them, none for an empty sequence)."""
    i_b = tl.program_id(0)
    if VARLEN:
        base = tl.load(starts_ptr + i_b)
        nC_b = tl.cdiv((tl.load(cu_ptr + i_b + 1) - tl.load(cu_ptr + i_b)).to(tl.int32), BLOCK_T)
    else:
        base = i_b * nC
        nC_b = nC
    n, s_r, m2_r = _merge_moments(st_ptr, plane, base, nC_b, BLOCK_C)
    _, s_g, m2_g = _merge_moments(st_ptr + 3 * plane, plane, base, nC_b, BLOCK_C)
    p = stats_ptr + i_b * 5
    tl.store(p, n)
    tl.store(p + 1, s_r)
    tl.store(p + 2, m2_r)
    tl.store(p + 3, s_g)
    tl.store(p + 4, m2_g)


@triton.jit
def _affine_kernel(g_ptr, m_ptr, shift_ptr, scale_ptr, out_ptr, ci_ptr, cu_ptr, L, nC, ids_ptr, cnt_ptr, W,
                   BLOCK: tl.constexpr, VARLEN: tl.constexpr, POS: tl.constexpr, BLOCK_C: tl.constexpr):
    """A = m·(G − shift_b)·scale_b over one block of a row (padded grid (cdiv(L, BLOCK), B)) or one
    chunk of a sequence (VARLEN, the chunk index of chunk size BLOCK). POS (baseline="position"):
    shift/scale are [n_groups, W] tables read at (ids_b, p), p from the blocks' counts cnt_ptr
    (int32, kernels/position.py's _chunk_counts_kernel, nC blocks per padded row)."""
    i_n, i_t, bos, T_n, nC_n, base = locate_chunk(ci_ptr, cu_ptr, L, nC, BLOCK, VARLEN)
    if i_t < 0:
        return
    o_t = i_t * BLOCK + tl.arange(0, BLOCK)
    m_t = o_t < T_n
    o_x = bos + o_t
    b_m = tl.load(m_ptr + o_x, mask=m_t, other=0) != 0
    b_g = tl.load(g_ptr + o_x, mask=m_t, other=0.0)
    if POS:
        b_mi = b_m.to(tl.int32)
        p = prefix_count(cnt_ptr, base, i_t, BLOCK_C) + tl.cumsum(b_mi, 0) - b_mi
        ok = b_m & (p < W)
        o_s = tl.load(ids_ptr + i_n) * W + p
        b_a = (b_g - tl.load(shift_ptr + o_s, mask=ok, other=0.0)) * tl.load(scale_ptr + o_s, mask=ok, other=0.0)
    else:
        b_a = (b_g - tl.load(shift_ptr + i_n)) * tl.load(scale_ptr + i_n)
    tl.store(out_ptr + o_x, tl.where(b_m, b_a, 0.0), mask=m_t)


# --- launchers -----------------------------------------------------------------------------


def _warps(chunk: int) -> int:
    return 1 if INTERPRET else max(1, min(8, chunk // 128))


def _layout(m8, chunk, cu_seqlens):
    """(chunk index or None, grid, plane, L, nC) of a [B, L] mask, or of a packed [T] one."""
    if cu_seqlens is None:
        B, L = m8.shape
        nC = triton.cdiv(max(L, 1), chunk)
        return None, (nC, B), B * nC, L, nC
    ch = chunk_index(cu_seqlens, m8.numel(), chunk)
    return ch, (ch.grid,), ch.grid, 0, 0


def _chunk(m8, chunk, cu_seqlens):
    if chunk:
        return chunk
    if cu_seqlens is None:
        return gae_chunk(*m8.shape)
    return varlen_chunk(m8.numel(), cu_seqlens.numel() - 1)


def _scan_rows(x, m8, gamma, skip, *, coef=None, stats=None, maps=None, chunk, flip, rows_done=False, layout,
               pos=None):
    """G (fp32, shaped as m8) of x (transformed by coef = (shift, scale), fp32 [B] each, when given);
    with `stats` (float64 [6, plane]) also the chunk moments. rows_done: `maps` (and the r moments)
    were already filled by a fused row kernel, so only the final pass (rows of several chunks) is
    left. layout: `_layout`'s (chunk index, grid, plane, L, nC). pos: kernels/position.py's
    `position_args` (POS needs `stats`: positions come from the stored counts)."""
    ch, grid, plane, L, nC = layout
    multi = ch.multi if ch is not None else nC > 1
    out = torch.empty(m8.shape, dtype=torch.float32, device=m8.device)
    if m8.numel() == 0:
        return out
    if multi and maps is None:
        maps = torch.empty((2, plane), dtype=torch.float32, device=m8.device)
    dummy = out
    ci, cu = launch_args(ch, dummy)
    if pos is None:
        pos = position_args(None, 0, m8.device, dummy)[0]
    common = dict(SKIP=skip, TRANSFORM=coef is not None, STATS=stats is not None, BLOCK_T=chunk, FLIP=flip,
                  VARLEN=ch is not None, num_warps=_warps(chunk), POS=pos["POS"], SQUARES=pos["SQUARES"])
    shift, scale = coef if coef is not None else (dummy, dummy)
    args = (x, m8, shift, scale, maps if multi else dummy,
            stats if stats is not None else dummy, out, ci, cu, plane, L, nC, float(gamma), pos["ids_ptr"],
            pos["ps_ptr"], pos["last_ptr"], pos["W"], pos["ps_plane"])
    if not rows_done:
        _rtg_row_kernel[grid](*args, MULTI=multi, **common)
    if multi:
        _rtg_final_kernel[grid](*args, BLOCK_C=BLOCK_C, **common)
    return out


def row_stats(moments: torch.Tensor, layout=None, n_rows: int | None = None) -> torch.Tensor:
    """float64 chunk moments [6, plane] -> float64 stats [rows, 5] (_group_stats' format); padded
    rows of moments.shape[1] // nC chunks, or (layout packed) the N sequences."""
    ch, grid, plane, L, nC = layout
    B = n_rows if ch is None else ch.starts.numel()
    out = torch.empty((B, N_STATS), dtype=torch.float64, device=moments.device)
    if B:
        starts, cu = (ch.starts, ch.cu) if ch is not None else (out, out)
        _row_stats_kernel[(B,)](moments, out, starts, cu, plane, nC, BLOCK_C=BLOCK_C,
                                BLOCK_T=ch.chunk if ch is not None else 1, VARLEN=ch is not None, num_warps=1)
    return out


def reward_to_go(rewards, response_mask, gamma=1.0, holes="skip", *, cu_seqlens=None, chunk=None, flip=None):
    """rewards [B, L] (any float dtype), response_mask bool [B, L] -> G fp32 [B, L], 0 where masked.
    Packed (cu_seqlens int64 [N + 1]): [T] -> [T], each sequence a row (holes="discount" also
    discounts across its prompt, which is all before its response and so written 0)."""
    m8 = response_mask.contiguous().view(torch.uint8)
    chunk = _chunk(m8, chunk, cu_seqlens)
    flip = flip_scans() if flip is None else flip
    return _scan_rows(rewards.contiguous(), m8, gamma, holes == "skip", chunk=chunk, flip=flip,
                      layout=_layout(m8, chunk, cu_seqlens))


def row_pass(rewards, response_mask, gamma=1.0, cu_seqlens=None, *, chunk=None, flip=None, positions=None):
    """_group_stats' row pass: -> (returns G fp32 [B, L] with holes="skip", stats float64 [B, 5]);
    packed: [T] and stats [N, 5] per sequence. With `positions` (_group_stats.Positions, step 1p)
    -> (returns, stats, sums float64 [2, n_groups, W], last float64 [B] (packed [N]))."""
    m8 = response_mask.contiguous().view(torch.uint8)
    chunk = _chunk(m8, chunk, cu_seqlens)
    flip = flip_scans() if flip is None else flip
    layout = _layout(m8, chunk, cu_seqlens)
    empty = m8.numel() == 0  # no kernel writes: stats are all 0
    moments = (torch.zeros if empty else torch.empty)((N_MOMENTS, layout[2]), dtype=torch.float64,
                                                      device=rewards.device)
    n_rows = m8.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    pos, sums, last = position_args(positions, n_rows, rewards.device, moments)
    G = _scan_rows(rewards.contiguous(), m8, gamma, True, stats=moments, chunk=chunk, flip=flip, layout=layout,
                   pos=pos)
    stats = row_stats(moments, layout, m8.shape[0])
    return (G, stats) if positions is None else (G, stats, sums, last)


def finish(rewards, returns, response_mask, shift, scale, gamma=1.0, on_rewards=False, cu_seqlens=None, *,
           chunk=None, flip=None, ids=None):
    """_group_stats' finish pass -> advantages fp32 [B, L] (packed: [T], shift/scale [N]), 0 where
    masked: m·(G − shift)·scale, or (on_rewards) the skip reward-to-go of m·(r − shift)·scale.
    With `ids` (int64 [B] / [N], step 3p): shift/scale are [n_groups, W] tables read at (ids_i, p)."""
    m8 = response_mask.contiguous().view(torch.uint8)
    coef = (shift.to(torch.float32).contiguous(), scale.to(torch.float32).contiguous())
    if on_rewards:
        chunk = _chunk(m8, chunk, cu_seqlens)
        flip = flip_scans() if flip is None else flip
        return _scan_rows(rewards.contiguous(), m8, gamma, True, coef=coef, chunk=chunk, flip=flip,
                          layout=_layout(m8, chunk, cu_seqlens))
    out = torch.empty(m8.shape, dtype=torch.float32, device=m8.device)
    if m8.numel() == 0:
        return out
    if cu_seqlens is None:
        B, L = m8.shape
        BLOCK = 1024 if not INTERPRET else max(16, min(1024, triton.next_power_of_2(L)))
        if ids is not None:  # R3HF_TRITON_CHUNK: tests cross the count blocks with short rows
            BLOCK = chunk or _env_chunk() or BLOCK
        nC = triton.cdiv(L, BLOCK)
        grid, ch, plane = (nC, B), None, nC * B
    else:
        L = nC = 0
        BLOCK = _chunk(m8, chunk, cu_seqlens)
        ch = chunk_index(cu_seqlens, m8.numel(), BLOCK)
        grid, plane = (ch.grid,), ch.grid
    ci, cu = launch_args(ch, out)
    pos = ids is not None
    if pos:  # an extra read of the mask: each block's generated count, for its first position
        cnt = chunk_counts(m8, grid, ci, cu, L, nC, plane, BLOCK, ch is not None)
        ids = ids.to(torch.int64).contiguous()
    _affine_kernel[grid](returns.contiguous(), m8, *coef, out, ci, cu, L, nC, ids if pos else out,
                         cnt if pos else out, shift.shape[1] if pos else 1, BLOCK=BLOCK, VARLEN=ch is not None,
                         POS=pos, BLOCK_C=BLOCK_C, num_warps=4)
    return out


__all__ = ["reward_to_go", "row_pass", "finish", "row_stats", "rtg_chunk_tail"]
