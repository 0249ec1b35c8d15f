"""Packed vs padded benchmark cases (issue 16): the same sequences, once as one packed stream with
`cu_seqlens` and once padded as a trainer pads them.

A batch is N sequences, each a prompt then a response. Response lengths are uniform in
[1, max_len] ("uniform") or lognormal with the same total number of response tokens ("tail").
The padded layout is veRL's: prompts left-padded to the longest prompt P, responses right-padded
to the longest response L, so hidden is [N, P + L, D], prompt_len = P and per-token tensors are
[N, L]. Providers, each on the same tokens:

- "packed": the op on the stream, `cu_seqlens=...`;
- "padded": the op on the padded tensors (a trainer that already holds them);
- "pad-unpad": a packed trainer today: pad the stream's tensors, call the padded op, unpack the
  outputs to [T] (the index maps are precomputed, as a trainer would);
- "read-probe" (fused cases): a max over the packed hidden states' bytes, the practical read
  bandwidth (r3hf.bench.baselines.read_bandwidth_probe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import r3hf.ops as ops

from . import baselines as bl
from .case import KL_COEF, LAM, Case

PROMPT_RANGE = (16, 256)  # prompt lengths, uniform
TAIL_SIGMA = 1.2  # lognormal shape of the long-tail response lengths
TAIL_CAP = 32768  # no response longer than this in the tail case
GROUP = 8  # sequences per group for the group ops (sequences i // GROUP form a group)

# (N sequences, max response length, D) per shape set; "fused" cases carry hidden [T, D] in bf16.
SIZES = {
    "quick": {"tokens": (16, 256), "fused": (8, 256, 256)},
    "cpu": {"tokens": (256, 4096), "fused": (32, 4096, 2048)},
    "gpu": {"tokens": (1024, 4096), "fused": (64, 4096, 4096)},
}
DISTS = ("uniform", "tail")


def response_lengths(N: int, max_len: int, dist: str, gen: torch.Generator) -> torch.Tensor:
    """int64 [N]: uniform in [1, max_len], or lognormal(sigma=TAIL_SIGMA) rescaled to the same total
    as the uniform draw of the same generator state (clamped to [1, TAIL_CAP])."""
    uniform = torch.randint(1, max_len + 1, (N,), generator=gen)
    if dist == "uniform":
        return uniform
    if dist != "tail":
        raise ValueError(f"dist must be 'uniform' or 'tail', got {dist!r}")
    total = int(uniform.sum())
    z = torch.randn(N, generator=gen, dtype=torch.float64)
    raw = torch.exp(TAIL_SIGMA * z)
    # Rescale, clamp, and rescale the unclamped part again until the total matches (a few rounds).
    lengths = raw * (total / raw.sum())
    for _ in range(20):
        lengths = lengths.clamp(1, TAIL_CAP)
        free = (lengths > 1) & (lengths < TAIL_CAP)
        gap = total - float(lengths.sum())
        if abs(gap) < 0.5 or not bool(free.any()):
            break
        lengths[free] *= 1 + gap / float(lengths[free].sum())
    out = lengths.round().to(torch.int64).clamp(1, TAIL_CAP)
    out[int(out.argmax())] += total - int(out.sum())  # exact total: the rounding remainder on the longest
    return out


@dataclass
class PackedBatch:
    """Lengths, `cu_seqlens`, the response mask [T] and the index maps stream <-> padded."""

    N: int
    prompt_lens: torch.Tensor  # [N]
    resp_lens: torch.Tensor  # [N]
    cu_seqlens: torch.Tensor  # int32 [N + 1], as flash-attn / veRL hand it over
    response_mask: torch.Tensor  # bool [T]
    P: int  # longest prompt (padded prompt_len)
    L: int  # longest response (padded response length)
    seq_dst: torch.Tensor  # [T]: flat index of each stream position in [N, P + L]
    resp_src: torch.Tensor  # [R]: stream positions of the response tokens
    resp_dst: torch.Tensor  # [R]: their flat index in [N, L]

    @property
    def T(self) -> int:
        return int(self.cu_seqlens[-1])

    @property
    def S(self) -> int:
        return self.P + self.L

    def pad_sequences(self, x: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [N, P + L, ...]: prompts left-padded, responses right-padded, zeros."""
        out = x.new_zeros(self.N * self.S, *x.shape[1:])
        out[self.seq_dst] = x
        return out.view(self.N, self.S, *x.shape[1:])

    def pad_responses(self, x: torch.Tensor) -> torch.Tensor:
        """[T] -> [N, L]: the response tokens of each sequence, right-padded with zeros/False."""
        out = x.new_zeros(self.N * self.L)
        out[self.resp_dst] = x[self.resp_src]
        return out.view(self.N, self.L)

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """[N, L] -> [T], 0 outside the responses."""
        out = y.new_zeros(self.T)
        out[self.resp_src] = y.reshape(-1)[self.resp_dst]
        return out

    def hidden_rows_needed(self) -> int:
        """Hidden rows the fused ops must project: every response token plus the baseline row before
        each response (Φ_1, first="prompt")."""
        return int(self.resp_lens.sum()) + int((self.resp_lens > 0).sum())

    def describe(self) -> dict:
        T, padded = self.T, self.N * self.S
        return dict(N=self.N, T=T, P=self.P, L=self.L, response_tokens=int(self.resp_lens.sum()),
                    padded_positions=padded, padded_over_packed=round(padded / T, 3),
                    padded_response_over_response=round(self.N * self.L / int(self.resp_lens.sum()), 3),
                    resp_len_mean=round(float(self.resp_lens.float().mean()), 1),
                    resp_len_median=int(self.resp_lens.median()), resp_len_max=self.L)


