"""Property-based fuzzing of every compiled backend against the torch reference.

Random B, S, L, D (1 and primes included), scalar and per-row prompt_len, masks with holes,
leading masked spans and all-masked rows, random γ, λ, β_c, KL options, clips, bootstrap, dtypes,
and non-contiguous or expanded (stride-0) views. The CI profile runs a few hundred cases in all;
HYPOTHESIS_PROFILE=thorough runs 10,000 per test.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import r3hf.ops as ops
from backends_here import runnable, supports

COMPILED = [b for b in runnable() if b != "torch"]
# The Triton interpreter runs kernels in Python: fewer, smaller cases.
LIMITS = {"cpp": dict(max_B=7, max_L=97, max_D=67), "triton": dict(max_B=3, max_L=40, max_D=16)}
# None: the active profile's count (60 in CI, 10,000 with --hypothesis-profile=thorough); the
# interpreter gets a fortieth of it, at least 15.
EXAMPLES = {"cpp": None, "triton": max(15, settings().max_examples // 40)}


def _view(t: torch.Tensor, how: str) -> torch.Tensor:
    """Same values, other memory layout."""
    if how == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if how == "strided":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


@st.composite
def cases(draw, max_B, max_L, max_D):
    B = draw(st.sampled_from([x for x in (1, 2, 3, 5, 7) if x <= max_B]))
    L = draw(st.one_of(st.sampled_from([1, 2, 31, 47]), st.integers(1, max_L)).filter(lambda x: x <= max_L))
    D = draw(st.one_of(st.sampled_from([1, 2, 3, 13]), st.integers(1, max_D)).filter(lambda x: x <= max_D))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    first = draw(st.sampled_from(["prompt", "zero"]))
    lowest = 1 if first == "prompt" else 0
    if draw(st.booleans()):
        prompt_len = torch.randint(lowest, 7, (B,), generator=gen)
        P = int(prompt_len.max())
    else:
        prompt_len = P = draw(st.integers(lowest, 6))
    S = P + L + draw(st.integers(0, 3))
    kind = draw(st.sampled_from(["full", "trailing", "holes", "leading", "random", "empty"]))
    lengths = torch.randint(0, L + 1, (B,), generator=gen)
    pos = torch.arange(L)[None]
    mask = {
        "full": torch.ones(B, L, dtype=torch.bool),
        "trailing": pos < lengths[:, None],
        "holes": (pos < lengths[:, None]) & (torch.rand(B, L, generator=gen) > 0.3),
        "leading": pos >= lengths[:, None],
        "random": torch.rand(B, L, generator=gen) > 0.5,
        "empty": torch.zeros(B, L, dtype=torch.bool),
    }[kind]
    if B > 1 and draw(st.booleans()):
        mask[int(torch.randint(0, B, (1,), generator=gen))] = False
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    expand_values = draw(st.booleans())
    values = torch.randn(1 if expand_values else B, L, generator=gen).to(dtype).expand(B, L)
    kl_coef = draw(st.sampled_from([0.0, 0.05, 1.0]))
    return dict(
        hidden=_view(torch.randn(B, S, D, generator=gen).to(dtype), layout),
        weight=_view(torch.randn(1, D, generator=gen).to(dtype), layout),
        bias=draw(st.sampled_from([None, 0.25, "tensor"])),
        scores=_view(torch.randn(B, S, generator=gen).to(dtype), layout),
        rewards=_view(torch.randn(B, L, generator=gen).to(dtype), layout),
        values=values,
        logprobs=_view((-3 * torch.rand(B, L, generator=gen)).to(dtype), layout),
        ref_logprobs=_view((-3 * torch.rand(B, L, generator=gen)).to(dtype), layout),
        response_mask=_view(mask, layout) if draw(st.booleans()) else _view(mask.to(dtype), layout),
        prompt_len=prompt_len,
        first=first,
        beta_c=draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1))),
        gamma=draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1))),
        lam=draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1))),
        kl_coef=kl_coef,
        kl_estimator=draw(st.sampled_from(["k1", "k2", "k3", "abs"])),
        kl_clamp=draw(st.sampled_from([None, 0.5, (-0.2, 3.0)])),
        reward_clip=draw(st.sampled_from([None, 0.3, (-1.0, 0.1)])),
        bootstrap=draw(st.sampled_from([None, 0.5, "tensor"])),
        # group advantages (issue 12): ids in any order, or contiguous groups of G rows
        index=draw(st.sampled_from([1, B])) if draw(st.booleans()) else torch.randint(0, max(1, B // 2), (B,), generator=gen),
        estimator=draw(st.sampled_from(["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_process"])),
        scale=draw(st.sampled_from(["group", "batch", "none"])),
        holes=draw(st.sampled_from(["skip", "discount"])),
    )


def _resolve(c):
    c = dict(c)
    if c["bias"] == "tensor":
        c["bias"] = torch.tensor([-0.5])
    if c["bootstrap"] == "tensor":
        c["bootstrap"] = torch.linspace(-1, 1, c["rewards"].shape[0])
    return c


def _close(a, b, what):
    # Both sides compute in fp32 from the same (exactly converted) inputs; only summation order
    # differs (projection over D, scans over L).
    scale = 1.0 + float(b.abs().max()) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5 * scale, msg=lambda m: f"{what}: {m}")


def run_all(c, backend):
    c = _resolve(c)
    kl = dict(logprobs=c["logprobs"], ref_logprobs=c["ref_logprobs"], kl_coef=c["kl_coef"],
              kl_estimator=c["kl_estimator"], kl_clamp=c["kl_clamp"])
    mix = dict(first=c["first"], beta_c=c["beta_c"])
    common = (c["response_mask"], c["prompt_len"])
    out = {}
    if supports(backend, "prefix_scores"):
        out["prefix_scores"] = ops.prefix_scores(c["hidden"], c["weight"], c["bias"], backend=backend)
    if supports(backend, "redistribute"):
        out["redistribute"] = ops.redistribute(c["scores"], *common, **mix, backend=backend)
    if supports(backend, "kl_penalty"):
        out["kl_penalty"] = ops.kl_penalty(c["logprobs"], c["ref_logprobs"], c["kl_estimator"], c["kl_clamp"],
                                           backend=backend)
    if supports(backend, "token_rewards"):
        out["token_rewards"] = ops.token_rewards(c["scores"], *common, **kl, **mix, reward_clip=c["reward_clip"],
                                                 backend=backend)
    if supports(backend, "gae"):
        out["gae"] = ops.gae(c["rewards"], c["values"], c["response_mask"], c["gamma"], c["lam"], c["bootstrap"],
                             backend=backend)
    if supports(backend, "fused_reward_gae"):
        out["fused_reward_gae"] = ops.fused_reward_gae(
            c["hidden"], c["weight"], c["bias"], c["values"], *common, **kl, **mix, gamma=c["gamma"], lam=c["lam"],
            reward_clip=c["reward_clip"], bootstrap=c["bootstrap"], backend=backend,
        )
    if supports(backend, "masked_whiten") and int((c["response_mask"] != 0).sum()) >= 2:
        out["masked_whiten"] = ops.masked_whiten(c["values"], c["response_mask"], backend=backend)
    out.update(run_group(c, backend, kl, mix, common))
    return out


def run_group(c, backend, kl, mix, common):
    """The group-advantage ops (issue 12) on every backend that lists them."""
    out = {}
    if supports(backend, "reward_to_go"):
        out["reward_to_go"] = ops.reward_to_go(c["rewards"], c["response_mask"], c["gamma"], holes=c["holes"],
                                               backend=backend)
    if int((c["response_mask"] != 0).sum()) < 2:  # an all-masked batch is an error; whitening needs 2 tokens
        return out
    group = dict(gamma=c["gamma"], scale=c["scale"] if c["estimator"] in ("grpo", "grpo_process") else "group")
    if supports(backend, "group_advantages"):
        out["group_advantages"] = ops.group_advantages(c["rewards"], c["response_mask"], c["index"], c["estimator"],
                                                       **group, backend=backend)
    if supports(backend, "fused_reward_group_advantages"):
        out["fused_reward_group_advantages"] = ops.fused_reward_group_advantages(
            c["hidden"], c["weight"], c["bias"], *common, c["index"], c["estimator"], **kl, **mix,
            reward_clip=c["reward_clip"], **group, backend=backend,
        )
    return out


def _fuzz(backend):
    @settings(max_examples=EXAMPLES[backend]) if EXAMPLES[backend] else (lambda f: f)
    @given(cases(**LIMITS[backend]))
    def check(c):
        got, want = run_all(c, backend), run_all(c, "torch")
        assert got, f"{backend} implements no op"
        for op, g in got.items():
            for i, (x, y) in enumerate(zip(g if isinstance(g, tuple) else (g,), want[op] if isinstance(g, tuple) else (want[op],))):
                assert x.dtype == torch.float32 and x.shape == y.shape
                _close(x, y, f"{backend} {op}[{i}]")

    return check


@pytest.mark.parametrize("backend", COMPILED)
def test_backend_equals_reference(backend):
    _fuzz(backend)()
