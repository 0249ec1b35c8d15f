"""The C++ backend's two speed targets (issue 3), as pytest-benchmark groups run in one session:

- gae B=64 T=1024 fp32: r3hf-cpp against the veRL-style per-position loop (target >= 100x);
- fused_reward_gae on bf16 hidden [8, 2048, 4096] with every position generated (so the op must
  read all B*S*D hidden bytes): r3hf-cpp against a read-bandwidth probe over the same tensor
  (target >= 70% of it) and against the unfused torch path (HF head + differences + loop GAE,
  target >= 3x).

    pytest benchmarks/test_bench_cpp.py --benchmark-only --benchmark-json=out.json
    python -m r3hf.bench ...  # the general suite (r3hf/bench) covers the other shapes

Needs the extension; skipped with R3HF_NO_EXT=1.
"""

import os

import pytest
import torch

import r3hf.ops as ops
from r3hf.bench import baselines as bl
from r3hf.bench.cases import gae_case

if os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1", allow_module_level=True)

CPU = torch.device("cpu")
GAE = gae_case(64, 1024, CPU)
GAE_PROVIDERS = ["r3hf-cpp", "r3hf-torch", "verl-loop", "trl-loop"]


@pytest.mark.parametrize("provider", GAE_PROVIDERS)
def test_gae_b64_t1024(benchmark, provider):
    benchmark.group = "cpp: gae B=64 T=1024 fp32 (baseline verl-loop)"
    benchmark.extra_info.update(GAE.params, baseline="verl-loop")
    benchmark(GAE.providers[provider])


B, S, D, PROMPT = 8, 2048, 4096, 1
_fused = {}


def fused_inputs():
    if not _fused:
        gen = torch.Generator().manual_seed(0)
        L = S - PROMPT
        hidden = torch.randn(B, S, D, generator=gen, dtype=torch.bfloat16)
        head = torch.nn.Linear(D, 1, bias=False, dtype=torch.bfloat16)
        _fused.update(
            hidden=hidden, head=head, values=torch.randn(B, L, generator=gen),
            mask=torch.ones(B, L, dtype=torch.bool),  # every position read: bytes counted = bytes read
            lp=-torch.rand(B, L, generator=gen), ref=-torch.rand(B, L, generator=gen),
        )
    return _fused


def _fused_provider(name):
    x = fused_inputs()
    kw = dict(logprobs=x["lp"], ref_logprobs=x["ref"], kl_coef=0.05, gamma=1.0, lam=0.95)
    if name == "r3hf-cpp":
        return lambda: ops.fused_reward_gae(x["hidden"], x["head"].weight, None, x["values"], x["mask"], PROMPT,
                                            backend="cpp", **kw)
    if name == "unfused":
        def unfused():
            with torch.no_grad():
                return bl.unfused_reward_gae(x["hidden"], x["head"], x["values"], x["mask"], PROMPT, x["lp"],
                                             x["ref"], 0.05, 1.0, 0.95)
        return unfused
    if name == "read-probe":
        return lambda: bl.read_bandwidth_probe(x["hidden"])
    if name == "sum-probe":  # a torch sum over the same bytes (fp32 accumulation, as the projection)
        return lambda: x["hidden"].sum(dtype=torch.float32)
    raise KeyError(name)


@pytest.mark.parametrize("provider", ["r3hf-cpp", "unfused", "read-probe", "sum-probe"])
def test_fused_bf16_8x2048x4096(benchmark, provider):
    fn = _fused_provider(provider)
    benchmark.group = "cpp: fused_reward_gae bf16 [8, 2048, 4096] (baselines unfused, read-probe)"
    benchmark.extra_info.update(B=B, S=S, D=D, bytes_read=B * S * D * 2, baseline="unfused")
    benchmark.pedantic(fn, rounds=7, warmup_rounds=1, iterations=1)
