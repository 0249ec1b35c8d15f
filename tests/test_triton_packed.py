"""Triton backend on packed sequences (cu_seqlens, PACKED_CONTRACT.md) vs an independent oracle.

The oracle is the contract's definition, written here: pad each sequence's response region into
a row (prompt_len_i = s_i − cu[i], s_i = its first generated position), call the padded public op
with backend="torch", and unpack (0 outside the response regions). The Triton side is called
through r3hf.backends.triton with the normalised packed arguments (bool mask, int64 cu_seqlens,
prompt_len=None, fp32 [N] bootstrap, int64 [N] index).

Under TRITON_INTERPRET=1 (conftest.py): fp32 and small shapes, plus a few bf16 cases.
R3HF_TRITON_CHUNK=16 makes sequences of up to 40 positions span up to 3 chunks while shorter
ones sit inside one, and one 300-position sequence crosses the 16-map carry blocks.
"""

from __future__ import annotations

import pytest
import torch

import r3hf.ops as ops
from batches import TOLERANCES

pytest.importorskip("triton")
from r3hf.backends import triton as tb  # noqa: E402
from r3hf.kernels import varlen  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


# --- layouts ------------------------------------------------------------------------------


def layout(kinds, *, seed=0):
    """Masks of a packed stream from per-sequence kinds -> (cu int64 [N + 1], mask bool [T]).

    kind: ("empty",) | ("prompt", n) all-prompt | ("seq", prompt, resp, holes, tail): `prompt`
    non-generated tokens, `resp` tokens starting with a generated one (holes: probability of a
    masked token inside), then `tail` trailing non-generated tokens.
    """
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for k in kinds:
        if k[0] == "empty":
            parts.append(torch.zeros(0, dtype=torch.bool))
        elif k[0] == "prompt":
            parts.append(torch.zeros(k[1], dtype=torch.bool))
        else:
            _, p, r, holes, tail = k
            resp = torch.rand(r, generator=gen) >= holes
            resp[0] = True
            parts.append(torch.cat([torch.zeros(p, dtype=torch.bool), resp, torch.zeros(tail, dtype=torch.bool)]))
    lens = torch.tensor([len(x) for x in parts], dtype=torch.int64)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)])
    return cu, torch.cat(parts)


