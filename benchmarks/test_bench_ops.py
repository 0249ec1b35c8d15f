"""pytest-benchmark view of r3hf/bench/cases.py: one group per case, so pytest-benchmark's table
shows every provider relative to the others on the same inputs in the same run.

    pytest benchmarks/ --benchmark-only            # R3HF_BENCH_SIZE=quick|cpu|gpu
"""

import pytest

from conftest import DEVICE, SIZE
from r3hf.bench.cases import build

CASES = build(SIZE, DEVICE)
PARAMS = [pytest.param(c, p, id=f"{c.name}-{p}") for c in CASES for p in c.providers]


@pytest.mark.parametrize("case, provider", PARAMS)
def test_bench(benchmark, sync, case, provider):
    fn = case.providers[provider]
    benchmark.group = case.name
    benchmark.extra_info.update(case.params, baseline=case.baseline, bytes_read=case.bytes_read)

    def call():
        fn()
        sync()

    benchmark(call)
