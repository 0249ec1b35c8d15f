"""R3HF/RED token rewards (redistribution, reward_clip, KL penalty) over chunks of positions.

Semantics: r3hf.reference.rewards. For a generated position j of row b (prompt length p):
    after_j  = scores[p + j]          (R(x, y≤j))
    before_j = scores[p + j − 1]      (R(x, y<j))
    Φ_in  = Φ_1 if j is the row's first generated token else before_j
    Φ_out = before_n = scores[p + n − 1] for n the next generated position after j, else after_j
    dense = Φ_out − Φ_in,  sparse = after_j at the row's last generated token, else 0.
n is found with a backward min-scan over the chunk plus `next_after`, the first generated
position in later chunks; the row's first generated position is the minimum over chunks.
Both cross-chunk facts come from `_first_unmasked_kernel` (one int per chunk), so rows of
any length work with no host sync.
VARLEN (packed [T], cu_seqlens): the same kernels over kernels/varlen.py's chunk index, a
sequence being a row whose positions are stream positions (p = 0): its response starts at its
first generated position s_n, so Φ_1 = scores[s_n − 1] is simply `before` there, and no read
ever crosses the sequence's start.
A separate potential Φ' (issue 24, `potential`): before, Φ_out at a next generated token and Φ_1
are read from it (ph_ptr, the scores themselves without one); `after` stays the scores, read at
the last generated token only (Φ_out there and the sparse part).
"""

import torch
import triton
import triton.language as tl

from ._common import flip_scans, reward_chunk
from .scan import backward_min, chunk_offsets
from .varlen import chunk_index, launch_args, locate_chunk

KL_CODES = {"k1": 0, "k2": 1, "k3": 2, "abs": 3}
BLOCK_C = 16  # chunk summaries read per step


@triton.jit
def expm1(x):
    # exp(x) − 1 without the cancellation near 0 (Taylor to x³ where |x| < 1e-3).
    small = x * (1.0 + x * (0.5 + x * (1.0 / 6.0)))
    return tl.where(tl.abs(x) < 1e-3, small, tl.exp(x) - 1.0)


@triton.jit
def kl_estimate(d, kl_lo, kl_hi, KL_EST: tl.constexpr, HAS_KL_CLAMP: tl.constexpr):
    """k1 = d, k2 = d²/2, k3 = exp(−d) − 1 + d, abs = |d|; optionally clamped to [lo, hi]."""
    if KL_EST == 0:
        kl = d
    elif KL_EST == 1:
        kl = 0.5 * d * d
    elif KL_EST == 2:
        kl = expm1(-d) + d
    else:
        kl = tl.abs(d)
    if HAS_KL_CLAMP:
        kl = tl.minimum(tl.maximum(kl, kl_lo), kl_hi)
    return kl


@triton.jit
def finish_rewards(phi_out, b_before, b_after, has_next, phi_1, o_t, row_first, b_m, m_t, lp_ptr, ref_ptr, o_bl,
                   beta_c, one_minus_beta, kl_coef, clip_lo, clip_hi, kl_lo, kl_hi, FULL_BETA: tl.constexpr,
                   HAS_CLIP: tl.constexpr, HAS_KL: tl.constexpr, KL_EST: tl.constexpr, HAS_KL_CLAMP: tl.constexpr):
    """mask · (clip(β_c·dense + (1 − β_c)·sparse) − kl_coef·KL) for one chunk, from the potentials:
    dense = Φ_out − Φ_in (Φ_in = Φ_1 at the row's first generated token, else before),
    sparse = after at the row's last generated token."""
    dense = phi_out - tl.where(o_t == row_first, phi_1, b_before)
    if FULL_BETA:
        r = dense
    else:
        r = beta_c * dense + one_minus_beta * tl.where(has_next, 0.0, b_after)
    if HAS_CLIP:
        r = tl.minimum(tl.maximum(r, clip_lo), clip_hi)
    if HAS_KL:
        b_lp = tl.load(lp_ptr + o_bl, mask=m_t, other=0.0).to(tl.float32)
        b_ref = tl.load(ref_ptr + o_bl, mask=m_t, other=0.0).to(tl.float32)
        r = r - kl_coef * kl_estimate(b_lp - b_ref, kl_lo, kl_hi, KL_EST, HAS_KL_CLAMP)
    return tl.where(b_m, r, 0.0)


