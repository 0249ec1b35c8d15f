"""Packed (cu_seqlens) test batches and an independent oracle: pad the sequences into [N, ·] rows,
call the padded op, unpack (PACKED_CONTRACT.md).

The oracle finds each sequence's response region [s_i, cu[i+1]) in plain Python (s_i = its first
generated position), so it shares no code with the kernels under test.
"""

from __future__ import annotations

import torch


def packed_batch(N: int, max_len: int = 60, *, seed: int = 0, D: int = 8, dtype=torch.float32,
                 no_prompt: bool = False, cu_dtype=torch.int64) -> dict:
    """One stream of N sequences with lengths in [0, max_len]: empty sequences, all-prompt ones,
    prompts then responses with holes and trailing non-generated tokens; no_prompt adds sequences
    whose first token is generated (valid with first="zero" only). At least 2 generated tokens."""
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for _ in range(N):
        n = int(torch.randint(0, max_len + 1, (1,), generator=gen))
        kind = float(torch.rand((), generator=gen))
        if kind < 0.1 or n == 0:
            masks.append(torch.zeros(0 if kind < 0.05 else n, dtype=torch.bool))  # empty / all-prompt
            continue
        if kind < 0.2:
            masks.append(torch.zeros(n, dtype=torch.bool))
            continue
        if no_prompt and kind > 0.85:
            p = 0
        else:
            p = int(torch.randint(1, n, (1,), generator=gen)) if n >= 2 else 1
        if p >= n:  # a 1-token sequence without room for a prompt: all prompt
            masks.append(torch.zeros(n, dtype=torch.bool))
            continue
        m = torch.zeros(n, dtype=torch.bool)
        region = torch.rand(n - p, generator=gen) >= 0.2  # holes
        region[0] = True  # s_i: the first generated token
        if n - p > 2 and float(torch.rand((), generator=gen)) < 0.3:  # trailing non-generated tokens
            region[int(torch.randint(1, n - p, (1,), generator=gen)):] = False
        m[p:] = region
        masks.append(m)
    if sum(int(m.sum()) for m in masks) < 2:  # group whitening needs 2 generated tokens in the stream
        masks[-1] = torch.tensor([False, True, True])
    lengths = torch.tensor([m.numel() for m in masks], dtype=torch.int64)
    cu = torch.zeros(N + 1, dtype=torch.int64)
    cu[1:] = lengths.cumsum(0)
    T = int(cu[-1])
    mask = torch.cat(masks) if T else torch.zeros(0, dtype=torch.bool)
    weight = torch.randn(D, generator=gen) / D**0.5
    return dict(
        cu_seqlens=cu.to(cu_dtype),
        response_mask=mask,
        hidden=torch.randn(T, D, generator=gen).to(dtype),
        weight=weight,
        bias=torch.randn(1, generator=gen),
        scores=torch.randn(T, generator=gen).to(dtype),
        values=torch.randn(T, generator=gen).to(dtype),
        rewards=torch.randn(T, generator=gen).to(dtype),
        logprobs=(-torch.rand(T, generator=gen) * 3).to(dtype),
        ref_logprobs=(-torch.rand(T, generator=gen) * 3).to(dtype),
        bootstrap=torch.randn(N, generator=gen),
        index=torch.randint(0, max(1, N // 3), (N,), generator=gen),
    )


class Padder:
    """pad [T] / [T, D] stream tensors into padded rows, and unpack [N, L] rows back to [T]."""

    def __init__(self, cu_seqlens: torch.Tensor, response_mask: torch.Tensor):
        cu = [int(c) for c in cu_seqlens]
        m = response_mask.tolist()
        self.N, self.T = len(cu) - 1, cu[-1]
        self.c0, self.c1 = cu[:-1], cu[1:]
        self.s = []
        for c0, c1 in zip(self.c0, self.c1):
            s = c1
            for p in range(c0, c1):
                if m[p]:
                    s = p
                    break
            self.s.append(s)
        self.region = [c1 - s for s, c1 in zip(self.s, self.c1)]
        # A row without generated tokens is all-masked; prompt_len 1 is valid for it under any `first`.
        self.prompt_len = torch.tensor([s - c0 if r else 1 for s, c0, r in zip(self.s, self.c0, self.region)])
        self.L = max([1, *self.region])
        self.S = max(int(self.prompt_len.max()) + self.L, *(c1 - c0 for c0, c1 in zip(self.c0, self.c1))) + 1

    def seq(self, x: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [N, S, ...]: each whole sequence (prompt then response) from column 0."""
        out = x.new_zeros((self.N, self.S, *x.shape[1:]))
        for i, (c0, c1) in enumerate(zip(self.c0, self.c1)):
            out[i, : c1 - c0] = x[c0:c1]
        return out

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """[T] -> [N, L]: each response region from column 0, then zero padding (mask False)."""
        out = x.new_zeros((self.N, self.L))
        for i, (s, c1) in enumerate(zip(self.s, self.c1)):
            out[i, : c1 - s] = x[s:c1]
        return out

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """[N, L] -> [T]: the response regions, 0 elsewhere."""
        out = y.new_zeros(self.T)
        for i, (s, c1) in enumerate(zip(self.s, self.c1)):
            out[s:c1] = y[i, : c1 - s]
        return out
