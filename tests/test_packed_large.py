"""One packed stream of T = 1,048,576 tokens over N = 4096 sequences on CPU (issue 16 part 4).

Peak memory is measured in a fresh process (Linux VmHWM after clear_refs), then the result is
compared with the padded oracle of tests/packed_oracle.py on the same stream.
"""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

import r3hf.ops as ops
from backends_here import runnable

PACKED = "cu_seqlens" in inspect.signature(ops.gae).parameters
pytestmark = pytest.mark.skipif(not PACKED, reason="r3hf.ops takes no cu_seqlens yet (branch core-packed not merged)")

T, N, D = 1 << 20, 4096, 64

SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, sys.argv[5])
    import r3hf.ops as ops
    import packed_oracle as oracle
    T, N, D, backend = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    g = torch.Generator().manual_seed(0)
    # Lengths 0..512 (empty sequences included) summing to exactly T: pairs (256 + d, 256 - d), shuffled.
    d = torch.randint(-256, 257, (N // 2,), generator=g)
    lengths = torch.stack([256 + d, 256 - d], 1).reshape(-1)[torch.randperm(N, generator=g)]
    cu = torch.zeros(N + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    seq = torch.repeat_interleave(torch.arange(N), lengths)
    pos = torch.arange(T) - cu[:-1].long()[seq]
    prompt = torch.randint(1, 64, (N,), generator=g)
    # prompt tokens, then generated tokens with 5% observation holes; first="prompt" is valid
    mask = (pos >= prompt[seq]) & (torch.rand(T, generator=g) > 0.05)
    hidden = torch.randn(T, D, generator=g, dtype=torch.bfloat16)  # bf16 directly: no fp32 intermediate
    weight = torch.randn(D, generator=g)
    values, lp, ref = (torch.randn(T, generator=g) for _ in range(3))
    inputs_bytes = sum(t.numel() * t.element_size() for t in (hidden, weight, values, lp, ref, mask, cu))
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
    kw = dict(cu_seqlens=cu, logprobs=lp, ref_logprobs=ref, kl_coef=0.1, gamma=1.0, lam=0.95)
    with open("/proc/self/clear_refs", "w") as f:  # Linux: resets the peak RSS (VmHWM)
        f.write("5")
    before = status("VmRSS:")
    out = ops.fused_reward_gae(hidden, weight, None, values, mask, None, **kw, backend=backend)
    adv = ops.group_advantages(out[0], mask, 8, "grpo", cu_seqlens=cu, backend=backend)
    after = status("VmHWM:")
    want = oracle.fused_reward_gae(hidden, weight, None, values, mask, None, **kw)
    want_adv = oracle.group_advantages(want[0], mask, 8, "grpo", cu_seqlens=cu)
    err = max(float(((x - y).abs() / (1 + y.abs().max())).max()) for x, y in zip((*out, adv), (*want, want_adv)))
    print(json.dumps(dict(peak_growth=after - before, inputs_bytes=inputs_bytes, max_rel_err=err,
                          shapes=[list(t.shape) for t in (*out, adv)])))
    """
)


@pytest.mark.parametrize("backend", runnable())
def test_one_million_tokens_4096_sequences(backend):
    from r3hf._dispatch import _why_not
    import torch

    if backend == "triton":
        pytest.skip("the Triton interpreter is not meant for large shapes; benchmarks/gpu_check.py covers Triton")
    for op in ("fused_reward_gae", "group_advantages"):
        why = _why_not(backend, op, torch.device("cpu"), ("cu_seqlens",))
        if why:
            pytest.skip(f"{backend} backend does not run packed {op}: {why}")
    here = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(T), str(N), str(D), backend, here],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(done.stdout.strip().splitlines()[-1])
    assert res["shapes"] == [[T]] * 4
    assert res["max_rel_err"] < 1e-4, res
    # Outputs and a dozen [T] fp32 temporaries at most, never a padded [N, S, D] copy of hidden.
    # The torch reference pads (to [N, 512 + prompt]: about 2.5 T) and upcasts hidden, by design.
    bound = 16 * T * 4 + 32 * 2**20
    if backend == "torch":
        bound = 40 * 3 * T * 4 + T * D * 4 + 64 * 2**20
    assert res["peak_growth"] <= bound, res
