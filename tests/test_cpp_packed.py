"""The C++ backend on packed sequences (cu_seqlens, issue 16) against an independent oracle: pad the
sequences into rows, call the padded public op, unpack (tests/packed_batches.py).

- Against the padded C++ op: bitwise equal. The packed kernels run the padded row functions on the
  same data in the same order (r3hf_math.h, csrc/cpu/rewards_row.h, group_rows.h), so any
  difference is a bug. masked_whiten is bitwise too here: its float64 sums run in fixed blocks of
  8192 elements in stream order, and these streams fit one block.
- Against the padded torch reference (the spec): within the padded tests' tolerances.
- Bitwise the same for 1, 2 and 3 threads.

The backend functions are called directly with normalised arguments (as r3hf._validate hands them
over: bool mask, int64 cu_seqlens, float32 [N] bootstrap, int64 [N] index, prompt_len None).
"""

from __future__ import annotations

import os

import pytest
import torch

import r3hf.ops as ops
from batches import TOLERANCES
from packed_batches import Padder, packed_batch

if os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1: the C++ extension is deliberately not built", allow_module_level=True)

from r3hf.backends import cpp  # noqa: E402

if cpp._C is None:
    pytest.skip(f"C++ extension unavailable: {cpp._LOAD_ERROR}", allow_module_level=True)

SHAPES = [(1, 5), (1, 60), (2, 1), (3, 2), (7, 60), (20, 47), (13, 9)]  # (N, max sequence length)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
KL = [None, ("k1", None), ("k2", None), ("k3", (-1.0, 1.0)), ("abs", None)]
ESTIMATOR_OPTIONS = [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("rloo", "group"),
                     ("reinforce_pp", "group"), ("reinforce_pp_baseline", "group"), ("grpo_process", "group"),
                     ("grpo_process", "batch"), ("grpo_process", "none")]


def close(got, want, dtype=torch.float32, scaled=False):
    rtol, atol = TOLERANCES[dtype]
    if scaled:  # float64 statistics summed in another order than the reference's
        rtol = max(rtol, 1e-4)
        atol = atol * (1.0 + float(want.abs().max())) if want.numel() else atol
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want), f"max |diff| {(got - want).abs().max()} at {(got != want).nonzero()[:5].tolist()}"


def batch_for(N, max_len, seed, first="prompt", **kw):
    b = packed_batch(N, max_len, seed=seed, no_prompt=(first == "zero"), **kw)
    return b, Padder(b["cu_seqlens"], b["response_mask"])


def kl_kwargs(kl):
    if kl is None:
        return dict(kl_coef=0.0, kl_estimator="k1", kl_clamp=None)
    return dict(kl_coef=0.1, kl_estimator=kl[0], kl_clamp=kl[1])


# --- per-position ops ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefix_scores_and_kl(dtype):
    b, P = batch_for(7, 60, 0, dtype=dtype)
    cu = b["cu_seqlens"]
    got = cpp.prefix_scores(b["hidden"], b["weight"], b["bias"], cu_seqlens=cu)
    want = ops.prefix_scores(P.seq(b["hidden"]), b["weight"], b["bias"], backend="cpp")
    assert got.shape == (P.T,)
    for i, (c0, c1) in enumerate(zip(P.c0, P.c1)):
        same(got[c0:c1], want[i, : c1 - c0])
    for est, clamp in [("k1", None), ("k3", (-1.0, 1.0)), ("k2", None), ("abs", None)]:
        got = cpp.kl_penalty(b["logprobs"], b["ref_logprobs"], est, clamp, cu_seqlens=cu)
        same(got, ops.kl_penalty(b["logprobs"][None], b["ref_logprobs"][None], est, clamp, backend="cpp")[0])


# --- token rewards ------------------------------------------------------------------------------


