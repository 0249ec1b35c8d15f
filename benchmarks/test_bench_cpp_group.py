"""The C++ backend's group-advantage targets (issue 12), as pytest-benchmark groups run in one
session (ratios within a group are measured in the same run, on the same inputs):

- group_advantages B=1024 (G=8) T=4096, per estimator, r3hf-cpp against veRL 0.9.1's own function
  of the same family, imported from the installed veRL (target >= 20x);
- reward_to_go B=64 T=1024 against veRL's reinforce_plus_plus estimator (its per-position loop;
  target >= 100x);
- fused_reward_group_advantages (grpo, KL on) on bf16 hidden [8, 2048, 4096], every position
  generated: r3hf-cpp against the read-bandwidth probe over the same tensor (target >= 70%).

    pytest benchmarks/test_bench_cpp_group.py --benchmark-only --benchmark-json=out.json
    python benchmarks/cpp_ratios.py out.json

R3HF_BENCH_THREADS=n sets torch's thread count for every provider. The cases are r3hf/bench/cases.py's (`r3hf bench --groups group,rtg,fused_group`). Skipped without
the extension (R3HF_NO_EXT=1); the veRL groups are skipped with the reason when veRL is absent.
"""

import os

import pytest
import torch

from r3hf.bench import verl_baselines as vb
from r3hf.bench.cases import fused_group_case, group_cases, rtg_case

if os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1", allow_module_level=True)

CPU = torch.device("cpu")
# R3HF_BENCH_THREADS=n runs every provider on n torch threads (default: torch's default).
if int(os.environ.get("R3HF_BENCH_THREADS", "0")):
    torch.set_num_threads(int(os.environ["R3HF_BENCH_THREADS"]))
VERL = vb.unavailable_reason()
needs_verl = pytest.mark.skipif(VERL is not None, reason=str(VERL))
_cases = {}


def case(name):
    if name not in _cases:
        if name == "group":
            _cases[name] = {c.params["estimator"]: c for c in group_cases(1024, 4096, 8, CPU)}
        elif name == "rtg":
            _cases[name] = rtg_case(64, 1024, CPU)
        else:
            _cases[name] = fused_group_case(8, 2048, 4096, CPU)
    return _cases[name]


def _run(benchmark, c, provider, slow):
    benchmark.group = f"cpp: {c.name} (baseline {c.baseline})"
    benchmark.extra_info.update(c.params, baseline=c.baseline, bytes_read=c.bytes_read, provider=provider,
                                torch_threads=torch.get_num_threads())
    fn = c.providers[provider]
    if slow:  # the veRL loops take seconds per call here: a few rounds are enough
        benchmark.pedantic(fn, rounds=3, warmup_rounds=1, iterations=1)
    else:
        benchmark.pedantic(fn, rounds=15, warmup_rounds=2, iterations=1)


@needs_verl
@pytest.mark.parametrize("provider", ["r3hf-cpp", "verl"])
@pytest.mark.parametrize("estimator", list(vb.VERL_FUNCTIONS))
def test_group_advantages_b1024_t4096(benchmark, estimator, provider):
    c = case("group")[estimator]
    name = f"verl-{estimator}" if provider == "verl" else provider
    _run(benchmark, c, name, slow=provider == "verl")


@needs_verl
@pytest.mark.parametrize("provider", ["r3hf-cpp", "verl-reinforce_pp"])
def test_reward_to_go_b64_t1024(benchmark, provider):
    _run(benchmark, case("rtg"), provider, slow=provider != "r3hf-cpp")


@pytest.mark.parametrize("provider", ["r3hf-cpp", "read-probe"])
def test_fused_group_bf16_8x2048x4096(benchmark, provider):
    _run(benchmark, case("fused_group"), provider, slow=False)