@triton.jit
def _first_unmasked_kernel(m_ptr, f_ptr, ci_ptr, cu_ptr, L, nC, BLOCK_T: tl.constexpr, VARLEN: tl.constexpr):
    """f[base + c] = first generated position in chunk c of its row (row-relative), or the row's
    length."""
    i_n, i_c, bos, T_n, nC_n, base = locate_chunk(ci_ptr, cu_ptr, L, nC, BLOCK_T, VARLEN)
    if i_c < 0:
        return
    o_t = i_c * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < T_n
    b_m = (tl.load(m_ptr + bos + o_t, mask=m_t, other=0) != 0) & m_t
    tl.store(f_ptr + base + i_c, tl.min(tl.where(b_m, o_t, T_n), axis=0))


@triton.jit
def row_first_and_next(f_ptr, base, i_c, nC, L, BLOCK_C: tl.constexpr):
    """(first generated position in chunks < i_c, first generated position in chunks > i_c), L if
    none, from the row's per-chunk firsts f[base …  base + nC − 1]."""
    first = tl.zeros((), tl.int32) + L
    nxt = tl.zeros((), tl.int32) + L
    for c0 in range(0, nC, BLOCK_C):
        cid = c0 + tl.arange(0, BLOCK_C)
        f = tl.load(f_ptr + base + cid, mask=cid < nC, other=L)
        first = tl.minimum(first, tl.min(tl.where(cid < i_c, f, L), axis=0))
        nxt = tl.minimum(nxt, tl.min(tl.where(cid > i_c, f, L), axis=0))
    return first, nxt


@triton.jit
def chunk_mask_facts(m_ptr, f_ptr, bos, base, i_c, L, nC, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                     FLIP: tl.constexpr, MULTI: tl.constexpr):
    """Positions, masks and the cross-chunk facts every reward kernel needs for chunk i_c of the
    row whose position 0 is at bos (length L, nC chunks, chunk 0 at id base; kernels/varlen.py).

    Returns o_t (row positions), m_t (in range), b_m (generated), b_mn (position + 1 generated),
    own_first, row_first, next_after (first generated position >= chunk end) and nx (first
    generated position > t inside the chunk or at its end; L if none).
    """
    o_t = chunk_offsets(i_c * BLOCK_T, BLOCK_T, FLIP)
    m_t = o_t < L
    b_m = (tl.load(m_ptr + bos + o_t, mask=m_t, other=0) != 0) & m_t
    m_n = (o_t + 1) < L
    b_mn = (tl.load(m_ptr + bos + o_t + 1, mask=m_n, other=0) != 0) & m_n
    own_first = tl.min(tl.where(b_m, o_t, L), axis=0)
    if MULTI:
        first_before, next_after = row_first_and_next(f_ptr, base, i_c, nC, L, BLOCK_C)
    else:
        first_before = tl.zeros((), tl.int32) + L
        next_after = tl.zeros((), tl.int32) + L
    row_first = tl.minimum(own_first, first_before)
    nx = backward_min(tl.where(b_mn, o_t + 1, L), FLIP)
    return o_t, m_t, b_m, b_mn, own_first, row_first, next_after, nx