@pytest.mark.parametrize("N,max_len", SHAPES)
@pytest.mark.parametrize("first", ["prompt", "zero"])
@pytest.mark.parametrize("beta_c,reward_clip", [(1.0, None), (0.3, None), (1.0, (-0.5, 0.5)), (0.7, (-1.0, 0.2))])
def test_token_rewards(N, max_len, first, beta_c, reward_clip):
    for seed, kl in enumerate(KL):
        b, P = batch_for(N, max_len, seed, first)
        kw = dict(first=first, beta_c=beta_c, reward_clip=reward_clip, **kl_kwargs(kl))
        got = cpp.token_rewards(b["scores"], b["response_mask"], None, b["logprobs"], b["ref_logprobs"], **kw,
                                cu_seqlens=b["cu_seqlens"])
        padded = dict(logprobs=P.rows(b["logprobs"]), ref_logprobs=P.rows(b["ref_logprobs"]), **kw)
        args = (P.seq(b["scores"]), P.rows(b["response_mask"]), P.prompt_len)
        same(got, P.unpack(ops.token_rewards(*args, **padded, backend="cpp")))
        close(got, P.unpack(ops.token_rewards(*args, **padded, backend="torch")))
        if kl is None:
            red = cpp.redistribute(b["scores"], b["response_mask"], None, first, beta_c,
                                   cu_seqlens=b["cu_seqlens"])
            same(red, P.unpack(ops.redistribute(*args, first=first, beta_c=beta_c, backend="cpp")))


@pytest.mark.parametrize("dtype", DTYPES)
def test_token_rewards_dtypes_and_int32_offsets(dtype):
    b, P = batch_for(20, 47, 3, dtype=dtype, cu_dtype=torch.int32)
    kw = dict(first="prompt", **kl_kwargs(("k3", None)))
    got = cpp.token_rewards(b["scores"], b["response_mask"], None, b["logprobs"], b["ref_logprobs"], **kw,
                            cu_seqlens=b["cu_seqlens"])
    padded = dict(logprobs=P.rows(b["logprobs"]), ref_logprobs=P.rows(b["ref_logprobs"]), **kw)
    args = (P.seq(b["scores"]), P.rows(b["response_mask"]), P.prompt_len)
    same(got, P.unpack(ops.token_rewards(*args, **padded, backend="cpp")))
    close(got, P.unpack(ops.token_rewards(*args, **padded, backend="torch")), dtype)


def test_first_prompt_never_reads_the_previous_sequence():
    # Sequence 1 starts with a generated token: first="zero" gives Φ_1 = 0 whatever sequence 0's
    # last score is; first="prompt" is an error, not a read of sequence 0.
    cu = torch.tensor([0, 3, 6])
    mask = torch.tensor([False, True, True, True, True, False])
    scores = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    got = cpp.token_rewards(scores, mask, None, first="zero", cu_seqlens=cu)
    torch.testing.assert_close(got, torch.tensor([0.0, 2.0, 2.0, 8.0, 8.0, 0.0]), rtol=0, atol=0)
    scores2 = scores.clone()
    scores2[2] = 1e30  # sequence 0's last score
    got2 = cpp.token_rewards(scores2, mask, None, first="zero", cu_seqlens=cu)
    assert torch.equal(got2[3:], got[3:])
    with pytest.raises(ValueError, match="first='prompt'.*sequence 1"):
        cpp.token_rewards(scores, mask, None, first="prompt", cu_seqlens=cu)
    hidden = torch.randn(6, 4)
    with pytest.raises(ValueError, match="first='prompt'.*sequence 1"):
        cpp.fused_reward_gae(hidden, torch.ones(4), None, torch.zeros(6), mask, None, first="prompt", cu_seqlens=cu)
    # The very first stream position generated, first="zero": no read before the stream.
    got = cpp.token_rewards(scores[3:], mask[3:], None, first="zero", cu_seqlens=torch.tensor([0, 3]))
    torch.testing.assert_close(got, torch.tensor([8.0, 8.0, 0.0]), rtol=0, atol=0)


