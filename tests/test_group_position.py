"""baseline="position" (issue 21) on every backend that runs it here, against a loop oracle.

The oracle below is written from the definitions in the issue's notes (position-baseline.md), in
plain Python floats, independently of r3hf.reference: position k = the k-th generated token of a
row; a row that has ended holds its last token's return H = G_{j, n_j} (0 if all-masked); per
(group, position) mean / unbiased std over every row of the group (singleton: 0, 1); rloo's
baseline is the other rows' mean H at the same position.

Backends: torch, cpp and (under TRITON_INTERPRET=1 here, on CUDA with a GPU) Triton; any runnable
backend that lists the "baseline" option joins automatically.
"""

import math

import pytest
import torch

from r3hf import ops
from r3hf._dispatch import BackendUnavailableError, _why_not

from backends_here import runnable

EPS = 1e-6
POSITION_ESTIMATORS = ("grpo", "rloo", "reinforce_pp_baseline")
CONFIGS = [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("rloo", "group"),
           ("reinforce_pp_baseline", "group")]
# Input dtypes: both sides read rewards as fp32 (exactly), so the tolerance is fp32 compute's.
DTYPES = {torch.float32: 2e-4, torch.bfloat16: 2e-4, torch.float16: 2e-4}


def position_backends(packed: bool = False) -> list:
    """torch, and every other backend runnable here that implements baseline= (packed: and cu_seqlens)."""
    options = ("baseline", "cu_seqlens") if packed else ("baseline",)
    cpu = torch.device("cpu")
    return [b for b in runnable() if b == "torch" or _why_not(b, "group_advantages", cpu, options) is None]


# --- the oracle -----------------------------------------------------------------------------


def oracle(rewards, mask, index, estimator, gamma=1.0, eps=EPS, scale="group") -> torch.Tensor:
    """A [B, L] float64 from the notes' definitions, in Python floats."""
    r = rewards.double().tolist()
    m = mask.tolist()
    ids = index.tolist()
    B, L = len(m), (len(m[0]) if m else 0)
    G = [[0.0] * L for _ in range(B)]
    for i in range(B):
        run = 0.0
        for t in reversed(range(L)):
            if m[i][t]:
                run = r[i][t] + gamma * run
                G[i][t] = run
    gen = [[t for t in range(L) if m[i][t]] for i in range(B)]

    def H(j, k):
        if not gen[j]:
            return 0.0
        return G[j][gen[j][min(k, len(gen[j]) - 1)]]

    members = {}
    for i, g in enumerate(ids):
        members.setdefault(g, []).append(i)
    s = [sum(r[i][t] for t in gen[i]) for i in range(B)]
    if B >= 2:
        mean_s = sum(s) / B
        std_s = math.sqrt(sum((x - mean_s) ** 2 for x in s) / (B - 1))
    else:
        std_s = 1.0
    A = [[0.0] * L for _ in range(B)]
    for i in range(B):
        rows = members[ids[i]]
        c = len(rows)
        for k, t in enumerate(gen[i]):
            vals = [H(j, k) for j in rows]
            if c < 2:
                mu, sd, b = 0.0, 1.0, 0.0
            else:
                mu = sum(vals) / c
                sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / (c - 1))
                b = sum(H(j, k) for j in rows if j != i) / (c - 1)
            if estimator == "rloo":
                A[i][t] = G[i][t] - b
            elif estimator == "grpo":
                div = {"group": sd + eps, "batch": std_s + eps, "none": 1.0}[scale]
                A[i][t] = (G[i][t] - mu) / div
            else:  # reinforce_pp_baseline: G − μ, then whitened over every generated token
                A[i][t] = G[i][t] - mu
    if estimator == "reinforce_pp_baseline":
        xs = [A[i][t] for i in range(B) for t in gen[i]]
        mean = sum(xs) / len(xs)
        var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
        for i in range(B):
            for t in gen[i]:
                A[i][t] = (A[i][t] - mean) / math.sqrt(var + eps)
    return torch.tensor(A, dtype=torch.float64).reshape(B, L)


# --- batches ----------------------------------------------------------------------------------


