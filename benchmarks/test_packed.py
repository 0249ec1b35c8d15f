"""Packed vs padded on the same tokens (issue 16), as pytest-benchmark groups run in one session.

Per op and length distribution (responses uniform in [1, 4096], or a lognormal long tail with the
same total tokens; prompts uniform in [16, 256]), one group with providers
- packed: the op on the stream with cu_seqlens;
- padded: the op on the same sequences padded as veRL pads them (prompts left-padded to the longest
  prompt, responses right-padded to the longest response), the baseline;
- pad-unpad: pad the stream, call the padded op, unpack (what a packed trainer does today);
- read-probe (fused ops): a max over the packed hidden states' bytes.
Targets: packed fused_reward_gae >= 1.6x padded on the uniform case; packed fused bandwidth (bytes
it must read / time) >= 70% of the read probe's. Cases: r3hf/bench/packed.py.

    pytest benchmarks/test_packed.py --benchmark-only --benchmark-json=out.json
    python benchmarks/packed_ratios.py out.json > benchmarks/results/packed-cpu-<date>.md

R3HF_BENCH_SIZE=quick|cpu|gpu picks the shapes, R3HF_BENCH_BACKEND the backend (default cpp on CPU,
triton on CUDA), R3HF_BENCH_THREADS=n torch's threads. Before the first timing of each case, the
packed output is checked against the padded output unpacked, so a wrong kernel cannot post a time.
"""

import os

import pytest
import torch

from conftest import DEVICE, SIZE
from r3hf.bench import packed as pk

BACKEND = os.environ.get("R3HF_BENCH_BACKEND", "triton" if DEVICE.type == "cuda" else "cpp")
if BACKEND == "cpp" and os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1", allow_module_level=True)
if int(os.environ.get("R3HF_BENCH_THREADS", "0")):
    torch.set_num_threads(int(os.environ["R3HF_BENCH_THREADS"]))

FUSED_OPS = ("fused_reward_gae", "fused_reward_group_advantages")
TOKEN_OPS = ("token_rewards", "gae", "reward_to_go", "group_advantages")
_cases: dict = {}
_checked: set = set()


def case(op, dist):
    """Builds the cases of one (kind, dist) on first use and frees the other kind's tensors."""
    kind = "fused" if op in FUSED_OPS else "tokens"
    if (kind, dist) not in _cases:
        _cases.clear()
        if kind == "fused":
            N, max_len, D = pk.SIZES[SIZE]["fused"]
            built = pk.fused_cases(N, max_len, D, dist, DEVICE, BACKEND)
        else:
            N, max_len = pk.SIZES[SIZE]["tokens"]
            built = pk.token_cases(N, max_len, dist, DEVICE, BACKEND)
        _cases[(kind, dist)] = {c.params["op"]: c for c in built}
    return _cases[(kind, dist)][op]


def _run(benchmark, op, dist, provider):
    c = case(op, dist)
    if c.name not in _checked:
        pk.check(c)
        _checked.add(c.name)
    benchmark.group = f"{c.name} (baseline {c.baseline})"
    benchmark.extra_info.update(c.params, provider=provider, baseline=c.baseline, bytes_read=c.bytes_read,
                                probe_bytes=c.notes.get("probe_bytes"), torch_threads=torch.get_num_threads(),
                                loadavg_before=os.getloadavg()[0])
    fn = c.providers[provider]
    if DEVICE.type == "cuda":
        def fn(f=fn):
            f()
            torch.cuda.synchronize()
    # pad-unpad allocates and fills the padded tensors every call (up to ~1 GB of fresh pages for
    # the tail's hidden states): a few rounds are enough.
    rounds, warmup = (5, 1) if provider == "pad-unpad" else (15, 2)
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
    benchmark.extra_info["loadavg_after"] = os.getloadavg()[0]


@pytest.mark.parametrize("provider", ["packed", "padded", "pad-unpad", "read-probe"])
@pytest.mark.parametrize("op", FUSED_OPS)
@pytest.mark.parametrize("dist", pk.DISTS)
def test_packed_fused(benchmark, dist, op, provider):
    _run(benchmark, op, dist, provider)


@pytest.mark.parametrize("provider", ["packed", "padded", "pad-unpad"])
@pytest.mark.parametrize("op", TOKEN_OPS)
@pytest.mark.parametrize("dist", pk.DISTS)
def test_packed_tokens(benchmark, dist, op, provider):
    _run(benchmark, op, dist, provider)
