"""GAE as a chunked backward associative scan (see kernels/scan.py for the combine).

Two launches, no host sync, any L:
1. `_gae_summary_kernel`, one program per (chunk, row): the composed map of its chunk -> [5, B·nC].
   Skipped when a row fits in one chunk.
2. `_gae_final_kernel`, one program per (chunk, row): composes the summaries of the later chunks
   of its row into the carry (a, v'), rescans its chunk and writes advantages and returns.
Chunks are sized so that B·nC programs fill the GPU even for a handful of long rows.
VARLEN (packed [T] with cu_seqlens): the same two kernels over the chunk index of
kernels/varlen.py, one program per chunk of one sequence, so the scan is segmented by sequence;
summaries [5, G]; the first launch is skipped when T fits one chunk.
"""

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, flip_scans, gae_chunk, varlen_chunk
from .scan import backward_scan5, carry_from_later, chunk_offsets, gae_elements, store_chunk_map
from .varlen import chunk_index, launch_args, locate_chunk

BLOCK_C = 16  # chunk summaries composed per step when gathering the carry (tests cross it)


@triton.jit
def _load_chunk_scan(r_ptr, v_ptr, m_ptr, bos, i_c, T_n, gamma, lam, BLOCK_T: tl.constexpr, FLIP: tl.constexpr):
    """Load one chunk of rewards, values and mask of the row at bos (length T_n) and scan its GAE
    maps backwards; o_t are positions in the row."""
    o_t = chunk_offsets(i_c * BLOCK_T, BLOCK_T, FLIP)
    m_t = o_t < T_n
    o_x = bos + o_t
    b_r = tl.load(r_ptr + o_x, mask=m_t, other=0.0).to(tl.float32)
    b_v = tl.load(v_ptr + o_x, mask=m_t, other=0.0).to(tl.float32)
    b_m = (tl.load(m_ptr + o_x, mask=m_t, other=0) != 0) & m_t
    al, be, mu, ka, kv = gae_elements(b_r, b_v, b_m, gamma, lam)
    al, be, mu, ka, kv = backward_scan5(al, be, mu, ka, kv, FLIP)
    return o_x, m_t, b_m, b_v, al, be, mu, ka, kv


@triton.jit
def _gae_summary_kernel(r_ptr, v_ptr, m_ptr, s_ptr, ci_ptr, cu_ptr, plane, L, nC, gamma, lam,
                        BLOCK_T: tl.constexpr, FLIP: tl.constexpr, VARLEN: tl.constexpr):
    i_n, i_c, bos, T_n, nC_n, base = locate_chunk(ci_ptr, cu_ptr, L, nC, BLOCK_T, VARLEN)
    if i_c < 0:  # spare VARLEN program
        return
    o_x, m_t, b_m, b_v, al, be, mu, ka, kv = _load_chunk_scan(r_ptr, v_ptr, m_ptr, bos, i_c, T_n, gamma, lam,
                                                              BLOCK_T, FLIP)
    store_chunk_map(s_ptr, plane, base, i_c, al, be, mu, ka, kv, BLOCK_T, FLIP)


@triton.jit
def _gae_final_kernel(r_ptr, v_ptr, m_ptr, boot_ptr, s_ptr, adv_ptr, ret_ptr, ci_ptr, cu_ptr, plane, L, nC, gamma,
                      lam, HAS_BOOT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                      FLIP: tl.constexpr, VARLEN: tl.constexpr):
    i_n, i_c, bos, T_n, nC_n, base = locate_chunk(ci_ptr, cu_ptr, L, nC, BLOCK_T, VARLEN)
    if i_c < 0:
        return
    a = tl.zeros((), tl.float32)
    if HAS_BOOT:
        vn = tl.load(boot_ptr + i_n).to(tl.float32)
    else:
        vn = tl.zeros((), tl.float32)
    a, vn = carry_from_later(s_ptr, plane, base, i_c, nC_n, a, vn, BLOCK_C)
    o_x, m_t, b_m, b_v, al, be, mu, ka, kv = _load_chunk_scan(r_ptr, v_ptr, m_ptr, bos, i_c, T_n, gamma, lam,
                                                              BLOCK_T, FLIP)
    b_adv = tl.where(b_m, al * a + be * vn + ka, 0.0)
    b_ret = tl.where(b_m, b_adv + b_v, 0.0)
    tl.store(adv_ptr + o_x, b_adv, mask=m_t)
    tl.store(ret_ptr + o_x, b_ret, mask=m_t)