def make_batch(N: int, max_len: int, dist: str, seed: int, device: torch.device) -> PackedBatch:
    gen = torch.Generator().manual_seed(seed)
    resp = response_lengths(N, max_len, dist, gen)
    prompt = torch.randint(PROMPT_RANGE[0], PROMPT_RANGE[1] + 1, (N,), generator=gen)
    seq = prompt + resp
    cu = torch.zeros(N + 1, dtype=torch.int64)
    cu[1:] = seq.cumsum(0)
    T, P, L = int(cu[-1]), int(prompt.max()), int(resp.max())
    S = P + L
    seq_id = torch.repeat_interleave(torch.arange(N), seq)
    j = torch.arange(T) - cu[:-1][seq_id]  # position within its sequence
    is_resp = j >= prompt[seq_id]
    col = torch.where(is_resp, P + j - prompt[seq_id], P - prompt[seq_id] + j)
    seq_dst = seq_id * S + col
    resp_src = is_resp.nonzero().squeeze(1)
    resp_dst = seq_id[resp_src] * L + (j[resp_src] - prompt[seq_id[resp_src]])
    d = lambda t: t.to(device)  # noqa: E731
    return PackedBatch(N, prompt, resp, d(cu.to(torch.int32)), d(is_resp), P, L, d(seq_dst), d(resp_src), d(resp_dst))


# --- cases ---------------------------------------------------------------------------------------


def padded_call_of(call_and_args):
    fn, args, kwargs = call_and_args
    return fn(*args, **kwargs)


def _unpack_all(batch):
    def unpack(out):
        return tuple(batch.unpack(o) for o in out) if isinstance(out, tuple) else batch.unpack(out)
    return unpack