def batch(B, L, seed, group_size=3, dtype=torch.float32):
    """Unequal lengths, holes, an all-masked row, a singleton group, shuffled ids."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, L, generator=gen).to(dtype)
    lengths = torch.randint(0, L + 1, (B,), generator=gen)
    mask = (torch.arange(L)[None, :] < lengths[:, None]) & (torch.rand(B, L, generator=gen) > 0.2)
    if B > 2:
        mask[1] = False  # an all-masked row
    mask[0, 0] = True  # the batch has a generated token
    ids = torch.arange(B) // group_size
    if B > 3:
        ids[-1] = 1000  # a singleton
    ids = ids[torch.randperm(B, generator=gen)] * 7 - 3  # shuffled, not dense, negative too
    return rewards, mask, ids


def _close(got, want, tol, what=""):
    want = want.float()
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale, msg=lambda s: f"{what}: {s}")


# --- equality with the oracle -----------------------------------------------------------------


@pytest.mark.parametrize("backend", position_backends())
@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (5, 1), (7, 47), (12, 29), (6, 1000)])
@pytest.mark.parametrize("estimator,scale", CONFIGS)
def test_matches_oracle(backend, shape, estimator, scale):
    B, L = shape
    if estimator == "reinforce_pp_baseline" and B * L < 2:
        pytest.skip("whitening needs 2 generated tokens")
    rewards, mask, ids = batch(B, L, seed=B * 1000 + L)
    if estimator == "reinforce_pp_baseline" and int(mask.sum()) < 2:
        mask[-1, -1] = True
        mask[0, 0] = True
    for gamma in (1.0, 0.9):
        got = ops.group_advantages(rewards, mask, ids, estimator, gamma=gamma, scale=scale, baseline="position",
                                   backend=backend)
        assert got.dtype == torch.float32 and got.shape == (B, L)
        assert torch.all(got[~mask] == 0)
        _close(got, oracle(rewards, mask, ids, estimator, gamma, scale=scale), 2e-4, f"{backend} {estimator} {gamma}")


@pytest.mark.parametrize("backend", position_backends())
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_dtypes(backend, dtype):
    rewards, mask, ids = batch(10, 23, seed=5, dtype=dtype)
    for estimator, scale in CONFIGS:
        got = ops.group_advantages(rewards, mask, ids, estimator, scale=scale, baseline="position", backend=backend)
        _close(got, oracle(rewards, mask, ids, estimator, scale=scale), DTYPES[dtype], f"{backend} {dtype} {estimator}")


@pytest.mark.parametrize("backend", position_backends())
def test_int_group_size_and_inputs_untouched(backend):
    rewards, mask, _ = batch(12, 17, seed=9)
    before = rewards.clone(), mask.clone()
    got = ops.group_advantages(rewards, mask, 4, "rloo", baseline="position", backend=backend)
    _close(got, oracle(rewards, mask, torch.arange(12) // 4, "rloo"), 2e-4)
    assert torch.equal(rewards, before[0]) and torch.equal(mask, before[1])


# --- the math -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", position_backends())
@pytest.mark.parametrize("which", [0, 1, 2])
def test_unbiased_own_row_never_moves_its_baseline(backend, which):
    """rloo: b_i = G_i − A_i must not change when row i's rewards and mask change."""
    rewards, mask, ids = batch(9, 31, seed=21, group_size=3)
    # a row of a group whose other rows generate something (not the singleton)
    i = [j for j in range(9) if mask[j].any() and mask[(ids == ids[j]) & (torch.arange(9) != j)].any()][which]
    gen = torch.Generator().manual_seed(which)
    r2, m2 = rewards.clone(), mask.clone()
    r2[i] = torch.randn(31, generator=gen) * 5
    m2[i] = torch.rand(31, generator=gen) > 0.5
    m2[i, :3] = True

    def baseline(r, m):
        A = ops.group_advantages(r, m, ids, "rloo", baseline="position", backend=backend)
        G = ops.reward_to_go(r, m)
        p = (m[i].long().cumsum(0) - 1)[m[i]]  # positions of row i's generated tokens
        return dict(zip(p.tolist(), (G[i] - A[i])[m[i]].tolist())), A

    b1, A1 = baseline(rewards, mask)
    b2, A2 = baseline(r2, m2)
    shared = set(b1) & set(b2)
    assert shared
    for k in shared:
        assert b1[k] == pytest.approx(b2[k], abs=1e-5), k
    # ...while it is not a constant: the other rows of the group do move it
    others = (ids == ids[i]) & (torch.arange(9) != i)
    r3 = rewards.clone()
    r3[others] += 1.0
    b3, _ = baseline(r3, mask)
    assert any(abs(b3[k] - b1[k]) > 0.1 for k in b1)
    # and the rows of the other groups keep their advantages
    rest = ids != ids[i]
    torch.testing.assert_close(A1[rest], A2[rest])


