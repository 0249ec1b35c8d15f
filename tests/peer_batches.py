"""Random batches in the trainers' layouts for the integration tests.

Every batch mixes the row kinds a trainer produces: trailing padding after EOS, multi-turn rows
(generated spans separated by observation spans, then padding), truncated rows (no padding),
a one-token row and an all-masked row.
"""

from __future__ import annotations

import torch

ATOL = RTOL = 1e-5  # fp32 adapter vs peer, at every position

SHAPES = [(2, 1), (3, 2), (6, 7), (5, 47), (4, 300)]  # (B, L); every batch has >= 2 unmasked positions


def response_mask(B: int, L: int, *, gen: torch.Generator, holes: bool = True) -> torch.Tensor:
    """bool [B, L] cycling over row kinds: padded, multi-turn (if holes), truncated, one token, empty."""
    kinds = ["padded", "multi_turn" if holes else "padded", "truncated", "one", "empty"]
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        kind = kinds[b % len(kinds)]
        if kind == "truncated":
            mask[b] = True
        elif kind == "one":
            mask[b, 0] = True
        elif kind == "empty":
            continue
        else:
            n = int(torch.randint(1, L + 1, (1,), generator=gen))
            mask[b, :n] = True
            if kind == "multi_turn" and n > 3:
                # one or two observation spans strictly inside the response
                for _ in range(int(torch.randint(1, 3, (1,), generator=gen))):
                    start = int(torch.randint(1, n - 1, (1,), generator=gen))
                    stop = min(n - 1, start + int(torch.randint(1, max(2, n // 3), (1,), generator=gen)))
                    mask[b, start:stop] = False
    return mask


def randn(*shape, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


def logprobs(B: int, L: int, *, gen: torch.Generator) -> torch.Tensor:
    """Log-probabilities in (−4, 0], with a few large gaps so the ±10 clamps are exercised."""
    lp = -torch.rand(B, L, generator=gen) * 4
    far = torch.rand(B, L, generator=gen) < 0.05
    return torch.where(far, lp - 14.0, lp)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {list(actual.shape)} != {list(expected.shape)}"
    torch.testing.assert_close(actual.float(), expected.float(), atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")
