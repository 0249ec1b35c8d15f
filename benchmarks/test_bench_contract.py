"""The ops contract's speed rows (issue 15), as pytest-benchmark groups measured in one session:

- token_rewards B=64 T=1024 fp32: r3hf's C++ backend (public op, and the kernel alone) against the
  naive torch expression for the same work (trailing padding, int prompt_len: differences of
  shifted score slices times the mask), target ratio >= 1;
- kl_penalty k3 B=64 T=1024: C++ against the torch expression;
- masked_whiten B=64 T=1024: C++ against the torch reference and TRL's masked_whiten expression;
- the rollout-to-advantages function of tests/test_compile.py (fused_reward_gae + masked_whiten),
  torch.compile(fullgraph=True) against eager.

    pytest benchmarks/test_bench_contract.py --benchmark-only --benchmark-json=out.json
    python benchmarks/contract_ratios.py out.json > benchmarks/results/contract.md
"""

import os
import sys
from pathlib import Path

import pytest
import torch

import r3hf.ops as ops

if os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1", allow_module_level=True)

import r3hf.backends.cpp  # noqa: E402,F401  (registers torch.ops.r3hf.*)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_compile import rollout_to_advantages  # noqa: E402

B, L, P = 64, 1024, 16
_gen = torch.Generator().manual_seed(0)
SCORES = torch.randn(B, P + L, generator=_gen)
LENGTHS = torch.randint(L // 2, L + 1, (B,), generator=_gen)
MASK = torch.arange(L)[None, :] < LENGTHS[:, None]  # trailing padding, the PPO layout
LP = -torch.rand(B, L, generator=_gen) * 3
REF = -torch.rand(B, L, generator=_gen) * 3
X = torch.randn(B, L, generator=_gen)
PLEN = torch.full((B,), P)


def naive_token_rewards():
    # The three-line torch expression: R(x, y<=t) - R(x, y<t) over the response, masked.
    return (SCORES[:, P:P + L] - SCORES[:, P - 1:P + L - 1]) * MASK


TOKEN_REWARDS = {
    "naive-torch": naive_token_rewards,
    "r3hf-cpp": lambda: ops.token_rewards(SCORES, MASK, P, backend="cpp"),
    "cpp-kernel": lambda: torch.ops.r3hf.token_rewards(SCORES, MASK, PLEN, None, None, 0.0, "k1", None, "prompt",
                                                       1.0, None),
    "r3hf-torch": lambda: ops.token_rewards(SCORES, MASK, P, backend="torch"),
}


@pytest.mark.parametrize("provider", list(TOKEN_REWARDS))
def test_token_rewards(benchmark, provider):
    torch.testing.assert_close(TOKEN_REWARDS[provider](), naive_token_rewards())
    benchmark.group = "contract: token_rewards B=64 T=1024 fp32 (baseline naive-torch)"
    benchmark.extra_info.update(B=B, L=L, baseline="naive-torch")
    benchmark(TOKEN_REWARDS[provider])


KL = {
    "naive-torch": lambda: torch.expm1(REF - LP) + (LP - REF),
    "r3hf-cpp": lambda: ops.kl_penalty(LP, REF, "k3", backend="cpp"),
}


@pytest.mark.parametrize("provider", list(KL))
def test_kl_penalty(benchmark, provider):
    benchmark.group = "contract: kl_penalty k3 B=64 T=1024 fp32 (baseline naive-torch)"
    benchmark.extra_info.update(B=B, L=L, baseline="naive-torch")
    benchmark(KL[provider])


def trl_masked_whiten():
    # TRL's masked_whiten (unbiased, shift_mean): masked mean/var then (x - mean) * rsqrt(var + eps).
    m = MASK.float()
    mean = (X * m).sum() / m.sum()
    var = ((X - mean) ** 2 * m).sum() / (m.sum() - 1)
    return (X - mean) * torch.rsqrt(var + 1e-8) * m


WHITEN = {
    "trl-expression": trl_masked_whiten,
    "r3hf-cpp": lambda: ops.masked_whiten(X, MASK, backend="cpp"),
    "r3hf-torch": lambda: ops.masked_whiten(X, MASK, backend="torch"),
}


@pytest.mark.parametrize("provider", list(WHITEN))
def test_masked_whiten(benchmark, provider):
    torch.testing.assert_close(WHITEN[provider](), trl_masked_whiten(), rtol=1e-4, atol=1e-4)
    benchmark.group = "contract: masked_whiten B=64 T=1024 fp32 (baseline trl-expression)"
    benchmark.extra_info.update(B=B, L=L, baseline="trl-expression")
    benchmark(WHITEN[provider])


D = 256
_rollout = {}


def rollout_inputs():
    if not _rollout:
        g = torch.Generator().manual_seed(1)
        _rollout["args"] = (torch.randn(B, P + L, D, generator=g, dtype=torch.bfloat16),
                            torch.randn(D, generator=g, dtype=torch.bfloat16), torch.randn(B, L, generator=g),
                            MASK, PLEN, LP, REF)
        _rollout["compiled"] = torch.compile(rollout_to_advantages, fullgraph=True)
    return _rollout


@pytest.mark.parametrize("provider", ["eager", "compiled"])
def test_rollout_compiled_vs_eager(benchmark, provider):
    x = rollout_inputs()
    fn = x["compiled"] if provider == "compiled" else rollout_to_advantages
    for got, want in zip(fn(*x["args"]), rollout_to_advantages(*x["args"])):
        assert torch.equal(got, want)
    benchmark.group = "contract: rollout_to_advantages bf16 hidden [64, 1040, 256] (baseline eager)"
    benchmark.extra_info.update(B=B, L=L, D=D, baseline="eager")
    benchmark(fn, *x["args"])
