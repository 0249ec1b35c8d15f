"""Benchmark cases: each compares providers on the same inputs, in the same run.

Sizes come in three sets: "quick" (seconds, for CI), "cpu" (a full run on a small CPU machine)
and "gpu". A provider is a zero-argument callable made for one case's inputs.
"""

from __future__ import annotations

import torch

import r3hf.ops as ops

from . import baselines as bl
from .case import GAMMA, KL_COEF, LAM, Case  # noqa: F401  (Case and the constants, for cases' users)

SIZES = {
    "quick": {
        "gae": [(8, 256)],
        "rewards": [(8, 256)],
        "fused": [(2, 256, 1024)],
        "group": [(16, 256, 4)],
        "floor": [(16, 256, 4)],
        "rtg": [(8, 256)],
        "fused_group": [(2, 256, 1024)],
    },
    "cpu": {
        "gae": [(1, 1024), (8, 1024), (64, 256), (64, 1024), (64, 4096), (256, 1024)],
        "rewards": [(64, 1024), (64, 4096)],
        "fused": [(8, 2048, 1024), (8, 2048, 4096)],
        "group": [(1024, 4096, 8)],  # (B, L, G): issue 12's CPU target
        "floor": [(1024, 4096, 8)],  # (B, L, G): issue 21's bandwidth floor (r3hf/bench/floor.py)
        "rtg": [(64, 1024)],
        "fused_group": [(8, 2048, 4096)],
    },
    "gpu": {
        "gae": [(1, 16384), (8, 16384), (64, 4096), (256, 1024), (256, 16384)],
        "rewards": [(256, 4096)],
        "fused": [(8, 4096, 4096), (64, 4096, 1024), (64, 4096, 4096)],
        "group": [(1024, 4096, 8)],
        "floor": [(1024, 4096, 8)],
        "rtg": [(256, 4096)],
        "fused_group": [(8, 4096, 4096), (64, 4096, 4096)],
    },
}
PROMPT = 64
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


# --- group advantages (issue 12) -----------------------------------------------------------------


def _sparse_rewards(B, T, gen, device):
    """Trailing-padding masks and each row's score at its last generated token (veRL's layout), so
    that r3hf and veRL compute the same advantages on these inputs."""
    m = _trailing_mask(B, T, gen, device)
    last = (m.sum(1) - 1).clamp_min(0)
    r = torch.zeros(B, T, device=device)
    r[torch.arange(B, device=device), last] = torch.randn(B, generator=gen).to(device)
    return r, m


def group_cases(B, T, G, device) -> list[Case]:
    """group_advantages per estimator against veRL's own function of the same family."""
    from . import verl_baselines as vb

    why = vb.unavailable_reason()
    if why:
        print(f"  skipping group advantages B={B} T={T}: {why}")
        return []
    gen = torch.Generator().manual_seed(B * 31 + T)
    r, m = _sparse_rewards(B, T, gen, device)
    index = torch.arange(B, device=device) // G
    out = []
    for est in vb.VERL_FUNCTIONS:
        providers = {
            f"r3hf-{b}": (lambda b=b, est=est: ops.group_advantages(r, m, G, est, backend=b))
            for b in r3hf_backends("group_advantages", device)
            if b != "torch" or B * T <= 65536  # the reference loops over groups in Python
        }
        providers[f"verl-{est}"] = vb.estimator(est, r, m, index)
        out.append(Case("group", f"group_advantages {est} B={B} G={G} T={T}", dict(B=B, T=T, G=G, estimator=est),
                        providers, baseline=f"verl-{est}", notes={"verl": vb.version()}))
    return out


def rtg_case(B, T, device) -> Case | None:
    """reward_to_go (holes="skip") against veRL's reinforce_plus_plus estimator, whose time is its
    per-position loop over T (its final masked whitening is a few [B, T] ops)."""
    from . import verl_baselines as vb

    why = vb.unavailable_reason()
    if why:
        print(f"  skipping reward_to_go B={B} T={T}: {why}")
        return None
    gen = torch.Generator().manual_seed(B * 13 + T)
    r = torch.randn(B, T, generator=gen).to(device)
    m = _trailing_mask(B, T, gen, device)
    providers = {f"r3hf-{b}": (lambda b=b: ops.reward_to_go(r, m, 1.0, backend=b))
                 for b in r3hf_backends("reward_to_go", device)}
    providers["verl-reinforce_pp"] = vb.estimator("reinforce_pp", r, m, torch.zeros(B, dtype=torch.int64))
    return Case("rtg", f"reward_to_go B={B} T={T}", dict(B=B, T=T), providers, baseline="verl-reinforce_pp",
                notes={"verl": vb.version()})


def fused_group_case(B, S, D, device) -> Case:
    """fused_reward_group_advantages (grpo, KL on) on bf16 hidden states, every position generated
    so the op reads all B·S·D bytes: its bandwidth against the read probe over the same tensor."""
    T = S - PROMPT
    gen = torch.Generator().manual_seed(B + S + D + 1)
    hidden = torch.randn(B, S, D, generator=gen, dtype=torch.bfloat16).to(device)
    weight = (torch.randn(D, generator=gen) / D**0.5).to(torch.bfloat16).to(device)
    m = torch.ones(B, T, dtype=torch.bool, device=device)
    lp, ref = (-torch.rand(B, T, generator=gen)).to(device), (-torch.rand(B, T, generator=gen)).to(device)
    G = 4 if B % 4 == 0 else 1
    backends = [b for b in r3hf_backends("fused_reward_group_advantages", device) if b != "torch"] or ["torch"]
    providers = {
        f"r3hf-{b}": (lambda b=b: ops.fused_reward_group_advantages(
            hidden, weight, None, m, PROMPT, G, "grpo", logprobs=lp, ref_logprobs=ref, kl_coef=KL_COEF, backend=b))
        for b in backends
    }
    providers["read-probe"] = lambda: bl.read_bandwidth_probe(hidden)
    if device.type == "cuda":
        dst = torch.empty_like(hidden)
        providers["copy-probe"] = lambda: bl.copy_bandwidth_probe(hidden, dst)
    return Case("fused_group", f"fused_group B={B} S={S} D={D} bf16", dict(B=B, S=S, D=D), providers,
                baseline="read-probe", bytes_read=hidden.numel() * hidden.element_size())


GROUPS = ("gae", "rewards", "fused", "group", "floor", "rtg", "fused_group")


def build(size: str, device: torch.device, groups=GROUPS) -> list[Case]:
    sizes = SIZES[size]
    out = []
    if "gae" in groups:
        out += [gae_case(B, T, device, with_reference=B * T <= 65536) for B, T in sizes["gae"]]
    if "rewards" in groups:
        out += [rewards_case(B, T, device) for B, T in sizes["rewards"]]
    if "fused" in groups:
        out += [fused_case(B, S, D, device) for B, S, D in sizes["fused"]]
    if "group" in groups:
        out += [c for B, T, G in sizes["group"] for c in group_cases(B, T, G, device)]
    if "floor" in groups:  # issue 21: every estimator x baseline against its bandwidth floor
        from .floor import cases as floor_cases

        out += [c for B, T, G in sizes["floor"] for c in floor_cases(B, T, G, device)]
    if "rtg" in groups:
        out += [c for B, T in sizes["rtg"] if (c := rtg_case(B, T, device)) is not None]
    if "fused_group" in groups:
        out += [fused_group_case(B, S, D, device) for B, S, D in sizes["fused_group"]]
    if "packed" in groups:  # opt-in (issue 16): packed vs padded, r3hf/bench/packed.py
        from .packed import build as build_packed

        out += build_packed(size, device)
    return out
