"""ops.group_advantages / ops.reward_to_go against the real veRL 0.9.1 estimators (skipped when
veRL is not installed; CI installs it in .ci/steps/40-verl.sh; .ci/run sets R3HF_REQUIRE_VERL=1).

The sparse special case is the contract: each row's score at its last generated token, no KL.
Batches mix padded, multi-turn (holes), truncated, one-token and all-masked rows, groups in
shuffled order, singletons, and groups whose rows have equal scores. Compared at every position,
on every backend that runs here and implements the op (Triton's interpreter on the small shapes).

holes="discount" is compared with OpenRLHF 0.11's `get_cumulative_returns`: its own source when
openrlhf is installed (`pip install --no-deps openrlhf==0.11.0`; the method is taken out of
experience_maker.py with `ast`, since that module imports ray, vLLM and deepspeed), otherwise a
transcription written for this test (the test says which ran in its id); under
R3HF_REQUIRE_OPENRLHF=1 (CI) it fails instead. CI runs it against 0.11.0 (main suite) and 0.11.2
(.ci/steps/41-openrlhf.sh).
"""

import ast
import importlib
import importlib.util
import os
import pathlib

import numpy as np
import pytest
import torch

from r3hf import ops

from backends_here import runnable, supports
from peer_batches import assert_close, response_mask
from verl_harness import import_verl as _import

core_algos = _import("verl.trainer.ppo.core_algos")
AlgoConfig = _import("verl.trainer.config").AlgoConfig

WHITEN_EPS = 1e-8  # veRL's masked_whiten: (x − mean)·rsqrt(var + 1e-8)
SHAPES = [(2, 3), (6, 7), (9, 47), (16, 300)]  # (B, L)
BACKENDS = runnable()


def _backend(backend, op, B, L):
    """Skip a backend without the op; the Triton interpreter only gets the smaller shapes."""
    if not supports(backend, op):
        pytest.skip(f"{backend} does not implement {op}")
    if backend == "triton" and B * L > 500:
        pytest.skip("Triton interpreter: small shapes only")
    return backend


def _batch(B, L, seed, equal_scores=True):
    """Sparse rewards (score at the last generated token), bool mask, group ids [B] in shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    mask = response_mask(B, L, gen=gen)
    n_groups = max(1, B // 3)
    ids = torch.randint(0, n_groups, (B,), generator=gen)
    ids[-1] = n_groups + 7  # a singleton
    ids = ids[torch.randperm(B, generator=gen)]
    # dyadic scores, so a group of equal scores has an exact fp32 mean in veRL too
    scores = torch.randint(-8, 9, (B,), generator=gen).float() / 4 + torch.randn(B, generator=gen)
    if equal_scores:
        same = ids == ids[0]
        scores[same] = 0.75
    last = mask & (mask.cumsum(1) == mask.sum(1, keepdim=True))
    rewards = torch.where(last, scores[:, None], 0.0)
    return rewards, mask, ids


def _uids(ids):
    return np.array([f"prompt-{int(i)}" for i in ids], dtype=object)  # veRL's uid: strings


@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_equals_verl(backend, B, L, seed, norm):
    backend = _backend(backend, "group_advantages", B, L)
    rewards, mask, ids = _batch(B, L, seed)
    keep = rewards.clone()
    want, _ = core_algos.compute_grpo_outcome_advantage(rewards.clone(), mask.float(), _uids(ids), epsilon=1e-6,
                                                        norm_adv_by_std_in_grpo=norm)
    got = ops.group_advantages(rewards, mask, ids, "grpo", scale="group" if norm else "none", backend=backend)
    assert_close(got, want, "grpo")
    assert torch.equal(rewards, keep)


@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rloo_equals_verl(backend, B, L, seed):
    backend = _backend(backend, "group_advantages", B, L)
    rewards, mask, ids = _batch(B, L, seed)
    want, _ = core_algos.compute_rloo_outcome_advantage(rewards.clone(), mask.float(), _uids(ids))
    assert_close(ops.group_advantages(rewards, mask, ids, "rloo", backend=backend), want, "rloo")


@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reinforce_pp_and_its_returns_equal_verl(backend, B, L, gamma):
    backend = _backend(backend, "group_advantages", B, L)
    rewards, mask, ids = _batch(B, L, seed=B + L)
    want_adv, want_ret = core_algos.compute_reinforce_plus_plus_outcome_advantage(
        rewards.clone(), mask.float(), config=AlgoConfig(gamma=gamma)
    )
    assert_close(ops.reward_to_go(rewards, mask, gamma, holes="skip", backend=backend), want_ret, "returns")
    got = ops.group_advantages(rewards, mask, ids, "reinforce_pp", gamma=gamma, eps=WHITEN_EPS, backend=backend)
    assert_close(got, want_adv, "reinforce_pp")


@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("gamma", [1.0, 0.95])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reward_to_go_skip_equals_verl_on_dense_rewards(backend, B, L, gamma):
    backend = _backend(backend, "reward_to_go", B, L)
    # veRL's reinforce_plus_plus returns for any token rewards (dense here), holes carried.
    gen = torch.Generator().manual_seed(B * L)
    rewards, mask = torch.randn(B, L, generator=gen), response_mask(B, L, gen=gen)
    _, want = core_algos.compute_reinforce_plus_plus_outcome_advantage(
        rewards * mask, mask.float(), config=AlgoConfig(gamma=gamma)
    )
    assert_close(ops.reward_to_go(rewards, mask, gamma, backend=backend), want, "returns")


@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reinforce_pp_baseline_equals_verl(backend, B, L, seed):
    backend = _backend(backend, "group_advantages", B, L)
    rewards, mask, ids = _batch(B, L, seed)
    want, _ = core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage(rewards.clone(), mask.float(),
                                                                                _uids(ids))
    got = ops.group_advantages(rewards, mask, ids, "reinforce_pp_baseline", eps=WHITEN_EPS, backend=backend)
    assert_close(got, want, "reinforce_pp_baseline")


def test_default_eps_is_close_to_verl_whitening():
    # Our default eps (1e-6) inside rsqrt(var + eps) moves the result by ~eps/(2·var) relative.
    rewards, mask, ids = _batch(9, 47, seed=3)
    want, _ = core_algos.compute_reinforce_plus_plus_outcome_advantage(rewards, mask.float(),
                                                                       config=AlgoConfig(gamma=1.0))
    torch.testing.assert_close(ops.group_advantages(rewards, mask, ids, "reinforce_pp"), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_the_trap_with_real_verl(estimator):
    """veRL's summing estimators give the same advantages for R3HF's dense rewards as for the sparse
    score; r3hf's token-level version equals them at each row's first generated token only."""
    gen = torch.Generator().manual_seed(11)
    B, L = 8, 20
    mask = response_mask(B, L, gen=gen)
    dense = torch.randn(B, L, generator=gen) * mask
    ids = torch.arange(B) // 4
    s = dense.sum(1)
    last = mask & (mask.cumsum(1) == mask.sum(1, keepdim=True))
    sparse = torch.where(last, s[:, None], 0.0)
    fn = getattr(core_algos, f"compute_{estimator}_outcome_advantage")
    a_dense, _ = fn(dense.clone(), mask.float(), _uids(ids))
    a_sparse, _ = fn(sparse.clone(), mask.float(), _uids(ids))
    assert_close(a_dense, a_sparse, "veRL dense vs sparse")
    ours = ops.group_advantages(dense, mask, ids, estimator)
    first = mask & (mask.cumsum(1) == 1)
    assert_close(ours[first], a_sparse[first], "first token")
    later = mask & ~first
    assert not torch.allclose(ours[later], a_sparse[later], atol=1e-3)  # dense rewards act through G_t


def test_non_dyadic_equal_scores_verl_fp32_mean_vs_r3hf():
    """With equal non-dyadic scores veRL's fp32 group mean can round, and (s − μ)/(0 + eps) blows
    that rounding up; r3hf's float64 statistics give exactly 0. Documented, not a parity case."""
    rewards = torch.zeros(7, 2)
    rewards[:, 1] = 0.7
    mask = torch.ones(7, 2, dtype=torch.bool)
    got = ops.group_advantages(rewards, mask, 7, "grpo")
    assert torch.equal(got, torch.zeros(7, 2))
    want, _ = core_algos.compute_grpo_outcome_advantage(rewards.clone(), mask.float(), _uids(torch.zeros(7)))
    assert 0 < float(want.abs().max()) < 0.1  # veRL 0.9.1 on CPU: 0.056, fp32 rounding of the mean / 1e-6