def token_cases(N: int, max_len: int, dist: str, device: torch.device, backend: str) -> list[Case]:
    """token_rewards, gae, reward_to_go, group_advantages (grpo) on per-token tensors [T]."""
    b = make_batch(N, max_len, dist, seed=1000 + N, device=device)
    gen = torch.Generator().manual_seed(2000 + N)
    T = b.T
    scores, values, rewards = (torch.randn(T, generator=gen).to(device) for _ in range(3))
    lp, ref = (-torch.rand(T, generator=gen)).to(device), (-torch.rand(T, generator=gen)).to(device)
    m, cu = b.response_mask, b.cu_seqlens
    pm = b.pad_responses(m)
    p_scores = b.pad_sequences(scores)
    p_values, p_rewards, p_lp, p_ref = (b.pad_responses(x) for x in (values, rewards, lp, ref))
    unpack = _unpack_all(b)
    info = b.describe()
    rk = dict(kl_coef=KL_COEF, backend=backend)
    specs = {
        "token_rewards": (
            lambda: ops.token_rewards(scores, m, None, logprobs=lp, ref_logprobs=ref, cu_seqlens=cu, **rk),
            lambda: ops.token_rewards(p_scores, pm, b.P, logprobs=p_lp, ref_logprobs=p_ref, **rk),
            lambda: (ops.token_rewards, (b.pad_sequences(scores), b.pad_responses(m), b.P),
                     dict(logprobs=b.pad_responses(lp), ref_logprobs=b.pad_responses(ref), **rk)),
        ),
        "gae": (
            lambda: ops.gae(rewards, values, m, 1.0, LAM, cu_seqlens=cu, backend=backend),
            lambda: ops.gae(p_rewards, p_values, pm, 1.0, LAM, backend=backend),
            lambda: (ops.gae, (b.pad_responses(rewards), b.pad_responses(values), b.pad_responses(m), 1.0, LAM),
                     dict(backend=backend)),
        ),
        "reward_to_go": (
            lambda: ops.reward_to_go(rewards, m, 1.0, cu_seqlens=cu, backend=backend),
            lambda: ops.reward_to_go(p_rewards, pm, 1.0, backend=backend),
            lambda: (ops.reward_to_go, (b.pad_responses(rewards), b.pad_responses(m), 1.0), dict(backend=backend)),
        ),
        "group_advantages": (
            lambda: ops.group_advantages(rewards, m, GROUP, "grpo", cu_seqlens=cu, backend=backend),
            lambda: ops.group_advantages(p_rewards, pm, GROUP, "grpo", backend=backend),
            lambda: (ops.group_advantages, (b.pad_responses(rewards), b.pad_responses(m), GROUP, "grpo"),
                     dict(backend=backend)),
        ),
    }
    out = []
    for op, (packed, padded, pad_inputs) in specs.items():
        providers = {"packed": packed, "padded": padded,
                     "pad-unpad": lambda pad_inputs=pad_inputs: unpack(padded_call_of(pad_inputs()))}
        name = f"packed {op} {dist} N={N} max_len={max_len}"
        out.append(Case("packed", name, dict(op=op, dist=dist, backend=backend, **info), providers,
                        baseline="padded", notes={"unpack": unpack}))
    return out


