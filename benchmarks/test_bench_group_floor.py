"""Issue 21 "Speed" as pytest-benchmark cases: each `ops.group_advantages` estimator x baseline
(C++ backend, "auto" on CPU) at B = 1024, L = 4096, G = 8 must reach >= 70 % of its bandwidth floor
(14 bytes per token at the bandwidth of `torch.mul(x, 2, out=y)` on a same-size fp32 tensor, timed
alternately with the op in the same test; r3hf/bench/floor.py). The assertion is on that ratio
(median rounds), never on a time.

    pytest benchmarks/test_bench_group_floor.py --benchmark-only --benchmark-json=out.json

R3HF_BENCH_THREADS=n sets torch's thread count. Skipped without the extension (R3HF_NO_EXT=1).
"""

import os

import pytest
import torch

import r3hf.ops as ops
from r3hf.bench import floor

if os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1", allow_module_level=True)
if int(os.environ.get("R3HF_BENCH_THREADS", "0")):
    torch.set_num_threads(int(os.environ["R3HF_BENCH_THREADS"]))

B, T, G = 1024, 4096, 8


@pytest.mark.parametrize("estimator,baseline", floor.SETTINGS, ids=[f"{e}-{b}" for e, b in floor.SETTINGS])
def test_group_floor_b1024_t4096(benchmark, estimator, baseline):
    (row,) = floor.fractions(B, T, G, "cpu", "auto", rounds=15, settings=[(estimator, baseline)])
    benchmark.group = "group floor (issue 21)"
    benchmark.extra_info.update(row, torch_threads=torch.get_num_threads())
    r, m = floor.inputs(B, T, G, torch.device("cpu"))
    benchmark.pedantic(lambda: ops.group_advantages(r, m, G, estimator, baseline=baseline), rounds=5,
                       warmup_rounds=1, iterations=1)
    assert row["fraction_median"] >= floor.TARGET, (
        f"{estimator}/{baseline}: {row['fraction_median']:.2f} of the bandwidth floor (best round "
        f"{row['fraction_best']:.2f}); target {floor.TARGET}"
    )
