"""Shared pieces of r3hf's Triton kernels: interpreter detection, launch configs, chunk sizes,
and the scan direction switch.

Environment variables (also listed in docs/triton.md):

- TRITON_INTERPRET=1 — read by Triton when a kernel is decorated (so it must be set before
  `r3hf.kernels` is imported): kernels then run on the CPU through Triton's interpreter. One
  launch config is used then, since autotuning over several configs needs a GPU.
- R3HF_TRITON_SCAN=flip|reverse — how the backward (GAE-direction) scans run. "flip" (default)
  loads each chunk in reverse order and runs a forward `tl.associative_scan`; "reverse" loads it in
  natural order and uses `reverse=True`. Both give the same results where Triton is correct;
  "flip" is the default because Triton issue #4362 reported wrong reverse scans on GPU (3.0).
- R3HF_TRITON_AUTOTUNE=0 — read at import: use one GPU config per kernel instead of autotuning
  (each autotuned kernel variant compiles every config; the GPU check's test steps set this so
  that many small test shapes do not spend minutes compiling).
- R3HF_TRITON_CHUNK=N — positions per program along L (a power of two >= 16); read at call
  time. Tests use a small value to cross chunk boundaries with short rows.
"""

from __future__ import annotations

import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
AUTOTUNE = os.environ.get("R3HF_TRITON_AUTOTUNE", "1") != "0"


def _fix_interpreter_index() -> None:
    """Triton <= 3.6's interpreter turns a scalar tensor into a Python int with `int(data)`, where
    data is a 1-element 1-D array; NumPy >= 2.4 refuses that ("only 0-dimensional arrays can be
    converted"), so every loop with a run-time bound (`range(0, n, BLOCK)`) fails on CPU. Triton
    3.7 squeezes first; do the same for older releases. Interpreter only: compiled kernels never
    run this code."""
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_r3hf_squeezed", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(())))

    patch_lang_tensor._r3hf_squeezed = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if INTERPRET:
    _fix_interpreter_index()


def flip_scans() -> bool:
    mode = os.environ.get("R3HF_TRITON_SCAN", "flip")
    if mode not in ("flip", "reverse"):
        raise ValueError(f"R3HF_TRITON_SCAN must be 'flip' or 'reverse', got {mode!r}")
    return mode == "flip"


def configs(gpu: list, interpret: triton.Config) -> list:
    """The autotune set on a GPU (its first config alone with R3HF_TRITON_AUTOTUNE=0); the single
    `interpret` config under TRITON_INTERPRET=1."""
    if INTERPRET:
        return [interpret]
    return gpu if AUTOTUNE else gpu[:1]


def _env_chunk() -> int | None:
    raw = os.environ.get("R3HF_TRITON_CHUNK")
    if not raw:
        return None
    n = int(raw)
    if n < 16 or n & (n - 1):
        raise ValueError(f"R3HF_TRITON_CHUNK must be a power of two >= 16, got {n}")
    return n


def gae_chunk(B: int, L: int) -> int:
    """Positions per program for the GAE scans: enough programs to fill a GPU when B is small."""
    env = _env_chunk()
    if env:
        return env
    if INTERPRET:  # the interpreter pays per program, not per element
        return max(16, min(1024, triton.next_power_of_2(max(L, 1))))
    # ~512+ programs in all (several per SM on an H100/H200), chunks of 64..1024 positions.
    target = triton.next_power_of_2(max(1, (B * L) // 512))
    return max(64, min(1024, target))


def varlen_chunk(T: int, N: int) -> int:
    """Positions per program for the packed (cu_seqlens) scans over a stream of T positions in N
    sequences: as gae_chunk for the total, but no longer than about twice the mean sequence, since
    a chunk never holds two sequences (lanes past a short sequence's end idle)."""
    env = _env_chunk()
    if env:
        return env
    mean = triton.next_power_of_2(max(1, 2 * T // max(N, 1)))
    if INTERPRET:
        return max(16, min(1024, mean))
    return max(64, min(1024, triton.next_power_of_2(max(1, T // 512)), mean))


def reward_chunk(B: int, L: int) -> int:
    """Positions per program for token_rewards / fused_reward_gae (a [chunk, BLOCK_D] hidden tile)."""
    env = _env_chunk()
    if env:
        return env
    if INTERPRET:
        return max(16, min(256, triton.next_power_of_2(max(L, 1))))
    return 64
