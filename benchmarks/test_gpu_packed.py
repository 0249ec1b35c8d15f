"""pytest-benchmark cases of the Triton backend on packed sequences (cu_seqlens, issue 16), run by
gpu_check.py's packed step.

The same tokens two ways: the packed stream (ops.<op>(..., cu_seqlens=cu, backend="triton")) and
the padded batch that holds the same sequences ([N, longest] rows, prompt_len_i = s_i − cu[i],
the padded op with backend="triton"; and, for the fused op, the pad → padded op → unpack round trip
a packed trainer would otherwise run). Sequence lengths are uniform in [2, 4096] or lognormal
(median 1024 tokens·e^−0.5, σ = 1, at most 32768: a long tail); each sequence's prompt is a quarter
of it, at most 64 tokens. Bandwidth = the bytes the op must move / time, against a device copy of
the packed hidden states (2 × bytes / time) in the same run.

Each case checks the packed result against the padded one before timing. R3HF_GPU_CHECK_SIZE=dry
shrinks every shape so the file runs on CPU under the interpreter (gpu_check.py --dry-run).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import r3hf.ops as ops

pytest.importorskip("triton")

DRY = os.environ.get("R3HF_GPU_CHECK_SIZE", "full") == "dry"
CUDA = torch.cuda.is_available()
if not CUDA and not DRY:
    pytest.skip("GPU benchmarks need CUDA (R3HF_GPU_CHECK_SIZE=dry runs them tiny on CPU)", allow_module_level=True)
DEV = torch.device("cuda" if CUDA else "cpu")

# N sequences of the fused and of the light cases per length distribution (multiples of the group
# sizes 4 and 8), and the hidden size D.
FUSED_N = {"uniform": 4, "lognormal": 8} if DRY else {"uniform": 64, "lognormal": 128}
LIGHT_N = {"uniform": 8, "lognormal": 8} if DRY else {"uniform": 1024, "lognormal": 2048}
D = 16 if DRY else 4096
MAX_LEN = 40 if DRY else 4096
TAIL_MAX = 64 if DRY else 32768
ROUNDS = 1 if DRY else 20
REPS = 1 if DRY else 5  # back-to-back calls per round (device throughput, as test_gpu_targets.py)
DISTS = ["uniform", "lognormal"]


def sync():
    if CUDA:
        torch.cuda.synchronize()


def run(benchmark, fn, reps=REPS, **info):
    benchmark.extra_info.update(info, reps=reps)

    def call():
        for _ in range(reps):
            fn()
        sync()

    # dry run: no warm-up (nothing to compile under the interpreter; one call checks the plumbing)
    benchmark.pedantic(call, rounds=ROUNDS, warmup_rounds=0 if DRY else 1, iterations=1)


def lengths(dist: str, N: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dist == "uniform":
        return torch.randint(2, MAX_LEN + 1, (N,), generator=gen)
    mu = math.log(MAX_LEN // 4) - 0.5
    x = torch.exp(mu + torch.randn(N, generator=gen))
    return x.round().clamp(2, TAIL_MAX).long()


class Batch:
    """A packed stream and its padded twin (the same sequences, the same values)."""

    def __init__(self, dist: str, N: int, seed: int, hidden: bool):
        lens = lengths(dist, N, seed)
        prompt = (lens // 4).clamp(1, 64)
        self.cu = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)]).to(DEV)
        self.T = int(lens.sum())
        self.N = N
        starts = self.cu[:-1]
        self.prompt_len = prompt.to(DEV)
        resp = (lens - prompt).to(DEV)
        self.L = int(resp.max())
        self.S = int(prompt.max()) + self.L
        pos = torch.arange(self.T, device=DEV)
        self.seq = torch.searchsorted(self.cu[1:], pos, right=True)
        self.local = pos - starts[self.seq]
        self.mask = self.local >= self.prompt_len[self.seq]  # prompt, then every response token generated
        gen = torch.Generator(device=DEV).manual_seed(seed)
        self.values = torch.randn(self.T, generator=gen, device=DEV)
        self.rewards = torch.randn(self.T, generator=gen, device=DEV)
        self.logprobs = -torch.rand(self.T, generator=gen, device=DEV)
        self.ref = -torch.rand(self.T, generator=gen, device=DEV)
        self.scores = torch.randn(self.T, generator=gen, device=DEV)
        self.n_resp = int(resp.sum())
        if hidden:
            self.hidden = torch.randn(self.T, D, generator=gen, device=DEV, dtype=torch.bfloat16)
            self.weight = (torch.randn(D, generator=gen, device=DEV) / D**0.5).to(torch.bfloat16)

    # padding (rows = sequences)
    def pad_stream(self, x):
        out = x.new_zeros((self.N, self.S, *x.shape[1:]))
        out[self.seq, self.local] = x
        return out

    def pad_resp(self, x):
        out = x.new_zeros((self.N, self.L))
        j = self.local - self.prompt_len[self.seq]
        keep = j >= 0
        out[self.seq[keep], j[keep]] = x[keep]
        return out

    def unpack(self, y):
        j = self.local - self.prompt_len[self.seq]
        keep = j >= 0
        out = torch.zeros(self.T, dtype=y.dtype, device=y.device)
        out[keep] = y[self.seq[keep], j[keep]]
        return out


def close(packed, padded, b, tol=1e-3):
    packed = packed if isinstance(packed, tuple) else (packed,)
    padded = padded if isinstance(padded, tuple) else (padded,)
    for p, q in zip(packed, padded):
        torch.testing.assert_close(p, b.unpack(q), rtol=tol, atol=tol)


# --- fused: packed vs padded vs pad/call/unpack, and copy bandwidth -----------------------------


@pytest.fixture(scope="module", params=DISTS)
def fused_batch(request):
    b = Batch(request.param, FUSED_N[request.param], 7, hidden=True)
    b.dist = request.param
    return b


def fused_need(b) -> int:
    """Bytes the fused op must move: the hidden rows of every response token and the row before it,
    values, logprobs, ref_logprobs and the mask read, three fp32 outputs written, over the stream."""
    rows = b.n_resp + b.N
    return rows * D * b.hidden.element_size() + b.T * (4 * 3 + 1) + b.T * 4 * 3


def test_copy_packed(benchmark, fused_batch):
    b = fused_batch
    dst = torch.empty_like(b.hidden)
    nbytes = b.hidden.numel() * b.hidden.element_size()
    run(benchmark, lambda: dst.copy_(b.hidden), case=f"packed_copy_{b.dist}", bytes_moved=2 * nbytes, T=b.T, N=b.N)
    assert torch.equal(dst, b.hidden)


@pytest.mark.parametrize("layout", ["packed", "padded", "pad_call_unpack"])
def test_fused_reward_gae(benchmark, fused_batch, layout):
    b = fused_batch
    kl = dict(kl_coef=0.05, kl_estimator="k3")
    if layout == "packed":
        def fn():
            return ops.fused_reward_gae(b.hidden, b.weight, 0.1, b.values, b.mask, logprobs=b.logprobs,
                                        ref_logprobs=b.ref, **kl, cu_seqlens=b.cu, backend="triton")
    else:
        hp, vp, mp = b.pad_stream(b.hidden), b.pad_resp(b.values), b.pad_resp(b.mask)
        lp, rp = b.pad_resp(b.logprobs), b.pad_resp(b.ref)

        def padded(h=hp, v=vp, lpp=lp, rpp=rp):
            return ops.fused_reward_gae(h, b.weight, 0.1, v, mp, b.prompt_len, logprobs=lpp, ref_logprobs=rpp,
                                        **kl, backend="triton")

        if layout == "padded":
            fn = padded
        else:  # what a packed trainer runs without cu_seqlens support
            def fn():
                out = padded(b.pad_stream(b.hidden), b.pad_resp(b.values), b.pad_resp(b.logprobs),
                             b.pad_resp(b.ref))
                return tuple(b.unpack(o) for o in out)
        got = padded()
        want = ops.fused_reward_gae(b.hidden, b.weight, 0.1, b.values, b.mask, logprobs=b.logprobs,
                                    ref_logprobs=b.ref, **kl, cu_seqlens=b.cu, backend="triton")
        close(want, got, b, tol=2e-2)
    fn()  # compile and autotune outside the timed rounds
    run(benchmark, fn, case=f"{layout}_fused_{b.dist}", bytes_moved=fused_need(b), T=b.T, N=b.N, S=b.S)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_fused_group(benchmark, fused_batch, layout):
    b = fused_batch
    if layout == "packed":
        def fn():
            return ops.fused_reward_group_advantages(b.hidden, b.weight, 0.1, b.mask, None, 4, "grpo",
                                                     cu_seqlens=b.cu, backend="triton")
    else:
        hp, mp = b.pad_stream(b.hidden), b.pad_resp(b.mask)

        def fn():
            return ops.fused_reward_group_advantages(hp, b.weight, 0.1, mp, b.prompt_len, 4, "grpo",
                                                     backend="triton")
        want = ops.fused_reward_group_advantages(b.hidden, b.weight, 0.1, b.mask, None, 4, "grpo",
                                                 cu_seqlens=b.cu, backend="triton")
        close(want, fn(), b, tol=2e-2)
    fn()
    need = (b.n_resp + b.N) * D * b.hidden.element_size() + b.T * 1 + b.T * 4 * 2
    run(benchmark, fn, case=f"{layout}_fused_group_{b.dist}", bytes_moved=need, T=b.T, N=b.N, S=b.S)


# --- the light ops: packed vs padded on the same tokens ---------------------------------------

LIGHT = {  # op: (bytes moved per stream position, call)
    "gae": (4 * 2 + 1 + 4 * 2, lambda b, x: ops.gae(x["rewards"], x["values"], x["mask"], 0.99, 0.95, **x["kw"],
                                                    backend="triton")),
    "token_rewards": (4 * 3 + 1 + 4, lambda b, x: ops.token_rewards(
        x["scores"], x["mask"], x["prompt_len"], logprobs=x["logprobs"], ref_logprobs=x["ref"], kl_coef=0.05,
        **x["kw"], backend="triton")),
    "reward_to_go": (4 + 1 + 4, lambda b, x: ops.reward_to_go(x["rewards"], x["mask"], 0.99, **x["kw"],
                                                              backend="triton")),
    "group_advantages": (4 + 1 + 4, lambda b, x: ops.group_advantages(x["rewards"], x["mask"], 8, "grpo",
                                                                      **x["kw"], backend="triton")),
    "masked_whiten": (4 + 1 + 4, lambda b, x: ops.masked_whiten(x["values"], x["mask"], transform_masked=True,
                                                                **x["kw"], backend="triton")),
}


@pytest.fixture(scope="module", params=DISTS)
def light_batch(request):
    b = Batch(request.param, LIGHT_N[request.param], 11, hidden=False)
    b.dist = request.param
    return b


def light_args(b, layout):
    if layout == "packed":
        return dict(rewards=b.rewards, values=b.values, mask=b.mask, scores=b.scores, logprobs=b.logprobs, ref=b.ref,
                    prompt_len=None, kw=dict(cu_seqlens=b.cu))
    return dict(rewards=b.pad_resp(b.rewards), values=b.pad_resp(b.values), mask=b.pad_resp(b.mask),
                scores=b.pad_stream(b.scores), logprobs=b.pad_resp(b.logprobs), ref=b.pad_resp(b.ref),
                prompt_len=b.prompt_len, kw={})


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("op", list(LIGHT))
def test_light(benchmark, light_batch, op, layout):
    b = light_batch
    per_pos, call = LIGHT[op]
    x = light_args(b, layout)
    fn = lambda: call(b, x)  # noqa: E731
    got = fn()
    if layout == "padded":  # (whiten's transform_masked fills the padding too: unpack drops it)
        close(call(b, light_args(b, "packed")), got, b)
    run(benchmark, fn, case=f"{layout}_{op}_{b.dist}", bytes_moved=per_pos * b.T, T=b.T, N=b.N, S=b.S)
