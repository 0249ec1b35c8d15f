"""The public API's contract on every backend that runs here: inputs untouched, float32 out,
non-contiguous equal to contiguous, and dispatch that reports what it chose."""

import hashlib

import pytest
import torch

import r3hf.ops as ops
from backends_here import runnable, supports
from batches import make_batch


BACKENDS = runnable()


def calls(b, backend):
    kl = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, kl_estimator="k3", kl_clamp=5.0)
    common = (b["response_mask"], b["prompt_len"])
    return {
        "prefix_scores": lambda: ops.prefix_scores(b["hidden"], b["weight"], b["bias"], backend=backend),
        "redistribute": lambda: ops.redistribute(b["scores"], *common, beta_c=0.7, backend=backend),
        "kl_penalty": lambda: ops.kl_penalty(b["logprobs"], b["ref_logprobs"], "k2", (-1, 2), backend=backend),
        "token_rewards": lambda: ops.token_rewards(b["scores"], *common, reward_clip=1.0, **kl, backend=backend),
        "gae": lambda: ops.gae(b["rewards"], b["values"], b["response_mask"], 0.99, 0.9, 0.5, backend=backend),
        "masked_whiten": lambda: ops.masked_whiten(b["values"], b["response_mask"], backend=backend),
        "fused_reward_gae": lambda: ops.fused_reward_gae(
            b["hidden"], b["weight"], b["bias"], b["values"], *common, gamma=0.99, lam=0.9, **kl, backend=backend
        ),
        "reward_to_go": lambda: ops.reward_to_go(b["rewards"], b["response_mask"], 0.9, holes="discount", backend=backend),
        "group_advantages": lambda: ops.group_advantages(
            b["rewards"], b["response_mask"], torch.tensor([5, 2, 5]), "grpo_process", gamma=0.99, backend=backend
        ),
        "fused_reward_group_advantages": lambda: ops.fused_reward_group_advantages(
            b["hidden"], b["weight"], b["bias"], *common, torch.tensor([5, 2, 5]), "rloo", gamma=0.99, **kl,
            backend=backend
        ),
    }


def _supported(op, backend):
    return supports(backend, op)


def _digest(b):
    h = hashlib.sha256()
    for k in sorted(b):
        v = b[k]
        if isinstance(v, torch.Tensor):
            h.update(k.encode() + str(v.dtype).encode() + str(v.stride()).encode())
            h.update(v.contiguous().view(torch.uint8).numpy().tobytes() if v.dtype != torch.bool else v.numpy().tobytes())
    return h.hexdigest()


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", list(calls(make_batch(B=1, L=1), "torch")))
def test_inputs_untouched_and_float32_out(backend, dtype, op):
    if not _supported(op, backend):
        pytest.skip(f"{backend} does not implement {op}")
    b = make_batch(B=3, L=9, P=3, D=8, dtype=dtype, seed=7)
    before = _digest(b)
    for out in _outputs(calls(b, backend)[op]()):
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
    assert _digest(b) == before


def _non_contiguous(t):
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        return t
    # Same values, transposed storage: a view whose strides are not row-major.
    wide = torch.empty(t.shape[::-1], dtype=t.dtype).copy_(t.permute(*reversed(range(t.dim()))))
    view = wide.permute(*reversed(range(t.dim())))
    assert torch.equal(view, t) and (t.dim() < 2 or not view.is_contiguous())
    return view


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(calls(make_batch(B=1, L=1), "torch")))
def test_non_contiguous_equals_contiguous(backend, op):
    if not _supported(op, backend):
        pytest.skip(f"{backend} does not implement {op}")
    b = make_batch(B=3, L=9, P=3, D=8, seed=8)
    nb = {k: _non_contiguous(v) for k, v in b.items()}
    for x, y in zip(_outputs(calls(b, backend)[op]()), _outputs(calls(nb, backend)[op]())):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_mask_dtypes_are_equivalent():
    b = make_batch(B=3, L=9, P=3, D=8, seed=9)
    m = b["response_mask"]
    outs = [ops.redistribute(b["scores"], mm, b["prompt_len"]) for mm in (m, m.long(), m.float(), m.to(torch.uint8))]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_prompt_len_int_equals_tensor():
    b = make_batch(B=3, L=9, P=3, D=8, seed=10, per_row_prompt=False)
    a = ops.redistribute(b["scores"], b["response_mask"], 3)
    t = ops.redistribute(b["scores"], b["response_mask"], torch.tensor([3, 3, 3], dtype=torch.int32))
    assert torch.equal(a, t)


def test_backends_report():
    report = ops.backends()
    assert report["torch"]["available"]
    for op in ("prefix_scores", "redistribute", "kl_penalty", "token_rewards", "gae", "masked_whiten", "fused_reward_gae",
               "reward_to_go", "group_advantages", "fused_reward_group_advantages"):
        assert report["ops"][op]["cpu"] in ("torch", "cpp")
    for name in ("cpp", "triton"):
        if not report[name]["available"]:
            assert report[name]["detail"]
            assert report["why_not"]["cpu"][name]


def test_explicit_torch_backend_is_the_reference():
    import r3hf.reference as ref

    b = make_batch(B=2, L=5, P=2, D=4, seed=11)
    adv, ret = ops.gae(b["rewards"], b["values"], b["response_mask"], backend="torch")
    adv2, ret2 = ref.gae(b["rewards"], b["values"], b["response_mask"], 1.0, 0.95, None)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)


def test_empty_batch():
    adv, ret = ops.gae(torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool))
    assert adv.shape == (0, 5) and ret.shape == (0, 5)
    r = ops.redistribute(torch.zeros(0, 7), torch.zeros(0, 5, dtype=torch.bool), torch.zeros(0, dtype=torch.long) + 1)
    assert r.shape == (0, 5)