def fused_cases(N: int, max_len: int, D: int, dist: str, device: torch.device, backend: str) -> list[Case]:
    """fused_reward_gae and fused_reward_group_advantages (grpo) on bf16 hidden [T, D], KL on,
    with the read probe over the same hidden states."""
    b = make_batch(N, max_len, dist, seed=3000 + N + D, device=device)
    gen = torch.Generator().manual_seed(4000 + N + D)
    T = b.T
    hidden = torch.randn(T, D, generator=gen, dtype=torch.bfloat16).to(device)
    weight = (torch.randn(D, generator=gen) / math.sqrt(D)).to(torch.bfloat16).to(device)
    values = torch.randn(T, generator=gen).to(device)
    lp, ref = (-torch.rand(T, generator=gen)).to(device), (-torch.rand(T, generator=gen)).to(device)
    m, cu = b.response_mask, b.cu_seqlens
    p_hidden = b.pad_sequences(hidden)
    pm = b.pad_responses(m)
    p_values, p_lp, p_ref = (b.pad_responses(x) for x in (values, lp, ref))
    unpack = _unpack_all(b)
    gk = dict(kl_coef=KL_COEF, gamma=1.0, lam=LAM, backend=backend)
    fk = dict(kl_coef=KL_COEF, backend=backend)
    specs = {
        "fused_reward_gae": (
            lambda: ops.fused_reward_gae(hidden, weight, None, values, m, None, logprobs=lp, ref_logprobs=ref,
                                         cu_seqlens=cu, **gk),
            lambda: ops.fused_reward_gae(p_hidden, weight, None, p_values, pm, b.P, logprobs=p_lp, ref_logprobs=p_ref,
                                         **gk),
            lambda: (ops.fused_reward_gae, (b.pad_sequences(hidden), weight, None, b.pad_responses(values),
                                            b.pad_responses(m), b.P),
                     dict(logprobs=b.pad_responses(lp), ref_logprobs=b.pad_responses(ref), **gk)),
            3,  # values, logprobs, ref_logprobs
        ),
        "fused_reward_group_advantages": (
            lambda: ops.fused_reward_group_advantages(hidden, weight, None, m, None, GROUP, "grpo", logprobs=lp,
                                                      ref_logprobs=ref, cu_seqlens=cu, **fk),
            lambda: ops.fused_reward_group_advantages(p_hidden, weight, None, pm, b.P, GROUP, "grpo", logprobs=p_lp,
                                                      ref_logprobs=p_ref, **fk),
            lambda: (ops.fused_reward_group_advantages, (b.pad_sequences(hidden), weight, None, b.pad_responses(m),
                                                         b.P, GROUP, "grpo"),
                     dict(logprobs=b.pad_responses(lp), ref_logprobs=b.pad_responses(ref), **fk)),
            2,  # logprobs, ref_logprobs
        ),
    }
    info = b.describe()
    # Bytes the packed op must read: the hidden rows its rewards need, and each per-token input [T]
    # (fp32 tensors and the bool mask) once.
    hidden_bytes = b.hidden_rows_needed() * D * hidden.element_size()
    out = []
    for op, (packed, padded, pad_inputs, n_f32) in specs.items():
        providers = {"packed": packed, "padded": padded,
                     "pad-unpad": lambda pad_inputs=pad_inputs: unpack(padded_call_of(pad_inputs())),
                     "read-probe": lambda: bl.read_bandwidth_probe(hidden)}
        bytes_read = hidden_bytes + T * (4 * n_f32 + 1)
        name = f"packed {op} {dist} N={N} max_len={max_len} D={D} bf16"
        out.append(Case("packed", name, dict(op=op, dist=dist, backend=backend, D=D, **info), providers,
                        baseline="padded", bytes_read=bytes_read,
                        notes={"unpack": unpack, "probe_bytes": hidden.numel() * hidden.element_size()}))
    return out


def build(size: str, device: torch.device, backend: str | None = None, dists=DISTS, verify=True) -> list[Case]:
    """Every packed case of a shape set (`r3hf bench --groups packed`), each checked once (packed ==
    padded unpacked) unless verify=False. backend: the compiled one of the device by default."""
    backend = backend or ("triton" if device.type == "cuda" else "cpp")
    N, max_len = SIZES[size]["tokens"]
    Nf, max_len_f, D = SIZES[size]["fused"]
    out = []
    for dist in dists:
        out += fused_cases(Nf, max_len_f, D, dist, device, backend)
        out += token_cases(N, max_len, dist, device, backend)
    if verify:
        for c in out:
            check(c)
    return out


def check(case: Case, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """Raises AssertionError unless the packed output equals the padded output unpacked."""
    unpack = case.notes["unpack"]
    got, want = case.providers["packed"](), unpack(case.providers["padded"]())
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want), (case.name, len(got), len(want))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda s: f"{case.name}: {s}")
