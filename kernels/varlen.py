"""Packed sequences (cu_seqlens): the chunk index of the varlen kernels, built on the device.

A packed stream of T positions holds N sequences; sequence n is positions cu[n] … cu[n+1] − 1
(its prompt, then its response, no padding; an empty sequence has cu[n] = cu[n+1]). The varlen
mode of the chunked kernels runs one program per chunk of BLOCK_T positions *of one sequence*, so
a chunk never straddles two sequences and every scan is segmented by construction. As in
flash-linear-attention's varlen kernels, program i_g reads (i_n, i_c) = (its sequence, its chunk
in it) from a chunk index [G, 2]; unlike there, the index is built with a few torch ops on the
device (no .tolist(), no host sync), over a grid of G = T // BLOCK_T + N programs, an upper bound
on Σ_n cdiv(len_n, BLOCK_T) that the host knows from shapes alone. Programs past the last chunk
read (0, −1) and exit at once.

The chunks of sequence n are consecutive: ids starts[n] … starts[n] + nC_n − 1. Per-chunk
summaries (GAE maps, reward-to-go maps, moments, first generated positions) are stored at their
chunk id in [.., G] arrays, so `base = i_g − i_c` is the id of the sequence's chunk 0, exactly
as `i_b · nC` is in the padded [B, L] mode (`locate_chunk` returns it for both modes).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class Chunks(NamedTuple):
    """The chunk index of one packed stream for one chunk size."""

    index: torch.Tensor  # int32 [G, 2]: (sequence, chunk in it); (0, −1) for spare programs
    starts: torch.Tensor  # int32 [N]: chunk id of each sequence's chunk 0
    cu: torch.Tensor  # int64 [N + 1], contiguous
    grid: int  # G = T // chunk + N programs
    chunk: int  # BLOCK_T
    multi: bool  # some sequence may span several chunks (T > chunk), known without a sync


def chunk_index(cu_seqlens: torch.Tensor, T: int, chunk: int) -> Chunks:
    """Chunk index of the stream [T] split by cu_seqlens (int [N + 1]) into chunks of `chunk`.

    Σ_n cdiv(len_n, c) <= Σ_n (len_n // c + 1) <= T // c + N, so G = T // c + N programs cover
    every chunk; the spare ones exit early.
    """
    cu = cu_seqlens.to(torch.int64).contiguous()
    N = cu.numel() - 1
    counts = (cu[1:] - cu[:-1] + (chunk - 1)) // chunk
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    G = T // chunk + N
    i_g = torch.arange(G, device=cu.device)
    # right=True skips empty sequences (their end equals the previous one's)
    i_n = torch.searchsorted(ends, i_g, right=True)
    valid = i_n < N
    i_n = i_n.clamp_max(N - 1)
    i_c = torch.where(valid, i_g - starts[i_n], -1)
    index = torch.stack([torch.where(valid, i_n, 0), i_c], 1).to(torch.int32).contiguous()
    return Chunks(index, starts.to(torch.int32).contiguous(), cu, G, chunk, T > chunk)


@triton.jit
def locate_chunk(ci_ptr, cu_ptr, L, nC, BLOCK_T: tl.constexpr, VARLEN: tl.constexpr):
    """This program's chunk: (i_n, i_c, bos, T_n, nC_n, base).

    i_n: its row (padded) or sequence (VARLEN); i_c: its chunk in it, −1 for a spare VARLEN
    program (the caller returns at once); bos: int64 offset of the row's position 0 in the
    per-token tensors; T_n: the row's length (L padded, cu[n+1] − cu[n] packed); nC_n: its
    number of chunks; base: chunk id of its chunk 0 in the [.., B·nC] / [.., G] summary arrays.
    Padded grid (nC, B); VARLEN grid (G,) with the index ci_ptr int32 [G, 2], cu_ptr int64.
    """
    if VARLEN:
        i_g = tl.program_id(0)
        i_n = tl.load(ci_ptr + i_g * 2)
        i_c = tl.load(ci_ptr + i_g * 2 + 1)
        bos = tl.load(cu_ptr + i_n)
        T_n = (tl.load(cu_ptr + i_n + 1) - bos).to(tl.int32)
        nC_n = tl.cdiv(T_n, BLOCK_T)
        base = i_g - i_c
    else:
        i_c = tl.program_id(0)
        i_n = tl.program_id(1)
        bos = i_n.to(tl.int64) * L
        T_n = L
        nC_n = nC
        base = i_n * nC
    return i_n, i_c, bos, T_n, nC_n, base


def launch_args(ch: Chunks | None, dummy: torch.Tensor) -> tuple:
    """(ci_ptr, cu_ptr) kernel arguments: the index, or placeholders in the padded mode."""
    if ch is None:
        return dummy, dummy
    return ch.index, ch.cu


__all__ = ["Chunks", "chunk_index", "locate_chunk", "launch_args"]
