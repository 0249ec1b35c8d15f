"""Packed sequences (`cu_seqlens`): the spec is "pad, call the padded op, unpack".

A packed batch is one stream of T positions; sequence i holds positions cu[i] .. cu[i+1]-1 (its
prompt, then its response, no padding), as in flash-attn's varlen API, veRL's remove-padding and
OpenRLHF's packing_samples. Per-token tensors are [T], `hidden` is [T, D].

Sequence i's response starts at s_i, its first generated position (mask set), or cu[i+1] if it has
none; its *response region* is [s_i, cu[i+1]). Its padded row has prompt_len_i = s_i − cu[i], scores
row = scores[cu[i] : cu[i+1]] and response row = the per-token tensors at [s_i, cu[i+1]) (padding
masked). A packed op's output is the padded op's output at the response regions and 0 elsewhere.
`Packing` builds those rows with gathers (no Python loop over sequences); the padded tensors are
[N, max length], which is fine for a spec and the reason the native backends do not pad.
"""

from __future__ import annotations

import torch


def sequence_ids(cu_seqlens: torch.Tensor, T: int) -> torch.Tensor:
    """Sequence index of every stream position, int64 [T] (empty sequences own no position)."""
    pos = torch.arange(T, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), pos, right=True)


def response_starts(cu_seqlens: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """s_i: the first generated position of each sequence, cu[i+1] when it has none. int64 [N]."""
    T = response_mask.shape[0]
    end = cu_seqlens[1:]
    pos = torch.arange(T, device=end.device)
    gen = torch.where(response_mask, pos, T)
    first = torch.full_like(end, T).scatter_reduce(0, sequence_ids(cu_seqlens, T), gen, "amin")
    return torch.minimum(first, end)


class Packing:
    """Index maps between a packed stream [T] and its padded rows [N, S] (sequences) / [N, L] (responses)."""

    def __init__(self, cu_seqlens: torch.Tensor, response_mask: torch.Tensor):
        cu = cu_seqlens.to(torch.int64)
        self.T = response_mask.shape[0]
        begin, end = cu[:-1], cu[1:]
        start = response_starts(cu, response_mask)
        has_response = start < end
        # A row with no generated token outputs 0 whatever its prompt_len; >= 1 keeps first="prompt"'s
        # read of scores[prompt_len − 1] inside the row.
        self.prompt_len = torch.where(has_response, start - begin, (start - begin).clamp_min(1))
        L = int((end - start).max().clamp_min(1))  # host sync: the padded shape
        S = int(self.prompt_len.max()) + L
        self.resp_idx = start[:, None] + torch.arange(L, device=cu.device)  # [N, L]
        self.resp_valid = self.resp_idx < end[:, None]
        self.seq_idx = begin[:, None] + torch.arange(S, device=cu.device)  # [N, S]
        self.seq_valid = self.seq_idx < end[:, None]

    @staticmethod
    def _gather(x: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        flat = idx.clamp_max(max(x.shape[0] - 1, 0)).reshape(-1)
        rows = x[flat].reshape(*idx.shape, *x.shape[1:]) if x.shape[0] else x.new_zeros(*idx.shape, *x.shape[1:])
        keep = valid.reshape(*valid.shape, *([1] * (x.dim() - 1)))
        return torch.where(keep, rows, torch.zeros((), dtype=x.dtype, device=x.device))

    def rows(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """Per-token [T] -> response rows [N, L] (0 / False past each response's end)."""
        return None if x is None else self._gather(x, self.resp_idx, self.resp_valid)

    def sequences(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position [T, ...] (scores, hidden) -> sequence rows [N, S, ...] (0 past each end)."""
        return self._gather(x, self.seq_idx, self.seq_valid)

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """Response rows [N, L] -> [T], 0 outside the response regions."""
        out = torch.zeros(self.T, dtype=y.dtype, device=y.device)
        return out.index_put((self.resp_idx[self.resp_valid],), y[self.resp_valid])


# --- each op: pad, call the padded reference, unpack ----------------------------------------


def redistribute(scores, response_mask, first, beta_c, beta_c_auto, cu_seqlens):
    from .rewards import redistribute as padded

    p = Packing(cu_seqlens, response_mask)
    return p.unpack(padded(p.sequences(scores), p.rows(response_mask), p.prompt_len, first, beta_c, beta_c_auto))


def token_rewards(scores, response_mask, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp, first, beta_c,
                  reward_clip, beta_c_auto, cu_seqlens):
    from .rewards import token_rewards as padded

    p = Packing(cu_seqlens, response_mask)
    return p.unpack(padded(
        p.sequences(scores), p.rows(response_mask), p.prompt_len, p.rows(logprobs), p.rows(ref_logprobs), kl_coef,
        kl_estimator, kl_clamp, first, beta_c, reward_clip, beta_c_auto,
    ))


def gae(rewards, values, response_mask, gamma, lam, bootstrap, carry_masked, cu_seqlens):
    from .gae import gae as padded

    p = Packing(cu_seqlens, response_mask)
    adv, ret = padded(p.rows(rewards), p.rows(values), p.rows(response_mask), gamma, lam, bootstrap, carry_masked)
    return p.unpack(adv), p.unpack(ret)


def masked_whiten(x, mask, shift_mean, unbiased, eps, group, transform_masked, eps_mode, cu_seqlens):
    from .whiten import masked_whiten as padded

    p = Packing(cu_seqlens, mask)
    return p.unpack(padded(p.rows(x), p.rows(mask), shift_mean, unbiased, eps, group, transform_masked, eps_mode))


def reward_to_go(rewards, response_mask, gamma, holes, cu_seqlens):
    from .returns import reward_to_go as padded

    p = Packing(cu_seqlens, response_mask)
    return p.unpack(padded(p.rows(rewards), p.rows(response_mask), gamma, holes))


def group_advantages(rewards, response_mask, index, estimator, gamma, eps, scale, group, cu_seqlens, baseline="row"):
    from .group import group_advantages as padded

    p = Packing(cu_seqlens, response_mask)
    return p.unpack(padded(p.rows(rewards), p.rows(response_mask), index, estimator, gamma, eps, scale, group,
                           baseline=baseline))
