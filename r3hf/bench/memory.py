"""Peak memory of fused_reward_gae against the unfused path, each measured on its own.

CPU: a fresh process per provider, peak RSS growth after the inputs exist (Linux VmHWM, reset
before the call). CUDA:
torch.cuda.max_memory_allocated growth. No [B, S, D]-sized temporary should appear for r3hf.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    import r3hf.ops as ops
    from r3hf.bench import baselines as bl
    provider, B, S, D, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    P = 64; T = S - P
    g = torch.Generator().manual_seed(0)
    dev = torch.device(device)
    # Filled row by row: a whole-tensor randn would pass through an fp32 temporary and raise the
    # peak before the measurement starts, hiding the op's own temporaries.
    hidden = torch.empty(B, S, D, dtype=torch.bfloat16, device=dev)
    for b in range(B):
        hidden[b].normal_(generator=g if dev.type == "cpu" else None)
    head = torch.nn.Linear(D, 1, bias=False, dtype=torch.bfloat16, device=dev)
    v, lp, ref = (torch.randn(B, T, generator=g).to(dev) for _ in range(3))
    m = torch.ones(B, T, dtype=torch.bool, device=dev)
    kw = dict(logprobs=lp, ref_logprobs=ref, kl_coef=0.05, gamma=1.0, lam=0.95)
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
    if dev.type == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    else:
        # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM), so the peak is the op's own.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS:")
    with torch.no_grad():
        if provider == "unfused":
            bl.unfused_reward_gae(hidden, head, v, m, P, lp, ref, 0.05, 1.0, 0.95)
        else:
            ops.fused_reward_gae(hidden, head.weight, None, v, m, P, backend=provider.removeprefix("r3hf-"), **kw)
    if dev.type == "cuda":
        torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = status("VmHWM:") - base
    print(json.dumps({"peak_bytes": peak, "hidden_bytes": hidden.numel() * hidden.element_size()}))
    """
)


def measure(provider: str, B: int, S: int, D: int, device: str = "cpu") -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, provider, str(B), str(S), str(D), device],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe for {provider} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(B: int, S: int, D: int, device: str = "cpu") -> dict:
    from .cases import r3hf_backends

    # The reference is listed too: its fp32 copy of [B, S, D] is what a compiled backend avoids.
    providers = [f"r3hf-{b}" for b in r3hf_backends("fused_reward_gae", torch.device(device))] + ["unfused"]
    return {p: measure(p, B, S, D, device) for p in providers}