def random_kinds(n, *, seed, min_prompt=1, max_len=40):
    gen = torch.Generator().manual_seed(1000 + seed)

    def ri(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    kinds = []
    for _ in range(n):
        u = ri(0, 9)
        if u == 0:
            kinds.append(("empty",))
        elif u == 1:
            kinds.append(("prompt", ri(1, 12)))
        else:
            p = ri(min_prompt, 8)
            r = ri(1, max_len - p - 3)
            kinds.append(("seq", p, r, [0.0, 0.3][ri(0, 1)], ri(0, 3)))
    return kinds


EDGE = [("empty",), ("seq", 1, 1, 0.0, 0), ("prompt", 5), ("seq", 3, 33, 0.4, 2), ("seq", 2, 14, 0.0, 0),
        ("empty",), ("seq", 15, 17, 0.5, 3), ("seq", 4, 1, 0.0, 20), ("empty",)]
# first="zero" also allows a generated token at a sequence's first position (prompt 0)
EDGE_ZERO = [("seq", 0, 9, 0.2, 1), ("empty",), ("seq", 0, 30, 0.3, 0), ("prompt", 3), ("seq", 5, 20, 0.0, 2)]
LAYOUTS = {
    "edge": (EDGE, 0),
    "one": ([("seq", 2, 37, 0.3, 1)], 1),
    "rand5": (random_kinds(5, seed=5), 5),
    "rand12": (random_kinds(12, seed=12), 12),
}


@pytest.fixture(params=["16", "default"])
def chunk(request, monkeypatch):
    if request.param != "default":
        monkeypatch.setenv("R3HF_TRITON_CHUNK", request.param)
    return request.param


# --- the oracle: pad, padded op on torch, unpack -------------------------------------------


class Packed:
    """Host-side view of a packed stream and its padded equivalent."""

    def __init__(self, cu, mask):
        self.cu = cu.to(DEV)
        self.mask = mask.to(DEV)
        c = cu.tolist()
        self.N = len(c) - 1
        self.T = c[-1]
        self.bounds = []
        for i in range(self.N):
            gen = mask[c[i]:c[i + 1]].nonzero()
            s = c[i] + int(gen[0]) if len(gen) else c[i + 1]
            self.bounds.append((c[i], s, c[i + 1]))
        self.L = max([1] + [e - s for _, s, e in self.bounds])
        # rows without a generated token get prompt_len 1 (any valid value: they are all masked)
        self.prompt_len = torch.tensor([s - b if s < e else 1 for b, s, e in self.bounds], dtype=torch.int64)
        self.S = int(self.prompt_len.max()) + self.L if self.N else 1
        self.S = max(self.S, max([1] + [e - b for b, _, e in self.bounds]))

    def pad_stream(self, x):
        """[T, ...] -> [N, S, ...]: each whole sequence (prompt and response), zero padded."""
        out = x.new_zeros((self.N, self.S, *x.shape[1:]))
        for i, (b, s, e) in enumerate(self.bounds):
            out[i, : e - b] = x[b:e]
        return out

    def pad_resp(self, x):
        """[T] -> [N, L]: each response region, padded with 0 (False)."""
        out = x.new_zeros((self.N, self.L))
        for i, (b, s, e) in enumerate(self.bounds):
            out[i, : e - s] = x[s:e]
        return out

    def unpack(self, y):
        """[N, L] -> [T], 0 outside the response regions."""
        out = torch.zeros(self.T, dtype=torch.float32, device=y.device)
        for i, (b, s, e) in enumerate(self.bounds):
            out[s:e] = y[i, : e - s]
        return out

    def oracle(self, op, *, stream=(), resp=(), **kw):
        """Padded op (torch backend) on the padded tensors, unpacked. stream/resp: (name, [T] tensor)
        pairs padded as whole sequences (scores, hidden) or as response rows (per-token tensors)."""
        args = {k: self.pad_stream(v) for k, v in stream}
        args.update({k: self.pad_resp(v) for k, v in resp})
        out = getattr(ops, op)(**args, **kw, backend="torch")
        if isinstance(out, tuple):
            return tuple(self.unpack(o) for o in out)
        return self.unpack(out)


def data(P, *, D=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = P.T

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(DEV)

    return dict(scores=rnd(T), hidden=rnd(T, D), weight=rnd(D), bias=torch.tensor([0.3], device=DEV),
                values=rnd(T), rewards=rnd(T), logprobs=rnd(T) * 0.1 - 1.0, ref_logprobs=rnd(T) * 0.1 - 1.0,
                bootstrap=rnd(P.N).float())


def close(got, ref, dtype=torch.float32, scale=1.0):
    rtol, atol = TOLERANCES[dtype]
    if isinstance(ref, tuple):
        assert isinstance(got, tuple) and len(got) == len(ref)
        for g, r in zip(got, ref):
            close(g, r, dtype, scale)
        return
    assert got.dtype == torch.float32 and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=rtol * scale, atol=atol * scale)


def make(name, zero=False):
    kinds, seed = (EDGE_ZERO, 3) if zero and name == "edge" else LAYOUTS[name]
    if zero and name != "edge":
        kinds = [("seq", 0, k[2] + k[1], k[3], k[4]) if k[0] == "seq" and i % 2 else k for i, k in enumerate(kinds)]
    return Packed(*layout(kinds, seed=seed))


# --- chunk index ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("c", [16, 64])
def test_chunk_index_covers_each_sequence_once(name, c):
    P = make(name)
    ch = varlen.chunk_index(P.cu, P.T, c)
    idx = ch.index.cpu()
    assert ch.grid == P.T // c + P.N and idx.shape == (ch.grid, 2)
    seen = [(int(n), int(k)) for n, k in idx if k >= 0]
    want = [(i, k) for i, (b, s, e) in enumerate(P.bounds) for k in range((e - b + c - 1) // c)]
    assert seen == want  # consecutive per sequence, in order, spare programs (−1) after
    assert (idx[len(want):, 1] == -1).all()
    starts = ch.starts.cpu().tolist()
    assert starts == [sum(1 for n, _ in want if n < i) for i in range(P.N)]


# --- single ops -----------------------------------------------------------------------------


def test_options_listed():
    for op in tb.OPS:
        assert "cu_seqlens" in tb.OPTIONS[op], op


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_prefix_scores_and_kl(name):
    P = make(name)
    d = data(P, seed=1)
    got = tb.prefix_scores(d["hidden"], d["weight"], d["bias"], cu_seqlens=P.cu)
    close(got, ops.prefix_scores(d["hidden"][None], d["weight"], d["bias"], backend="torch")[0])
    for est, clamp in [("k1", None), ("k3", (-0.1, 0.2))]:
        got = tb.kl_penalty(d["logprobs"], d["ref_logprobs"], est, clamp, cu_seqlens=P.cu)
        close(got, ops.kl_penalty(d["logprobs"][None], d["ref_logprobs"][None], est, clamp, backend="torch")[0])


TOKEN_OPTIONS = [
    dict(),
    dict(first="zero", beta_c=0.5),
    dict(reward_clip=(-0.2, 1.0), kl_coef=0.1, kl_estimator="k2", kl_clamp=(-0.3, 0.3)),
    dict(kl_coef=0.02, kl_estimator="k3", kl_clamp=(-10.0, 10.0), beta_c=0.7, first="zero"),
]


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("opts", range(len(TOKEN_OPTIONS)))
def test_token_rewards(name, opts, chunk):
    kw = TOKEN_OPTIONS[opts]
    P = make(name, zero=kw.get("first") == "zero")
    d = data(P, seed=2)
    kl = dict(logprobs=d["logprobs"], ref_logprobs=d["ref_logprobs"]) if "kl_coef" in kw else {}
    got = tb.token_rewards(d["scores"], P.mask, None, **kl, **kw, cu_seqlens=P.cu)
    ref = P.oracle("token_rewards", stream=[("scores", d["scores"])],
                   resp=[("response_mask", P.mask), *[(k, v) for k, v in kl.items()]],
                   prompt_len=P.prompt_len.to(DEV), **kw)
    close(got, ref)


@pytest.mark.parametrize("name", ["edge", "rand12"])
@pytest.mark.parametrize("first,beta_c", [("prompt", 1.0), ("zero", 0.3)])
def test_redistribute(name, first, beta_c, chunk):
    P = make(name, zero=first == "zero")
    d = data(P, seed=3)
    got = tb.redistribute(d["scores"], P.mask, None, first, beta_c, cu_seqlens=P.cu)
    ref = P.oracle("redistribute", stream=[("scores", d["scores"])], resp=[("response_mask", P.mask)],
                   prompt_len=P.prompt_len.to(DEV), first=first, beta_c=beta_c)
    close(got, ref)


def test_first_zero_never_reads_the_previous_sequence(monkeypatch):
    """first="zero" with a response at a sequence's position 0: a huge score just before it (the
    previous sequence's last) must not leak in; first="prompt" reads Φ_1 inside the sequence."""
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    for offset in (0, 3, 16, 15):  # the boundary inside a chunk, at a chunk start, one before
        kinds = [("seq", 1, offset + 1, 0.0, 0), ("seq", 0, 5, 0.0, 0), ("seq", 1, 4, 0.0, 0)]
        P = Packed(*layout(kinds))
        s = torch.arange(P.T, dtype=torch.float32, device=DEV)
        s[P.bounds[1][0] - 1] = 1e6
        got = tb.token_rewards(s, P.mask, None, first="zero", cu_seqlens=P.cu)
        b = P.bounds[1][0]
        # Φ_1 = 0, so the first token gets scores[b] − 0 and the next ones differences
        assert got[b] == s[b] and got[b + 1] == s[b + 1] - s[b]
        assert got[b:P.bounds[1][2]].abs().max() < 1e5
        close(got, P.oracle("token_rewards", stream=[("scores", s)], resp=[("response_mask", P.mask)],
                            prompt_len=P.prompt_len.to(DEV), first="zero"))


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("gamma,lam,boot", [(1.0, 0.95, False), (0.99, 0.9, True), (0.0, 0.0, False)])
def test_gae(name, gamma, lam, boot, chunk):
    P = make(name)
    d = data(P, seed=4)
    bootstrap = d["bootstrap"] if boot else None
    got = tb.gae(d["rewards"], d["values"], P.mask, gamma, lam, bootstrap, cu_seqlens=P.cu)
    ref = P.oracle("gae", resp=[("rewards", d["rewards"]), ("values", d["values"]), ("response_mask", P.mask)],
                   gamma=gamma, lam=lam, bootstrap=bootstrap)
    close(got, ref)


@pytest.mark.parametrize("scan", ["flip", "reverse"])
def test_scans_long_sequence_crosses_carry_blocks(scan, monkeypatch):
    """A 300-position sequence in chunks of 16 (19 chunks > the 16 maps composed per step) between
    short ones, for both scan directions."""
    monkeypatch.setenv("R3HF_TRITON_SCAN", scan)
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    P = Packed(*layout([("seq", 2, 5, 0.0, 0), ("seq", 7, 290, 0.3, 3), ("empty",), ("seq", 1, 3, 0.0, 1)], seed=8))
    d = data(P, seed=5)
    got = tb.gae(d["rewards"], d["values"], P.mask, 0.995, 0.97, d["bootstrap"], cu_seqlens=P.cu)
    close(got, P.oracle("gae", resp=[("rewards", d["rewards"]), ("values", d["values"]),
                                     ("response_mask", P.mask)], gamma=0.995, lam=0.97, bootstrap=d["bootstrap"]))
    for holes in ("skip", "discount"):
        got = tb.reward_to_go(d["rewards"], P.mask, 0.99, holes, cu_seqlens=P.cu)
        close(got, P.oracle("reward_to_go", resp=[("rewards", d["rewards"]), ("response_mask", P.mask)],
                            gamma=0.99, holes=holes))


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("gamma,holes", [(1.0, "skip"), (0.9, "skip"), (0.9, "discount")])
def test_reward_to_go(name, gamma, holes, chunk):
    P = make(name)
    d = data(P, seed=6)
    got = tb.reward_to_go(d["rewards"], P.mask, gamma, holes, cu_seqlens=P.cu)
    ref = P.oracle("reward_to_go", resp=[("rewards", d["rewards"]), ("response_mask", P.mask)], gamma=gamma,
                   holes=holes)
    close(got, ref)


WHITEN_OPTIONS = [dict(), dict(transform_masked=True), dict(shift_mean=False, unbiased=False, eps_mode="max",
                                                            transform_masked=True)]


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("opts", range(len(WHITEN_OPTIONS)))
def test_masked_whiten(name, opts, chunk):
    kw = WHITEN_OPTIONS[opts]
    P = make(name)
    d = data(P, seed=7)
    args = dict(kw)
    if "eps_mode" in args:
        args["eps"] = 1e-3
    got = tb.masked_whiten(d["values"], P.mask, **args, cu_seqlens=P.cu)
    ref = P.oracle("masked_whiten", resp=[("x", d["values"]), ("mask", P.mask)], **args)
    close(got, ref)


# --- fused ----------------------------------------------------------------------------------

FUSED_OPTIONS = [
    dict(),
    dict(first="zero", beta_c=0.3, reward_clip=(-0.5, 0.7), gamma=0.99, lam=0.9, bootstrap=True),
    dict(kl_coef=0.1, kl_estimator="k3", kl_clamp=(-0.2, 0.3), gamma=1.0, lam=1.0, bias=False),
    dict(kl_coef=0.05, kl_estimator="k2", reward_clip=(-1.0, 1.0), beta_c=0.0, bootstrap=True),
]


def fused_args(P, d, kw):
    kw = dict(kw)
    bias = d["bias"] if kw.pop("bias", True) else None
    if kw.pop("bootstrap", False):
        kw["bootstrap"] = d["bootstrap"]
    kl = [("logprobs", d["logprobs"]), ("ref_logprobs", d["ref_logprobs"])] if "kl_coef" in kw else []
    return bias, kw, kl


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("opts", range(len(FUSED_OPTIONS)))
def test_fused_reward_gae(name, opts, chunk):
    P = make(name, zero=FUSED_OPTIONS[opts].get("first") == "zero")
    d = data(P, D=12, seed=8)
    bias, kw, kl = fused_args(P, d, FUSED_OPTIONS[opts])
    got = tb.fused_reward_gae(d["hidden"], d["weight"], bias, d["values"], P.mask, None, **dict(kl), **kw,
                              cu_seqlens=P.cu)
    ref = P.oracle("fused_reward_gae", stream=[("hidden", d["hidden"])],
                   resp=[("values", d["values"]), ("response_mask", P.mask), *kl], weight=d["weight"], bias=bias,
                   prompt_len=P.prompt_len.to(DEV), **kw)
    close(got, ref)


def test_reverse_scan_path_rewards_and_fused(monkeypatch):
    """R3HF_TRITON_SCAN=reverse (naturally ordered chunks, reverse scans) for the reward kernels'
    next-generated min-scan and the fused kernels' gathers, across chunk boundaries."""
    monkeypatch.setenv("R3HF_TRITON_SCAN", "reverse")
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    P = make("edge")
    d = data(P, D=12, seed=15)
    pl = P.prompt_len.to(DEV)
    close(tb.token_rewards(d["scores"], P.mask, None, beta_c=0.6, cu_seqlens=P.cu),
          P.oracle("token_rewards", stream=[("scores", d["scores"])], resp=[("response_mask", P.mask)], prompt_len=pl,
                   beta_c=0.6))
    got = tb.fused_reward_gae(d["hidden"], d["weight"], d["bias"], d["values"], P.mask, None, gamma=0.99, lam=0.9,
                              bootstrap=d["bootstrap"], cu_seqlens=P.cu)
    close(got, P.oracle("fused_reward_gae", stream=[("hidden", d["hidden"])], resp=[("values", d["values"]),
                        ("response_mask", P.mask)], weight=d["weight"], bias=d["bias"], prompt_len=pl, gamma=0.99,
                        lam=0.9, bootstrap=d["bootstrap"]))
    index = group_index(P)
    got = tb.fused_reward_group_advantages(d["hidden"], d["weight"], d["bias"], P.mask, None, index, "grpo_process",
                                           cu_seqlens=P.cu)
    close(got, P.oracle("fused_reward_group_advantages", stream=[("hidden", d["hidden"])],
                        resp=[("response_mask", P.mask)], weight=d["weight"], bias=d["bias"], prompt_len=pl, index=index,
                        estimator="grpo_process"), scale=4.0)


# --- group estimators -----------------------------------------------------------------------

GROUP_CASES = [("grpo", "group", 1.0), ("rloo", "group", 1.0), ("reinforce_pp", "group", 0.9),
               ("reinforce_pp_baseline", "group", 1.0), ("grpo_process", "group", 0.95), ("grpo", "batch", 1.0),
               ("grpo_process", "none", 1.0)]


def group_index(P, G=2):
    return (torch.arange(P.N) // G).to(DEV)


@pytest.mark.parametrize("name", ["edge", "rand5", "rand12"])
@pytest.mark.parametrize("case", range(len(GROUP_CASES)))
def test_group_advantages(name, case, chunk):
    estimator, scale, gamma = GROUP_CASES[case]
    P = make(name)
    d = data(P, seed=9)
    index = group_index(P)
    got = tb.group_advantages(d["rewards"], P.mask, index, estimator, gamma, 1e-6, scale, None, cu_seqlens=P.cu)
    ref = P.oracle("group_advantages", resp=[("rewards", d["rewards"]), ("response_mask", P.mask)], index=index,
                   estimator=estimator, gamma=gamma, scale=scale)
    close(got, ref, scale=4.0)


def test_row_pass_stats_per_sequence(monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    from r3hf import _group_stats
    from r3hf.kernels import returns

    P = make("edge")
    d = data(P, seed=10)
    G, stats = returns.row_pass(d["rewards"], P.mask, 0.97, cu_seqlens=P.cu)
    G_ref, stats_ref = _group_stats.row_pass(P.pad_resp(d["rewards"]), P.pad_resp(P.mask), 0.97)
    close(G, P.unpack(G_ref))
    assert stats.shape == (P.N, 5) and stats.dtype == torch.float64
    torch.testing.assert_close(stats, stats_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["edge", "rand12"])
@pytest.mark.parametrize("case", [0, 3, 4])
@pytest.mark.parametrize("opts", [0, 1, 2])
def test_fused_reward_group_advantages(name, case, opts, chunk):
    estimator, scale, gamma = GROUP_CASES[case]
    P = make(name, zero=FUSED_OPTIONS[opts].get("first") == "zero")
    d = data(P, D=12, seed=11)
    bias, kw, kl = fused_args(P, d, FUSED_OPTIONS[opts])
    kw.pop("bootstrap", None), kw.pop("lam", None)
    kw["gamma"] = gamma
    index = group_index(P, 3)
    got = tb.fused_reward_group_advantages(d["hidden"], d["weight"], bias, P.mask, None, index, estimator,
                                           **dict(kl), **kw, scale=scale, cu_seqlens=P.cu)
    ref = P.oracle("fused_reward_group_advantages", stream=[("hidden", d["hidden"])],
                   resp=[("response_mask", P.mask), *kl], weight=d["weight"], bias=bias,
                   prompt_len=P.prompt_len.to(DEV), index=index, estimator=estimator, scale=scale, **kw)
    close(got, ref, scale=4.0)


# --- dtypes, degenerate streams, inputs untouched -------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype, monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    P = make("edge")
    d = data(P, D=12, dtype=dtype, seed=12)
    # the oracle reads the same rounded values in fp32
    got = tb.fused_reward_gae(d["hidden"], d["weight"], d["bias"], d["values"], P.mask, None, d["logprobs"],
                              d["ref_logprobs"], 0.05, cu_seqlens=P.cu)
    ref = P.oracle("fused_reward_gae", stream=[("hidden", d["hidden"].float())],
                   resp=[("values", d["values"].float()), ("response_mask", P.mask),
                         ("logprobs", d["logprobs"].float()), ("ref_logprobs", d["ref_logprobs"].float())],
                   weight=d["weight"].float(), bias=d["bias"], prompt_len=P.prompt_len.to(DEV), kl_coef=0.05)
    close(got, ref, dtype)
    got = tb.gae(d["rewards"], d["values"], P.mask, 0.99, 0.95, cu_seqlens=P.cu)
    close(got, P.oracle("gae", resp=[("rewards", d["rewards"].float()), ("values", d["values"].float()),
                                     ("response_mask", P.mask)], gamma=0.99, lam=0.95), dtype)
    got = tb.token_rewards(d["scores"], P.mask, None, cu_seqlens=P.cu)
    close(got, P.oracle("token_rewards", stream=[("scores", d["scores"].float())], resp=[("response_mask", P.mask)],
                        prompt_len=P.prompt_len.to(DEV)), dtype)


def test_degenerate_streams():
    # every sequence empty (T = 0), and one stream with no generated token at all
    cu = torch.zeros(4, dtype=torch.int64, device=DEV)
    z = torch.zeros(0, device=DEV)
    m = torch.zeros(0, dtype=torch.bool, device=DEV)
    assert tb.gae(z, z, m, cu_seqlens=cu)[0].shape == (0,)
    assert tb.token_rewards(z, m, None, cu_seqlens=cu).shape == (0,)
    assert tb.reward_to_go(z, m, cu_seqlens=cu).shape == (0,)
    from r3hf.kernels import returns

    G, stats = returns.row_pass(z, m, 1.0, cu_seqlens=cu)
    assert G.shape == (0,) and stats.shape == (3, 5) and not stats.any()
    P = Packed(*layout([("prompt", 4), ("empty",), ("prompt", 30)]))
    d = data(P, D=4)
    for out in (tb.token_rewards(d["scores"], P.mask, None, cu_seqlens=P.cu),
                *tb.gae(d["rewards"], d["values"], P.mask, cu_seqlens=P.cu),
                *tb.fused_reward_gae(d["hidden"], d["weight"], None, d["values"], P.mask, None, cu_seqlens=P.cu)):
        assert out.shape == (P.T,) and not out.any()


def test_inputs_unchanged_and_strided(monkeypatch):
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    P = make("edge")
    d = data(P, D=12, seed=13)
    hidden = d["hidden"].t().contiguous().t()  # same values, column-major
    values = torch.stack([d["values"], d["values"]], 1)[:, 0]  # stride 2
    before = [t.clone() for t in (hidden, values, P.mask, P.cu)]
    got = tb.fused_reward_gae(hidden, d["weight"], d["bias"], values, P.mask, None, cu_seqlens=P.cu)
    ref = P.oracle("fused_reward_gae", stream=[("hidden", d["hidden"])], resp=[("values", d["values"]),
                   ("response_mask", P.mask)], weight=d["weight"], bias=d["bias"], prompt_len=P.prompt_len.to(DEV))
    close(got, ref)
    for t, t0 in zip((hidden, values, P.mask, P.cu), before):
        assert torch.equal(t, t0)


# --- GPU only: long tails, low precision, both scan directions --------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("scan", ["flip", "reverse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_lognormal_stream(scan, dtype, monkeypatch):
    """~300 sequences with lognormal lengths (up to 8192), default chunk sizes, every op."""
    monkeypatch.setenv("R3HF_TRITON_SCAN", scan)
    gen = torch.Generator().manual_seed(31)
    lens = torch.exp(5.0 + 1.2 * torch.randn(300, generator=gen)).round().clamp(0, 8192).long().tolist()
    kinds = [("empty",) if n == 0 else ("prompt", n) if n < 3 else ("seq", max(1, n // 8), n - max(1, n // 8) - 1,
                                                                   0.1, 1) for n in lens]
    P = Packed(*layout(kinds, seed=32))
    d = data(P, D=256, dtype=dtype, seed=33)
    f = {k: v.float() for k, v in d.items()}
    scale = 10.0
    got = tb.fused_reward_gae(d["hidden"], d["weight"], d["bias"], d["values"], P.mask, None, d["logprobs"],
                              d["ref_logprobs"], 0.05, "k3", gamma=0.99, lam=0.95, bootstrap=d["bootstrap"],
                              cu_seqlens=P.cu)
    close(got, P.oracle("fused_reward_gae", stream=[("hidden", f["hidden"])],
                        resp=[("values", f["values"]), ("response_mask", P.mask), ("logprobs", f["logprobs"]),
                              ("ref_logprobs", f["ref_logprobs"])], weight=f["weight"], bias=d["bias"],
                        prompt_len=P.prompt_len.to(DEV), kl_coef=0.05, kl_estimator="k3", gamma=0.99, lam=0.95,
                        bootstrap=d["bootstrap"]), dtype, scale)
    close(tb.gae(d["rewards"], d["values"], P.mask, 0.99, 0.95, cu_seqlens=P.cu),
          P.oracle("gae", resp=[("rewards", f["rewards"]), ("values", f["values"]), ("response_mask", P.mask)],
                   gamma=0.99, lam=0.95), dtype, scale)
    close(tb.reward_to_go(d["rewards"], P.mask, 0.99, "discount", cu_seqlens=P.cu),
          P.oracle("reward_to_go", resp=[("rewards", f["rewards"]), ("response_mask", P.mask)], gamma=0.99,
                   holes="discount"), dtype, scale)
    index = group_index(P, 4)
    for est in ("grpo", "grpo_process"):
        close(tb.group_advantages(d["rewards"], P.mask, index, est, 1.0, 1e-6, "group", None, cu_seqlens=P.cu),
              P.oracle("group_advantages", resp=[("rewards", f["rewards"]), ("response_mask", P.mask)], index=index,
                       estimator=est), dtype, scale)
    close(tb.masked_whiten(d["values"], P.mask, transform_masked=True, cu_seqlens=P.cu),
          P.oracle("masked_whiten", resp=[("x", f["values"]), ("mask", P.mask)], transform_masked=True), dtype)


# --- through the public API (r3hf.ops, backend="triton") --------------------------------------


def test_public_ops_packed(monkeypatch):
    """Every op via r3hf.ops with cu_seqlens (int32 here, as flash-attn hands it over), hidden
    [1, T, D], an int group size and a float bootstrap: the same as the oracle, and as the torch
    backend's packed reference."""
    monkeypatch.setenv("R3HF_TRITON_CHUNK", "16")
    P = make("edge")
    d = data(P, D=12, seed=14)
    cu32 = P.cu.to(torch.int32)
    pl = P.prompt_len.to(DEV)
    kl = dict(logprobs=d["logprobs"], ref_logprobs=d["ref_logprobs"], kl_coef=0.05)
    index = (torch.arange(P.N) // 3).to(DEV)
    cases = [
        ("prefix_scores", (d["hidden"], d["weight"], d["bias"]), {},
         lambda: ops.prefix_scores(d["hidden"][None], d["weight"], d["bias"], backend="torch")[0]),
        ("kl_penalty", (d["logprobs"], d["ref_logprobs"], "k3"), {},
         lambda: ops.kl_penalty(d["logprobs"][None], d["ref_logprobs"][None], "k3", backend="torch")[0]),
        ("redistribute", (d["scores"], P.mask), dict(beta_c=0.5),
         lambda: P.oracle("redistribute", stream=[("scores", d["scores"])], resp=[("response_mask", P.mask)],
                          prompt_len=pl, beta_c=0.5)),
        ("token_rewards", (d["scores"], P.mask), kl,
         lambda: P.oracle("token_rewards", stream=[("scores", d["scores"])],
                          resp=[("response_mask", P.mask), ("logprobs", d["logprobs"]),
                                ("ref_logprobs", d["ref_logprobs"])], prompt_len=pl, kl_coef=0.05)),
        ("gae", (d["rewards"], d["values"], P.mask, 0.99, 0.95, 0.5), {},
         lambda: P.oracle("gae", resp=[("rewards", d["rewards"]), ("values", d["values"]), ("response_mask", P.mask)],
                          gamma=0.99, lam=0.95, bootstrap=0.5)),
        ("masked_whiten", (d["values"], P.mask), dict(transform_masked=True),
         lambda: P.oracle("masked_whiten", resp=[("x", d["values"]), ("mask", P.mask)], transform_masked=True)),
        ("fused_reward_gae", (d["hidden"][None], d["weight"], 0.3, d["values"], P.mask), dict(kl, bootstrap=0.5),
         lambda: P.oracle("fused_reward_gae", stream=[("hidden", d["hidden"])],
                          resp=[("values", d["values"]), ("response_mask", P.mask), ("logprobs", d["logprobs"]),
                                ("ref_logprobs", d["ref_logprobs"])], weight=d["weight"], bias=0.3, prompt_len=pl,
                          kl_coef=0.05, bootstrap=0.5)),
        ("reward_to_go", (d["rewards"], P.mask, 0.9), dict(holes="discount"),
         lambda: P.oracle("reward_to_go", resp=[("rewards", d["rewards"]), ("response_mask", P.mask)], gamma=0.9,
                          holes="discount")),
        ("group_advantages", (d["rewards"], P.mask, 3, "rloo"), {},
         lambda: P.oracle("group_advantages", resp=[("rewards", d["rewards"]), ("response_mask", P.mask)],
                          index=index, estimator="rloo")),
        ("fused_reward_group_advantages", (d["hidden"], d["weight"], 0.3, P.mask), dict(kl, index=3),
         lambda: P.oracle("fused_reward_group_advantages", stream=[("hidden", d["hidden"])],
                          resp=[("response_mask", P.mask), ("logprobs", d["logprobs"]),
                                ("ref_logprobs", d["ref_logprobs"])], weight=d["weight"], bias=0.3, prompt_len=pl,
                          index=index, kl_coef=0.05)),
    ]
    for op, args, kw, oracle in cases:
        got = getattr(ops, op)(*args, **kw, cu_seqlens=cu32, backend="triton")
        close(got, oracle(), scale=4.0)
        close(got, getattr(ops, op)(*args, **kw, cu_seqlens=cu32, backend="torch"), scale=4.0)
    report = ops.backends()
    assert report["packed"]["fused_reward_gae"]["cpu"] != "triton"  # auto never picks the interpreter
    if torch.cuda.is_available():
        assert all(report["packed"][op]["cuda"] == "triton" for op in tb.OPS)


def test_public_ops_packed_first_prompt_needs_a_prompt():
    P = Packed(*layout([("seq", 2, 4, 0.0, 0), ("seq", 0, 3, 0.0, 0)]))
    d = data(P)
    with pytest.raises(ValueError):
        ops.token_rewards(d["scores"], P.mask, cu_seqlens=P.cu, backend="triton")
    got = ops.token_rewards(d["scores"], P.mask, first="zero", cu_seqlens=P.cu, backend="triton")
    close(got, P.oracle("token_rewards", stream=[("scores", d["scores"])], resp=[("response_mask", P.mask)],
                        prompt_len=torch.tensor([2, 0], device=DEV), first="zero"))
