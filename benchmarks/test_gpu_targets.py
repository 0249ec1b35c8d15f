"""pytest-benchmark cases behind the GPU targets of the Triton backend (run by gpu_check.py).

Each target is a ratio of two benchmarks of this file timed in the same run:
- fused_reward_gae on bf16 hidden [64, 4096, 4096] vs a device-to-device copy of a tensor of
  the same size (bandwidth = bytes the fused op must read / time, copy = 2 x bytes / time),
  both timed as 5 back-to-back calls per round (device throughput);
- gae at B=256, T=16384 vs a veRL-style Python loop over positions (the same shape, run in full);
- gae vs a one-program-per-row serial walk (ReaLHF cugae's design, written here as a Triton
  kernel) at B=8, T=16384.
The GAE cases time one call and a sync per round (latency, host overhead included).
R3HF_GPU_CHECK_SIZE=dry shrinks every shape so the file runs on CPU under the interpreter
(`gpu_check.py --dry-run`): that checks the code paths, not the speed.
"""

from __future__ import annotations

import os

import pytest
import torch

import r3hf.ops as ops
from r3hf.bench.baselines import verl_style_gae

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

DRY = os.environ.get("R3HF_GPU_CHECK_SIZE", "full") == "dry"
CUDA = torch.cuda.is_available()
if not CUDA and not DRY:
    pytest.skip("GPU targets need CUDA (R3HF_GPU_CHECK_SIZE=dry runs them tiny on CPU)", allow_module_level=True)
DEV = torch.device("cuda" if CUDA else "cpu")

# (B, S, D, prompt_len) of the fused case; (B, T) of the GAE cases.
FUSED = (2, 40, 32, 8) if DRY else (64, 4096, 4096, 256)
GAE_BIG = (4, 64) if DRY else (256, 16384)
GAE_FEW = (2, 64) if DRY else (8, 16384)
ROUNDS = 2 if DRY else 20
REPS = 5  # back-to-back calls per round in the bandwidth benchmarks (see run)


def sync():
    if CUDA:
        torch.cuda.synchronize()


def run(benchmark, fn, rounds=ROUNDS, reps=1, **info):
    """Time `reps` back-to-back calls then one sync per round. reps > 1 measures device
    throughput (the host work of one call overlaps the device work of the previous one, as in a
    training step); the per-call time is the median / reps."""
    benchmark.extra_info.update(info, reps=reps)

    def call():
        for _ in range(reps):
            fn()
        sync()

    benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)


# --- baselines ----------------------------------------------------------------------------


@triton.jit
def _serial_gae_kernel(r_ptr, v_ptr, m_ptr, adv_ptr, ret_ptr, L, gamma, lam):
    # One program walks one whole row backwards, one position at a time (cugae's design).
    i_b = tl.program_id(0)
    a = tl.zeros((), tl.float32)
    vn = tl.zeros((), tl.float32)
    for k in range(0, L):
        t = i_b * L + (L - 1 - k)
        r = tl.load(r_ptr + t)
        v = tl.load(v_ptr + t)
        m = tl.load(m_ptr + t) != 0
        a = tl.where(m, r + gamma * vn - v + gamma * lam * a, a)
        vn = tl.where(m, v, vn)
        tl.store(adv_ptr + t, tl.where(m, a, 0.0))
        tl.store(ret_ptr + t, tl.where(m, a + v, 0.0))


def serial_gae(r, v, m8, gamma, lam):
    B, L = r.shape
    adv = torch.empty_like(r)
    ret = torch.empty_like(r)
    _serial_gae_kernel[(B,)](r, v, m8, adv, ret, L, gamma, lam, num_warps=1)
    return adv, ret


def gae_inputs(B, T, seed):
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(B, T, generator=gen).to(DEV)
    v = torch.randn(B, T, generator=gen).to(DEV)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=gen)
    m = (torch.arange(T)[None] < lengths[:, None]) & (torch.rand(B, T, generator=gen) > 0.05)
    return r, v, m.to(DEV)


