"""Packed sequences (issue 16 part 4): every op with cu_seqlens == pad, call the padded op, unpack.

The expected side is tests/packed_oracle.py (written from PACKED_CONTRACT.md, independent of r3hf's
own pad helper): it builds the padded batch, calls the PADDED public op on the torch backend and
unpacks, writing 0 outside every response region. Hypothesis draws N in [1, 64] sequences of 0..300
tokens (smaller under the Triton interpreter) mixing full responses, holes, trailing observation
tokens, all-prompt and empty sequences, and sequences generated from their first token (first="zero"),
in fp32/bf16/fp16. Each backend that lists "cu_seqlens" in its OPTIONS for an op is checked; the others
are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import inspect
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import packed_oracle as oracle
import r3hf.ops as ops
from backends_here import runnable

PACKED = "cu_seqlens" in inspect.signature(ops.gae).parameters
pytestmark = pytest.mark.skipif(not PACKED, reason="r3hf.ops takes no cu_seqlens yet (branch core-packed not merged)")

BACKENDS = runnable()
# The interpreter runs Triton kernels in Python: fewer sequences, shorter ones, fewer examples.
LIMITS = {
    "torch": dict(max_n=64, max_len=300, max_d=160),
    "cpp": dict(max_n=64, max_len=300, max_d=160),
    "triton": dict(max_n=8, max_len=56, max_d=40),
}
EXAMPLES = {"torch": None, "cpp": None, "triton": max(10, settings().max_examples // 3)}
# Positions per Triton program (R3HF_TRITON_CHUNK, read at call time): small chunks make sequences of
# a few dozen tokens span several chunks, so chunk boundaries inside a sequence are crossed too.
TRITON_CHUNKS = (None, "16", "32")

# (rtol, atol) next to each input dtype, both relative to 1 + max |expected|. Both sides convert the
# inputs exactly to fp32 and compute in fp32 (float64 statistics), so only summation order differs
# (projection over D, scans over ≤ 300 tokens, group sums): the fp32 tolerance for every input dtype.
TOL = {
    torch.float32: (1e-4, 2e-5),
    torch.bfloat16: (1e-4, 2e-5),
    torch.float16: (1e-4, 2e-5),
}

ESTIMATORS = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_process")
CPU = torch.device("cpu")
# Data errors of the padded ops that a random packed batch can legitimately hit.
DATA_ERRORS = ("masked_whiten needs", "no generated token", "needs at least 2")


def why_not(backend: str, op: str, *options: str):
    from r3hf._dispatch import _why_not

    return _why_not(backend, op, CPU, ("cu_seqlens",) + options)


def need(backend: str, op: str) -> None:
    why = why_not(backend, op)
    if why:
        pytest.skip(f"{backend} backend does not run packed {op} (no 'cu_seqlens' in its OPTIONS yet?): {why}")


def opt(backend: str, op: str, option: str, values, default):
    """Strategy for a peer option: its values where the backend implements it packed, else its default."""
    return st.sampled_from(values) if why_not(backend, op, option) is None else st.just(default)


@st.composite
def packed(draw, max_n, max_len, max_d, first=None):
    N = draw(st.one_of(st.sampled_from([1, 2, 3, max_n]), st.integers(1, max_n)))
    longest = draw(st.one_of(st.sampled_from([1, 2, 3, max_len]), st.integers(1, max_len)))
    D = draw(st.one_of(st.sampled_from([1, 2, 3, 16, 33, max_d]).filter(lambda d: d <= max_d), st.integers(1, max_d)))
    first = draw(st.sampled_from(["prompt", "zero"])) if first is None else first
    kinds = draw(st.one_of(st.just(oracle.KINDS),
                           st.lists(st.sampled_from(oracle.KINDS), min_size=1, max_size=3, unique=True)))
    dtype = draw(st.sampled_from(list(TOL)))
    b = oracle.make_packed(
        N, longest, D, seed=draw(st.integers(0, 2**31 - 1)), kinds=kinds, first=first, dtype=dtype,
        mask_dtype=draw(st.sampled_from([torch.bool, dtype, torch.int32])),
        cu_dtype=draw(st.sampled_from([torch.int64, torch.int32])),
    )
    b.update(N=N, first=first, dtype=dtype, chunk=draw(st.sampled_from(TRITON_CHUNKS)))
    layout = draw(st.sampled_from(["contiguous", "contiguous", "strided"]))
    if layout == "strided":  # same values, other memory layout: kernels must honour strides (or copy)
        for k in ("scores", "values", "rewards", "logprobs", "ref_logprobs", "response_mask", "cu_seqlens"):
            b[k] = _strided(b[k])
        b["hidden"] = b["hidden"].t().contiguous().t()  # [T, D] with stride (1, T)
    if draw(st.booleans()):  # the [1, T, D] form of hidden
        b["hidden"] = b["hidden"][None]
    return b


def _strided(t: torch.Tensor) -> torch.Tensor:
    """t [n] as every other element of a [2n] tensor."""
    wide = torch.zeros(2 * t.shape[0], dtype=t.dtype)
    wide[::2] = t
    return wide[::2]


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


@contextlib.contextmanager
def triton_chunk(chunk):
    old = os.environ.get("R3HF_TRITON_CHUNK")
    if chunk is not None:
        os.environ["R3HF_TRITON_CHUNK"] = chunk
    try:
        yield
    finally:
        if chunk is not None:
            if old is None:
                del os.environ["R3HF_TRITON_CHUNK"]
            else:
                os.environ["R3HF_TRITON_CHUNK"] = old


def compare(backend, op, call, b, *, whole_stream=False):
    """call(fn) with fn = the packed public op on `backend` and with fn = the oracle; same results,
    the same ValueError where the padded op refuses the batch, and no input modified."""
    inputs = _tensors(b)
    before = [t.clone() for t in inputs]
    try:
        want = call(getattr(oracle, op))
    except ValueError as e:
        # The padded op refuses the batch itself (too few generated tokens to whiten or to form
        # group advantages): the packed op must refuse it too. Any other oracle error is a test bug.
        if not any(words in str(e) for words in DATA_ERRORS):
            raise
        with pytest.raises(ValueError), triton_chunk(b.get("chunk") if backend == "triton" else None):
            call(lambda *a, **k: getattr(ops, op)(*a, **k, backend=backend))
        return
    with triton_chunk(b.get("chunk") if backend == "triton" else None):
        got = call(lambda *a, **k: getattr(ops, op)(*a, **k, backend=backend))
    for t, t0 in zip(inputs, before):
        assert torch.equal(t, t0), f"{backend} {op} modified an input"
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    assert len(got) == len(want), f"{backend} {op}: {len(got)} outputs, expected {len(want)}"
    T = int(b["cu_seqlens"][-1])
    outside = None if whole_stream else ~oracle.layout(b["cu_seqlens"], b["response_mask"]).in_region()
    rtol, atol = TOL[b["dtype"]]
    for k, (g, w) in enumerate(zip(got, want)):
        what = f"{backend} {op}[{k}] N={b['N']} T={T} first={b['first']} {b['dtype']}"
        if backend == "triton":
            what += f" R3HF_TRITON_CHUNK={b.get('chunk')}"
        assert g.dtype == torch.float32, f"{what}: dtype {g.dtype}"
        assert list(g.shape) == [T], f"{what}: shape {list(g.shape)}, expected [{T}]"
        if outside is not None and outside.any():
            assert not g[outside].any(), f"{what}: nonzero outside response regions"
        # NaN where the padded op gives NaN too (eps = 0 over a single token: 0 · rsqrt(0))
        finite = w[w.isfinite()]
        scale = 1.0 + (float(finite.abs().max()) if finite.numel() else 0.0)
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol * scale, equal_nan=True, msg=lambda m: f"{what}: {m}")


def run_property(backend, test, *strategies):
    """Run `test` under hypothesis with this backend's limits and example count."""
    deco = given(packed(**LIMITS[backend]), *strategies)
    n = EXAMPLES[backend]
    (settings(max_examples=n)(deco(test)) if n else deco(test))()