# --- OpenRLHF 0.11 get_cumulative_returns (holes="discount") -------------------------------------


def _openrlhf_cumulative_returns():
    """OpenRLHF's own get_cumulative_returns (its source, without the module's heavy imports)."""
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "trainer" / "ppo_utils" / "experience_maker.py"
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "get_cumulative_returns":
            namespace = {"torch": torch, "Tuple": tuple}
            exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
            fn = namespace["get_cumulative_returns"]
            return lambda rewards, mask, gamma: fn(None, rewards, mask, gamma)
    return None


def _transcribed_cumulative_returns(rewards, mask, gamma):
    """Transcription of OpenRLHF 0.11 (for machines without openrlhf): rewards masked, then a plain
    γ-discounted reverse sum over every position, the return kept at every position."""
    rewards = rewards * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return out


_REAL = _openrlhf_cumulative_returns()


@pytest.mark.parametrize("peer", ["openrlhf-source" if _REAL else "transcription"])
@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reward_to_go_discount_equals_openrlhf(backend, peer, B, L, gamma):
    if os.environ.get("R3HF_REQUIRE_OPENRLHF") and _REAL is None:  # CI: OpenRLHF's own source, no fallback
        pytest.fail("R3HF_REQUIRE_OPENRLHF=1 but openrlhf's get_cumulative_returns was not found")
    backend = _backend(backend, "reward_to_go", B, L)
    fn = _REAL or _transcribed_cumulative_returns
    gen = torch.Generator().manual_seed(B + 7 * L)
    rewards, mask = torch.randn(B, L, generator=gen), response_mask(B, L, gen=gen)
    want = fn(rewards.clone(), mask.float(), gamma)
    got = ops.reward_to_go(rewards, mask, gamma, holes="discount", backend=backend)
    # r3hf writes 0 at masked positions; OpenRLHF keeps the running return there (the loss masks it).
    assert_close(got, want * mask, "returns")
    has_holes = bool((~mask & (mask.flip(1).cumsum(1).flip(1) > 0)).any())  # a gap before a generated token
    if gamma < 1 and has_holes:
        assert not torch.allclose(got, ops.reward_to_go(rewards, mask, gamma, holes="skip"))