@pytest.mark.parametrize("backend", position_backends())
def test_equal_lengths_rloo_is_leave_one_out_of_returns(backend):
    """Equal lengths, no holes: A_{i,t} = G_{i,t} − mean_{j≠i} G_{j,t} (issue 21)."""
    gen = torch.Generator().manual_seed(3)
    B, L, c = 8, 19, 4
    rewards = torch.randn(B, L, generator=gen)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[:, 2:15] = True  # same 13 positions in every row (left and right padding)
    ids = torch.arange(B) // c
    for gamma in (1.0, 0.8):
        G = ops.reward_to_go(rewards, mask, gamma, backend="torch").double()
        want = torch.zeros(B, L, dtype=torch.float64)
        for i in range(B):
            peers = (ids == ids[i]) & (torch.arange(B) != i)
            want[i] = G[i] - G[peers].mean(0)
        got = ops.group_advantages(rewards, mask, ids, "rloo", gamma=gamma, baseline="position", backend=backend)
        _close(got, torch.where(mask, want, 0.0), 1e-5)


@pytest.mark.parametrize("backend", position_backends())
@pytest.mark.parametrize("estimator,scale", CONFIGS)
def test_sparse_rewards_position_equals_row_any_lengths(backend, estimator, scale):
    """γ = 1, the score at the last generated token: position == row for any lengths and holes."""
    rewards, mask, ids = batch(14, 26, seed=77)
    n = mask.sum(1)
    last = torch.where(mask, torch.arange(26), -1).amax(1)
    score = torch.randn(14, generator=torch.Generator().manual_seed(1))
    sparse = torch.zeros(14, 26)
    sparse[n > 0, last[n > 0]] = score[n > 0]
    row = ops.group_advantages(sparse, mask, ids, estimator, scale=scale, backend=backend)
    pos = ops.group_advantages(sparse, mask, ids, estimator, scale=scale, baseline="position", backend=backend)
    _close(pos, row.double(), 1e-5, f"{backend} {estimator} {scale}")


def test_position_differs_from_row_on_dense_rewards():
    """Sanity: the test above can fail, dense rewards give another baseline."""
    rewards, mask, ids = batch(9, 20, seed=2)
    row = ops.group_advantages(rewards, mask, ids, "rloo")
    pos = ops.group_advantages(rewards, mask, ids, "rloo", baseline="position")
    assert not torch.allclose(row, pos, atol=1e-2)


# --- packed == padded, fused == composition ------------------------------------------------


def _pack(rewards, mask, prompt=2):
    """Each row -> its prompt (prompt masked positions) then its response up to its last generated
    token (holes kept): a packed stream [T] and cu_seqlens."""
    parts_r, parts_m, cu, spans = [], [], [0], []
    for i in range(mask.shape[0]):
        gen = torch.nonzero(mask[i])[:, 0]
        end = int(gen[-1]) + 1 if gen.numel() else 0
        start = int(gen[0]) if gen.numel() else 0
        parts_r += [torch.zeros(prompt), rewards[i, start:end].float()]
        parts_m += [torch.zeros(prompt, dtype=torch.bool), mask[i, start:end]]
        spans.append((cu[-1] + prompt, start, end))
        cu.append(cu[-1] + prompt + end - start)
    return torch.cat(parts_r), torch.cat(parts_m), torch.tensor(cu), spans


