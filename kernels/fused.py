"""fused_reward_gae: hidden states -> reward-head projection -> R3HF rewards -> KL -> GAE.

Launches (no Python loop over positions, no host sync, no [B, S, D]-sized intermediate):
1. `_first_unmasked_kernel` reads the mask only (one int per chunk) — skipped when a row is one chunk;
2. `_fused_kernel`, one program per (chunk, row): projects the hidden rows of its chunk
   (a [BLOCK_T, BLOCK_D] tile loop over D, fp32 accumulation; rows no reward needs — masked
   positions whose successor is masked too, the prompt — are never read), forms rewards and
   KL in registers, stores rewards [B, L] and either the chunk's GAE map (several chunks) or the
   final advantages and returns (one chunk per row);
3. `_gae_final_kernel` (kernels/gae.py) turns the rewards into advantages and returns,
   carrying the later chunks' maps — skipped when a row is one chunk.
Besides its own rows, a chunk reads at most three more hidden rows: scores[p + start − 1]
(before its first position), scores[p + n − 1] for the first generated position n in a later
chunk, and the prompt score scores[p − 1] (only the chunk holding the row's first token).

A potential head (issue 24, POT): the rewards read R only at `after` of the row's last generated
token and the potential Φ' everywhere else (before, the next token's before, the prompt score),
so each lane projects its hidden row once with one head: the reward head's weight for the
last generated token, the potential head's for every other row. The tile is still read once.
"""

import torch
import triton
import triton.language as tl

from ._common import configs, flip_scans, reward_chunk
from .gae import gae_final
from .rewards import BLOCK_C, chunk_mask_facts, finish_rewards, first_unmasked, reward_options
from .scan import backward_scan5, gae_elements, lane_of, store_chunk_map
from .varlen import chunk_index, launch_args, locate_chunk

_CONFIGS = configs(
    [
        triton.Config({"BLOCK_D": bd}, num_warps=w, num_stages=s)
        # no register spills on sm_90 (ptxas -v) for any of these; the first is the untuned default
        for bd, w, s in [(64, 8, 3), (32, 4, 4), (64, 4, 3), (64, 8, 4), (128, 8, 3), (128, 8, 4)]
    ],
    triton.Config({"BLOCK_D": 32}, num_warps=1),
)


