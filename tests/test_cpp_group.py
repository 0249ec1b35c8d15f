"""The C++ backend's group-advantage ops (issue 12) against the torch reference (the spec) and the
torch form of the contract layer (r3hf/_group_stats.py: row_pass, affine, finish).

reward_to_go and the finish pass repeat the reference's fp32 operations in the same order, so
they are compared bitwise; the group advantages go through float64 statistics computed in a
different order from the reference's, so they are compared with a tolerance scaled by the
output's size.
"""

from __future__ import annotations

import os

import pytest
import torch

import r3hf.ops as ops
from batches import TOLERANCES, make_batch, make_mask

if os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1: the C++ extension is deliberately not built", allow_module_level=True)

from r3hf import _group_stats as gs  # noqa: E402
from r3hf.backends import cpp  # noqa: E402

ESTIMATORS = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_process")
ESTIMATOR_OPTIONS = [(e, "group") for e in ESTIMATORS] + [
    ("grpo", "batch"), ("grpo", "none"), ("grpo_process", "batch"), ("grpo_process", "none"),
]
LENGTHS = [1, 47, 1000]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
B = 12


def shuffled_index(B: int, seed: int) -> torch.Tensor:
    """Group ids in shuffled order with groups of 1 (a singleton), 2, 3 and the rest of size 3 or less."""
    sizes, ids, g = [1, 2, 3], [], 0
    while sum(sizes) < B:
        sizes.append(min(3, B - sum(sizes)))
    for size in sizes:
        ids += [g * 7 + 3] * size  # non-contiguous, non-zero-based ids
        g += 1
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(seed))
    return torch.tensor(ids, dtype=torch.int64)[perm]


def rows(L: int, seed: int = 0, dtype=torch.float32, B: int = B):
    gen = torch.Generator().manual_seed(1000 + L + seed)
    rewards = torch.randn(B, L, generator=gen).to(dtype)
    mask = make_mask(B, L, gen=gen)  # trailing padding, holes, one all-masked row
    return rewards, mask


def kwargs_for(estimator, scale, gamma):
    kw = dict(gamma=gamma)
    if scale != "group":
        kw["scale"] = scale
    return kw


def assert_close_scaled(got, want, dtype=torch.float32, what=""):
    rtol, atol = TOLERANCES[dtype]
    rtol = max(rtol, 1e-4) if dtype == torch.float32 else rtol  # float64 statistics summed in another order
    big = 1.0 + float(want.abs().max()) if want.numel() else 1.0
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * big, msg=lambda m: f"{what}: {m}")


def both_or_raise(fn, *args, **kw):
    """(cpp result, reference result), or None when both raise the same ValueError (e.g. fewer
    than two generated tokens in the batch for a whitening estimator)."""
    try:
        want = fn(*args, **kw, backend="torch")
    except ValueError as e:
        with pytest.raises(ValueError, match=str(e).split(";")[0][:40].replace("(", r"\(").replace("[", r"\[")):
            fn(*args, **kw, backend="cpp")
        return None
    return fn(*args, **kw, backend="cpp"), want


def test_ops_are_chosen_on_cpu():
    info = ops.backends()
    for op in ("reward_to_go", "group_advantages", "fused_reward_group_advantages"):
        assert op in cpp.OPS
        assert info["ops"][op]["cpu"] == "cpp", (op, info["ops"][op])


def test_group_ops_are_cpu_only(monkeypatch):
    # Even in a CUDA build, the group ops have no CUDA C++ kernel: never chosen for CUDA tensors.
    from r3hf import _dispatch

    monkeypatch.setattr(cpp, "unavailable_reason", lambda device: None)
    for op in ("reward_to_go", "group_advantages", "fused_reward_group_advantages"):
        assert "no cuda kernel" in _dispatch._why_not("cpp", op, torch.device("cuda"))
        assert _dispatch._why_not("cpp", op, torch.device("cpu")) is None
    assert _dispatch._why_not("cpp", "gae", torch.device("cuda")) is None


# --- reward_to_go -------------------------------------------------------------------------------


@pytest.mark.parametrize("holes", ["skip", "discount"])
@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", LENGTHS)
def test_reward_to_go_bitwise(holes, gamma, dtype, L):
    r, m = rows(L, dtype=dtype)
    got = ops.reward_to_go(r, m, gamma, holes=holes, backend="cpp")
    want = ops.reward_to_go(r, m, gamma, holes=holes, backend="torch")
    assert got.dtype == torch.float32
    assert torch.equal(got, want), float((got - want).abs().max())