@triton.jit
def _token_rewards_kernel(s_ptr, stride_sb, stride_ss, m_ptr, p_ptr, f_ptr, lp_ptr, ref_ptr, out_ptr, ci_ptr,
                          cu_ptr, L, nC, beta_c, one_minus_beta, kl_coef, clip_lo, clip_hi, kl_lo, kl_hi,
                          FIRST_PROMPT: tl.constexpr, FULL_BETA: tl.constexpr, HAS_CLIP: tl.constexpr,
                          HAS_KL: tl.constexpr, KL_EST: tl.constexpr, HAS_KL_CLAMP: tl.constexpr,
                          MULTI: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, FLIP: tl.constexpr,
                          VARLEN: tl.constexpr, ph_ptr, stride_phb, stride_phs):
    i_n, i_c, bos, T_n, nC_n, base = locate_chunk(ci_ptr, cu_ptr, L, nC, BLOCK_T, VARLEN)
    if i_c < 0:
        return
    o_t, m_t, b_m, b_mn, own_first, row_first, next_after, nx = chunk_mask_facts(
        m_ptr, f_ptr, bos, base, i_c, T_n, nC_n, BLOCK_T, BLOCK_C, FLIP, MULTI)
    if VARLEN:  # scores [T] and the mask share positions: the response starts at the first generated one
        p = 0
        p_s = s_ptr + bos * stride_ss
        p_ph = ph_ptr + bos * stride_phs
    else:
        p = tl.load(p_ptr + i_n)
        p_s = s_ptr + i_n.to(tl.int64) * stride_sb
        p_ph = ph_ptr + i_n.to(tl.int64) * stride_phb
    q = p + o_t
    nxg = tl.minimum(nx, next_after)
    has_next = nxg < T_n
    b_after = tl.load(p_s + q * stride_ss, mask=b_m & ~has_next, other=0.0).to(tl.float32)  # R: the last token's
    # q >= 1: packed, never a read before the sequence (the previous sequence's score)
    b_before = tl.load(p_ph + (q - 1) * stride_phs, mask=b_m & (q >= 1), other=0.0).to(tl.float32)
    b_out = tl.load(p_ph + (p + nxg - 1) * stride_phs, mask=b_m & has_next, other=0.0).to(tl.float32)
    phi_out = tl.where(has_next, b_out, b_after)
    if FIRST_PROMPT:
        if VARLEN:  # Φ_1 = scores[s_n − 1] = before at the first generated position s_n
            phi_1 = b_before
        else:
            phi_1 = tl.load(p_ph + (p - 1) * stride_phs).to(tl.float32)
    else:
        phi_1 = 0.0
    o_x = bos + o_t
    r = finish_rewards(phi_out, b_before, b_after, has_next, phi_1, o_t, row_first, b_m, m_t, lp_ptr, ref_ptr, o_x,
                       beta_c, one_minus_beta, kl_coef, clip_lo, clip_hi, kl_lo, kl_hi, FULL_BETA, HAS_CLIP, HAS_KL,
                       KL_EST, HAS_KL_CLAMP)
    tl.store(out_ptr + o_x, r, mask=m_t)