# --- GAE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("N,max_len", SHAPES)
@pytest.mark.parametrize("bootstrap", [None, 0.7, "per-seq"])
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.5)])
def test_gae(N, max_len, bootstrap, gamma, lam):
    b, P = batch_for(N, max_len, N + max_len)
    boot = b["bootstrap"] if bootstrap == "per-seq" else bootstrap
    boot_norm = None if boot is None else (boot if torch.is_tensor(boot) else torch.full((N,), boot))
    adv, ret = cpp.gae(b["rewards"], b["values"], b["response_mask"], gamma, lam, boot_norm,
                       cu_seqlens=b["cu_seqlens"])
    args = (P.rows(b["rewards"]), P.rows(b["values"]), P.rows(b["response_mask"]), gamma, lam, boot)
    for backend in ("cpp", "torch"):
        want_adv, want_ret = ops.gae(*args, backend=backend)
        check = same if backend == "cpp" else close
        check(adv, P.unpack(want_adv))
        check(ret, P.unpack(want_ret))


# --- masked_whiten ------------------------------------------------------------------------------


@pytest.mark.parametrize("N,max_len", [(2, 5), (7, 60), (20, 47)])
@pytest.mark.parametrize("transform_masked", [False, True])
@pytest.mark.parametrize("eps_mode", ["add", "max"])
@pytest.mark.parametrize("shift_mean,unbiased", [(True, True), (False, False)])
def test_masked_whiten(N, max_len, transform_masked, eps_mode, shift_mean, unbiased):
    b, P = batch_for(N, max_len, 11 * N)
    kw = dict(transform_masked=transform_masked, eps_mode=eps_mode)
    got = cpp.masked_whiten(b["rewards"], b["response_mask"], shift_mean, unbiased, 1e-8, None, **kw,
                            cu_seqlens=b["cu_seqlens"])
    args = (P.rows(b["rewards"]), P.rows(b["response_mask"]), shift_mean, unbiased, 1e-8)
    want = P.unpack(ops.masked_whiten(*args, **kw, backend="cpp"))
    same(got, want)
    close(got, P.unpack(ops.masked_whiten(*args, **kw, backend="torch")))
    if transform_masked:  # prompt positions stay 0; holes/trailing tokens of a response are transformed
        region = torch.ops.r3hf.packed_response_region(b["response_mask"], b["cu_seqlens"])
        assert not got[~region].any()
        assert torch.equal(region, P.unpack(torch.ones(N, P.L, dtype=torch.bool)))


# --- fused reward + GAE -------------------------------------------------------------------------


@pytest.mark.parametrize("N,max_len", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("first", ["prompt", "zero"])
def test_fused_reward_gae(N, max_len, dtype, first):
    options = [
        dict(beta_c=1.0, reward_clip=None, bootstrap=None, **kl_kwargs(None)),
        dict(beta_c=0.3, reward_clip=(-0.5, 0.5), bootstrap="per-seq", gamma=0.99, lam=0.9, **kl_kwargs(("k3", (-1.0, 1.0)))),
        dict(beta_c=1.0, reward_clip=None, bootstrap=0.25, **kl_kwargs(("k1", None))),
    ]
    for seed, opt in enumerate(options):
        b, P = batch_for(N, max_len, seed, first, dtype=dtype)
        boot = b["bootstrap"] if opt["bootstrap"] == "per-seq" else opt["bootstrap"]
        kw = dict(opt, first=first, bootstrap=boot)
        norm = dict(kw, bootstrap=None if boot is None else (boot if torch.is_tensor(boot) else torch.full((N,), boot)))
        got = cpp.fused_reward_gae(b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], None,
                                   b["logprobs"], b["ref_logprobs"], **{k: v for k, v in norm.items()},
                                   cu_seqlens=b["cu_seqlens"])
        args = (P.seq(b["hidden"]), b["weight"], b["bias"], P.rows(b["values"]), P.rows(b["response_mask"]),
                P.prompt_len)
        padded = dict(kw, logprobs=P.rows(b["logprobs"]), ref_logprobs=P.rows(b["ref_logprobs"]))
        want_cpp = ops.fused_reward_gae(*args, **padded, backend="cpp")
        want_ref = ops.fused_reward_gae(*args, **padded, backend="torch")
        for g, wc, wr in zip(got, want_cpp, want_ref):
            same(g, P.unpack(wc))
            close(g, P.unpack(wr), dtype)