@triton.jit
def project_chunk_rewards(h_ptr, stride_hb, stride_hs, stride_hd, w_ptr, stride_w, bias_ptr, D,
                          m_ptr, p_ptr, f_ptr, lp_ptr, ref_ptr, rew_ptr, i_n, i_c, bos, base, L, nC,
                          beta_c, one_minus_beta, kl_coef, clip_lo, clip_hi, kl_lo, kl_hi,
                          HAS_BIAS: tl.constexpr, FIRST_PROMPT: tl.constexpr, FULL_BETA: tl.constexpr,
                          HAS_CLIP: tl.constexpr, HAS_KL: tl.constexpr, KL_EST: tl.constexpr,
                          HAS_KL_CLAMP: tl.constexpr, MULTI: tl.constexpr, BLOCK_T: tl.constexpr,
                          BLOCK_C: tl.constexpr, FLIP: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr,
                          pw_ptr, stride_pw, pbias_ptr, POT: tl.constexpr, HAS_PBIAS: tl.constexpr):
    """Project the hidden rows chunk i_c of row i_n needs, form its rewards in registers and store
    them; -> (o_x, m_t, b_m, b_r). Shared by fused_reward_gae and the fused group advantages.
    (i_n, i_c, bos, base, L, nC): kernels/varlen.py's locate_chunk (L, nC: the row's length and
    chunks); VARLEN: hidden [1, T, D], a sequence's positions are stream positions (p = 0).
    POT: Φ' from the potential head (pw_ptr, pbias_ptr), R from the reward head (module doc)."""
    start = i_c * BLOCK_T
    end = start + BLOCK_T
    o_t, m_t, b_m, b_mn, own_first, row_first, next_after, nx = chunk_mask_facts(
        m_ptr, f_ptr, bos, base, i_c, L, nC, BLOCK_T, BLOCK_C, FLIP, MULTI)
    if VARLEN:
        p = 0
        p_h = h_ptr + bos * stride_hs
    else:
        p = tl.load(p_ptr + i_n)
        p_h = h_ptr + i_n.to(tl.int64) * stride_hb

    # Which hidden rows are needed: after_t where t or t + 1 is generated (after_t = before_{t+1}),
    # and up to three single rows outside the chunk's own (see the module doc).
    m_need = b_m | b_mn
    m_start = tl.load(m_ptr + bos + start) != 0
    q_bs = p + start - 1
    if VARLEN and FIRST_PROMPT:  # Φ_1 = scores[s_n − 1] is `before` at s_n: read it like any other
        need_bs = m_start & (q_bs >= 0)
    else:
        need_bs = m_start & (start != row_first) & (q_bs >= 0)
    q_na = p + next_after - 1
    need_na = (own_first < L) & (next_after < L) & (next_after != end)
    q_p1 = p - 1
    if FIRST_PROMPT and not VARLEN:  # only the chunk holding the row's first generated token needs scores[p − 1]
        need_p1 = (row_first >= start) & (row_first < end)
    else:
        need_p1 = row_first != row_first  # false: Φ_1 = 0, or (VARLEN) `before`

    p_rows = p_h + (p + o_t).to(tl.int64)[:, None] * stride_hs
    p_bs = p_h + q_bs.to(tl.int64) * stride_hs
    p_na = p_h + q_na.to(tl.int64) * stride_hs
    p_p1 = p_h + q_p1.to(tl.int64) * stride_hs
    # fp32 products accumulate elementwise over the D loop and are reduced across lanes once.
    has_local = nx < L  # next generated position is in this chunk or at its end (then n − 1 is in it)
    has_next = has_local | (next_after < L)
    if POT:  # the lanes whose `after` is R: the row's last generated token (at most one per row)
        is_last = b_m & ~has_next
    b_acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    b_bs = tl.zeros((BLOCK_D,), tl.float32)
    b_na = tl.zeros((BLOCK_D,), tl.float32)
    b_p1 = tl.zeros((BLOCK_D,), tl.float32)
    # Single-row masks as vectors (a scalar-and-vector mask is not accepted everywhere).
    zero_d = tl.zeros((BLOCK_D,), tl.int32)
    need_bs = (zero_d + need_bs.to(tl.int32)) != 0
    need_na = (zero_d + need_na.to(tl.int32)) != 0
    need_p1 = (zero_d + need_p1.to(tl.int32)) != 0
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        m_d = o_d < D
        b_w = tl.load(w_ptr + o_d * stride_w, mask=m_d, other=0.0).to(tl.float32)
        b_h = tl.load(p_rows + o_d[None, :] * stride_hd, mask=m_need[:, None] & m_d[None, :], other=0.0)
        if POT:  # one read of the tile, each row against the one head it needs; singles are Φ'
            b_pw = tl.load(pw_ptr + o_d * stride_pw, mask=m_d, other=0.0).to(tl.float32)
            b_acc += b_h.to(tl.float32) * tl.where(is_last[:, None], b_w[None, :], b_pw[None, :])
            b_w = b_pw
        else:
            b_acc += b_h.to(tl.float32) * b_w[None, :]
        b_bs += tl.load(p_bs + o_d * stride_hd, mask=m_d & need_bs, other=0.0).to(tl.float32) * b_w
        b_na += tl.load(p_na + o_d * stride_hd, mask=m_d & need_na, other=0.0).to(tl.float32) * b_w
        b_p1 += tl.load(p_p1 + o_d * stride_hd, mask=m_d & need_p1, other=0.0).to(tl.float32) * b_w
    b_after = tl.sum(b_acc, axis=1)  # scores[p + t]
    s_bs = tl.sum(b_bs, axis=0)
    s_na = tl.sum(b_na, axis=0)
    s_p1 = tl.sum(b_p1, axis=0)
    if POT:
        if HAS_BIAS:
            b_after += tl.where(is_last, tl.load(bias_ptr).to(tl.float32), 0.0)
        if HAS_PBIAS:
            pbias = tl.load(pbias_ptr).to(tl.float32)
            b_after += tl.where(is_last, 0.0, pbias)
            s_bs += pbias
            s_na += pbias
            s_p1 += pbias
    elif HAS_BIAS:
        bias = tl.load(bias_ptr).to(tl.float32)
        b_after += bias
        s_bs += bias
        s_na += bias
        s_p1 += bias

    b_before = tl.gather(b_after, lane_of(o_t - 1, start, BLOCK_T, FLIP), 0)  # scores[p + t − 1]
    b_before = tl.where(o_t == start, s_bs, b_before)
    b_local = tl.gather(b_after, lane_of(nx - 1, start, BLOCK_T, FLIP), 0)
    phi_out = tl.where(has_local, b_local, tl.where(next_after < L, s_na, b_after))
    if FIRST_PROMPT:
        if VARLEN:
            phi_1 = b_before
        else:
            phi_1 = s_p1
    else:
        phi_1 = 0.0
    o_x = bos + o_t
    b_r = finish_rewards(phi_out, b_before, b_after, has_next, phi_1, o_t, row_first, b_m, m_t, lp_ptr, ref_ptr,
                         o_x, beta_c, one_minus_beta, kl_coef, clip_lo, clip_hi, kl_lo, kl_hi, FULL_BETA, HAS_CLIP,
                         HAS_KL, KL_EST, HAS_KL_CLAMP)
    tl.store(rew_ptr + o_x, b_r, mask=m_t)
    return o_x, m_t, b_m, b_r