@triton.jit
def _kl_kernel(lp_ptr, ref_ptr, out_ptr, N, kl_lo, kl_hi, KL_EST: tl.constexpr, HAS_KL_CLAMP: tl.constexpr,
               BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < N
    d = tl.load(lp_ptr + o, mask=m, other=0.0).to(tl.float32) - tl.load(ref_ptr + o, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + o, kl_estimate(d, kl_lo, kl_hi, KL_EST, HAS_KL_CLAMP), mask=m)


# --- launchers -----------------------------------------------------------------------------


def first_unmasked(m8, chunk, ch=None):
    """int32 per-chunk first generated positions ([B, nC], or [G] packed with chunk index ch), and
    nC; None when no row spans several chunks."""
    if ch is not None:
        if not ch.multi:
            return None, 0
        f = torch.empty((ch.grid,), dtype=torch.int32, device=m8.device)
        _first_unmasked_kernel[(ch.grid,)](m8, f, ch.index, ch.cu, 0, 0, BLOCK_T=chunk, VARLEN=True, num_warps=4)
        return f, 0
    B, L = m8.shape
    nC = triton.cdiv(L, chunk)
    if nC <= 1:
        return None, nC
    f = torch.empty((B, nC), dtype=torch.int32, device=m8.device)
    _first_unmasked_kernel[(nC, B)](m8, f, f, f, L, nC, BLOCK_T=chunk, VARLEN=False, num_warps=4)
    return f, nC


def reward_options(first, beta_c, reward_clip, kl_coef, kl_estimator, kl_clamp, logprobs):
    """Scalar and constexpr kernel arguments shared by token_rewards and fused_reward_gae."""
    has_kl = kl_coef != 0.0 and logprobs is not None
    scalars = dict(
        beta_c=float(beta_c), one_minus_beta=1.0 - float(beta_c), kl_coef=float(kl_coef),
        clip_lo=float(reward_clip[0]) if reward_clip else 0.0, clip_hi=float(reward_clip[1]) if reward_clip else 0.0,
        kl_lo=float(kl_clamp[0]) if kl_clamp else 0.0, kl_hi=float(kl_clamp[1]) if kl_clamp else 0.0,
    )
    consts = dict(
        FIRST_PROMPT=first == "prompt", FULL_BETA=float(beta_c) == 1.0, HAS_CLIP=reward_clip is not None,
        HAS_KL=has_kl, KL_EST=KL_CODES[kl_estimator], HAS_KL_CLAMP=kl_clamp is not None,
    )
    return scalars, consts


def token_rewards(scores, response_mask, prompt_len, logprobs=None, ref_logprobs=None, kl_coef=0.0,
                  kl_estimator="k1", kl_clamp=None, first="prompt", beta_c=1.0, reward_clip=None, *, cu_seqlens=None,
                  chunk=None, flip=None, potential=None):
    """scores [B, S], response_mask bool [B, L], prompt_len int64 [B] -> fp32 [B, L].
    Packed (cu_seqlens int64 [N + 1], prompt_len None): scores, mask, logprobs [T] -> fp32 [T].
    potential: Φ', the layout of scores (module doc)."""
    out = torch.empty(response_mask.shape, dtype=torch.float32, device=scores.device)
    if out.numel() == 0:
        return out
    if cu_seqlens is None:
        B, L = response_mask.shape
        chunk = chunk or reward_chunk(B, L)
        ch = None
        grid = None
    else:
        T = response_mask.numel()
        B, L = 1, T
        chunk = chunk or reward_chunk(cu_seqlens.numel() - 1, T)
        ch = chunk_index(cu_seqlens, T, chunk)
        grid = (ch.grid,)
    flip = flip_scans() if flip is None else flip
    m8 = response_mask.contiguous().view(torch.uint8)
    f, nC = first_unmasked(m8, chunk, ch)
    multi = f is not None
    scalars, consts = reward_options(first, beta_c, reward_clip, kl_coef, kl_estimator, kl_clamp, logprobs)
    lp = logprobs.contiguous() if consts["HAS_KL"] else out
    ref = ref_logprobs.contiguous() if consts["HAS_KL"] else out
    ci, cu = launch_args(ch, out)
    s2 = scores if ch is None else scores.unsqueeze(0)
    ph = s2 if potential is None else (potential if ch is None else potential.unsqueeze(0))
    _token_rewards_kernel[grid or (nC, B)](
        s2, s2.stride(0), s2.stride(1), m8, prompt_len.contiguous() if ch is None else out,
        f if f is not None else out, lp, ref, out, ci, cu, L, nC, **scalars, **consts, MULTI=multi, BLOCK_T=chunk,
        BLOCK_C=BLOCK_C, FLIP=flip, VARLEN=ch is not None, num_warps=1 if chunk <= 128 else 4,
        ph_ptr=ph, stride_phb=ph.stride(0), stride_phs=ph.stride(1),
    )
    return out


def kl_penalty(logprobs, ref_logprobs, estimator="k1", clamp=None):
    """Elementwise KL estimate of [B, L] logprobs -> fp32 [B, L]."""
    lp = logprobs.contiguous()
    ref = ref_logprobs.contiguous()
    out = torch.empty(lp.shape, dtype=torch.float32, device=lp.device)
    N = out.numel()
    if N == 0:
        return out
    BLOCK = 1024
    _kl_kernel[(triton.cdiv(N, BLOCK),)](
        lp, ref, out, N, float(clamp[0]) if clamp else 0.0, float(clamp[1]) if clamp else 0.0,
        KL_EST=KL_CODES[estimator], HAS_KL_CLAMP=clamp is not None, BLOCK=BLOCK,
    )
    return out
