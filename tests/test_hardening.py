"""NaN/Inf containment, determinism, long and large batches, and numerical bounds, on every backend
that runs here.

NaN/Inf policy (docs/numerics.md): values at masked positions of rewards, values, logprobs and
ref_logprobs are never read, so garbage there changes nothing; a NaN/Inf in a row's hidden states
(at positions the rewards read), scores, rewards or values propagates within that row only and
never to another row. masked_whiten mixes rows by design, so it propagates to the whole batch.
"""

import pytest
import torch

import r3hf.ops as ops
from backends_here import runnable, supports
from batches import make_batch

BACKENDS = runnable()


def _fused(b, backend, **kw):
    return ops.fused_reward_gae(
        b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"],
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, kl_estimator="k3", gamma=0.99,
        lam=0.95, backend=backend, **kw,
    )


def _gae(b, backend):
    return ops.gae(b["rewards"], b["values"], b["response_mask"], 0.99, 0.95, backend=backend)


def _rewards(b, backend):
    return (ops.token_rewards(b["scores"], b["response_mask"], b["prompt_len"], logprobs=b["logprobs"],
                              ref_logprobs=b["ref_logprobs"], kl_coef=0.1, backend=backend),)


OPS = {"fused_reward_gae": _fused, "gae": _gae, "token_rewards": _rewards}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_garbage_at_masked_positions_changes_nothing(backend, op, poison):
    if not supports(backend, op):
        pytest.skip(f"{backend} does not implement {op}")
    b = make_batch(B=4, L=23, P=4, D=8, seed=21)
    clean = OPS[op](b, backend)
    dirty = dict(b)
    masked = ~b["response_mask"]
    for k in ("rewards", "values", "logprobs", "ref_logprobs"):
        dirty[k] = b[k].masked_fill(masked, poison)
    for x, y in zip(clean, OPS[op](dirty, backend)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_nan_stays_in_its_row(backend, op):
    if not supports(backend, op):
        pytest.skip(f"{backend} does not implement {op}")
    b = make_batch(B=4, L=23, P=4, D=8, seed=22, empty_rows=False)
    b["response_mask"][:, :3] = True
    clean = OPS[op](b, backend)
    dirty = dict(b)
    P1 = int(b["prompt_len"][1])
    dirty["hidden"] = b["hidden"].clone()
    dirty["hidden"][1, P1 + 1, 0] = float("nan")
    for k in ("scores", "rewards", "values"):
        dirty[k] = b[k].clone()
    dirty["scores"][1, P1 + 1] = float("nan")
    dirty["rewards"][1, 1] = float("nan")
    dirty["values"][1, 1] = float("nan")
    for x, y in zip(clean, OPS[op](dirty, backend)):
        others = torch.tensor([0, 2, 3])
        assert torch.equal(x[others], y[others])
        assert torch.isnan(y[1]).any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_bitwise_deterministic_over_runs_and_thread_counts(backend, op):
    if not supports(backend, op):
        pytest.skip(f"{backend} does not implement {op}")
    # The Triton interpreter is slow; its GPU determinism is the GPU check's business.
    b = make_batch(B=3, L=70, P=6, D=16, seed=23) if backend == "triton" else make_batch(B=16, L=300, P=6, D=64, seed=23)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            results.append(OPS[op](b, backend))
        for _ in range(6):
            results.append(OPS[op](b, backend))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        for x, y in zip(results[0], r):
            assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_projection_error_bound(dtype):
    """fp32 accumulation of bf16/fp16 hidden states: |error| ≤ 2⁻²⁰·Σ|h_i·w_i| up to D = 8192 (docs/numerics.md)."""
    gen = torch.Generator().manual_seed(24)
    for D in (1024, 8192):
        hidden = torch.randn(2, 64, D, generator=gen).to(dtype)
        weight = (torch.randn(D, generator=gen) / D**0.5).to(dtype)
        exact = hidden.double() @ weight.double()
        budget = 2.0**-20 * (hidden.double().abs() @ weight.double().abs())
        for backend in BACKENDS:
            if not supports(backend, "prefix_scores"):
                continue
            got = ops.prefix_scores(hidden, weight, backend=backend).double()
            assert torch.all((got - exact).abs() <= budget), backend


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_long_row_gamma_lambda_near_one(backend):
    """One row of T = 131072 with γλ ≈ 1: fp32 GAE within 1e-5·Σ|δ| of a float64 evaluation."""
    if backend == "torch":
        pytest.skip("the reference walks 131072 positions in Python; covered by compiled backends")
    T = 131072
    gen = torch.Generator().manual_seed(25)
    r, v = torch.randn(1, T, generator=gen), torch.randn(1, T, generator=gen)
    mask = torch.rand(1, T, generator=gen) > 0.1
    gamma, lam = 0.9999, 0.9999
    adv, _ = ops.gae(r, v, mask, gamma, lam, backend=backend)
    exact = _gae_float64(r, v, mask, gamma, lam)
    delta_scale = float((r.abs() + v.abs()).sum() * 2)
    assert float((adv.double() - exact).abs().max()) <= 1e-5 * delta_scale


def _gae_float64(r, v, mask, gamma, lam):
    """Float64 GAE over the generated tokens of one row, by the closed-form scan on the compressed row."""
    idx = mask[0].nonzero().flatten()
    rr, vv = r[0, idx].double(), v[0, idx].double()
    next_v = torch.cat([vv[1:], vv.new_zeros(1)])
    delta = rr + gamma * next_v - vv
    out = torch.zeros(r.shape[1], dtype=torch.float64)
    a = 0.0
    acc = torch.empty_like(delta)
    for i in range(len(delta) - 1, -1, -1):  # float64 Python loop: slow but exact enough to judge fp32
        a = float(delta[i]) + gamma * lam * a
        acc[i] = a
    out[idx] = acc
    return out[None]


@pytest.mark.parametrize("backend", runnable())
def test_prefix_scores_stay_fp32_inside_autocast(backend):
    """A caller's bf16 autocast region must not lower the projection's precision or output dtype."""
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 9, 64, generator=gen)
    weight = torch.randn(64, generator=gen)
    plain = ops.prefix_scores(hidden, weight, 0.5, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ops.prefix_scores(hidden, weight, 0.5, backend=backend)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)
