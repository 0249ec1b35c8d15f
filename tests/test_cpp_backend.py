"""The C++ backend (r3hf._C, backend="cpp") against the torch reference (backend="torch").

In CI the extension is built, so a missing r3hf._C fails here unless R3HF_NO_EXT=1 is set.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

import r3hf.ops as ops
from batches import TOLERANCES, make_batch

if os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1: the C++ extension is deliberately not built", allow_module_level=True)

from r3hf.backends import cpp  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LENGTHS = [1, 47, 1000]


def test_extension_is_built_and_chosen():
    import r3hf._C  # noqa: F401  (fails the suite when the extension was not built)

    assert cpp._C is not None, cpp._LOAD_ERROR
    info = ops.backends()
    assert info["cpp"]["available"]
    assert info["cpp"]["build"]["built"] and info["cpp"]["build"]["cpu"]
    assert info["cpp"]["build"]["torch_version"] == torch.__version__
    for op in cpp.OPS:
        assert info["ops"][op]["cpu"] == "cpp", op


def close(actual, expected, dtype):
    rtol, atol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def both(fn, *args, **kwargs):
    return fn(*args, **kwargs, backend="cpp"), fn(*args, **kwargs, backend="torch")


def batch(L, dtype, seed=0, B=4, D=24, **kw):
    return make_batch(B=B, L=L, D=D, dtype=dtype, seed=seed + L, **kw)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("L", LENGTHS)
def test_prefix_scores(dtype, L):
    b = batch(L, dtype, D=37)
    for bias in (None, b["bias"], torch.tensor([0.25], dtype=dtype)):
        got, want = both(ops.prefix_scores, b["hidden"], b["weight"], bias)
        close(got, want, dtype)
    got, want = both(ops.prefix_scores, b["hidden"], b["weight"][None, :])  # HF [1, D] weight
    close(got, want, dtype)


@pytest.mark.parametrize("first,beta_c", [("prompt", 1.0), ("zero", 1.0), ("prompt", 0.5), ("zero", 0.0)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", LENGTHS)
def test_redistribute(first, beta_c, dtype, L):
    b = batch(L, dtype, per_row_prompt=True)
    got, want = both(ops.redistribute, b["scores"], b["response_mask"], b["prompt_len"], first=first, beta_c=beta_c)
    close(got, want, dtype)


def test_redistribute_zero_prompt_rows():
    # first="zero" allows prompt_len 0 (the first response token is sequence position 0).
    b = batch(47, torch.float32)
    p = b["prompt_len"].clone()
    p[0] = 0
    got, want = both(ops.redistribute, b["scores"], b["response_mask"], p, first="zero", beta_c=0.3)
    close(got, want, torch.float32)
    got, want = both(ops.redistribute, b["scores"], b["response_mask"], 0, first="zero")
    close(got, want, torch.float32)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "abs"])
@pytest.mark.parametrize("clamp", [None, 0.05, (-0.2, 0.1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_penalty(estimator, clamp, dtype):
    b = batch(47, dtype)
    got, want = both(ops.kl_penalty, b["logprobs"], b["ref_logprobs"], estimator, clamp)
    close(got, want, dtype)


TOKEN_OPTIONS = [
    dict(),
    dict(kl_coef=0.05, kl_estimator="k1"),
    dict(kl_coef=0.1, kl_estimator="k2", reward_clip=0.3),
    dict(kl_coef=0.02, kl_estimator="k3", kl_clamp=10.0, first="zero", beta_c=0.5),
    dict(kl_coef=-0.3, kl_estimator="abs", kl_clamp=(-0.1, 0.2), reward_clip=(0.1, 0.4), beta_c=0.0),
]


@pytest.mark.parametrize("opts", TOKEN_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", LENGTHS)
def test_token_rewards(opts, dtype, L):
    b = batch(L, dtype)
    got, want = both(
        ops.token_rewards, b["scores"], b["response_mask"], b["prompt_len"], logprobs=b["logprobs"],
        ref_logprobs=b["ref_logprobs"], **opts,
    )
    close(got, want, dtype)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (1.0, 1.0), (0.9, 0.8), (0.0, 0.5)])
@pytest.mark.parametrize("bootstrap", [None, 0.7, "tensor"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", LENGTHS)
def test_gae(gamma, lam, bootstrap, dtype, L):
    b = batch(L, dtype)
    if bootstrap == "tensor":
        bootstrap = torch.randn(4, generator=torch.Generator().manual_seed(1)).to(dtype)
    got, want = both(ops.gae, b["rewards"], b["values"], b["response_mask"], gamma, lam, bootstrap)
    for g, w in zip(got, want):
        close(g, w, dtype)


FUSED_OPTIONS = [
    dict(),
    dict(kl_coef=0.05, gamma=0.99, lam=0.9, bootstrap=0.5),
    dict(kl_coef=0.1, kl_estimator="k3", kl_clamp=10.0, first="zero", beta_c=0.5, reward_clip=1.0),
    dict(kl_coef=0.2, kl_estimator="k2", beta_c=0.0, gamma=1.0, lam=1.0, bootstrap="tensor"),
    dict(kl_coef=0.2, kl_estimator="abs", kl_clamp=(0.0, 0.3), reward_clip=(-0.2, 0.2)),
]


@pytest.mark.parametrize("opts", FUSED_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("per_row_prompt", [True, False])
def test_fused_reward_gae(opts, dtype, L, per_row_prompt):
    b = batch(L, dtype, per_row_prompt=per_row_prompt)
    opts = dict(opts)
    if opts.get("bootstrap") == "tensor":
        opts["bootstrap"] = torch.linspace(-1, 1, 4).to(dtype)
    got, want = both(
        ops.fused_reward_gae, b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"],
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], **opts,
    )
    for g, w in zip(got, want):
        close(g, w, dtype)


def test_fused_equals_cpp_parts():
    # The fused op is the composition of the cpp ops (same projection code, same row math).
    b = batch(300, torch.bfloat16)
    kw = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, kl_estimator="k3")
    rewards, adv, ret = ops.fused_reward_gae(
        b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"], gamma=0.9, **kw,
        backend="cpp",
    )
    scores = ops.prefix_scores(b["hidden"], b["weight"], b["bias"], backend="cpp")
    r2 = ops.token_rewards(scores, b["response_mask"], b["prompt_len"], **kw, backend="cpp")
    a2, ret2 = ops.gae(r2, b["values"], b["response_mask"], 0.9, backend="cpp")
    assert torch.equal(rewards, r2) and torch.equal(adv, a2) and torch.equal(ret, ret2)


def test_special_masks():
    b = batch(47, torch.float32, B=5)
    masks = {
        "all_masked": torch.zeros(5, 47, dtype=torch.bool),
        "all_on": torch.ones(5, 47, dtype=torch.bool),
        "single": torch.zeros(5, 47, dtype=torch.bool).index_fill_(1, torch.tensor([20]), True),
        "float_mask": (torch.rand(5, 47, generator=torch.Generator().manual_seed(3)) > 0.3).float(),
        "int_mask": (torch.rand(5, 47, generator=torch.Generator().manual_seed(4)) > 0.6).long(),
    }
    for name, mask in masks.items():
        got, want = both(
            ops.fused_reward_gae, b["hidden"], b["weight"], b["bias"], b["values"], mask, b["prompt_len"],
            logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, bootstrap=0.3,
        )
        for g, w in zip(got, want):
            close(g, w, torch.float32)
        if name == "all_masked":
            assert all(bool((g == 0).all()) for g in got)


def test_non_contiguous_inputs():
    b = batch(47, torch.bfloat16, B=6, D=32)
    B, S, D = b["hidden"].shape
    L = b["values"].shape[1]
    # hidden with D not unit-stride, [B, L] tensors as transposed / strided views, mask strided.
    hidden_t = b["hidden"].transpose(1, 2).contiguous().transpose(1, 2)
    hidden_s = torch.stack([b["hidden"], b["hidden"]], dim=3)[..., 0]
    hidden_rows = torch.stack([b["hidden"], b["hidden"]], dim=1)[:, 1]
    values = b["values"].t().contiguous().t()
    mask = torch.stack([b["response_mask"], ~b["response_mask"]], dim=2)[:, :, 0]
    lp = torch.stack([b["logprobs"], b["logprobs"]], dim=2)[:, :, 1]
    ref = b["ref_logprobs"].t().contiguous().t()
    prompt_len = torch.stack([b["prompt_len"], b["prompt_len"]], 1)[:, 0].to(torch.int32)
    assert not values.is_contiguous() and not mask.is_contiguous() and not lp.is_contiguous()
    want = ops.fused_reward_gae(
        b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"], logprobs=b["logprobs"],
        ref_logprobs=b["ref_logprobs"], kl_coef=0.1, backend="torch",
    )
    for h in (hidden_t, hidden_s, hidden_rows):
        assert not h.is_contiguous()
        got = ops.fused_reward_gae(
            h, b["weight"][None, :], b["bias"], values, mask, prompt_len, logprobs=lp, ref_logprobs=ref, kl_coef=0.1,
            backend="cpp",
        )
        for g, w in zip(got, want):
            close(g, w, torch.bfloat16)
        # strided hidden states are gathered row by row: the same bits as the contiguous tensor
        assert torch.equal(ops.prefix_scores(h, b["weight"], backend="cpp"),
                           ops.prefix_scores(b["hidden"], b["weight"], backend="cpp"))
        close(ops.prefix_scores(h, b["weight"], backend="cpp"), ops.prefix_scores(b["hidden"], b["weight"], backend="torch"), torch.bfloat16)
    scores_nc = torch.stack([b["scores"], b["scores"]], dim=2)[:, :, 1]
    close(
        ops.token_rewards(scores_nc, mask, prompt_len, backend="cpp"),
        ops.token_rewards(b["scores"], b["response_mask"], b["prompt_len"], backend="torch"),
        torch.bfloat16,
    )
    got = ops.gae(b["rewards"].t().contiguous().t(), values, mask, 0.9, 0.7, backend="cpp")
    for g, w in zip(got, ops.gae(b["rewards"], b["values"], b["response_mask"], 0.9, 0.7, backend="torch")):
        close(g, w, torch.bfloat16)


def test_inputs_unchanged():
    b = batch(47, torch.float16)
    before = {k: v.clone() for k, v in b.items() if isinstance(v, torch.Tensor)}
    ops.fused_reward_gae(
        b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"], logprobs=b["logprobs"],
        ref_logprobs=b["ref_logprobs"], kl_coef=0.1, backend="cpp",
    )
    ops.token_rewards(b["scores"], b["response_mask"], b["prompt_len"], logprobs=b["logprobs"],
                      ref_logprobs=b["ref_logprobs"], kl_coef=0.1, backend="cpp")
    ops.gae(b["rewards"], b["values"], b["response_mask"], backend="cpp")
    for k, v in before.items():
        assert torch.equal(b[k], v), k


def test_bitwise_deterministic_across_threads():
    b = batch(300, torch.bfloat16, B=16, D=64)
    args = (b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"])
    kw = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, kl_estimator="k3", backend="cpp")
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            results.append(
                (ops.fused_reward_gae(*args, **kw), ops.prefix_scores(b["hidden"], b["weight"], backend="cpp"),
                 ops.gae(b["rewards"], b["values"], b["response_mask"], 0.99, backend="cpp"))
            )
    finally:
        torch.set_num_threads(threads)
    flat = [list(itertools.chain.from_iterable(t if isinstance(t, tuple) else (t,) for t in r)) for r in results]
    for other in flat[1:]:
        for x, y in zip(flat[0], other):
            assert torch.equal(x, y)


BAD_INPUTS = [
    (lambda b: ops.gae(b["rewards"], b["values"][:, :-1], b["response_mask"]), ValueError, r"values must be \[B, L\]"),
    (lambda b: ops.gae(b["rewards"], b["values"], b["response_mask"], gamma=1.5), ValueError, "gamma"),
    (lambda b: ops.redistribute(b["scores"], b["response_mask"], 0), ValueError, "prompt_len"),
    (lambda b: ops.redistribute(b["scores"].long(), b["response_mask"], 2), TypeError, "scores"),
    (lambda b: ops.kl_penalty(b["logprobs"], b["ref_logprobs"], "k9"), ValueError, "estimator"),
    (lambda b: ops.token_rewards(b["scores"], b["response_mask"], 2, logprobs=b["logprobs"], kl_coef=0.1),
     ValueError, "ref_logprobs"),
    (lambda b: ops.fused_reward_gae(b["hidden"], b["weight"][:-1], None, b["values"], b["response_mask"], 2),
     ValueError, "weight"),
    (lambda b: ops.fused_reward_gae(b["hidden"][:, :10], b["weight"], None, b["values"], b["response_mask"], 2),
     ValueError, "S ="),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_same_errors(case):
    call, exc, match = BAD_INPUTS[case]
    b = batch(47, torch.float32)
    for backend in ("cpp", "torch"):
        with pytest.raises(exc, match=match):
            # backend is passed through ops by rebinding the default of every op call in `call`
            _with_backend(backend, call, b)


def _with_backend(backend, call, b):
    import functools

    names = ("gae", "redistribute", "kl_penalty", "token_rewards", "fused_reward_gae")
    saved = {n: getattr(ops, n) for n in names}
    try:
        for n in names:
            setattr(ops, n, functools.partial(saved[n], backend=backend))
        call(b)
    finally:
        for n, f in saved.items():
            setattr(ops, n, f)


def _opcheck_cases():
    b = batch(47, torch.float32)
    bf = batch(47, torch.bfloat16)
    mask, p = b["response_mask"], b["prompt_len"]
    lp, ref = b["logprobs"], b["ref_logprobs"]
    bias = torch.tensor([0.5])
    boot = torch.randn(4)
    r = torch.ops.r3hf
    return [
        (r.prefix_scores.default, (b["hidden"], b["weight"], bias)),
        (r.prefix_scores.default, (bf["hidden"], bf["weight"], None)),
        (r.redistribute.default, (b["scores"], mask, p, "prompt", 0.5)),
        (r.kl_penalty.default, (lp, ref, "k3", [-10.0, 10.0])),
        (r.token_rewards.default, (b["scores"], mask, p, lp, ref, 0.1, "k2", None, "zero", 1.0, [-1.0, 1.0])),
        (r.token_rewards.default, (b["scores"], mask, p, None, None, 0.0, "k1", None, "prompt", 1.0, None)),
        (r.gae.default, (b["rewards"], b["values"], mask, 0.99, 0.95, boot)),
        (r.gae.default, (b["rewards"], b["values"], mask, 1.0, 1.0, None)),
        (r.fused_reward_gae.default,
         (bf["hidden"], bf["weight"], bias, b["values"], mask, p, lp, ref, 0.1, "k3", [-10.0, 10.0], 0.99, 0.95,
          "prompt", 0.5, [-2.0, 2.0], boot)),
    ]


@pytest.mark.parametrize("case", range(9))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_torch_compile_traces_the_ops():
    b = batch(47, torch.float32)

    # The op itself, as r3hf.ops calls it after validation (the validation reads prompt_len's values,
    # which torch.compile cannot trace without a graph break).
    def f(hidden, weight, values, mask, p):
        return torch.ops.r3hf.fused_reward_gae(
            hidden, weight, None, values, mask, p, None, None, 0.0, "k1", None, 0.99, 0.95, "prompt", 1.0, None, None
        )

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    args = (b["hidden"], b["weight"], b["values"], b["response_mask"], b["prompt_len"])
    for g, w in zip(compiled(*args), f(*args)):
        assert torch.equal(g, w)


def test_missing_extension_falls_back_and_warns_once():
    # Simulate an unbuilt/unloadable extension: r3hf still works on torch and warns exactly once.
    code = """
