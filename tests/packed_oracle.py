"""An independent oracle for packed (cu_seqlens) calls: pad, call the PADDED public op, unpack.

Written from PACKED_CONTRACT.md, not from r3hf's own pad helper, so that a bug in that helper
cannot hide in both sides of a comparison. Plain Python loops over sequences: slow and obvious.

Packed layout: sequence i holds stream positions cu[i] .. cu[i+1]-1 (prompt, then response, no
padding). Its response region starts at s_i, the first position with a generated token (cu[i+1] if
none), and ends at cu[i+1]. Padded equivalent, row i: prompt_len_i = s_i − cu[i], scores/hidden row
= the whole sequence, response row = the region (then padding with mask 0). The packed result is the
padded result inside response regions and 0 everywhere else.

Also a packed-batch generator (`make_packed`) shared by the packed tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import r3hf.ops as ops

# ---------------------------------------------------------------------------------------------
# layout


@dataclass
class Layout:
    """Where each sequence of a packed stream goes in the padded batch."""

    cu: list  # [N + 1] python ints
    starts: list  # s_i: first generated position of sequence i (cu[i+1] if none)
    prompt_len: torch.Tensor  # int64 [N]
    L: int  # padded response width (>= 1)
    S: int  # padded sequence width: every prompt_len_i + L fits

    @property
    def N(self) -> int:
        return len(self.cu) - 1

    @property
    def T(self) -> int:
        return self.cu[-1]

    def region(self, i: int) -> tuple:
        return self.starts[i], self.cu[i + 1]

    def in_region(self) -> torch.Tensor:
        """bool [T]: positions inside some sequence's response region."""
        inside = torch.zeros(self.T, dtype=torch.bool)
        for i in range(self.N):
            s, e = self.region(i)
            inside[s:e] = True
        return inside


def layout(cu_seqlens: torch.Tensor, mask: torch.Tensor, first: str = "zero") -> Layout:
    """cu_seqlens [N + 1] and the generated-token mask [T] -> the padded layout.

    A sequence with no generated token needs no baseline; it gets prompt_len >= 1 anyway so that
    the padded op's first="prompt" check (prompt_len >= 1 for every row) does not reject it. Its
    response row is all mask 0, so its prompt_len changes nothing.
    """
    cu = [int(c) for c in cu_seqlens.tolist()]
    m = (mask != 0).tolist()
    starts = []
    for i in range(len(cu) - 1):
        s = next((p for p in range(cu[i], cu[i + 1]) if m[p]), cu[i + 1])
        starts.append(s)
    lowest = 1 if first == "prompt" else 0
    prompt_len = []
    for i, s in enumerate(starts):
        p = s - cu[i]
        if s == cu[i + 1]:  # no generated token
            p = max(p, lowest)
        prompt_len.append(p)
    L = max([cu[i + 1] - s for i, s in enumerate(starts)] + [1])
    S = max(prompt_len) + L
    return Layout(cu, starts, torch.tensor(prompt_len, dtype=torch.int64), L, S)


def pad_response(t: torch.Tensor, lay: Layout) -> torch.Tensor:
    """Per-token [T] -> [N, L]: row i = t over sequence i's response region, then zeros."""
    rows = []
    for i in range(lay.N):
        s, e = lay.region(i)
        rows.append(torch.cat([t[s:e], t.new_zeros(lay.L - (e - s))]))
    return torch.stack(rows)


def pad_mask(mask: torch.Tensor, lay: Layout) -> torch.Tensor:
    """Generated-token mask [T] (any dtype) -> bool [N, L], padding = not generated."""
    return pad_response((mask != 0), lay)


def pad_sequence(t: torch.Tensor, lay: Layout) -> torch.Tensor:
    """Per-position [T, ...] -> [N, S, ...]: row i = the whole sequence i, then zeros."""
    rows = []
    for i in range(lay.N):
        a, b = lay.cu[i], lay.cu[i + 1]
        rows.append(torch.cat([t[a:b], t.new_zeros((lay.S - (b - a),) + tuple(t.shape[1:]))]))
    return torch.stack(rows)


