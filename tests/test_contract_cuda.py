"""The ops contract on CUDA (run by benchmarks/gpu_check.py when a GPU is lent; skipped here):
torch.compile(fullgraph=True) of every op and of the rollout-to-advantages function, no host sync
under torch.cuda.set_sync_debug_mode("error") for every argument form (int / CPU-tensor /
CUDA-tensor prompt_len, float / tensor bias), CUDA-graph capture, gradients, and the native
masked_whiten (Triton) against the reference.
"""

from __future__ import annotations

import pytest
import torch

import r3hf.ops as ops

from test_compile import CASES, rollout_to_advantages
from batches import make_batch

CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]


def _batch(prompt_form: str, seed=0):
    b = make_batch(B=8, L=300, P=6, D=64, seed=seed, per_row_prompt=prompt_form != "int", device="cuda")
    if prompt_form == "cpu-tensor":
        b["prompt_len"] = b["prompt_len"].cpu()
    b["mask_f"] = b["response_mask"].float()
    b["response_mask"][:, 0] = True  # every row generates (group estimators need tokens in each group)
    b["index"] = torch.arange(8, device="cuda") % 3
    return b


class _NoSync:
    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("prompt_form", ["int", "cpu-tensor", "cuda-tensor"])
@pytest.mark.parametrize("op", sorted(CASES))
def test_eager_ops_never_sync(op, prompt_form):
    b = _batch(prompt_form)
    CASES[op](b)  # warm-up: Triton compiles, allocator caches
    with _NoSync():
        CASES[op](b)


@pytest.mark.parametrize("prompt_form", ["int", "cuda-tensor"])
def test_rollout_compiled_fullgraph_no_sync(prompt_form):
    torch._dynamo.reset()
    b = _batch(prompt_form, seed=1)
    args = (b["hidden"], b["weight"], b["values"], b["response_mask"], b["prompt_len"], b["logprobs"],
            b["ref_logprobs"])
    compiled = torch.compile(rollout_to_advantages, fullgraph=True)
    want = rollout_to_advantages(*args)
    got = compiled(*args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    with _NoSync():
        compiled(*args)


@pytest.mark.parametrize("op", sorted(CASES))
def test_each_op_compiles_fullgraph_on_cuda(op):
    torch._dynamo.reset()
    b = _batch("cuda-tensor", seed=2)
    got = torch.compile(CASES[op], fullgraph=True)(b)
    want = CASES[op](b)
    # Bitwise, except the position mode: its Triton tables are float64 atomics, whose order (and so the
    # last bits of the sums of squares behind grpo's per-position std) differs from run to run.
    tol = dict(rtol=1e-6, atol=1e-6) if "[position]" in op else dict(rtol=0, atol=0)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(g, w, **tol)


def test_cuda_graph_capture_of_the_rollout():
    b = _batch("cuda-tensor", seed=3)
    args = (b["hidden"], b["weight"], b["values"], b["response_mask"], b["prompt_len"], b["logprobs"],
            b["ref_logprobs"])
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            rollout_to_advantages(*args)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = rollout_to_advantages(*args)
    graph.replay()
    torch.cuda.synchronize()
    for g, w in zip(out, rollout_to_advantages(*args)):
        torch.testing.assert_close(g, w)


def test_kl_grad_on_cuda_no_sync():
    b = _batch("cuda-tensor", seed=4)
    lp = b["logprobs"].clone().requires_grad_()
    ops.kl_penalty(lp, b["ref_logprobs"], "k3", 10.0).sum().backward()  # warm-up
    lp.grad = None
    with _NoSync():
        ops.kl_penalty(lp, b["ref_logprobs"], "k3", 10.0).sum().backward()
    torch.testing.assert_close(lp.grad, -torch.expm1(-(lp - b["ref_logprobs"])).detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("transform_masked,eps_mode,unbiased", [(False, "add", True), (True, "max", False)])
def test_triton_masked_whiten_cuda(dtype, transform_masked, eps_mode, unbiased):
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(64, 4097, generator=gen) * 3 + 1).to(dtype).cuda()
    m = (torch.rand(64, 4097, generator=gen) > 0.3).cuda()
    kw = dict(transform_masked=transform_masked, eps_mode=eps_mode, unbiased=unbiased)
    got = ops.masked_whiten(x, m, **kw, backend="triton")
    want = ops.masked_whiten(x, m, **kw, backend="torch")
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert torch.equal(got, ops.masked_whiten(x, m, **kw, backend="triton"))  # run-to-run deterministic