def _grid(r, chunk, ch):
    """(grid, plane, L, nC): padded (nC, B) over [B, L], or the VARLEN grid of chunk index ch."""
    if ch is not None:
        return (ch.grid,), ch.grid, 0, 0
    B, L = r.shape
    nC = triton.cdiv(L, chunk)
    return (nC, B), B * nC, L, nC


def gae_summaries(r, v, m8, gamma, lam, chunk, flip, ch=None):
    """fp32 chunk maps [5, B·nC] ([5, G] packed), or None when no row spans several chunks."""
    grid, plane, L, nC = _grid(r, chunk, ch)
    if (ch is None and nC <= 1) or (ch is not None and not ch.multi):
        return None
    s = torch.empty((5, plane), dtype=torch.float32, device=r.device)
    ci, cu = launch_args(ch, s)
    _gae_summary_kernel[grid](r, v, m8, s, ci, cu, plane, L, nC, gamma, lam, BLOCK_T=chunk, FLIP=flip,
                              VARLEN=ch is not None, num_warps=_warps(chunk))
    return s


def gae_final(r, v, m8, boot, s, gamma, lam, chunk, flip, ch=None):
    """(advantages, returns) fp32, shaped as r; s: the chunk maps of gae_summaries (or None)."""
    grid, plane, L, nC = _grid(r, chunk, ch)
    adv = torch.empty(r.shape, dtype=torch.float32, device=r.device)
    ret = torch.empty(r.shape, dtype=torch.float32, device=r.device)
    ci, cu = launch_args(ch, adv)
    _gae_final_kernel[grid](
        r, v, m8, boot if boot is not None else adv, s if s is not None else adv, adv, ret, ci, cu, plane, L, nC,
        gamma, lam, HAS_BOOT=boot is not None, BLOCK_T=chunk, BLOCK_C=BLOCK_C, FLIP=flip, VARLEN=ch is not None,
        num_warps=_warps(chunk),
    )
    return adv, ret


def _warps(chunk: int) -> int:
    return 1 if INTERPRET else max(1, min(8, chunk // 128))


def gae(rewards, values, response_mask, gamma, lam, bootstrap, *, cu_seqlens=None, chunk=None, flip=None):
    """rewards/values [B, L] (any float dtype), response_mask bool [B, L], bootstrap fp32 [B] or
    None -> (advantages, returns) fp32 [B, L]; the semantics of r3hf.reference.gae.
    Packed (cu_seqlens int64 [N + 1]): [T] tensors and bootstrap [N]; each sequence is scanned as
    a row of its own (its prompt positions are masked, so they are identities and get 0)."""
    T = rewards.numel()
    if T == 0:
        z = torch.zeros(rewards.shape, dtype=torch.float32, device=rewards.device)
        return z, z.clone()
    if cu_seqlens is None:
        B, L = rewards.shape
        chunk = chunk or gae_chunk(B, L)
        ch = None
    else:
        chunk = chunk or varlen_chunk(T, cu_seqlens.numel() - 1)
        ch = chunk_index(cu_seqlens, T, chunk)
    flip = flip_scans() if flip is None else flip
    r = rewards.contiguous()
    v = values.contiguous()
    m8 = response_mask.contiguous().view(torch.uint8)
    boot = bootstrap.contiguous() if bootstrap is not None else None
    s = gae_summaries(r, v, m8, gamma, lam, chunk, flip, ch)
    return gae_final(r, v, m8, boot, s, gamma, lam, chunk, flip, ch)


__all__ = ["gae", "gae_summaries", "gae_final"]
