"""Gradients through r3hf.ops on every backend that runs here (issue 14 part 3).

KL losses (OpenRLHF's compute_approx_kl, veRL's and TRL's GRPO kl_loss) differentiate the KL
estimate with respect to the policy's log-probs. The backward of the KL path is the analytic one of
r3hf.reference.grad; other inputs get the reference's vector-Jacobian product. gradcheck uses float64
inputs; the ops compute in fp32, hence the finite-difference step and tolerances below.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import r3hf.ops as ops
from r3hf import reference
from r3hf.integrations import openrlhf

from backends_here import runnable, supports
from batches import make_batch

BACKENDS = runnable()
# gradcheck evaluates the op hundreds of times: on the torch and C++ backends. Triton (its
# interpreter here) is checked against the torch backend's gradient instead (one backward each);
# the backward itself is backend-independent (r3hf/reference/grad.py and the reference's VJP).
GRADCHECK_BACKENDS = [b for b in BACKENDS if b != "triton"]
GC = dict(eps=1e-3, atol=2e-3, rtol=2e-3)  # fp32 forward under float64 finite differences


def _lp(B, L, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(B, L, generator=gen) * 2 * scale).double()
    ref = (-torch.rand(B, L, generator=gen) * 2 * scale).double()
    return lp.requires_grad_(), ref.requires_grad_()


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "abs"])
@pytest.mark.parametrize("clamp", [None, (-0.3, 0.4)])
def test_kl_penalty_gradcheck(backend, estimator, clamp):
    lp, ref = _lp(3, 7, seed=1)
    fn = lambda a, b: ops.kl_penalty(a, b, estimator, clamp, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (lp, ref), **GC)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "abs"])
def test_kl_penalty_grad_equals_autograd_of_the_spec(backend, estimator):
    # fp32 inputs; the clamp cuts some positions so that its zero gradient is exercised.
    gen = torch.Generator().manual_seed(2)
    lp = (torch.randn(4, 33, generator=gen)).requires_grad_()
    ref = (torch.randn(4, 33, generator=gen)).requires_grad_()
    w = torch.randn(4, 33, generator=gen)
    clamp = (-0.5, 0.5)
    (ops.kl_penalty(lp, ref, estimator, clamp, backend=backend) * w).sum().backward()
    lp2, ref2 = lp.detach().clone().requires_grad_(), ref.detach().clone().requires_grad_()
    (reference.kl_penalty(lp2, ref2, estimator, clamp) * w).sum().backward()
    torch.testing.assert_close(lp.grad, lp2.grad)
    torch.testing.assert_close(ref.grad, ref2.grad)
    kl = reference.kl_penalty(lp.detach(), ref.detach(), estimator)
    outside = (kl < clamp[0]) | (kl > clamp[1])
    assert outside.any() and (lp.grad[outside] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kl_grad_has_the_input_dtype(dtype):
    lp = torch.randn(2, 5).to(dtype).requires_grad_()
    ref = torch.randn(2, 5).to(dtype)
    ops.kl_penalty(lp, ref, "k2").sum().backward()
    assert lp.grad.dtype == dtype
    torch.testing.assert_close(lp.grad.float(), (lp.float() - ref.float()).detach(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
@pytest.mark.parametrize("estimator,kl_clamp,reward_clip", [("k1", None, None), ("k3", (-0.2, 0.3), (-1.0, 1.0)),
                                                            ("abs", None, (-0.5, 0.5))])
def test_token_rewards_gradcheck(backend, estimator, kl_clamp, reward_clip):
    b = make_batch(B=3, L=9, P=3, seed=3)
    lp, ref = _lp(3, 9, seed=4)
    scores = b["scores"].double().requires_grad_()

    def fn(s, a, r):
        return ops.token_rewards(s, b["response_mask"], b["prompt_len"], logprobs=a, ref_logprobs=r, kl_coef=0.3,
                                 kl_estimator=estimator, kl_clamp=kl_clamp, reward_clip=reward_clip, beta_c=0.7,
                                 backend=backend)

    assert torch.autograd.gradcheck(fn, (scores, lp, ref), **GC)


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
def test_fused_reward_gae_gradcheck(backend):
    b = make_batch(B=2, L=6, P=2, D=5, seed=5)
    lp, ref = _lp(2, 6, seed=6)
    values = b["values"].double().requires_grad_()
    hidden = b["hidden"].double().requires_grad_()

    def fn(h, v, a, r):
        return ops.fused_reward_gae(h, b["weight"], b["bias"], v, b["response_mask"], b["prompt_len"], logprobs=a,
                                    ref_logprobs=r, kl_coef=0.2, kl_estimator="k3", gamma=0.9, lam=0.8,
                                    backend=backend)

    assert torch.autograd.gradcheck(fn, (hidden, values, lp, ref), **GC)


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
def test_gae_and_whiten_gradcheck(backend):
    b = make_batch(B=3, L=8, seed=7)
    r = b["rewards"].double().requires_grad_()
    v = b["values"].double().requires_grad_()
    mask = b["response_mask"]
    assert torch.autograd.gradcheck(lambda r, v: ops.gae(r, v, mask, 0.9, 0.8, backend=backend), (r, v), **GC)
    if supports(backend, "masked_whiten") or backend == "torch":
        x = torch.randn(3, 8, dtype=torch.float64).requires_grad_()
        m = torch.rand(3, 8) > 0.3
        assert torch.autograd.gradcheck(lambda x: ops.masked_whiten(x, m, backend=backend), (x,), **GC)


def test_no_silent_drop_warning():
    lp, ref = _lp(2, 4, seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.kl_penalty(lp, ref, "k3").sum().backward()
    assert lp.grad is not None and ref.grad is not None


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_openrlhf_compute_approx_kl_backward(estimator):
    # The adapter on the default backend, as a KL loss uses it: gradient equal to autograd of
    # OpenRLHF's expression (restated in test_integrations_openrlhf.peer_kl; clamp at ±10).
    from test_integrations_openrlhf import peer_kl

    gen = torch.Generator().manual_seed(9)
    lp = (-torch.rand(3, 11, generator=gen) * 4).requires_grad_()
    base = -torch.rand(3, 11, generator=gen) * 4
    w = torch.rand(3, 11, generator=gen)
    (openrlhf.compute_approx_kl(lp, base, estimator) * w).sum().backward()
    assert lp.grad is not None
    lp2 = lp.detach().clone().requires_grad_()
    (peer_kl(lp2, base, estimator) * w).sum().backward()
    torch.testing.assert_close(lp.grad, lp2.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_has_the_torch_backends_gradients(backend):
    b = make_batch(B=3, L=9, P=3, D=5, seed=10)
    lp, ref = _lp(3, 9, seed=11)
    lp, ref = lp.detach().float(), ref.detach().float()

    def grads(be):
        x = {k: b[k].detach().clone().requires_grad_() for k in ("hidden", "values", "scores", "rewards")}
        a, r = lp.clone().requires_grad_(), ref.clone().requires_grad_()
        kl = ops.kl_penalty(a, r, "k3", (-0.2, 0.3), backend=be)
        tr = ops.token_rewards(x["scores"], b["response_mask"], b["prompt_len"], logprobs=a, ref_logprobs=r,
                               kl_coef=0.3, kl_estimator="k2", reward_clip=1.0, backend=be)
        fused = ops.fused_reward_gae(x["hidden"], b["weight"], b["bias"], x["values"], b["response_mask"],
                                     b["prompt_len"], logprobs=a, ref_logprobs=r, kl_coef=0.2, gamma=0.9, lam=0.8,
                                     backend=be)
        adv, ret = ops.gae(x["rewards"], x["values"], b["response_mask"], 0.9, 0.8, backend=be)
        loss = kl.sum() + (tr * 1.5).sum() + sum((t * (i + 1)).sum() for i, t in enumerate(fused)) + adv.sum()
        loss.backward()
        return [a.grad, r.grad] + [x[k].grad for k in ("hidden", "values", "scores", "rewards")]

    for got, want in zip(grads(backend), grads("torch")):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _verl_kl_penalty_transcribed(logprob, ref_logprob, name):
    # veRL 0.9.1 core_algos.kl_penalty, restated for its gradient (the real one is compared below when
    # veRL is installed, as in CI's 40-verl step).
    base = name[:-1] if name.endswith("+") else name
    d = logprob - ref_logprob
    if base in ("kl", "k1"):
        fwd = d
    elif base == "abs":
        fwd = d.abs()
    elif base in ("mse", "k2"):
        fwd = 0.5 * d.square()
    else:
        kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
        fwd = torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    if not name.endswith("+") or name in ("mse", "k2"):
        return fwd
    back = 0.5 * d.square()
    return back - back.detach() + fwd.detach()


@pytest.mark.parametrize("name", ["kl", "abs", "mse", "low_var_kl", "k1+", "k3+", "low_var_kl+", "k2+"])
def test_verl_kl_penalty_backward(name):
    from r3hf.integrations import verl as verl_adapter

    gen = torch.Generator().manual_seed(12)
    lp = (-torch.rand(3, 13, generator=gen) * 6).requires_grad_()
    ref = -torch.rand(3, 13, generator=gen) * 6
    w = torch.rand(3, 13, generator=gen)
    peers = [_verl_kl_penalty_transcribed]
    try:
        from verl.trainer.ppo.core_algos import kl_penalty as real
        peers.append(real)
    except ImportError:
        pass
    (verl_adapter.kl_penalty(lp, ref, name) * w).sum().backward()
    for peer in peers:
        lp2 = lp.detach().clone().requires_grad_()
        (peer(lp2, ref, name) * w).sum().backward()
        torch.testing.assert_close(lp.grad, lp2.grad)
