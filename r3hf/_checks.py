"""Data-dependent argument checks (values inside tensors), run where the data lives.

Shape, dtype and device checks are static and live in `r3hf._validate`. Checks on tensor *values*
(prompt_len ranges, how many positions a mask selects) would cost a host sync on a GPU, so:

- host data (CPU tensors): a ValueError naming the argument, in eager and compiled code alike
  (the ops run as opaque custom ops, so these checks execute with real tensors even under
  torch.compile);
- GPU data: an asynchronous device-side assert (`torch._assert_async`) with the same message. No
  host sync, so it works inside CUDA graph capture and under compile; a failure surfaces as
  "CUDA error: device-side assert triggered" at the next synchronisation. See docs/contract.md.
"""

from __future__ import annotations

import torch

from .reference.data_checks import check_tokens, whiten_count  # noqa: F401  (the spec's checks)
from .reference.data_checks import fail as _fail


def prompt_len_range(lo: int, hi: int, S: int, L: int, first: str, scores_name: str = "scores") -> None:
    """Host-side check of prompt_len's min `lo` and max `hi` (ints) with the eager ValueErrors."""
    if lo < 0:
        raise ValueError(f"prompt_len must be >= 0, got {lo}")
    if lo < (1 if first == "prompt" else 0):
        raise ValueError(
            "prompt_len must be >= 1 with first='prompt' (the prompt-only score is scores[prompt_len - 1]); "
            "got 0 — use first='zero' for rows without a prompt"
        )
    if hi + L > S:
        raise ValueError(
            f"{scores_name} must cover prompt_len + L positions: S = {S} < prompt_len + L = {hi} + {L} "
            "(prompt_len too large, or response_mask too long)"
        )


def prompt_len_values(prompt_len: torch.Tensor, S: int, L: int, first: str, scores_name: str = "scores") -> None:
    """0 (1 with first="prompt") <= prompt_len[b] and prompt_len[b] + L <= S for every row."""
    if prompt_len.numel() == 0:
        return
    lowest = 1 if first == "prompt" else 0
    lo, hi = torch.aminmax(prompt_len)
    if prompt_len.device.type == "cpu":  # exact messages, as before this module existed
        prompt_len_range(int(lo), int(hi), S, L, first, scores_name)
        return
    _fail(lo >= lowest, f"prompt_len must be >= {lowest} (first={first!r})")
    _fail(hi + L <= S, f"{scores_name} must cover prompt_len + L positions (S = {S}, L = {L}): prompt_len too large")


def group_tokens(mask: torch.Tensor, estimator: str) -> None:
    """Group advantages need a generated token in the batch (2 for the estimators that whiten over tokens)."""
    if mask.device.type == "cpu":
        check_tokens(int(mask.sum()), estimator)
        return
    n = mask.sum()
    _fail(n > 0, "response_mask has no generated token in the whole batch: group advantages are undefined")
    if estimator in ("reinforce_pp", "reinforce_pp_baseline"):
        _fail(n >= 2, f"estimator={estimator!r} whitens over tokens and needs at least 2 generated tokens")


def cu_seqlens_values(cu_seqlens: torch.Tensor, T: int, stream_name: str) -> None:
    """cu_seqlens[0] = 0, non-decreasing, cu_seqlens[-1] = T (the packed stream's length)."""
    cu = cu_seqlens
    if cu.device.type == "cpu":
        if int(cu[0]) != 0:
            raise ValueError(f"cu_seqlens[0] must be 0, got {int(cu[0])}")
        drops = (cu[1:] < cu[:-1]).nonzero()
        if drops.numel():
            i = int(drops[0])
            raise ValueError(
                f"cu_seqlens must be non-decreasing (sequence i holds positions cu_seqlens[i] .. cu_seqlens[i+1]-1), "
                f"got cu_seqlens[{i}] = {int(cu[i])} > cu_seqlens[{i + 1}] = {int(cu[i + 1])}"
            )
        if int(cu[-1]) != T:
            raise ValueError(f"cu_seqlens[-1] must equal T = {T}, the length of the packed {stream_name}; got {int(cu[-1])}")
        return
    _fail(cu[0] == 0, "cu_seqlens[0] must be 0")
    _fail((cu[1:] >= cu[:-1]).all(), "cu_seqlens must be non-decreasing")
    _fail(cu[-1] == T, f"cu_seqlens[-1] must equal T = {T}, the length of the packed {stream_name}")


def packed_prompts(cu_seqlens: torch.Tensor, response_mask: torch.Tensor, first: str) -> None:
    """first="prompt" reads the score just before each sequence's first generated token, so that
    token must not be the sequence's first position (padded ops: prompt_len >= 1)."""
    T = response_mask.shape[0]
    if first != "prompt" or T == 0:
        return
    begin, end = cu_seqlens[:-1], cu_seqlens[1:]
    starts_generated = response_mask[begin.clamp(0, T - 1)] & (end > begin)
    message = ("first='prompt' needs a prompt token before each sequence's first generated token (the prompt-only "
               "score is the score just before it)")
    if response_mask.device.type == "cpu":
        bad = starts_generated.nonzero()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"{message}; sequence {i} (response_mask[cu_seqlens[{i}]]) starts with a generated "
                             "token — use first='zero' for sequences without a prompt")
        return
    _fail(~starts_generated.any(), message)