def _bias(kind, dtype):
    return {"none": None, "float": 0.25, "tensor": torch.tensor([-0.5], dtype=dtype)}[kind]


def _bootstrap(kind, N):
    if kind == "tensor":
        return torch.linspace(-1.0, 1.0, N)
    return {"none": None, "float": 0.5}[kind]


def _index(kind, seed, N):
    """[N] group ids in any order, or an int G dividing N (groups of G consecutive sequences)."""
    if kind == "ids":
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(0, max(1, N // 2), (N,), generator=gen)
    divisors = [g for g in range(1, N + 1) if N % g == 0]
    return divisors[seed % len(divisors)]


unit = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1))
kl_estimators = st.sampled_from(["k1", "k2", "k3", "abs"])
clamps = st.sampled_from([None, 0.5, (-0.2, 3.0)])


# --- one test per op --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_scores(backend):
    need(backend, "prefix_scores")

    def test(b, bias):
        compare(backend, "prefix_scores", lambda f: f(b["hidden"], b["weight"], _bias(bias, b["dtype"]),
                                                      cu_seqlens=b["cu_seqlens"]), b, whole_stream=True)

    run_property(backend, test, st.sampled_from(["none", "float", "tensor"]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_penalty(backend):
    need(backend, "kl_penalty")

    def test(b, estimator, clamp):
        compare(backend, "kl_penalty", lambda f: f(b["logprobs"], b["ref_logprobs"], estimator, clamp,
                                                   cu_seqlens=b["cu_seqlens"]), b, whole_stream=True)

    run_property(backend, test, kl_estimators, clamps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_redistribute(backend):
    need(backend, "redistribute")
    beta = st.one_of(unit, opt(backend, "redistribute", "beta_c_auto", ["auto"], 1.0))

    def test(b, beta_c):
        compare(backend, "redistribute", lambda f: f(b["scores"], b["response_mask"], None,
                                                     cu_seqlens=b["cu_seqlens"], first=b["first"], beta_c=beta_c), b)

    run_property(backend, test, beta)


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_rewards(backend):
    need(backend, "token_rewards")
    beta = st.one_of(unit, opt(backend, "token_rewards", "beta_c_auto", ["auto"], 1.0))

    def test(b, beta_c, kl_coef, kl_estimator, kl_clamp, reward_clip):
        compare(backend, "token_rewards", lambda f: f(
            b["scores"], b["response_mask"], None, cu_seqlens=b["cu_seqlens"], logprobs=b["logprobs"],
            ref_logprobs=b["ref_logprobs"], kl_coef=kl_coef, kl_estimator=kl_estimator, kl_clamp=kl_clamp,
            first=b["first"], beta_c=beta_c, reward_clip=reward_clip), b)

    run_property(backend, test, beta, st.sampled_from([0.0, 0.05, 1.0]), kl_estimators, clamps,
                 st.sampled_from([None, 0.3, (-1.0, 0.1)]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gae(backend):
    need(backend, "gae")

    def test(b, gamma, lam, bootstrap, carry_masked):
        compare(backend, "gae", lambda f: f(
            b["rewards"], b["values"], b["response_mask"], gamma, lam, _bootstrap(bootstrap, b["N"]),
            cu_seqlens=b["cu_seqlens"], carry_masked=carry_masked), b)

    run_property(backend, test, unit, unit, st.sampled_from(["none", "float", "tensor"]),
                 opt(backend, "gae", "carry_masked", [False, True], False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_whiten(backend):
    need(backend, "masked_whiten")

    def test(b, shift_mean, unbiased, eps, transform_masked, eps_mode):
        compare(backend, "masked_whiten", lambda f: f(
            b["values"], b["response_mask"], shift_mean, unbiased, eps, cu_seqlens=b["cu_seqlens"],
            transform_masked=transform_masked, eps_mode=eps_mode), b)

    run_property(backend, test, st.booleans(), st.booleans(), st.sampled_from([1e-8, 1e-5, 0.0]),
                 opt(backend, "masked_whiten", "transform_masked", [False, True], False),
                 opt(backend, "masked_whiten", "eps_mode", ["add", "max"], "add"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_reward_gae(backend):
    need(backend, "fused_reward_gae")
    beta = st.one_of(unit, opt(backend, "fused_reward_gae", "beta_c_auto", ["auto"], 1.0))

    def test(b, bias, beta_c, kl, gamma, lam, bootstrap, reward_clip):
        kl_coef, kl_estimator, kl_clamp = kl
        compare(backend, "fused_reward_gae", lambda f: f(
            b["hidden"], b["weight"], _bias(bias, b["dtype"]), b["values"], b["response_mask"], None,
            cu_seqlens=b["cu_seqlens"], logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=kl_coef,
            kl_estimator=kl_estimator, kl_clamp=kl_clamp, gamma=gamma, lam=lam, first=b["first"], beta_c=beta_c,
            reward_clip=reward_clip, bootstrap=_bootstrap(bootstrap, b["N"])), b)

    run_property(backend, test, st.sampled_from(["none", "float", "tensor"]), beta,
                 st.tuples(st.sampled_from([0.0, 0.05, 1.0]), kl_estimators, clamps), unit, unit,
                 st.sampled_from(["none", "float", "tensor"]), st.sampled_from([None, 0.3, (-1.0, 0.1)]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reward_to_go(backend):
    need(backend, "reward_to_go")

    def test(b, gamma, holes):
        compare(backend, "reward_to_go", lambda f: f(b["rewards"], b["response_mask"], gamma,
                                                     cu_seqlens=b["cu_seqlens"], holes=holes), b)

    run_property(backend, test, unit, st.sampled_from(["skip", "discount"]))


@st.composite
def group_options(draw):
    estimator = draw(st.sampled_from(ESTIMATORS))
    scale = draw(st.sampled_from(["group", "batch", "none"])) if estimator in ("grpo", "grpo_process") else "group"
    return dict(estimator=estimator, scale=scale, gamma=draw(unit),
                index=(draw(st.sampled_from(["ids", "int"])), draw(st.integers(0, 2**31 - 1))))


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_advantages(backend):
    need(backend, "group_advantages")

    def test(b, o):
        index = _index(*o["index"], b["N"])
        compare(backend, "group_advantages", lambda f: f(
            b["rewards"], b["response_mask"], index, o["estimator"], cu_seqlens=b["cu_seqlens"], gamma=o["gamma"],
            scale=o["scale"]), b)

    run_property(backend, test, group_options())


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_reward_group_advantages(backend):
    need(backend, "fused_reward_group_advantages")
    beta = st.one_of(unit, opt(backend, "fused_reward_group_advantages", "beta_c_auto", ["auto"], 1.0))

    def test(b, o, bias, beta_c, kl, reward_clip):
        kl_coef, kl_estimator, kl_clamp = kl
        index = _index(*o["index"], b["N"])
        compare(backend, "fused_reward_group_advantages", lambda f: f(
            b["hidden"], b["weight"], _bias(bias, b["dtype"]), b["response_mask"], None, index, o["estimator"],
            cu_seqlens=b["cu_seqlens"], logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=kl_coef,
            kl_estimator=kl_estimator, kl_clamp=kl_clamp, first=b["first"], beta_c=beta_c, reward_clip=reward_clip,
            gamma=o["gamma"], scale=o["scale"]), b)

    run_property(backend, test, group_options(), st.sampled_from(["none", "float", "tensor"]), beta,
                 st.tuples(st.sampled_from([0.0, 0.05, 1.0]), kl_estimators, clamps),
                 st.sampled_from([None, 0.3, (-1.0, 0.1)]))


# --- layout forms, gradients, torch.compile ---------------------------------------------------


def _fixed(seed=3, N=9, max_len=23, D=6, first="prompt", dtype=torch.float32):
    """A fixed packed batch with every kind of sequence (first="prompt": no generated first token)."""
    b = oracle.make_packed(N, max_len, D, seed=seed, first=first, dtype=dtype)
    b.update(N=N, first=first, dtype=dtype)
    return b


@pytest.mark.parametrize("backend", BACKENDS)
def test_hidden_1TD_equals_TD(backend):
    b = _fixed()
    h2, h3 = b["hidden"], b["hidden"][None]
    cu = b["cu_seqlens"]
    ran = False
    if why_not(backend, "prefix_scores") is None:
        assert torch.equal(ops.prefix_scores(h3, b["weight"], 0.1, cu_seqlens=cu, backend=backend),
                           ops.prefix_scores(h2, b["weight"], 0.1, cu_seqlens=cu, backend=backend))
        ran = True
    for op in ("fused_reward_gae", "fused_reward_group_advantages"):
        if why_not(backend, op) is not None:
            continue
        extra = (b["values"], b["response_mask"], None) if op == "fused_reward_gae" else (b["response_mask"], None, 3)
        got3 = getattr(ops, op)(h3, b["weight"], None, *extra, cu_seqlens=cu, backend=backend)
        got2 = getattr(ops, op)(h2, b["weight"], None, *extra, cu_seqlens=cu, backend=backend)
        for x, y in zip(got3, got2):
            assert torch.equal(x, y), op
        ran = True
    if not ran:
        pytest.skip(f"{backend} backend runs no packed op that takes hidden")


def _leaves(b, names):
    return {k: b[k].detach().clone().requires_grad_(True) for k in names}


# op -> (float inputs to differentiate, call(fn, b, leaves) with a KL term where the op has one)
GRAD_CASES = {
    "kl_penalty": (("logprobs", "ref_logprobs"), lambda f, b, x: f(
        x["logprobs"], x["ref_logprobs"], "k3", (-0.3, 0.4), cu_seqlens=b["cu_seqlens"])),
    "token_rewards": (("scores", "logprobs", "ref_logprobs"), lambda f, b, x: f(
        x["scores"], b["response_mask"], None, cu_seqlens=b["cu_seqlens"], logprobs=x["logprobs"],
        ref_logprobs=x["ref_logprobs"], kl_coef=0.3, kl_estimator="k2", first="prompt", beta_c=0.7)),
    "gae": (("rewards", "values"), lambda f, b, x: f(
        x["rewards"], x["values"], b["response_mask"], 0.9, 0.8,
        torch.linspace(-1, 1, b["N"], device=x["values"].device), cu_seqlens=b["cu_seqlens"])),
    "fused_reward_gae": (("hidden", "weight", "values", "logprobs", "ref_logprobs"), lambda f, b, x: f(
        x["hidden"], x["weight"], 0.2, x["values"], b["response_mask"], None, cu_seqlens=b["cu_seqlens"],
        logprobs=x["logprobs"], ref_logprobs=x["ref_logprobs"], kl_coef=0.1, kl_estimator="k3", kl_clamp=10.0,
        gamma=0.95, lam=0.9, bootstrap=torch.linspace(0, 1, b["N"], device=x["values"].device))),
    "masked_whiten": (("values",), lambda f, b, x: f(x["values"], b["response_mask"], cu_seqlens=b["cu_seqlens"])),
    "reward_to_go": (("rewards",), lambda f, b, x: f(x["rewards"], b["response_mask"], 0.9,
                                                    cu_seqlens=b["cu_seqlens"], holes="discount")),
    "group_advantages": (("rewards",), lambda f, b, x: f(
        x["rewards"], b["response_mask"], 3, "grpo", cu_seqlens=b["cu_seqlens"], gamma=0.9)),
    "fused_reward_group_advantages": (("hidden", "weight", "logprobs", "ref_logprobs"), lambda f, b, x: f(
        x["hidden"], x["weight"], None, b["response_mask"], None, 3, "rloo", cu_seqlens=b["cu_seqlens"],
        logprobs=x["logprobs"], ref_logprobs=x["ref_logprobs"], kl_coef=0.2, kl_estimator="k1")),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", sorted(GRAD_CASES))
def test_gradients_equal_padded(backend, op):
    """The KL path's analytic backward and the reference VJP of every other float input, packed,
    equal autograd through pad -> padded op -> unpack."""
    need(backend, op)
    names, call = GRAD_CASES[op]
    b = _fixed()
    weights = [torch.randn(b["cu_seqlens"][-1].item(), generator=torch.Generator().manual_seed(k)) for k in range(3)]

    def grads(fn):
        x = _leaves(b, names)
        out = call(fn, b, x)
        out = out if isinstance(out, tuple) else (out,)
        sum((o * w).sum() for o, w in zip(out, weights)).backward()
        for k in names:
            assert x[k].grad is not None, f"{op}: no gradient for {k}"
        return {k: x[k].grad for k in names}

    got = grads(lambda *a, **k: getattr(ops, op)(*a, **k, backend=backend))
    want = grads(getattr(oracle, op))
    for k in names:
        scale = 1.0 + float(want[k].abs().max())
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=2e-5 * scale, msg=lambda m: f"d/d{k}: {m}")


def packed_rollout(hidden, weight, values, response_mask, cu_seqlens, logprobs, ref_logprobs, bootstrap, backend):
    return ops.fused_reward_gae(
        hidden, weight, None, values, response_mask, None, cu_seqlens=cu_seqlens, logprobs=logprobs,
        ref_logprobs=ref_logprobs, kl_coef=0.05, kl_estimator="k3", kl_clamp=10.0, gamma=1.0, lam=0.95,
        bootstrap=bootstrap, backend=backend)


@pytest.mark.parametrize("backend", ["auto"] + [b for b in BACKENDS if b != "triton"])
def test_compiled_packed_fused_reward_gae_equals_eager(backend):
    if backend != "auto":
        need(backend, "fused_reward_gae")
    torch._dynamo.reset()
    b = _fixed(seed=5, N=7, max_len=31, D=16)
    args = (b["hidden"], b["weight"], b["values"], b["response_mask"], b["cu_seqlens"], b["logprobs"],
            b["ref_logprobs"], torch.linspace(-0.5, 0.5, b["N"]), backend)
    eager = packed_rollout(*args)
    compiled = torch.compile(packed_rollout, fullgraph=True, backend="inductor")(*args)
    for x, y in zip(compiled, eager):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x, y), (x - y).abs().max()


# (op, option, call(fn, b)) for the peer options a backend may implement padded but not packed
OPTION_CASES = [
    ("gae", "carry_masked", lambda f, b: f(b["rewards"], b["values"], b["response_mask"], 0.9, 0.8, 0.5,
                                           cu_seqlens=b["cu_seqlens"], carry_masked=True)),
    ("masked_whiten", "transform_masked", lambda f, b: f(b["values"], b["response_mask"], cu_seqlens=b["cu_seqlens"],
                                                         transform_masked=True)),
    ("redistribute", "beta_c_auto", lambda f, b: f(b["scores"], b["response_mask"], None, cu_seqlens=b["cu_seqlens"],
                                                   beta_c="auto")),
    ("fused_reward_gae", "beta_c_auto", lambda f, b: f(b["hidden"], b["weight"], None, b["values"], b["response_mask"],
                                                       None, cu_seqlens=b["cu_seqlens"], beta_c="auto")),
]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("op, option, call", OPTION_CASES, ids=[f"{o}-{p}" for o, p, _ in OPTION_CASES])
def test_packed_option_a_backend_lacks(backend, op, option, call):
    """A packed call with an option the backend does not implement packed: an explicit backend
    refuses it (never drops the option), "auto" runs it on the torch reference, equal to the oracle."""
    if why_not(backend, op) is not None:
        pytest.skip(f"{backend} backend does not run packed {op} at all")
    b = _fixed(N=12, max_len=19)
    if why_not(backend, op, option) is None:
        pytest.skip(f"{backend} backend implements packed {op} with {option}: covered by test_{op}")
    with pytest.raises(ops.BackendUnavailableError, match=option):
        call(lambda *a, **k: getattr(ops, op)(*a, **k, backend=backend), b)
    got, want = call(getattr(ops, op), b), call(getattr(oracle, op), b)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


CUDA_CASES = dict(GRAD_CASES, **{
    "prefix_scores": (("hidden", "weight"), lambda f, b, x: f(x["hidden"], x["weight"], 0.3,
                                                              cu_seqlens=b["cu_seqlens"])),
    "redistribute": (("scores",), lambda f, b, x: f(x["scores"], b["response_mask"], None,
                                                    cu_seqlens=b["cu_seqlens"], first="prompt", beta_c=0.6)),
})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the GPU kernels; the CPU is covered above)")
@pytest.mark.parametrize("backend", ["auto", "torch", "triton", "cpp"])
@pytest.mark.parametrize("op", sorted(CUDA_CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packed_cuda_equals_padded_oracle(backend, op, seed):
    """CUDA tensors (int32 cu_seqlens on the GPU) against the oracle on the CPU copy."""
    from r3hf._dispatch import _why_not

    if backend != "auto" and _why_not(backend, op, torch.device("cuda"), ("cu_seqlens",)) is not None:
        pytest.skip(f"{backend} backend does not run packed {op} on CUDA")
    names, call = CUDA_CASES[op]
    b = oracle.make_packed(42, 700, 64, seed=seed, first="prompt", cu_dtype=torch.int32)
    b.update(N=42)
    gpu = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
    got = call(lambda *a, **k: getattr(ops, op)(*a, **k, backend=backend), gpu, gpu)
    want = call(getattr(oracle, op), b, b)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert g.is_cuda and g.dtype == torch.float32
        # projections over D = 64 on tensor cores may round differently from the CPU's fp32 dot
        tol = 2e-3 if "hidden" in names else 1e-4
        torch.testing.assert_close(g.cpu(), w, rtol=tol, atol=tol * (1 + float(w.abs().max())))