def test_reward_to_go_masked_garbage_is_ignored():
    # Rewards at masked positions (e.g. NaN padding) must not leak into the returns.
    r, m = rows(47)
    r = r.masked_fill(~m, float("nan"))
    for holes in ("skip", "discount"):
        got = ops.reward_to_go(r, m, 0.95, holes=holes, backend="cpp")
        assert torch.equal(got, ops.reward_to_go(r, m, 0.95, holes=holes, backend="torch"))
        assert not got.isnan().any()


# --- the two passes against the contract's torch form --------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 0.7])
@pytest.mark.parametrize("L", LENGTHS)
def test_row_pass_statistics_match_contract(gamma, L):
    r, m = rows(L, seed=1)
    _, want = gs.row_pass(r, m, gamma)
    got = torch.ops.r3hf.group_row_pass(r, m, gamma)
    assert got.dtype == torch.float64 and got.shape == (B, gs.N_STATS) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-9)
    # Columns the estimator does not read are skipped on request and then NaN, never stale values.
    part = torch.ops.r3hf.group_row_pass(r, m, gamma, False, False)
    keep = [gs.STAT_COUNT, gs.STAT_SUM_R]
    assert torch.equal(part[:, keep], got[:, keep])
    assert part[:, [gs.STAT_M2_R, gs.STAT_SUM_G, gs.STAT_M2_G]].isnan().all()
    only_g = torch.ops.r3hf.group_row_pass(r, m, gamma, True, False)
    assert torch.equal(only_g[:, [gs.STAT_SUM_G, gs.STAT_M2_G]], got[:, [gs.STAT_SUM_G, gs.STAT_M2_G]])


@pytest.mark.parametrize("on_rewards", [False, True])
@pytest.mark.parametrize("gamma", [1.0, 0.8])
@pytest.mark.parametrize("L", LENGTHS)
def test_finish_bitwise_equals_contract(on_rewards, gamma, L):
    r, m = rows(L, seed=2)
    returns, _ = gs.row_pass(r, m, gamma)
    gen = torch.Generator().manual_seed(L)
    shift, scale = torch.randn(B, generator=gen), torch.rand(B, generator=gen) + 0.5
    want = gs.finish(r, returns, m, shift, scale, gamma, on_rewards)
    got = torch.ops.r3hf.group_finish(r, m, shift, scale, gamma, on_rewards)
    assert torch.equal(got, want), float((got - want).abs().max())


# --- group_advantages ---------------------------------------------------------------------------


@pytest.mark.parametrize("estimator,scale", ESTIMATOR_OPTIONS)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("L", LENGTHS)
def test_group_advantages(estimator, scale, gamma, L):
    r, m = rows(L, seed=3)
    index = shuffled_index(B, seed=L)
    kw = kwargs_for(estimator, scale, gamma)
    pair = both_or_raise(ops.group_advantages, r, m, index, estimator, **kw)
    if pair is None:
        return
    got, want = pair
    assert_close_scaled(got, want, what=f"{estimator}/{scale}")
    assert (got[~m] == 0).all()
    # The same three layers with the torch passes: only the passes differ, so nearly the same bits.
    contract = gs.group_advantages(gs.row_pass, gs.finish, r, m, index, estimator, gamma,
                                   1e-6, scale, None)
    torch.testing.assert_close(got, contract, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_group_advantages_low_precision_rewards(dtype, estimator):
    # Rewards of any float dtype are read as fp32: the same result as the fp32 copy.
    r, m = rows(47, seed=4, dtype=dtype)
    index = shuffled_index(B, seed=4)
    got = ops.group_advantages(r, m, index, estimator, backend="cpp")
    assert torch.equal(got, ops.group_advantages(r.float(), m, index, estimator, backend="cpp"))
    assert_close_scaled(got, ops.group_advantages(r, m, index, estimator, backend="torch"), what=estimator)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_int_index_singletons_and_row_order(estimator):
    r, m = rows(47, seed=5)
    # int G: contiguous groups; G = 1 makes every row a singleton (veRL: mean 0, std 1; rloo keeps G).
    for G in (1, 3, 4):
        got = ops.group_advantages(r, m, G, estimator, backend="cpp")
        assert_close_scaled(got, ops.group_advantages(r, m, G, estimator, backend="torch"), what=f"G={G}")
    # Shuffling the rows (and their ids) shuffles the result, bit for bit: each row's computation
    # depends on its own data and its group's statistics only.
    index = shuffled_index(B, seed=5)
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(9))
    a = ops.group_advantages(r, m, index, estimator, backend="cpp")
    p = ops.group_advantages(r[perm], m[perm], index[perm], estimator, backend="cpp")
    torch.testing.assert_close(p, a[perm], rtol=1e-6, atol=1e-6)