def potential_head_args(potential_weight, potential_bias, weight) -> dict:
    """Kernel arguments of the potential head (POT; the reward head's tensors as placeholders)."""
    pw = weight if potential_weight is None else potential_weight
    return dict(pw_ptr=pw, stride_pw=pw.stride(0), pbias_ptr=potential_bias if potential_bias is not None else pw,
                POT=potential_weight is not None, HAS_PBIAS=potential_bias is not None)


@triton.autotune(configs=_CONFIGS, key=["D", "BLOCK_T"])  # outputs only written: safe to rerun
@triton.jit
def _fused_kernel(h_ptr, stride_hb, stride_hs, stride_hd, w_ptr, stride_w, bias_ptr, D,
                  m_ptr, p_ptr, f_ptr, lp_ptr, ref_ptr, v_ptr, boot_ptr, s_ptr, rew_ptr, adv_ptr, ret_ptr,
                  ci_ptr, cu_ptr, plane, L, nC, beta_c, one_minus_beta, kl_coef, clip_lo, clip_hi, kl_lo, kl_hi,
                  gamma, lam, HAS_BIAS: tl.constexpr, FIRST_PROMPT: tl.constexpr, FULL_BETA: tl.constexpr,
                  HAS_CLIP: tl.constexpr, HAS_KL: tl.constexpr, KL_EST: tl.constexpr,
                  HAS_KL_CLAMP: tl.constexpr, HAS_BOOT: tl.constexpr, MULTI: tl.constexpr,
                  BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, FLIP: tl.constexpr, BLOCK_D: tl.constexpr,
                  VARLEN: tl.constexpr, pw_ptr, stride_pw, pbias_ptr, POT: tl.constexpr, HAS_PBIAS: tl.constexpr):
    i_n, i_c, bos, T_n, nC_n, base = locate_chunk(ci_ptr, cu_ptr, L, nC, BLOCK_T, VARLEN)
    if i_c < 0:
        return
    o_x, m_t, b_m, b_r = project_chunk_rewards(
        h_ptr, stride_hb, stride_hs, stride_hd, w_ptr, stride_w, bias_ptr, D, m_ptr, p_ptr, f_ptr, lp_ptr, ref_ptr,
        rew_ptr, i_n, i_c, bos, base, T_n, nC_n, beta_c, one_minus_beta, kl_coef, clip_lo, clip_hi, kl_lo, kl_hi,
        HAS_BIAS, FIRST_PROMPT, FULL_BETA, HAS_CLIP, HAS_KL, KL_EST, HAS_KL_CLAMP, MULTI, BLOCK_T, BLOCK_C, FLIP,
        BLOCK_D, VARLEN, pw_ptr, stride_pw, pbias_ptr, POT, HAS_PBIAS)

    b_v = tl.load(v_ptr + o_x, mask=m_t, other=0.0).to(tl.float32)
    al, be, mu, ka, kv = gae_elements(b_r, b_v, b_m, gamma, lam)
    al, be, mu, ka, kv = backward_scan5(al, be, mu, ka, kv, FLIP)
    if MULTI:
        store_chunk_map(s_ptr, plane, base, i_c, al, be, mu, ka, kv, BLOCK_T, FLIP)
    else:
        if HAS_BOOT:
            vn = tl.load(boot_ptr + i_n).to(tl.float32)
        else:
            vn = 0.0
        b_adv = tl.where(b_m, be * vn + ka, 0.0)  # carry a = 0 past the row's end
        tl.store(adv_ptr + o_x, b_adv, mask=m_t)
        tl.store(ret_ptr + o_x, tl.where(b_m, b_adv + b_v, 0.0), mask=m_t)