def unpack(out: torch.Tensor, lay: Layout) -> torch.Tensor:
    """Padded result [N, L] -> [T] float32: the result inside response regions, 0 elsewhere."""
    pieces = []
    for i in range(lay.N):
        a = lay.cu[i]
        s, e = lay.region(i)
        pieces += [out.new_zeros(s - a, dtype=torch.float32), out[i, : e - s].float()]
    return torch.cat(pieces) if pieces else out.new_zeros(0, dtype=torch.float32)


def _unpack_all(out, lay):
    return tuple(unpack(o, lay) for o in out) if isinstance(out, tuple) else unpack(out, lay)


def _no_prompt_len(prompt_len):
    # The oracle mirrors the public packed signatures, where prompt_len must stay None.
    assert prompt_len is None, "packed calls take no prompt_len"


def _flat_hidden(hidden: torch.Tensor) -> torch.Tensor:
    return hidden[0] if hidden.dim() == 3 else hidden


# ---------------------------------------------------------------------------------------------
# the ops, packed signature in, padded torch op inside

TORCH = dict(backend="torch")


def prefix_scores(hidden, weight, bias=None, *, cu_seqlens):
    """Per position: the [1, T, D] padded op on the whole stream (cu_seqlens plays no part)."""
    return ops.prefix_scores(_flat_hidden(hidden)[None], weight, bias, **TORCH)[0]


def kl_penalty(logprobs, ref_logprobs, estimator="k1", clamp=None, *, cu_seqlens):
    """Elementwise over all T positions (no mask, cu_seqlens plays no part)."""
    return ops.kl_penalty(logprobs[None], ref_logprobs[None], estimator, clamp, **TORCH)[0]


def redistribute(scores, response_mask, prompt_len=None, *, cu_seqlens, first="prompt", beta_c=1.0):
    _no_prompt_len(prompt_len)
    lay = layout(cu_seqlens, response_mask, first)
    out = ops.redistribute(pad_sequence(scores, lay), pad_mask(response_mask, lay), lay.prompt_len, first=first,
                           beta_c=beta_c, **TORCH)
    return unpack(out, lay)


def _kl_rows(kw: dict, lay: Layout) -> dict:
    kw = dict(kw)
    for name in ("logprobs", "ref_logprobs"):
        if kw.get(name) is not None:
            kw[name] = pad_response(kw[name], lay)
    return kw


def token_rewards(scores, response_mask, prompt_len=None, *, cu_seqlens, first="prompt", **kw):
    _no_prompt_len(prompt_len)
    lay = layout(cu_seqlens, response_mask, first)
    out = ops.token_rewards(pad_sequence(scores, lay), pad_mask(response_mask, lay), lay.prompt_len, first=first,
                            **_kl_rows(kw, lay), **TORCH)
    return unpack(out, lay)


def gae(rewards, values, response_mask, gamma=1.0, lam=0.95, bootstrap=None, *, cu_seqlens, carry_masked=False):
    lay = layout(cu_seqlens, response_mask)
    out = ops.gae(pad_response(rewards, lay), pad_response(values, lay), pad_mask(response_mask, lay), gamma, lam,
                  bootstrap, carry_masked=carry_masked, **TORCH)
    return _unpack_all(out, lay)


def masked_whiten(x, mask, shift_mean=True, unbiased=True, eps=1e-8, *, cu_seqlens, **kw):
    lay = layout(cu_seqlens, mask)
    out = ops.masked_whiten(pad_response(x, lay), pad_mask(mask, lay), shift_mean, unbiased, eps, **kw, **TORCH)
    return unpack(out, lay)


def fused_reward_gae(hidden, weight, bias, values, response_mask, prompt_len=None, *, cu_seqlens, first="prompt",
                     **kw):
    _no_prompt_len(prompt_len)
    lay = layout(cu_seqlens, response_mask, first)
    out = ops.fused_reward_gae(pad_sequence(_flat_hidden(hidden), lay), weight, bias, pad_response(values, lay),
                               pad_mask(response_mask, lay), lay.prompt_len, first=first, **_kl_rows(kw, lay),
                               **TORCH)
    return _unpack_all(out, lay)


