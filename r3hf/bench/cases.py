"""Benchmark cases: each compares providers on the same inputs, in the same run.

Sizes come in three sets: "quick" (seconds, for CI), "cpu" (a full run on a small CPU machine)
and "gpu". A provider is a zero-argument callable made for one case's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

import r3hf.ops as ops

from . import baselines as bl

SIZES = {
    "quick": {
        "gae": [(8, 256)],
        "rewards": [(8, 256)],
        "fused": [(2, 256, 1024)],
    },
    "cpu": {
        "gae": [(1, 1024), (8, 1024), (64, 256), (64, 1024), (64, 4096), (256, 1024)],
        "rewards": [(64, 1024), (64, 4096)],
        "fused": [(8, 2048, 1024), (8, 2048, 4096)],
    },
    "gpu": {
        "gae": [(1, 16384), (8, 16384), (64, 4096), (256, 1024), (256, 16384)],
        "rewards": [(256, 4096)],
        "fused": [(8, 4096, 4096), (64, 4096, 1024), (64, 4096, 4096)],
    },
}
PROMPT = 64
GAMMA, LAM, KL_COEF = 1.0, 0.95, 0.05


@dataclass
class Case:
    group: str
    name: str
    params: dict
    providers: dict[str, Callable[[], object]]
    baseline: str
    bytes_read: int | None = None  # hidden-state bytes read once, for bandwidth figures
    notes: dict = field(default_factory=dict)


def r3hf_backends(op: str, device: torch.device) -> list[str]:
    from r3hf._dispatch import _why_not

    return [b for b in ("triton", "cpp", "torch") if _why_not(b, op, device) is None]


def _trailing_mask(B, T, gen, device):
    lengths = torch.randint(T // 2, T + 1, (B,), generator=gen)
    return (torch.arange(T)[None] < lengths[:, None]).to(device)


def gae_case(B, T, device, with_reference=True) -> Case:
    gen = torch.Generator().manual_seed(B * 100003 + T)
    r = torch.randn(B, T, generator=gen).to(device)
    v = torch.randn(B, T, generator=gen).to(device)
    m = _trailing_mask(B, T, gen, device)
    providers = {}
    for b in r3hf_backends("gae", device):
        if b == "torch" and not with_reference:
            continue
        providers[f"r3hf-{b}"] = (lambda b=b: ops.gae(r, v, m, GAMMA, LAM, backend=b))
    providers["verl-loop"] = lambda: bl.verl_style_gae(r, v, m, GAMMA, LAM)
    providers["trl-loop"] = lambda: bl.plain_loop_gae(r, v, m, GAMMA, LAM)
    if bl.torchrl_available():
        providers["torchrl-vec"] = lambda: bl.torchrl_vec_gae(r, v, m, GAMMA, LAM)
    return Case("gae", f"gae B={B} T={T}", dict(B=B, T=T), providers, baseline="verl-loop")


def rewards_case(B, T, device) -> Case:
    gen = torch.Generator().manual_seed(B * 7 + T)
    scores = torch.randn(B, PROMPT + T, generator=gen).to(device)
    m = _trailing_mask(B, T, gen, device)
    lp, ref = (-torch.rand(B, T, generator=gen)).to(device), (-torch.rand(B, T, generator=gen)).to(device)
    providers = {
        f"r3hf-{b}": (lambda b=b: ops.token_rewards(scores, m, PROMPT, logprobs=lp, ref_logprobs=ref,
                                                    kl_coef=KL_COEF, backend=b))
        for b in r3hf_backends("token_rewards", device)
    }
    mf = m.float()
    providers["torch-expr"] = lambda: bl.unfused_rewards(scores, mf, PROMPT, lp, ref, KL_COEF)
    return Case("rewards", f"rewards B={B} T={T}", dict(B=B, T=T), providers, baseline="torch-expr")


def fused_case(B, S, D, device) -> Case:
    T = S - PROMPT
    gen = torch.Generator().manual_seed(B + S + D)
    hidden = torch.randn(B, S, D, generator=gen, dtype=torch.bfloat16).to(device)
    head = torch.nn.Linear(D, 1, bias=False, dtype=torch.bfloat16, device=device)
    v = torch.randn(B, T, generator=gen).to(device)
    # Every position generated: compiled backends skip hidden rows no reward reads, so with padding
    # the bytes counted for bandwidth would exceed the bytes read.
    m = torch.ones(B, T, dtype=torch.bool, device=device)
    lp, ref = (-torch.rand(B, T, generator=gen)).to(device), (-torch.rand(B, T, generator=gen)).to(device)
    kw = dict(logprobs=lp, ref_logprobs=ref, kl_coef=KL_COEF, gamma=GAMMA, lam=LAM)
    # The reference (an fp32 copy of [B, S, D], by design) runs only where nothing compiled does.
    backends = [b for b in r3hf_backends("fused_reward_gae", device) if b != "torch"] or ["torch"]
    providers = {
        f"r3hf-{b}": (lambda b=b: ops.fused_reward_gae(hidden, head.weight, None, v, m, PROMPT, backend=b, **kw))
        for b in backends
    }

    def unfused():
        with torch.no_grad():
            return bl.unfused_reward_gae(hidden, head, v, m, PROMPT, lp, ref, KL_COEF, GAMMA, LAM)

    providers["unfused"] = unfused
    providers["read-probe"] = lambda: bl.read_bandwidth_probe(hidden)
    if device.type == "cuda":
        dst = torch.empty_like(hidden)
        providers["copy-probe"] = lambda: bl.copy_bandwidth_probe(hidden, dst)
    return Case("fused", f"fused B={B} S={S} D={D} bf16", dict(B=B, S=S, D=D), providers, baseline="unfused",
                bytes_read=hidden.numel() * hidden.element_size())


def build(size: str, device: torch.device, groups=("gae", "rewards", "fused")) -> list[Case]:
    sizes = SIZES[size]
    out = []
    if "gae" in groups:
        out += [gae_case(B, T, device, with_reference=B * T <= 65536) for B, T in sizes["gae"]]
    if "rewards" in groups:
        out += [rewards_case(B, T, device) for B, T in sizes["rewards"]]
    if "fused" in groups:
        out += [fused_case(B, S, D, device) for B, S, D in sizes["fused"]]
    return out