def test_equal_scores_and_all_masked_rows():
    # Sparse rewards with equal scores in a group: grpo gives 0 there (std 0 -> divided by eps).
    L = 47
    m = make_mask(B, L, gen=torch.Generator().manual_seed(6))
    m[0] = False
    m[1:, 0] = True
    last = L - 1 - m.flip(1).int().argmax(1)
    r = torch.zeros(B, L)
    r[torch.arange(B), last] = torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0, 3.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    r[0] = 0.0
    index = torch.tensor([0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4])
    for est in ESTIMATORS:
        got = ops.group_advantages(r, m, index, est, backend="cpp")
        assert_close_scaled(got, ops.group_advantages(r, m, index, est, backend="torch"), what=est)
        assert (got[0] == 0).all()
    grpo = ops.group_advantages(r, m, index, "grpo", backend="cpp")
    assert (grpo[1:4] == 0).all() and (grpo[6:] == 0).all()


# --- fused_reward_group_advantages --------------------------------------------------------------

FUSED_OPTIONS = [
    dict(),
    dict(kl_coef=0.05, gamma=0.99),
    dict(kl_coef=0.1, kl_estimator="k3", kl_clamp=10.0, first="zero", beta_c=0.5, reward_clip=1.0),
    dict(kl_coef=0.2, kl_estimator="abs", kl_clamp=(0.0, 0.3), reward_clip=(-0.2, 0.2), gamma=0.9),
]


