"""prefix_scores: scores[b, t] = hidden[b, t, :] · weight + bias, fp32 accumulation.

One program per (block of BLOCK_T positions, row) walks D in BLOCK_D tiles; hidden may be any
float dtype and any strides (no copy).
"""

import torch
import triton
import triton.language as tl

from ._common import configs

_CONFIGS = configs(
    [
        triton.Config({"BLOCK_T": bt, "BLOCK_D": bd}, num_warps=w, num_stages=s)
        for bt, bd, w, s in [
            (32, 128, 4, 3), (16, 256, 4, 3), (32, 256, 8, 3), (64, 128, 8, 3), (16, 128, 4, 4), (64, 64, 4, 4),
        ]
    ],
    triton.Config({"BLOCK_T": 16, "BLOCK_D": 32}, num_warps=1),
)


@triton.autotune(configs=_CONFIGS, key=["D"])
@triton.jit
def _prefix_scores_kernel(h_ptr, stride_hb, stride_hs, stride_hd, w_ptr, stride_w, bias_ptr, out_ptr, S, D,
                          HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    i_t = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)  # [B, S, D] offsets can pass 2**31
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < S
    p_h = h_ptr + i_b * stride_hb + o_t.to(tl.int64)[:, None] * stride_hs
    b_acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)  # reduced across lanes once, after the D loop
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        m_d = o_d < D
        b_w = tl.load(w_ptr + o_d * stride_w, mask=m_d, other=0.0).to(tl.float32)
        b_h = tl.load(p_h + o_d[None, :] * stride_hd, mask=m_t[:, None] & m_d[None, :], other=0.0)
        b_acc += b_h.to(tl.float32) * b_w[None, :]
    b_s = tl.sum(b_acc, axis=1)
    if HAS_BIAS:
        b_s += tl.load(bias_ptr).to(tl.float32)
    tl.store(out_ptr + i_b * S + o_t, b_s, mask=m_t)


def prefix_scores(hidden, weight, bias):
    """hidden [B, S, D], weight [D], bias fp32 [1] or None -> fp32 [B, S]."""
    B, S, D = hidden.shape
    out = torch.empty((B, S), dtype=torch.float32, device=hidden.device)
    if B == 0 or S == 0:
        return out
    if D == 0:
        return out.fill_(0.0) if bias is None else out.fill_(0.0).add_(bias)

    def grid(meta):
        return (triton.cdiv(S, meta["BLOCK_T"]), B)

    _prefix_scores_kernel[grid](
        hidden, hidden.stride(0), hidden.stride(1), hidden.stride(2), weight, weight.stride(0),
        bias if bias is not None else out, out, S, D, HAS_BIAS=bias is not None,
    )
    return out