@pytest.mark.parametrize("backend", position_backends(packed=True))
@pytest.mark.parametrize("estimator,scale", CONFIGS)
def test_packed_equals_padded(backend, estimator, scale):
    rewards, mask, ids = batch(11, 21, seed=13)
    pr, pm, cu, spans = _pack(rewards, mask)
    padded = ops.group_advantages(rewards, mask, ids, estimator, scale=scale, gamma=0.95, baseline="position",
                                  backend=backend)
    packed = ops.group_advantages(pr, pm, ids, estimator, scale=scale, gamma=0.95, baseline="position",
                                  cu_seqlens=cu, backend=backend)
    want = torch.zeros_like(packed)
    for i, (at, start, end) in enumerate(spans):
        want[at : at + end - start] = padded[i, start:end]
    _close(packed, want.double(), 1e-5, f"{backend} {estimator}")


@pytest.mark.parametrize("backend", position_backends(packed=True))
def test_packed_fused_equals_composition(backend):
    gen = torch.Generator().manual_seed(4)
    lens = [6, 9, 4, 7, 5, 8]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    T = int(cu[-1])
    hidden = torch.randn(T, 5, generator=gen)
    weight = torch.randn(5, generator=gen)
    mask = torch.zeros(T, dtype=torch.bool)
    for i, n in enumerate(lens):
        mask[int(cu[i]) + 2 : int(cu[i + 1])] = torch.rand(n - 2, generator=gen) > 0.2
        mask[int(cu[i]) + 2] = True
    ids = torch.tensor([5, 5, 1, 1, 5, 1])
    for est in POSITION_ESTIMATORS:
        rew, adv = ops.fused_reward_group_advantages(hidden, weight, 0.1, mask, None, ids, est, baseline="position",
                                                     cu_seqlens=cu, backend=backend)
        want = ops.group_advantages(rew, mask, ids, est, baseline="position", cu_seqlens=cu, backend="torch")
        _close(adv, want.double(), 1e-5, f"{backend} {est}")


@pytest.mark.parametrize("backend", position_backends())
def test_fused_equals_composition(backend):
    gen = torch.Generator().manual_seed(8)
    B, S, L, D = 6, 14, 9, 4
    hidden = torch.randn(B, S, D, generator=gen)
    weight = torch.randn(D, generator=gen)
    mask = torch.rand(B, L, generator=gen) > 0.3
    mask[:, 0] = True
    for est in POSITION_ESTIMATORS:
        rew, adv = ops.fused_reward_group_advantages(hidden, weight, None, mask, S - L, 3, est, gamma=0.9,
                                                     baseline="position", backend=backend)
        want = ops.group_advantages(rew, mask, 3, est, gamma=0.9, baseline="position", backend="torch")
        _close(adv, want.double(), 1e-5, f"{backend} {est}")
        _close(adv, oracle(rew, mask, torch.arange(B) // 3, est, 0.9), 2e-4, f"{backend} {est} oracle")


# --- the contract layer and threads -----------------------------------------------------------


def test_contract_torch_form_matches_reference():
    import r3hf._group_stats as gs

    rewards, mask, ids = batch(13, 18, seed=31)
    for est, scale in CONFIGS:
        got = gs.group_advantages(gs.row_pass, gs.finish, rewards, mask, ids, est, 0.9, EPS, scale, None,
                                  baseline="position")
        want = ops.group_advantages(rewards, mask, ids, est, gamma=0.9, scale=scale, baseline="position",
                                    backend="torch")
        _close(got, want.double(), 1e-5, est)


@pytest.mark.skipif("cpp" not in position_backends(), reason="C++ extension not built")
def test_cpp_bits_do_not_depend_on_threads():
    rewards, mask, ids = batch(64, 300, seed=17, group_size=5)
    pr, pm, cu, _ = _pack(rewards, mask)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append([ops.group_advantages(rewards, mask, ids, est, baseline="position", backend="cpp")
                         for est in POSITION_ESTIMATORS]
                        + [ops.group_advantages(pr, pm, ids, est, baseline="position", cu_seqlens=cu, backend="cpp")
                           for est in POSITION_ESTIMATORS])
    finally:
        torch.set_num_threads(threads)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)


# --- dispatch, compile, bad inputs -------------------------------------------------------------


def test_backend_without_the_option_is_refused_by_name_and_auto_falls_back(monkeypatch):
    """Every backend here lists "baseline" now, so the refusal is checked on the C++ backend with the
    option taken out of its OPTIONS (the dispatcher's rule is what is under test)."""
    import r3hf._dispatch as d

    rewards, mask, ids = batch(6, 8, seed=1)
    module, reason = d.load("cpp")
    if module is None:
        pytest.skip(f"C++ backend unavailable: {reason}")
    without = {op: tuple(o for o in opts if o != "baseline") for op, opts in module.OPTIONS.items()}
    monkeypatch.setattr(module, "OPTIONS", without)
    monkeypatch.setattr(d, "_CHOSEN", {})
    with pytest.raises(BackendUnavailableError, match="baseline"):
        ops.group_advantages(rewards, mask, ids, "rloo", baseline="position", backend="cpp")
    assert d.choose("group_advantages", "auto", torch.device("cpu"), ("baseline",)) == "torch"
    # auto runs it somewhere and agrees with torch
    auto = ops.group_advantages(rewards, mask, ids, "rloo", baseline="position")
    _close(auto, ops.group_advantages(rewards, mask, ids, "rloo", baseline="position", backend="torch").double(), 1e-5)
    monkeypatch.undo()
    assert d.choose("group_advantages", "auto", torch.device("cpu"), ("baseline",)) in position_backends()


@pytest.mark.parametrize("backend", position_backends())
def test_compile_fullgraph(backend):
    rewards, mask, ids = batch(8, 12, seed=3)

    def f(r, m, i):
        return ops.group_advantages(r, m, i, "grpo", baseline="position", backend=backend) * 2.0

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(rewards, mask, ids), f(rewards, mask, ids))