def test_fused_hidden_3d_and_strided():
    b, P = batch_for(13, 9, 5)
    cu = b["cu_seqlens"]
    base = cpp.fused_reward_gae(b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], None,
                                cu_seqlens=cu)
    wide = torch.randn(P.T, 2 * b["hidden"].shape[1])
    wide[:, ::2] = b["hidden"]
    for hidden in (b["hidden"][None], wide[:, ::2]):
        got = cpp.fused_reward_gae(hidden, b["weight"], b["bias"], b["values"], b["response_mask"], None,
                                   cu_seqlens=cu)
        for g, w in zip(got, base):
            same(g, w)


# --- reward-to-go and group advantages ----------------------------------------------------------


@pytest.mark.parametrize("N,max_len", SHAPES)
@pytest.mark.parametrize("holes", ["skip", "discount"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reward_to_go(N, max_len, holes, gamma):
    b, P = batch_for(N, max_len, 7 + N)
    got = cpp.reward_to_go(b["rewards"], b["response_mask"], gamma, holes, cu_seqlens=b["cu_seqlens"])
    args = (P.rows(b["rewards"]), P.rows(b["response_mask"]), gamma)
    same(got, P.unpack(ops.reward_to_go(*args, holes=holes, backend="cpp")))
    close(got, P.unpack(ops.reward_to_go(*args, holes=holes, backend="torch")))


@pytest.mark.parametrize("N,max_len", [(1, 60), (3, 2), (7, 60), (20, 47)])
@pytest.mark.parametrize("estimator,scale", ESTIMATOR_OPTIONS)
@pytest.mark.parametrize("index_kind", ["ids", "int"])
def test_group_advantages(N, max_len, estimator, scale, index_kind):
    b, P = batch_for(N, max_len, 3 * N)
    gamma = 1.0 if estimator in ("grpo", "rloo") else 0.95
    index = b["index"] if index_kind == "ids" else next(g for g in (4, 3, 2, 1) if N % g == 0)
    index_norm = index if index_kind == "ids" else torch.arange(N) // index
    got = cpp.group_advantages(b["rewards"], b["response_mask"], index_norm, estimator, gamma, 1e-6, scale,
                               cu_seqlens=b["cu_seqlens"])
    args = (P.rows(b["rewards"]), P.rows(b["response_mask"]), index, estimator)
    kw = dict(gamma=gamma, scale=scale)
    same(got, P.unpack(ops.group_advantages(*args, **kw, backend="cpp")))
    close(got, P.unpack(ops.group_advantages(*args, **kw, backend="torch")), scaled=True)


@pytest.mark.parametrize("N,max_len", [(1, 60), (7, 60), (20, 47)])
@pytest.mark.parametrize("estimator,scale", ESTIMATOR_OPTIONS[::2] + [("rloo", "group")])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("first", ["prompt", "zero"])
def test_fused_reward_group_advantages(N, max_len, estimator, scale, dtype, first):
    b, P = batch_for(N, max_len, 5 * N + 1, first, dtype=dtype)
    kw = dict(first=first, beta_c=0.5, reward_clip=(-1.0, 1.0), gamma=0.97, scale=scale, **kl_kwargs(("k2", None)))
    got = cpp.fused_reward_group_advantages(
        b["hidden"], b["weight"], b["bias"], b["response_mask"], None, b["index"], estimator, b["logprobs"],
        b["ref_logprobs"], **kw, cu_seqlens=b["cu_seqlens"])
    args = (P.seq(b["hidden"]), b["weight"], b["bias"], P.rows(b["response_mask"]), P.prompt_len, b["index"],
            estimator)
    padded = dict(kw, logprobs=P.rows(b["logprobs"]), ref_logprobs=P.rows(b["ref_logprobs"]))
    want_cpp = ops.fused_reward_group_advantages(*args, **padded, backend="cpp")
    want_ref = ops.fused_reward_group_advantages(*args, **padded, backend="torch")
    for g, wc, wr in zip(got, want_cpp, want_ref):
        same(g, P.unpack(wc))
        close(g, P.unpack(wr), dtype, scaled=True)


def test_group_passes_match_the_contract_torch_form():
    # The packed row pass is the padded contract's row pass on the padded rows (stats [N, 5]).
    b, P = batch_for(20, 47, 2)
    _, stats = cpp._row_pass(b["rewards"], b["response_mask"], 0.9, cu_seqlens=b["cu_seqlens"])
    from r3hf import _group_stats as gs

    _, want = gs.row_pass(P.rows(b["rewards"]), P.rows(b["response_mask"]), 0.9)
    assert stats.shape == (20, gs.N_STATS) and stats.dtype == torch.float64
    torch.testing.assert_close(stats, want, rtol=1e-12, atol=1e-9)


# --- threads, bad input -------------------------------------------------------------------------


def _all_ops(b):
    cu, m = b["cu_seqlens"], b["response_mask"]
    kw = dict(kl_coef=0.05, kl_estimator="k3", kl_clamp=None, first="prompt", beta_c=0.8, reward_clip=(-2.0, 2.0))
    out = [cpp.token_rewards(b["scores"], m, None, b["logprobs"], b["ref_logprobs"], **kw, cu_seqlens=cu)]
    out += cpp.gae(b["rewards"], b["values"], m, 0.99, 0.95, b["bootstrap"], cu_seqlens=cu)
    out += cpp.fused_reward_gae(b["hidden"], b["weight"], b["bias"], b["values"], m, None, b["logprobs"],
                                b["ref_logprobs"], **kw, bootstrap=b["bootstrap"], cu_seqlens=cu)
    out.append(cpp.masked_whiten(b["rewards"], m, transform_masked=True, cu_seqlens=cu))
    out.append(cpp.reward_to_go(b["rewards"], m, 0.9, "discount", cu_seqlens=cu))
    for est in ("grpo", "reinforce_pp", "grpo_process"):
        out.append(cpp.group_advantages(b["rewards"], m, b["index"], est, 0.95, cu_seqlens=cu))
    out += cpp.fused_reward_group_advantages(b["hidden"], b["weight"], b["bias"], m, None, b["index"],
                                             "reinforce_pp_baseline", b["logprobs"], b["ref_logprobs"], **kw,
                                             gamma=0.95, cu_seqlens=cu)
    return out


def test_bitwise_identical_for_1_2_3_threads():
    # Enough sequences that every op's parallel_for splits them over several tasks.
    b = packed_batch(20_000, 40, seed=9, D=8)
    before = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(_all_ops(b))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert torch.equal(a, c)


def test_bad_offsets_raise():
    m = torch.tensor([False, True, True, False, True])
    r = torch.randn(5)
    cases = [
        (torch.tensor([0, 3, 2, 5]), "non-decreasing"),
        (torch.tensor([0, 2, 4]), r"cu_seqlens\[-1\] must equal .* T = 5"),
        (torch.tensor([1, 2, 5]), r"cu_seqlens\[0\] must be 0"),
        (torch.tensor([0.0, 5.0]), "int32 or int64"),
        (torch.tensor([5]), r"\[N \+ 1\] with N >= 1"),
        (torch.tensor([[0, 5]]), r"\[N \+ 1\]"),
    ]
    for cu, msg in cases:
        for fn in (lambda: cpp.reward_to_go(r, m, 1.0, "skip", cu_seqlens=cu),
                   lambda: cpp.token_rewards(r, m, None, first="zero", cu_seqlens=cu),
                   lambda: cpp.gae(r, r, m, cu_seqlens=cu),
                   lambda: torch.ops.r3hf.packed_group_row_pass(r, m, cu, 1.0)):
            with pytest.raises(ValueError, match=msg):
                fn()
    cu = torch.tensor([0, 2, 5])
    with pytest.raises(ValueError, match=r"bootstrap must be \[N\] = \[2\]"):
        cpp.gae(r, r, m, 1.0, 0.95, torch.zeros(3), cu_seqlens=cu)
    with pytest.raises(ValueError, match=r"values must be \[T\] = \[5\]"):
        cpp.gae(r, r[:4], m, cu_seqlens=cu)
    with pytest.raises(ValueError, match=r"shift and scale must be \[N\] = \[2\]"):
        torch.ops.r3hf.packed_group_finish(r, m, cu, torch.zeros(3), torch.ones(3), 1.0, False)
    with pytest.raises(ValueError, match=r"hidden must be \[T, D\] or \[1, T, D\]"):
        cpp.fused_reward_gae(torch.randn(2, 5, 3), torch.ones(3), None, r, m, None, cu_seqlens=cu)


def test_inputs_not_modified_and_options_declared():
    b, _ = batch_for(7, 60, 1)
    copies = {k: v.clone() for k, v in b.items()}
    _all_ops(b)
    for k, v in b.items():
        assert torch.equal(v, copies[k]), k
    for op in cpp.OPS:
        assert "cu_seqlens" in cpp.OPTIONS[op]
    # packed and potential= (issue 24) run on CPU kernels only; CUDA goes to Triton
    assert cpp.OPTION_DEVICES == {"cu_seqlens": ("cpu",), "potential": ("cpu",)}


# --- through the public API (r3hf.ops, validation and dispatch from core-packed) ----------------


@pytest.mark.parametrize("N,max_len", [(1, 60), (7, 60), (20, 47)])
@pytest.mark.parametrize("cu_dtype", [torch.int64, torch.int32])
def test_public_ops_packed_on_cpp(N, max_len, cu_dtype):
    b, P = batch_for(N, max_len, 100 + N, cu_dtype=cu_dtype)
    cu, m = b["cu_seqlens"], b["response_mask"]
    kl = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, kl_estimator="k3")
    calls = {
        "prefix_scores": lambda be: ops.prefix_scores(b["hidden"], b["weight"], b["bias"], cu_seqlens=cu, backend=be),
        "redistribute": lambda be: ops.redistribute(b["scores"], m, beta_c=0.4, cu_seqlens=cu, backend=be),
        "kl_penalty": lambda be: ops.kl_penalty(b["logprobs"], b["ref_logprobs"], "k2", cu_seqlens=cu, backend=be),
        "token_rewards": lambda be: ops.token_rewards(b["scores"], m, **kl, reward_clip=0.5, cu_seqlens=cu,
                                                      backend=be),
        "gae": lambda be: ops.gae(b["rewards"], b["values"], m, 0.99, 0.9, b["bootstrap"], cu_seqlens=cu,
                                  backend=be),
        "masked_whiten": lambda be: ops.masked_whiten(b["rewards"], m, transform_masked=True, eps_mode="max",
                                                      cu_seqlens=cu, backend=be),
        "fused_reward_gae": lambda be: ops.fused_reward_gae(b["hidden"], b["weight"], b["bias"], b["values"], m,
                                                            **kl, bootstrap=0.5, cu_seqlens=cu, backend=be),
        "reward_to_go": lambda be: ops.reward_to_go(b["rewards"], m, 0.9, holes="discount", cu_seqlens=cu,
                                                    backend=be),
        "group_advantages": lambda be: ops.group_advantages(b["rewards"], m, b["index"], "reinforce_pp_baseline",
                                                            gamma=0.95, cu_seqlens=cu, backend=be),
        "fused_reward_group_advantages": lambda be: ops.fused_reward_group_advantages(
            b["hidden"], b["weight"], b["bias"], m, None, 1, "grpo_process", **kl, cu_seqlens=cu, backend=be),
    }
    assert set(calls) == set(cpp.OPS)
    report = ops.backends()["packed"]
    for op, call in calls.items():
        assert report[op]["cpu"] == "cpp", op  # "auto" runs the packed C++ kernel on CPU
        got, want = call("cpp"), call("torch")
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for g, w in zip(got, want):
            assert g.shape == (P.T,), op
            close(g, w, scaled=op.endswith("group_advantages"))
    # The public op and the direct backend call (the oracle-tested one) give the same bits.
    same(calls["fused_reward_gae"]("cpp")[2], cpp.fused_reward_gae(
        b["hidden"], b["weight"], b["bias"], b["values"], m, None, **kl, bootstrap=torch.full((N,), 0.5),
        cu_seqlens=cu.long())[2])


def test_public_ops_packed_cpp_refuses_what_it_lacks():
    b, _ = batch_for(7, 60, 1)
    # gae's carry_masked is not in the C++ backend (padded either): explicit cpp refuses, auto runs torch.
    with pytest.raises(ops.BackendUnavailableError, match="carry_masked"):
        ops.gae(b["rewards"], b["values"], b["response_mask"], carry_masked=True, cu_seqlens=b["cu_seqlens"],
                backend="cpp")
    adv, _ = ops.gae(b["rewards"], b["values"], b["response_mask"], carry_masked=True, cu_seqlens=b["cu_seqlens"])
    assert adv.shape == b["rewards"].shape


def _packed_opcheck_cases():
    b, _ = batch_for(7, 30, 4)
    bf, _ = batch_for(7, 30, 4, dtype=torch.bfloat16)
    cu, m = b["cu_seqlens"], b["response_mask"]
    lp, ref, N = b["logprobs"], b["ref_logprobs"], 7
    r = torch.ops.r3hf
    return [
        (r.packed_token_rewards.default, (b["scores"], m, cu, lp, ref, 0.1, "k3", [-1.0, 1.0], "prompt", 0.5, None)),
        (r.packed_gae.default, (b["rewards"], b["values"], m, cu, 0.99, 0.95, b["bootstrap"])),
        (r.packed_fused_reward_gae.default,
         (bf["hidden"], b["weight"], b["bias"], b["values"], m, cu, lp, ref, 0.1, "k1", None, 1.0, 0.95, "prompt",
          1.0, [-2.0, 2.0], None)),
        (r.packed_response_region.default, (m, cu)),
        (r.packed_reward_to_go.default, (b["rewards"], m, cu, 0.9, "discount")),
        (r.packed_group_row_pass.default, (b["rewards"], m, cu, 0.9, True, True)),
        (r.packed_fused_reward_group_row_pass.default,
         (b["hidden"], b["weight"], None, m, cu, None, None, 0.0, "k1", None, "prompt", 1.0, None, 1.0)),
        (r.packed_group_finish.default, (b["rewards"], m, cu, torch.randn(N), torch.rand(N), 0.9, True)),
    ]


@pytest.mark.parametrize("case", range(8))
def test_packed_opcheck(case):
    # Schema, fake (meta) kernels and their agreement with the CPU kernels.
    op, args = _packed_opcheck_cases()[case]
    torch.library.opcheck(op, args)


# --- property: any layout, packed == padded C++ bit for bit -------------------------------------

from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_sequence = st.tuples(st.integers(0, 40), st.integers(0, 260), st.integers(0, 2**31 - 1))  # prompt, response, seed


def _stream(seqs, first):
    """cu_seqlens and mask [T] from (prompt length, response length, seed) per sequence: responses
    with holes and trailing non-generated tokens; first="prompt" gets at least 1 prompt token."""
    masks = []
    for p, n, seed in seqs:
        gen = torch.Generator().manual_seed(seed)
        if first == "prompt" and n:
            p = max(p, 1)
        region = torch.rand(n, generator=gen) >= float(torch.rand((), generator=gen)) * 0.5
        if n:
            trailing = int(torch.randint(0, n, (1,), generator=gen)) if seed % 3 == 0 else 0
            region[n - trailing:] = False
            region[0] = True  # s_i
        masks.append(torch.cat([torch.zeros(p, dtype=torch.bool), region]))
    lengths = torch.tensor([m.numel() for m in masks])
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return cu, torch.cat(masks)


@given(seqs=st.lists(_sequence, min_size=1, max_size=64), first=st.sampled_from(["prompt", "zero"]),
       estimator=st.sampled_from(["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_process"]),
       holes=st.sampled_from(["skip", "discount"]), seed=st.integers(0, 2**31 - 1))
def test_property_packed_equals_padded_cpp(seqs, first, estimator, holes, seed):
    cu, m = _stream(seqs, first)
    assume(int(m.sum()) >= 2)
    T, N, D = m.numel(), len(seqs), 4
    P = Padder(cu, m)
    gen = torch.Generator().manual_seed(seed)
    hidden, w = torch.randn(T, D, generator=gen), torch.randn(D, generator=gen)
    x, v, lp, ref = (torch.randn(T, generator=gen) for _ in range(4))
    index = torch.randint(0, max(1, N // 2), (N,), generator=gen)
    kw = dict(kl_coef=0.1, kl_estimator="k3", kl_clamp=None, first=first, beta_c=0.6, reward_clip=(-3.0, 3.0))
    got = cpp.fused_reward_gae(hidden, w, None, v, m, None, lp, ref, **kw, gamma=0.99, lam=0.9, cu_seqlens=cu)
    want = ops.fused_reward_gae(P.seq(hidden), w, None, P.rows(v), P.rows(m), P.prompt_len, logprobs=P.rows(lp),
                                ref_logprobs=P.rows(ref), **kw, gamma=0.99, lam=0.9, backend="cpp")
    for g, wt in zip(got, want):
        same(g, P.unpack(wt))
    same(cpp.token_rewards(x, m, None, lp, ref, **kw, cu_seqlens=cu),
         P.unpack(ops.token_rewards(P.seq(x), P.rows(m), P.prompt_len, logprobs=P.rows(lp), ref_logprobs=P.rows(ref),
                                    **kw, backend="cpp")))
    same(cpp.reward_to_go(x, m, 0.9, holes, cu_seqlens=cu),
         P.unpack(ops.reward_to_go(P.rows(x), P.rows(m), 0.9, holes=holes, backend="cpp")))
    same(cpp.masked_whiten(x, m, transform_masked=True, cu_seqlens=cu),
         P.unpack(ops.masked_whiten(P.rows(x), P.rows(m), transform_masked=True, backend="cpp")))
    same(cpp.group_advantages(x, m, index, estimator, 0.95, cu_seqlens=cu),
         P.unpack(ops.group_advantages(P.rows(x), P.rows(m), index, estimator, gamma=0.95, backend="cpp")))
    rw, adv = cpp.fused_reward_group_advantages(hidden, w, None, m, None, index, estimator, lp, ref, **kw,
                                                gamma=0.95, cu_seqlens=cu)
    want_rw, want_adv = ops.fused_reward_group_advantages(
        P.seq(hidden), w, None, P.rows(m), P.prompt_len, index, estimator, logprobs=P.rows(lp),
        ref_logprobs=P.rows(ref), **kw, gamma=0.95, backend="cpp")
    same(rw, P.unpack(want_rw))
    same(adv, P.unpack(want_adv))