@pytest.mark.parametrize("opts", range(len(FUSED_OPTIONS)))
@pytest.mark.parametrize("estimator,scale", [(e, "group") for e in ESTIMATORS] + [("grpo", "batch")])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", LENGTHS)
def test_fused(opts, estimator, scale, dtype, L):
    b = make_batch(B=B, L=L, D=24, dtype=dtype, seed=L + opts)
    index = shuffled_index(B, seed=L + opts)
    kw = dict(FUSED_OPTIONS[opts], logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"])
    if scale != "group":
        kw["scale"] = scale
    args = (b["hidden"], b["weight"], b["bias"], b["response_mask"], b["prompt_len"], index, estimator)
    pair = both_or_raise(ops.fused_reward_group_advantages, *args, **kw)
    if pair is None:
        return
    (rewards, adv), (want_rewards, want_adv) = pair
    assert_close_scaled(rewards, want_rewards, dtype, what="rewards")
    assert_close_scaled(adv, want_adv, dtype, what=f"{estimator} advantages")
    # Fused = the cpp parts, bit for bit (same projection, same row math).
    reward_kw = {k: v for k, v in kw.items() if k not in ("gamma", "scale")}
    scores = ops.prefix_scores(b["hidden"], b["weight"], b["bias"], backend="cpp")
    r2 = ops.token_rewards(scores, b["response_mask"], b["prompt_len"], **reward_kw, backend="cpp")
    a2 = ops.group_advantages(r2, b["response_mask"], index, estimator, gamma=kw.get("gamma", 1.0),
                              **({"scale": scale} if scale != "group" else {}), backend="cpp")
    assert torch.equal(rewards, r2)
    torch.testing.assert_close(adv, a2, rtol=0, atol=0)


def test_fused_non_contiguous_hidden():
    b = make_batch(B=6, L=47, D=32, dtype=torch.bfloat16, seed=11)
    hidden_t = b["hidden"].transpose(1, 2).contiguous().transpose(1, 2)
    mask = torch.stack([b["response_mask"], ~b["response_mask"]], dim=2)[:, :, 0]
    index = torch.tensor([5, 1, 5, 1, 2, 2])
    want = ops.fused_reward_group_advantages(b["hidden"], b["weight"], b["bias"], b["response_mask"],
                                             b["prompt_len"], index, "rloo", backend="cpp")
    got = ops.fused_reward_group_advantages(hidden_t, b["weight"][None, :], b["bias"], mask, b["prompt_len"],
                                            index, "rloo", backend="cpp")
    assert all(torch.equal(g, w) for g, w in zip(got, want))


# --- determinism, inputs, opcheck, errors -------------------------------------------------------


def test_bitwise_deterministic_across_threads():
    # 70 rows of 4100 positions: several parallel_for tasks and a short last block of rows.
    gen = torch.Generator().manual_seed(12)
    r = torch.randn(70, 4100, generator=gen)
    m = make_mask(70, 4100, gen=gen)
    index = torch.randint(0, 9, (70,), generator=gen)
    b = make_batch(B=16, L=300, D=64, dtype=torch.bfloat16, seed=12)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            out = [ops.reward_to_go(r, m, 0.97, holes=h, backend="cpp") for h in ("skip", "discount")]
            out += [ops.group_advantages(r, m, index, e, gamma=0.99, backend="cpp") for e in ESTIMATORS]
            out.append(torch.ops.r3hf.group_row_pass(r, m, 0.99))
            out += list(ops.fused_reward_group_advantages(
                b["hidden"], b["weight"], b["bias"], b["response_mask"], b["prompt_len"], 4, "grpo_process",
                logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, backend="cpp"))
            results.append(out)
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert torch.equal(x, y)


def test_inputs_unchanged():
    b = make_batch(B=B, L=47, D=16, dtype=torch.float16, seed=13)
    r, m = rows(47, seed=13)
    index = shuffled_index(B, seed=13)
    before = [t.clone() for t in (r, m, index, b["hidden"], b["weight"], b["logprobs"], b["ref_logprobs"],
                                  b["response_mask"], b["prompt_len"])]
    ops.reward_to_go(r, m, 0.9, holes="discount", backend="cpp")
    for est in ESTIMATORS:
        ops.group_advantages(r, m, index, est, backend="cpp")
    ops.fused_reward_group_advantages(b["hidden"], b["weight"], b["bias"], b["response_mask"], b["prompt_len"],
                                      index, "grpo_process", logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"],
                                      kl_coef=0.1, backend="cpp")
    after = (r, m, index, b["hidden"], b["weight"], b["logprobs"], b["ref_logprobs"], b["response_mask"],
             b["prompt_len"])
    for x, y in zip(before, after):
        assert torch.equal(x, y)


def _opcheck_cases():
    r, m = rows(47, seed=14)
    b = make_batch(B=B, L=47, D=16, dtype=torch.bfloat16, seed=14)
    lp, ref = b["logprobs"].float(), b["ref_logprobs"].float()
    shift, scale = torch.randn(B), torch.rand(B) + 0.5
    o = torch.ops.r3hf
    return [
        (o.reward_to_go.default, (r, m, 0.9, "skip")),
        (o.reward_to_go.default, (r, m, 1.0, "discount")),
        (o.group_row_pass.default, (r, m, 0.95, True, True)),
        (o.group_row_pass.default, (r, m, 1.0)),  # (opcheck compares outputs without equal_nan, so no skipped columns)
        (o.group_finish.default, (r, m, shift, scale, 0.9, False)),
        (o.group_finish.default, (r, m, shift, scale, 1.0, True)),
        (o.fused_reward_group_row_pass.default,
         (b["hidden"], b["weight"], torch.tensor([0.5]), b["response_mask"], b["prompt_len"], lp, ref, 0.1, "k3",
          [-10.0, 10.0], "prompt", 0.5, [-2.0, 2.0], 0.99)),
        (o.fused_reward_group_row_pass.default,
         (b["hidden"], b["weight"], None, b["response_mask"], b["prompt_len"], None, None, 0.0, "k1", None, "zero",
          1.0, None, 1.0)),
    ]


@pytest.mark.parametrize("case", range(8))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_torch_compile_traces_the_passes():
    r, m = rows(47, seed=15)

    def f(r, m, shift, scale):
        stats = torch.ops.r3hf.group_row_pass(r, m, 1.0)
        return stats, torch.ops.r3hf.group_finish(r, m, shift, scale, 1.0, False)

    shift, scale = torch.randn(B), torch.rand(B)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    for g, w in zip(compiled(r, m, shift, scale), f(r, m, shift, scale)):
        assert torch.equal(g, w)


@pytest.mark.parametrize("call,match", [
    (lambda r, m: torch.ops.r3hf.reward_to_go(r, m, 1.0, "hop"), "holes must be one of"),
    (lambda r, m: torch.ops.r3hf.reward_to_go(r[:, :-1], m, 1.0, "skip"), r"rewards and response_mask must both be \[B, L\]"),
    (lambda r, m: torch.ops.r3hf.group_row_pass(r, m[:-1], 1.0), r"\[B, L\]"),
    (lambda r, m: torch.ops.r3hf.group_finish(r, m, torch.zeros(3), torch.ones(B), 1.0, False), "shift and scale must be"),
])
def test_kernel_argument_errors(call, match):
    # r3hf.ops validates first; calling the raw ops wrongly still gives a clear ValueError, not a crash.
    r, m = rows(47)
    with pytest.raises(ValueError, match=match):
        call(r, m)