import sys, warnings
sys.modules["r3hf._C"] = None  # makes `from r3hf import _C` raise ImportError
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import torch, r3hf.ops as ops
    x = torch.randn(2, 5); m = torch.ones(2, 5, dtype=torch.bool)
    for _ in range(3):
        adv, ret = ops.gae(x, x, m)
    info = ops.backends()
msgs = [str(w.message) for w in caught if "C++ extension" in str(w.message)]
assert len(msgs) == 1, msgs
assert "pip install --no-build-isolation" in msgs[0], msgs[0]
assert info["ops"]["gae"]["cpu"] == "torch" and not info["cpp"]["build"]["built"]
try:
    ops.gae(x, x, m, backend="cpp")
except ops.BackendUnavailableError as e:
    assert "pip install" in str(e)
else:
    raise AssertionError("backend='cpp' should be unavailable")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


# --- CUDA kernels (csrc/cuda): run where a GPU and a CUDA build of r3hf._C exist ----------------

needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and cpp.build_info().get("cuda")), reason="needs a GPU and r3hf._C built with CUDA"
)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [1, 47, 1000, 5000])  # 5000 spans several 2048-position tiles of the row kernel
@pytest.mark.parametrize("opts", FUSED_OPTIONS[:3], ids=["defaults", "kl-bootstrap", "k3-zero-clip"])
def test_cuda_matches_reference(dtype, L, opts):
    b = make_batch(B=5, L=L, D=40 if L < 1000 else 64, dtype=dtype, seed=L, device="cuda")
    kw = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], **opts)
    got, want = both(ops.fused_reward_gae, b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"],
                     b["prompt_len"], **kw)
    for g, w in zip(got, want):
        close(g, w, dtype)
    close(*both(ops.prefix_scores, b["hidden"], b["weight"], b["bias"]), dtype)
    close(*both(ops.token_rewards, b["scores"], b["response_mask"], b["prompt_len"], **kw_rewards(kw)), dtype)
    close(*both(ops.redistribute, b["scores"], b["response_mask"], b["prompt_len"], first="zero", beta_c=0.5), dtype)
    close(*both(ops.kl_penalty, b["logprobs"], b["ref_logprobs"], "k3", 1.0), dtype)
    for g, w in zip(*both(ops.gae, b["rewards"], b["values"], b["response_mask"], 0.99, 0.9, 0.2)):
        close(g, w, dtype)
    again = ops.fused_reward_gae(b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"],
                                 **kw, backend="cpp")
    assert all(torch.equal(x, y) for x, y in zip(got, again))  # deterministic run to run


def kw_rewards(kw):
    keep = ("logprobs", "ref_logprobs", "kl_coef", "kl_estimator", "kl_clamp", "first", "beta_c", "reward_clip")
    return {k: v for k, v in kw.items() if k in keep}


@pytest.mark.gpu
@needs_cuda
def test_cuda_opcheck():
    for op, args in _opcheck_cases():
        torch.library.opcheck(op, tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))


def test_no_ext_at_run_time_uses_torch_quietly():
    # R3HF_NO_EXT=1 ignores a built extension: auto picks torch, backend="cpp" says why, no warning.
    code = """
import warnings
warnings.simplefilter("error")
import torch, r3hf.ops as ops
x = torch.randn(2, 5); m = torch.ones(2, 5, dtype=torch.bool)
ops.gae(x, x, m)
info = ops.backends()
assert info["ops"]["gae"]["cpu"] == "torch", info["ops"]
try:
    ops.gae(x, x, m, backend="cpp")
except ops.BackendUnavailableError as e:
    assert "R3HF_NO_EXT" in str(e), e
else:
    raise AssertionError("backend='cpp' should be unavailable")
print("ok")
"""
    env = {**os.environ, "R3HF_NO_EXT": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
