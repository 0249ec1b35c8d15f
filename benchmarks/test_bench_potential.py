"""A potential head on the fused ops (issue 24): two heads against one, on the CPU.

fused_reward_gae and fused_reward_group_advantages (grpo, k3 KL) on bf16 hidden [8, 2048, 4096],
every response position generated, with the reward head only and with a potential head too
(`potential_weight=`, `potential_bias=`), same inputs, same backend, timed in the same run. The
issue's target: two heads at most 10 % slower than one (ratio <= 1.10). The C++ kernels read each
needed hidden row once and project it with the one head its entry needs (R at the last generated
token, Φ' elsewhere), so the two-head op does the same work as the one-head op.

Also token_rewards on fp32 scores [64, 4096] (k3 KL, holes-free rows) with and without
`potential=`: the C++ row kernels read Φ' and R in place, so the target is the same ratio (<= 1.10).

    pytest benchmarks/test_bench_potential.py --benchmark-only [--benchmark-json=out.json]

The ratios are printed by the last test (`test_two_heads_over_one_head`) and stored in its
extra_info; nothing is asserted on time. R3HF_BENCH_THREADS=n sets torch's thread count;
R3HF_BENCH_POTENTIAL_BACKEND picks the backend (default cpp; skipped without the extension).
"""

from __future__ import annotations

import os

import pytest
import torch

import r3hf.ops as ops

BACKEND = os.environ.get("R3HF_BENCH_POTENTIAL_BACKEND", "cpp")
if BACKEND == "cpp" and os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1", allow_module_level=True)
if int(os.environ.get("R3HF_BENCH_THREADS", "0")):
    torch.set_num_threads(int(os.environ["R3HF_BENCH_THREADS"]))

B, S, D, PROMPT, G = 8, 2048, 4096, 64, 4
_MEDIANS: dict = {}


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(24)
    L = S - PROMPT
    return dict(
        hidden=torch.randn(B, S, D, generator=gen, dtype=torch.bfloat16),
        weight=(torch.randn(D, generator=gen) / D**0.5).to(torch.bfloat16),
        potential_weight=(torch.randn(D, generator=gen) / D**0.5).to(torch.bfloat16),
        values=torch.randn(B, L, generator=gen),
        mask=torch.ones(B, L, dtype=torch.bool),
        logprobs=-torch.rand(B, L, generator=gen),
        ref=-torch.rand(B, L, generator=gen),
    )


def _call(x, op, heads):
    kl = dict(logprobs=x["logprobs"], ref_logprobs=x["ref"], kl_coef=0.05, kl_estimator="k3")
    head = {} if heads == 1 else dict(potential_weight=x["potential_weight"], potential_bias=0.1)
    if op == "gae":
        return lambda: ops.fused_reward_gae(x["hidden"], x["weight"], 0.2, x["values"], x["mask"], PROMPT,
                                            backend=BACKEND, **kl, **head)
    return lambda: ops.fused_reward_group_advantages(x["hidden"], x["weight"], 0.2, x["mask"], PROMPT, G, "grpo",
                                                     backend=BACKEND, **kl, **head)


@pytest.mark.parametrize("op", ["gae", "group"])
@pytest.mark.parametrize("heads", [1, 2])
def test_fused_heads_bf16_8x2048x4096(benchmark, inputs, op, heads):
    benchmark.group = f"potential: fused_{op} bf16 [{B}, {S}, {D}] ({BACKEND})"
    benchmark.extra_info.update(op=op, heads=heads, backend=BACKEND, torch_threads=torch.get_num_threads(),
                                shape=[B, S, D])
    fn = _call(inputs, op, heads)
    fn()
    benchmark.pedantic(fn, rounds=15, warmup_rounds=2, iterations=1)
    if benchmark.stats is not None:
        _MEDIANS[(op, heads)] = benchmark.stats.stats.median


TR_B, TR_S = 64, 4096


@pytest.fixture(scope="module")
def score_inputs():
    gen = torch.Generator().manual_seed(25)
    L = TR_S - PROMPT
    return dict(scores=torch.randn(TR_B, TR_S, generator=gen), potential=torch.randn(TR_B, TR_S, generator=gen),
                mask=torch.ones(TR_B, L, dtype=torch.bool), logprobs=-torch.rand(TR_B, L, generator=gen),
                ref=-torch.rand(TR_B, L, generator=gen))


@pytest.mark.parametrize("heads", [1, 2])
def test_token_rewards_potential_fp32_64x4096(benchmark, score_inputs, heads):
    """heads=2: token_rewards(potential=Φ'); heads=1: the same call without a potential."""
    x = score_inputs
    benchmark.group = f"potential: token_rewards fp32 [{TR_B}, {TR_S}] ({BACKEND})"
    benchmark.extra_info.update(op="token_rewards", heads=heads, backend=BACKEND,
                                torch_threads=torch.get_num_threads(), shape=[TR_B, TR_S])
    pot = {} if heads == 1 else dict(potential=x["potential"])
    fn = lambda: ops.token_rewards(x["scores"], x["mask"], PROMPT, logprobs=x["logprobs"],  # noqa: E731
                                   ref_logprobs=x["ref"], kl_coef=0.05, kl_estimator="k3", backend=BACKEND, **pot)
    fn()
    benchmark.pedantic(fn, rounds=30, warmup_rounds=3, iterations=1)
    if benchmark.stats is not None:
        _MEDIANS[("token_rewards", heads)] = benchmark.stats.stats.median


def test_two_heads_over_one_head(benchmark):
    """Median time with a potential (head) / without, per op, from the cases above (same run)."""
    benchmark.extra_info["caveat"] = "a ratio of two medians of this run; rerun on a quiet machine"
    ratios = {}
    for op in ("gae", "group", "token_rewards"):
        one, two = _MEDIANS.get((op, 1)), _MEDIANS.get((op, 2))
        if one and two:
            ratios[op] = two / one
            benchmark.extra_info[f"{op}_two_over_one"] = two / one
            name = op if op == "token_rewards" else f"fused_{op}"
            print(f"\n{name}: one head {one * 1e3:.1f} ms, two heads {two * 1e3:.1f} ms, "
                  f"ratio {two / one:.3f} (target <= 1.10)")
    if not ratios:
        pytest.skip("the timed cases did not run (--benchmark-disable or deselected)")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