def test_bad_inputs():
    rewards, mask, ids = batch(6, 8, seed=1)
    with pytest.raises(TypeError, match="baseline"):
        ops.group_advantages(rewards, mask, ids, "rloo", baseline=None)
    with pytest.raises(ValueError, match="baseline"):
        ops.group_advantages(rewards, mask, ids, "rloo", baseline="token")
    for est in ("reinforce_pp", "grpo_process"):
        with pytest.raises(ValueError, match=f"baseline='position'.*estimator='{est}'"):
            ops.group_advantages(rewards, mask, ids, est, baseline="position")
        with pytest.raises(ValueError, match="estimator"):
            ops.fused_reward_group_advantages(torch.randn(6, 10, 3), torch.ones(3), None, mask, 2, ids, est,
                                              baseline="position")
    with pytest.raises(ValueError, match="baseline"):
        ops.fused_reward_group_advantages(torch.randn(6, 10, 3), torch.ones(3), None, mask, 2, ids, "rloo",
                                          baseline="Position")
    # the default is today's numbers
    torch.testing.assert_close(ops.group_advantages(rewards, mask, ids, "rloo", baseline="row"),
                               ops.group_advantages(rewards, mask, ids, "rloo"))


@pytest.mark.parametrize("backend", position_backends())
def test_gradient_matches_finite_differences(backend):
    gen = torch.Generator().manual_seed(6)
    rewards = torch.randn(6, 9, generator=gen, dtype=torch.float64).float().requires_grad_()
    mask = torch.rand(6, 9, generator=gen) > 0.3
    mask[:, 0] = True
    ids = torch.tensor([0, 0, 0, 1, 1, 1])  # groups of 3: a pair's grpo is ±1/√2, flat but for sign flips
    for est in POSITION_ESTIMATORS:
        w = torch.randn(6, 9, generator=gen)
        d = torch.randn(6, 9, generator=gen) * 3e-3
        A = ops.group_advantages(rewards, mask, ids, est, baseline="position", backend=backend)
        (g,) = torch.autograd.grad((A * w).sum(), rewards)
        with torch.no_grad():
            up = ops.group_advantages(rewards + d, mask, ids, est, baseline="position", backend=backend)
            down = ops.group_advantages(rewards - d, mask, ids, est, baseline="position", backend=backend)
        assert float((g * d).sum()) == pytest.approx(float(((up - down) * w).sum() / 2), rel=2e-2, abs=1e-4), est