def reward_to_go(rewards, response_mask, gamma=1.0, *, cu_seqlens, holes="skip"):
    lay = layout(cu_seqlens, response_mask)
    out = ops.reward_to_go(pad_response(rewards, lay), pad_mask(response_mask, lay), gamma, holes=holes, **TORCH)
    return unpack(out, lay)


def group_advantages(rewards, response_mask, index, estimator="grpo", *, cu_seqlens, **kw):
    """A sequence is a row: index [N] or an int G (rows i // G) passes through unchanged."""
    lay = layout(cu_seqlens, response_mask)
    out = ops.group_advantages(pad_response(rewards, lay), pad_mask(response_mask, lay), index, estimator, **kw,
                               **TORCH)
    return unpack(out, lay)


def fused_reward_group_advantages(hidden, weight, bias, response_mask, prompt_len, index, estimator="grpo", *,
                                  cu_seqlens, first="prompt", **kw):
    _no_prompt_len(prompt_len)
    lay = layout(cu_seqlens, response_mask, first)
    out = ops.fused_reward_group_advantages(
        pad_sequence(_flat_hidden(hidden), lay), weight, bias, pad_mask(response_mask, lay), lay.prompt_len, index,
        estimator, first=first, **_kl_rows(kw, lay), **TORCH,
    )
    return _unpack_all(out, lay)


# ---------------------------------------------------------------------------------------------
# packed batches

# How a sequence looks: prompt tokens (mask 0), then its response region.
KINDS = (
    "full",  # prompt, then every token generated
    "holes",  # generated tokens with observation spans (mask 0) between them
    "trailing",  # generated tokens, then trailing observation tokens
    "all_prompt",  # no generated token at all
    "empty",  # length 0
    "no_prompt",  # generated from its first token (first="zero" only)
)


def make_packed(
    N: int, max_len: int, D: int, *, seed: int, kinds=KINDS, first: str = "zero", dtype=torch.float32,
    mask_dtype=torch.bool, cu_dtype=torch.int64,
) -> dict:
    """A random packed batch of N sequences of total length 0..max_len each (kind drawn from `kinds`).

    first="prompt" never makes a sequence whose first token is generated (that is an error).
    Returns cu_seqlens [N + 1], hidden [T, D], weight [D], scores/values/rewards/logprobs/ref_logprobs
    [T] in `dtype`, response_mask [T] in `mask_dtype`, and lengths for inspection.
    """
    gen = torch.Generator().manual_seed(seed)
    kinds = [k for k in kinds if not (k == "no_prompt" and first == "prompt")] or ["all_prompt"]
    lowest = 1 if first == "prompt" else 0

    def rint(lo, hi):  # inclusive
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    masks, lengths = [], []
    for _ in range(N):
        kind = kinds[rint(0, len(kinds) - 1)]
        n = 0 if kind == "empty" else rint(1, max_len)
        if kind in ("empty", "all_prompt") or n - 1 < lowest:
            m = torch.zeros(n, dtype=torch.bool)
        else:
            p = 0 if kind == "no_prompt" else rint(lowest, n - 1)
            r = n - p  # >= 1
            resp = torch.ones(r, dtype=torch.bool)
            if kind == "holes" and r > 2:
                resp[1:] = torch.rand(r - 1, generator=gen) > 0.4
            elif kind == "trailing" and r > 1:
                resp[rint(1, r - 1):] = False
            m = torch.cat([torch.zeros(p, dtype=torch.bool), resp])
        masks.append(m)
        lengths.append(n)
    mask = torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)
    T = mask.numel()
    cu = torch.zeros(N + 1, dtype=torch.int64)
    cu[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)

    def data(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    return dict(
        cu_seqlens=cu.to(cu_dtype),
        hidden=data(T, D),
        weight=(torch.randn(D, generator=gen) / max(D, 1) ** 0.5).to(dtype),
        scores=data(T),
        values=data(T),
        rewards=data(T),
        logprobs=(-3 * torch.rand(T, generator=gen)).to(dtype),
        ref_logprobs=(-3 * torch.rand(T, generator=gen)).to(dtype),
        response_mask=mask if mask_dtype == torch.bool else mask.to(mask_dtype),
        lengths=lengths,
    )
