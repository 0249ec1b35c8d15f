"""masked_whiten in three phases: statistics, centred sum of squares, transform.

Semantics: r3hf.reference.whiten. x (any shape, any float dtype) is read as fp32; the count, Σx and
Σ(x − mean)² are float64, summed per block of BLOCK elements by one program each and then over the
blocks by torch (a fixed-shape reduction, so run-to-run deterministic); mean and var are rounded to
fp32 as the reference does. The phases are separate launches so that the caller can all-reduce the
statistics across ranks between them, and nothing is read back to the host.
"""

import torch
import triton
import triton.language as tl

from ._common import varlen_chunk
from .rewards import BLOCK_C, first_unmasked, row_first_and_next
from .varlen import chunk_index, locate_chunk

BLOCK = 1024


@triton.jit
def _whiten_sums_kernel(x_ptr, m_ptr, part_ptr, N, BLOCK: tl.constexpr):
    i_p = tl.program_id(0)
    o_x = i_p.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_x = o_x < N
    b_m = (tl.load(m_ptr + o_x, mask=m_x, other=0) != 0) & m_x
    b_x = tl.load(x_ptr + o_x, mask=b_m, other=0.0).to(tl.float32)
    tl.store(part_ptr + i_p * 2, tl.sum(b_m.to(tl.float64), axis=0))
    tl.store(part_ptr + i_p * 2 + 1, tl.sum(tl.where(b_m, b_x.to(tl.float64), 0.0), axis=0))


@triton.jit
def _whiten_sqsum_kernel(x_ptr, m_ptr, sums_ptr, part_ptr, N, BLOCK: tl.constexpr):
    i_p = tl.program_id(0)
    o_x = i_p.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_x = o_x < N
    b_m = (tl.load(m_ptr + o_x, mask=m_x, other=0) != 0) & m_x
    b_x = tl.load(x_ptr + o_x, mask=b_m, other=0.0).to(tl.float32)
    mean = (tl.load(sums_ptr + 1) / tl.load(sums_ptr)).to(tl.float32)
    b_c = (b_x - mean).to(tl.float64)
    tl.store(part_ptr + i_p, tl.sum(tl.where(b_m, b_c * b_c, 0.0), axis=0))


@triton.jit
def _whiten_apply_kernel(x_ptr, m_ptr, sums_ptr, sq_ptr, out_ptr, f_ptr, ci_ptr, cu_ptr, N, eps,
                         SHIFT_MEAN: tl.constexpr, UNBIASED: tl.constexpr, EPS_MAX: tl.constexpr,
                         TRANSFORM_MASKED: tl.constexpr, BLOCK: tl.constexpr, VARLEN: tl.constexpr,
                         MULTI: tl.constexpr, BLOCK_C: tl.constexpr):
    """Flat blocks of BLOCK elements; VARLEN (packed, transform_masked): chunks of one sequence
    each (kernels/varlen.py), transforming only its response region (from its first generated
    position s_n on; f: per-chunk first generated positions when a sequence may span chunks)."""
    if VARLEN:
        i_n, i_c, bos, T_n, nC_n, base = locate_chunk(ci_ptr, cu_ptr, 0, 0, BLOCK, True)
        if i_c < 0:
            return
        o_t = i_c * BLOCK + tl.arange(0, BLOCK)
        m_x = o_t < T_n
        o_x = bos + o_t
    else:
        o_x = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m_x = o_x < N
    b_m = (tl.load(m_ptr + o_x, mask=m_x, other=0) != 0) & m_x
    b_x = tl.load(x_ptr + o_x, mask=m_x, other=0.0).to(tl.float32)
    n = tl.load(sums_ptr)
    mean = (tl.load(sums_ptr + 1) / n).to(tl.float32)
    if UNBIASED:
        var = (tl.load(sq_ptr) / (n - 1.0)).to(tl.float32)
    else:
        var = (tl.load(sq_ptr) / n).to(tl.float32)
    if EPS_MAX:
        var = tl.maximum(var, eps)
    else:
        var = var + eps
    scale = 1.0 / tl.sqrt_rn(var)
    b_o = (b_x - mean) * scale
    if not SHIFT_MEAN:
        b_o = b_o + mean
    if not TRANSFORM_MASKED:
        b_o = tl.where(b_m, b_o, 0.0)
    if VARLEN:  # the padded op's rows are response regions: the prompt before s_n stays 0
        row_first = tl.min(tl.where(b_m, o_t, T_n), axis=0)
        if MULTI:
            first_before, _ = row_first_and_next(f_ptr, base, i_c, nC_n, T_n, BLOCK_C)
            row_first = tl.minimum(row_first, first_before)
        b_o = tl.where(o_t >= row_first, b_o, 0.0)
    tl.store(out_ptr + o_x, b_o, mask=m_x)


def _flat(x, mask):
    return x.contiguous().reshape(-1), mask.contiguous().reshape(-1).view(torch.uint8)


def whiten_sums(x, mask):
    """float64 [2]: (count, Σx) over mask."""
    xf, m8 = _flat(x, mask)
    N = xf.numel()
    nP = max(1, triton.cdiv(N, BLOCK))
    part = torch.zeros((nP, 2), dtype=torch.float64, device=x.device)
    if N:
        _whiten_sums_kernel[(nP,)](xf, m8, part, N, BLOCK=BLOCK, num_warps=4)
    return part.sum(0)


def whiten_sqsum(x, mask, sums):
    """float64 [1]: Σ(x − mean)² over mask, mean = fp32(Σx / count)."""
    xf, m8 = _flat(x, mask)
    N = xf.numel()
    nP = max(1, triton.cdiv(N, BLOCK))
    part = torch.zeros((nP,), dtype=torch.float64, device=x.device)
    if N:
        _whiten_sqsum_kernel[(nP,)](xf, m8, sums.contiguous(), part, N, BLOCK=BLOCK, num_warps=4)
    return part.sum(0, keepdim=True)


def whiten_apply(x, mask, sums, sqsum, shift_mean, unbiased, eps, eps_max, transform_masked, cu_seqlens=None):
    """fp32, shape of x: (x − mean)·rsqrt(var + eps) (or rsqrt(max(var, eps))), 0 where masked unless
    transform_masked. Packed (cu_seqlens int64 [N + 1], x [T]) with transform_masked: only each
    sequence's response region is transformed, its prompt is 0 (without transform_masked the
    packed output is the flat one: the prompt is masked)."""
    xf, m8 = _flat(x, mask)
    N = xf.numel()
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if not N:
        return out
    opts = dict(SHIFT_MEAN=shift_mean, UNBIASED=unbiased, EPS_MAX=eps_max, TRANSFORM_MASKED=transform_masked,
                BLOCK_C=BLOCK_C, num_warps=4)
    if cu_seqlens is not None and transform_masked:
        chunk = varlen_chunk(N, cu_seqlens.numel() - 1)
        ch = chunk_index(cu_seqlens, N, chunk)
        f, _ = first_unmasked(m8, chunk, ch)
        _whiten_apply_kernel[(ch.grid,)](
            xf, m8, sums.contiguous(), sqsum.contiguous(), out, f if f is not None else out, ch.index, ch.cu, N,
            float(eps), BLOCK=chunk, VARLEN=True, MULTI=f is not None, **opts)
        return out
    _whiten_apply_kernel[(triton.cdiv(N, BLOCK),)](
        xf, m8, sums.contiguous(), sqsum.contiguous(), out, out, out, out, N, float(eps), BLOCK=BLOCK, VARLEN=False,
        MULTI=False, **opts)
    return out
