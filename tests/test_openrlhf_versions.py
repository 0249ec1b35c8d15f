"""The OpenRLHF drop-in against the installed OpenRLHF's own `compute_advantages_and_returns`, with a
bf16 reward model's rewards and OpenRLHF's length penalties (overlong buffer, stop-properly).

OpenRLHF 0.11.2 casts the rewards to float32 before its penalties; 0.11.0 and 0.11.1 penalise them
in bf16, so a bf16 reward + penalty rounds differently (up to ~4e-3 in the returns). r3hf follows
the installed version (`upcasts_rewards`). CI runs this file against 0.11.0 (the venv's) and
0.11.2 (`pip install --no-deps --target DIR openrlhf==0.11.2`, DIR first on PYTHONPATH:
.ci/steps/41-openrlhf.sh). Needs OpenRLHF's real source: there is no transcription of the
version-specific rounding to fall back on.
"""

from __future__ import annotations

import copy
import importlib.metadata
import types
import warnings

import pytest
import torch

import openrlhf_real
from peer_batches import logprobs, randn, response_mask
from r3hf.integrations import openrlhf as adapter
from r3hf.integrations.openrlhf import _advantages

REAL = openrlhf_real.load()
pytestmark = pytest.mark.skipif(REAL is None, reason="needs OpenRLHF's source (pip install --no-deps openrlhf)")
ESTIMATORS = ["gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo"]
GROUP = ["rloo", "reinforce_baseline", "group_norm", "dr_grpo"]
MAX_NEW = 24


def installed():
    return tuple(int(x) for x in importlib.metadata.version("openrlhf").split(".")[:3])


def args_for(estimator, n, overlong=None, stop=None):
    ns = types.SimpleNamespace
    return ns(
        algo=ns(advantage=ns(estimator=estimator, gamma=1.0, lambd=0.95, no_std_norm=False)),
        rollout=ns(n_samples_per_prompt=n, max_new_tokens=MAX_NEW),
        reward=ns(clip_range=None, overlong_buffer_len=overlong, overlong_penalty_factor=1.0,
                  stop_properly_penalty_coef=stop),
        data=ns(max_len=MAX_NEW),
    )


def batch(n_prompts, n, seed, dtype, widths=(9, 17, 30)):
    """Shuffled samples split into experiences of different widths, rewards in `dtype` (a bf16
    reward model's), response lengths spanning the overlong buffer, some truncated."""
    cls = REAL["openrlhf.trainer.ppo_utils.experience"].Experience
    gen = torch.Generator().manual_seed(seed)
    N = n_prompts * n
    order = torch.randperm(N, generator=gen).tolist()
    cuts = sorted(torch.randperm(N - 1, generator=gen)[: len(widths) - 1].add(1).tolist())
    exps = []
    for idx, A in zip([order[a:b] for a, b in zip([0] + cuts, cuts + [N])], widths):
        b = len(idx)
        mask = torch.cat([torch.zeros(b, 2, dtype=torch.bool), response_mask(b, A - 2, gen=gen)], 1)
        mask[:, 2] = True
        kl = adapter.compute_approx_kl(logprobs(b, A, gen=gen), logprobs(b, A, gen=gen), "k3")
        exps.append(cls(
            index=idx, rewards=(randn(b, gen=gen, scale=3.0) + 7.0).to(dtype), action_mask=mask, kl=kl,
            values=randn(b, A, gen=gen), info={},
            response_length=torch.randint(MAX_NEW - 10, MAX_NEW + 1, (b,), generator=gen).float(),
            truncated=torch.rand(b, generator=gen) < 0.4,
        ))
    return exps


def peer(experiences, args, kl_coef):
    maker = object.__new__(REAL["openrlhf.trainer.ppo_utils.experience_maker"].RemoteExperienceMaker)
    maker.strategy = types.SimpleNamespace(args=args)
    maker.advantage_estimator = args.algo.advantage.estimator
    maker.kl_ctl = types.SimpleNamespace(value=kl_coef)
    return maker.compute_advantages_and_returns(experiences)


def test_version_rule():
    assert not _advantages.upcasts_rewards((0, 11, 0)) and not _advantages.upcasts_rewards((0, 11, 1))
    assert _advantages.upcasts_rewards((0, 11, 2)) and _advantages.upcasts_rewards((0, 12, 0))
    assert _advantages.upcasts_rewards() == (installed() >= (0, 11, 2))
    print(f"OpenRLHF {'.'.join(map(str, installed()))}: upcasts rewards = {_advantages.upcasts_rewards()}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("penalty", ["overlong", "stop", "stop_fixed", "both"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_length_penalties_match_the_installed_openrlhf(estimator, penalty, dtype):
    if dtype == torch.bfloat16 and estimator in GROUP and not _advantages.upcasts_rewards():
        pytest.skip("OpenRLHF < 0.11.2 also takes the group baseline of bf16 rewards in bf16 (rloo up to 2e-2 off "
                    "r3hf's float32); the drop-in does not emulate that rounding")
    overlong = 8 if penalty in ("overlong", "both") else None
    stop = {"stop": 0.3, "stop_fixed": -0.5, "both": 0.7}.get(penalty)
    args = args_for(estimator, 4, overlong, stop)
    exps = batch(5, 4, seed=ESTIMATORS.index(estimator) * 7 + len(penalty), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = peer(copy.deepcopy(exps), copy.deepcopy(args), 0.05)
        got = adapter.compute_advantages_and_returns(exps, copy.deepcopy(args), 0.05)
    for k, (g, w) in enumerate(zip(got, want)):
        # OpenRLHF's own penalties mutate the rewards; so does the drop-in, in the same dtype.
        assert g.rewards.dtype == w.rewards.dtype, f"experience {k} rewards dtype"
        assert torch.equal(g.rewards, w.rewards), f"experience {k} penalised rewards"
        for name in ("advantages", "returns"):
            torch.testing.assert_close(getattr(g, name).float(), getattr(w, name).float(), atol=2e-5, rtol=1e-5,
                                       msg=lambda m: f"{estimator} {penalty} {dtype} experience {k} {name}: {m}")
        torch.testing.assert_close(g.info["return"].float(), w.info["return"].float(), atol=2e-5, rtol=1e-5)


def test_the_other_rule_would_differ():
    """The test above can fail: penalising in the other version's dtype moves the returns."""
    args = args_for("reinforce", 4, overlong=8, stop=0.3)
    exps = batch(5, 4, seed=3, dtype=torch.bfloat16)
    want = peer(copy.deepcopy(exps), copy.deepcopy(args), 0.05)
    other = copy.deepcopy(exps)
    original = _advantages.upcasts_rewards
    try:
        _advantages.upcasts_rewards = lambda version=None: not original()
        got = adapter.compute_advantages_and_returns(other, copy.deepcopy(args), 0.05)
    finally:
        _advantages.upcasts_rewards = original
    diff = max(float((g.returns - w.returns).abs().max()) for g, w in zip(got, want))
    assert diff > 1e-4, diff