def fused_reward_gae(hidden, weight, bias, values, response_mask, prompt_len, logprobs=None, ref_logprobs=None,
                     kl_coef=0.0, kl_estimator="k1", kl_clamp=None, gamma=1.0, lam=0.95, first="prompt",
                     beta_c=1.0, reward_clip=None, bootstrap=None, *, cu_seqlens=None, chunk=None, flip=None,
                     potential_weight=None, potential_bias=None):
    """hidden [B, S, D], weight [D], bias fp32 [1] | None, values [B, L], response_mask bool [B, L],
    prompt_len int64 [B] -> (rewards, advantages, returns), fp32 [B, L] each.
    Packed (cu_seqlens int64 [N + 1], prompt_len None): hidden [T, D], per-token tensors [T],
    bootstrap [N] -> fp32 [T] each. potential_weight [D] (+ potential_bias fp32 [1]): a potential head."""
    dev = hidden.device
    shape = response_mask.shape
    rew = torch.empty(shape, dtype=torch.float32, device=dev)
    adv = torch.empty(shape, dtype=torch.float32, device=dev)
    ret = torch.empty(shape, dtype=torch.float32, device=dev)
    if rew.numel() == 0:
        return rew, adv, ret
    if cu_seqlens is None:
        B, L = shape
        chunk = chunk or reward_chunk(B, L)
        ch = None
    else:
        hidden = hidden.unsqueeze(0)
        B, L = 1, rew.numel()
        chunk = chunk or reward_chunk(cu_seqlens.numel() - 1, L)
        ch = chunk_index(cu_seqlens, L, chunk)
    D = hidden.shape[2]
    flip = flip_scans() if flip is None else flip
    m8 = response_mask.contiguous().view(torch.uint8)
    f, nC = first_unmasked(m8, chunk, ch)
    multi = f is not None
    grid, plane = ((nC, B), B * nC) if ch is None else ((ch.grid,), ch.grid)
    s = torch.empty((5, plane), dtype=torch.float32, device=dev) if multi else None
    scalars, consts = reward_options(first, beta_c, reward_clip, kl_coef, kl_estimator, kl_clamp, logprobs)
    lp = logprobs.contiguous() if consts["HAS_KL"] else rew
    ref = ref_logprobs.contiguous() if consts["HAS_KL"] else rew
    v = values.contiguous()
    boot = bootstrap.contiguous() if bootstrap is not None else None
    ci, cu = launch_args(ch, rew)
    _fused_kernel[grid](
        hidden, hidden.stride(0), hidden.stride(1), hidden.stride(2), weight, weight.stride(0),
        bias if bias is not None else rew, D, m8, prompt_len.contiguous() if ch is None else rew,
        f if f is not None else rew, lp, ref, v, boot if boot is not None else rew, s if multi else rew, rew, adv,
        ret, ci, cu, plane, L, nC, **scalars, gamma=float(gamma), lam=float(lam), HAS_BIAS=bias is not None,
        **consts, HAS_BOOT=boot is not None, MULTI=multi, BLOCK_T=chunk, BLOCK_C=BLOCK_C, FLIP=flip,
        VARLEN=ch is not None, **potential_head_args(potential_weight, potential_bias, weight),
    )
    if multi:
        adv, ret = gae_final(rew, v, m8, boot, s, gamma, lam, chunk, flip, ch)
    return rew, adv, ret
