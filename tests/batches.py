"""Random PPO-layout batches for tests: prompt ⊕ response, masks with holes and all-masked rows."""

from __future__ import annotations

import torch

TOLERANCES = {  # (rtol, atol) of a backend against the fp32 reference, by input dtype
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def make_mask(B: int, L: int, *, gen: torch.Generator, holes: bool = True, empty_rows: bool = True) -> torch.Tensor:
    """bool [B, L]: random trailing padding, optional holes (observation spans), an all-masked row."""
    lengths = torch.randint(0, L + 1, (B,), generator=gen)
    mask = torch.arange(L)[None, :] < lengths[:, None]
    if holes and L > 2:
        hole = torch.rand(B, L, generator=gen) < 0.2
        mask &= ~hole
    if empty_rows and B > 1:
        mask[torch.randint(0, B, (1,), generator=gen)] = False
    return mask


def make_batch(
    B: int = 4, L: int = 47, P: int = 5, D: int = 16, *, dtype=torch.float32, seed: int = 0,
    per_row_prompt: bool = True, holes: bool = True, empty_rows: bool = True, device="cpu",
) -> dict:
    """Inputs of fused_reward_gae (and its parts) with S = max prompt_len + L + 3 positions."""
    gen = torch.Generator().manual_seed(seed)
    if per_row_prompt:
        prompt_len = torch.randint(1, P + 1, (B,), generator=gen)
        S = P + L + 3
    else:
        prompt_len = P
        S = P + L + 3
    hidden = torch.randn(B, S, D, generator=gen)
    weight = torch.randn(D, generator=gen) / D**0.5
    batch = dict(
        hidden=hidden.to(dtype),
        weight=weight.to(dtype),
        bias=float(torch.randn((), generator=gen)),
        scores=torch.randn(B, S, generator=gen).to(dtype),
        values=torch.randn(B, L, generator=gen).to(dtype),
        rewards=torch.randn(B, L, generator=gen).to(dtype),
        logprobs=(-torch.rand(B, L, generator=gen) * 3).to(dtype),
        ref_logprobs=(-torch.rand(B, L, generator=gen) * 3).to(dtype),
        response_mask=make_mask(B, L, gen=gen, holes=holes, empty_rows=empty_rows),
        prompt_len=prompt_len,
    )
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
