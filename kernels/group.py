"""Heavy row pass of fused_reward_group_advantages: hidden states -> reward-head projection ->
R3HF rewards (+ KL) -> per-row reverse scan and row moments, in one kernel.

`_fused_group_kernel`, one program per (chunk, row), projects the hidden rows its chunk needs
(kernels/fused.py's `project_chunk_rewards`: the same reads as fused_reward_gae, fp32
accumulation, no [B, S] scores tensor), stores the rewards [B, L] (an output of the op), and
runs kernels/returns.py's row pass on them in registers: the chunk's reward-to-go map and the
moments of r — or, when a row is one chunk, G and its moments directly. Rows of several chunks
then take one light final pass over the fp32 rewards (carry, rescan, G and its moments), and
`_row_stats_kernel` merges the moments into _group_stats' stats [B, 5]. The tiny group
statistics (r3hf/_group_stats.py) and the light finish pass (kernels/returns.py) follow.
VARLEN (packed, cu_seqlens): the same kernels over kernels/varlen.py's chunk index; a sequence is
a row (stats [N, 5]).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import flip_scans, reward_chunk
from .fused import _CONFIGS, potential_head_args, project_chunk_rewards
from .returns import N_MOMENTS, _layout, _scan_rows, row_stats, rtg_chunk_tail
from .position import position_args
from .varlen import launch_args, locate_chunk
from .rewards import BLOCK_C, first_unmasked, reward_options


# Outputs only written, but POS adds to the position tables: autotuning zeroes them before each
# trial and before the real run (a dummy when not POS is an output, written in full anyway).
@triton.autotune(configs=_CONFIGS, key=["D", "BLOCK_T"], reset_to_zero=["ps_ptr", "last_ptr"])
@triton.jit
def _fused_group_kernel(h_ptr, stride_hb, stride_hs, stride_hd, w_ptr, stride_w, bias_ptr, D,
                        m_ptr, p_ptr, f_ptr, lp_ptr, ref_ptr, s_ptr, st_ptr, rew_ptr, ret_ptr, ci_ptr, cu_ptr,
                        plane, L, nC, beta_c, one_minus_beta, kl_coef, clip_lo, clip_hi, kl_lo, kl_hi, gamma,
                        HAS_BIAS: tl.constexpr, FIRST_PROMPT: tl.constexpr, FULL_BETA: tl.constexpr,
                        HAS_CLIP: tl.constexpr, HAS_KL: tl.constexpr, KL_EST: tl.constexpr,
                        HAS_KL_CLAMP: tl.constexpr, MULTI: tl.constexpr, BLOCK_T: tl.constexpr,
                        BLOCK_C: tl.constexpr, FLIP: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr,
                        pw_ptr, stride_pw, pbias_ptr, POT: tl.constexpr, HAS_PBIAS: tl.constexpr,
                        ids_ptr, ps_ptr, last_ptr, W, ps_plane, POS: tl.constexpr, SQUARES: tl.constexpr):
    i_n, i_c, bos, T_n, nC_n, base = locate_chunk(ci_ptr, cu_ptr, L, nC, BLOCK_T, VARLEN)
    if i_c < 0:
        return
    o_x, m_t, b_m, b_r = project_chunk_rewards(
        h_ptr, stride_hb, stride_hs, stride_hd, w_ptr, stride_w, bias_ptr, D, m_ptr, p_ptr, f_ptr, lp_ptr, ref_ptr,
        rew_ptr, i_n, i_c, bos, base, T_n, nC_n, beta_c, one_minus_beta, kl_coef, clip_lo, clip_hi, kl_lo, kl_hi,
        HAS_BIAS, FIRST_PROMPT, FULL_BETA, HAS_CLIP, HAS_KL, KL_EST, HAS_KL_CLAMP, MULTI, BLOCK_T, BLOCK_C, FLIP,
        BLOCK_D, VARLEN, pw_ptr, stride_pw, pbias_ptr, POT, HAS_PBIAS)
    # group advantages use holes="skip" (_group_stats' row pass)
    rtg_chunk_tail(b_r, b_m, m_t, o_x, s_ptr, st_ptr, ret_ptr, base, i_c, plane, gamma, True, MULTI, True,
                   BLOCK_T, FLIP, i_n, ids_ptr, ps_ptr, last_ptr, W, ps_plane, POS, SQUARES)


def fused_row_pass(hidden, weight, bias, response_mask, prompt_len, logprobs=None, ref_logprobs=None, kl_coef=0.0,
                   kl_estimator="k1", kl_clamp=None, first="prompt", beta_c=1.0, reward_clip=None, gamma=1.0,
                   cu_seqlens=None, *, chunk=None, flip=None, potential_weight=None, potential_bias=None,
                   positions=None):
    """hidden [B, S, D], weight [D], bias fp32 [1] | None, response_mask bool [B, L], prompt_len
    int64 [B] -> (rewards fp32 [B, L], returns G fp32 [B, L], stats float64 [B, 5]): _group_stats'
    fused row pass. Packed (cu_seqlens int64 [N + 1], prompt_len None): hidden [T, D], per-token
    tensors [T] -> rewards, returns [T] and stats [N, 5]. potential_weight/potential_bias: a potential
    head (kernels/fused.py). With `positions` (_group_stats.Positions, step 1p) -> (rewards, returns,
    stats, sums float64 [2, n_groups, W], last float64 [B] (packed [N])), accumulated where G is
    known: in this kernel for rows of one chunk, in the final pass otherwise."""
    dev = hidden.device
    m8 = response_mask.contiguous().view(torch.uint8)
    if cu_seqlens is None:
        B, L = response_mask.shape
        chunk = chunk or reward_chunk(B, L)
    else:
        hidden = hidden.unsqueeze(0)
        B, L = 1, response_mask.numel()
        chunk = chunk or reward_chunk(cu_seqlens.numel() - 1, L)
    D = hidden.shape[2]
    layout = _layout(m8, chunk, cu_seqlens)
    ch, grid, plane, _, nC = layout
    rew = torch.empty(response_mask.shape, dtype=torch.float32, device=dev)
    n_rows = B if ch is None else cu_seqlens.numel() - 1
    pos, sums, last = position_args(positions, n_rows, dev, rew)
    extra = () if positions is None else (sums, last)
    if rew.numel() == 0:
        ret = torch.zeros(response_mask.shape, dtype=torch.float32, device=dev)
        return (rew, ret, row_stats(torch.zeros((N_MOMENTS, plane), dtype=torch.float64, device=dev), layout, B),
                *extra)
    flip = flip_scans() if flip is None else flip
    f, _ = first_unmasked(m8, chunk, ch)
    multi = f is not None
    maps = torch.empty((2, plane), dtype=torch.float32, device=dev) if multi else rew
    moments = torch.empty((N_MOMENTS, plane), dtype=torch.float64, device=dev)
    ret = rew if multi else torch.empty(response_mask.shape, dtype=torch.float32, device=dev)  # multi: below
    scalars, consts = reward_options(first, beta_c, reward_clip, kl_coef, kl_estimator, kl_clamp, logprobs)
    lp = logprobs.contiguous() if consts["HAS_KL"] else rew
    ref = ref_logprobs.contiguous() if consts["HAS_KL"] else rew
    ci, cu = launch_args(ch, rew)
    _fused_group_kernel[grid](
        hidden, hidden.stride(0), hidden.stride(1), hidden.stride(2), weight, weight.stride(0),
        bias if bias is not None else rew, D, m8, prompt_len.contiguous() if ch is None else rew,
        f if f is not None else rew, lp, ref, maps, moments, rew, ret, ci, cu, plane, L if ch is None else 0, nC,
        **scalars, gamma=float(gamma), HAS_BIAS=bias is not None, **consts, MULTI=multi, BLOCK_T=chunk,
        BLOCK_C=BLOCK_C, FLIP=flip, VARLEN=ch is not None,
        **potential_head_args(potential_weight, potential_bias, weight), **pos,
    )
    if multi:  # carry across chunks: G and its moments from the fp32 rewards just written
        ret = _scan_rows(rew, m8, gamma, True, stats=moments, maps=maps, chunk=chunk, flip=flip, rows_done=True,
                         layout=layout, pos=pos)
    return (rew, ret, row_stats(moments, layout, B), *extra)


__all__ = ["fused_row_pass"]