# --- the targets --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fused_inputs():
    B, S, D, P = FUSED
    gen = torch.Generator(device=DEV).manual_seed(0)
    hidden = torch.randn(B, S, D, generator=gen, device=DEV, dtype=torch.bfloat16)
    L = S - P
    weight = (torch.randn(D, generator=gen, device=DEV) / D**0.5).to(torch.bfloat16)
    values = torch.randn(B, L, generator=gen, device=DEV)
    mask = torch.ones(B, L, dtype=torch.bool, device=DEV)
    logprobs = -torch.rand(B, L, generator=gen, device=DEV)
    ref = -torch.rand(B, L, generator=gen, device=DEV)
    return dict(hidden=hidden, weight=weight, values=values, mask=mask, P=P, logprobs=logprobs, ref=ref)


def test_copy_bandwidth(benchmark, fused_inputs):
    src = fused_inputs["hidden"]
    dst = torch.empty_like(src)
    nbytes = src.numel() * src.element_size()
    run(benchmark, lambda: dst.copy_(src), reps=REPS, case="copy", bytes_moved=2 * nbytes)
    assert torch.equal(dst, src)


def test_fused_bandwidth(benchmark, fused_inputs):
    x = fused_inputs
    B, S, D = x["hidden"].shape
    L = x["values"].shape[1]

    def fused():
        return ops.fused_reward_gae(x["hidden"], x["weight"], 0.1, x["values"], x["mask"], x["P"],
                                    logprobs=x["logprobs"], ref_logprobs=x["ref"], kl_coef=0.05, kl_estimator="k3",
                                    gamma=1.0, lam=0.95, backend="triton")

    fused()  # compile and autotune outside the timed rounds
    # Bytes the op must read: hidden rows p − 1 … p + L − 1 of every row, plus the [B, L] tensors.
    need = B * (L + 1) * D * x["hidden"].element_size() + B * L * (4 * 3 + 1) + B * L * 4 * 3
    run(benchmark, fused, reps=REPS, case="fused", bytes_moved=need, shape=[B, S, D])


@pytest.mark.parametrize("which", ["triton", "verl_loop"])
def test_gae_vs_python_loop(benchmark, which):
    B, T = GAE_BIG
    r, v, m = gae_inputs(B, T, 1)
    if which == "triton":
        fn = lambda: ops.gae(r, v, m, 1.0, 0.95, backend="triton")  # noqa: E731
        fn()
        run(benchmark, fn, case="gae_big", B=B, T=T)
    else:
        a, g = verl_style_gae(r, v, m, 1.0, 0.95)
        ra, rg = ops.gae(r, v, m, 1.0, 0.95, backend="torch")
        # the baseline computes the same thing (it leaves its carried advantage at masked positions)
        torch.testing.assert_close(torch.where(m != 0, a, 0.0), ra, rtol=1e-4, atol=1e-4)
        # The loop is launch-bound (~6 small kernels per position): 2 full rounds at the full T.
        run(benchmark, lambda: verl_style_gae(r, v, m, 1.0, 0.95), rounds=2, case="gae_big_verl_loop", B=B, T=T)


@pytest.mark.parametrize("which", ["triton", "serial_per_row"])
def test_gae_vs_serial_per_row(benchmark, which):
    B, T = GAE_FEW
    r, v, m = gae_inputs(B, T, 2)
    if which == "triton":
        fn = lambda: ops.gae(r, v, m, 0.99, 0.95, backend="triton")  # noqa: E731
    else:
        m8 = m.view(torch.uint8)
        fn = lambda: serial_gae(r, v, m8, 0.99, 0.95)  # noqa: E731
    a, g = fn()
    ra, rg = ops.gae(r, v, m, 0.99, 0.95, backend="torch")
    torch.testing.assert_close(a, ra, rtol=1e-4, atol=1e-4)
    run(benchmark, fn, case=f"gae_few_{which}", B=B, T=T)
