"""GAE as a chunked backward associative scan (see kernels/scan.py for the combine).

Two launches, no host sync, any L:
1. `_gae_summary_kernel`, one program per (chunk, row): the composed map of its chunk -> [5, B, nC].
   Skipped when a row fits in one chunk.
2. `_gae_final_kernel`, one program per (chunk, row): composes the summaries of the later chunks
   of its row into the carry (a, v'), rescans its chunk and writes advantages and returns.
Chunks are sized so that B·nC programs fill the GPU even for a handful of long rows.
"""

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, flip_scans, gae_chunk
from .scan import backward_scan5, carry_from_later, chunk_offsets, gae_elements, store_chunk_map

BLOCK_C = 16  # chunk summaries composed per step when gathering the carry (tests cross it)


@triton.jit
def _load_chunk_scan(r_ptr, v_ptr, m_ptr, i_b, i_c, L, gamma, lam, BLOCK_T: tl.constexpr, FLIP: tl.constexpr):
    """Load one chunk of rewards, values and mask and scan its GAE maps backwards."""
    o_t = chunk_offsets(i_c * BLOCK_T, BLOCK_T, FLIP)
    m_t = o_t < L
    b_r = tl.load(r_ptr + i_b * L + o_t, mask=m_t, other=0.0).to(tl.float32)
    b_v = tl.load(v_ptr + i_b * L + o_t, mask=m_t, other=0.0).to(tl.float32)
    b_m = (tl.load(m_ptr + i_b * L + o_t, mask=m_t, other=0) != 0) & m_t
    al, be, mu, ka, kv = gae_elements(b_r, b_v, b_m, gamma, lam)
    al, be, mu, ka, kv = backward_scan5(al, be, mu, ka, kv, FLIP)
    return o_t, m_t, b_m, b_v, al, be, mu, ka, kv


@triton.jit
def _gae_summary_kernel(r_ptr, v_ptr, m_ptr, s_ptr, B, L, nC, gamma, lam,
                        BLOCK_T: tl.constexpr, FLIP: tl.constexpr):
    i_c = tl.program_id(0)
    i_b = tl.program_id(1)
    o_t, m_t, b_m, b_v, al, be, mu, ka, kv = _load_chunk_scan(r_ptr, v_ptr, m_ptr, i_b, i_c, L, gamma, lam,
                                                              BLOCK_T, FLIP)
    store_chunk_map(s_ptr, B * nC, i_b, i_c, nC, al, be, mu, ka, kv, BLOCK_T, FLIP)


@triton.jit
def _gae_final_kernel(r_ptr, v_ptr, m_ptr, boot_ptr, s_ptr, adv_ptr, ret_ptr, B, L, nC, gamma, lam,
                      HAS_BOOT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                      FLIP: tl.constexpr):
    i_c = tl.program_id(0)
    i_b = tl.program_id(1)
    a = tl.zeros((), tl.float32)
    if HAS_BOOT:
        vn = tl.load(boot_ptr + i_b).to(tl.float32)
    else:
        vn = tl.zeros((), tl.float32)
    a, vn = carry_from_later(s_ptr, B * nC, i_b, i_c, nC, a, vn, BLOCK_C)
    o_t, m_t, b_m, b_v, al, be, mu, ka, kv = _load_chunk_scan(r_ptr, v_ptr, m_ptr, i_b, i_c, L, gamma, lam,
                                                              BLOCK_T, FLIP)
    b_adv = tl.where(b_m, al * a + be * vn + ka, 0.0)
    b_ret = tl.where(b_m, b_adv + b_v, 0.0)
    tl.store(adv_ptr + i_b * L + o_t, b_adv, mask=m_t)
    tl.store(ret_ptr + i_b * L + o_t, b_ret, mask=m_t)


def gae_summaries(r, v, m8, gamma, lam, chunk, flip):
    """[5, B, nC] fp32 chunk maps, or an empty placeholder when nC == 1."""
    B, L = r.shape
    nC = triton.cdiv(L, chunk)
    if nC <= 1:
        return r.new_empty((1,), dtype=torch.float32), nC
    s = torch.empty((5, B, nC), dtype=torch.float32, device=r.device)
    _gae_summary_kernel[(nC, B)](r, v, m8, s, B, L, nC, gamma, lam, BLOCK_T=chunk, FLIP=flip,
                                 num_warps=_warps(chunk))
    return s, nC


def gae_final(r, v, m8, boot, s, nC, gamma, lam, chunk, flip):
    B, L = r.shape
    adv = torch.empty((B, L), dtype=torch.float32, device=r.device)
    ret = torch.empty((B, L), dtype=torch.float32, device=r.device)
    _gae_final_kernel[(nC, B)](
        r, v, m8, boot if boot is not None else adv, s, adv, ret, B, L, nC, gamma, lam,
        HAS_BOOT=boot is not None, BLOCK_T=chunk, BLOCK_C=BLOCK_C, FLIP=flip, num_warps=_warps(chunk),
    )
    return adv, ret


def _warps(chunk: int) -> int:
    return 1 if INTERPRET else max(1, min(8, chunk // 128))


def gae(rewards, values, response_mask, gamma, lam, bootstrap, *, chunk=None, flip=None):
    """rewards/values [B, L] (any float dtype), response_mask bool [B, L], bootstrap fp32 [B] or
    None -> (advantages, returns) fp32 [B, L]; the semantics of r3hf.reference.gae."""
    B, L = rewards.shape
    if B == 0 or L == 0:
        z = torch.zeros((B, L), dtype=torch.float32, device=rewards.device)
        return z, z.clone()
    chunk = chunk or gae_chunk(B, L)
    flip = flip_scans() if flip is None else flip
    r = rewards.contiguous()
    v = values.contiguous()
    m8 = response_mask.contiguous().view(torch.uint8)
    boot = bootstrap.contiguous() if bootstrap is not None else None
    s, nC = gae_summaries(r, v, m8, gamma, lam, chunk, flip)
    return gae_final(r, v, m8, boot, s, nC, gamma, lam, chunk, flip)


__all__ = ["gae", "gae_summaries", "gae_final"]
