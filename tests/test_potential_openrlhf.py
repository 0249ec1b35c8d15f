"""OpenRLHF 0.11's `prefix_values` path with a potential head: `prefix_values(..., potential=)` on
OpenRLHF's own RewardModel (its source, heavy imports stubbed by tests/openrlhf_real.py; padded
and packing_samples), one forward, Φ' equal to a twin RewardModel whose value head IS the
potential head; `compute_dense_reward` / `compute_advantages_and_returns` / `packed_dense_reward`
with potential= follow the rule; the RM's own head as the potential reproduces today's numbers."""

from __future__ import annotations

import warnings

import pytest
import torch

from r3hf import ops
from r3hf.integrations import openrlhf as adapter
from r3hf.models import PotentialHead
from r3hf.models.potential import with_final_score

import openrlhf_real
from peer_batches import logprobs
from test_openrlhf_group import ESTIMATORS, clone, experiences_for, make_args
from test_openrlhf_packed import _experience, _models, cpu_packing  # noqa: F401  (a fixture)

REAL = openrlhf_real.load()
pytestmark = pytest.mark.skipif(REAL is None, reason="needs OpenRLHF 0.11's source (pip install --no-deps openrlhf)")


def _head(bias=0.2, seed=6):
    g = torch.Generator().manual_seed(seed)
    return PotentialHead(torch.randn(16, generator=g) * 0.5, bias)


def _twin(model, head):
    """The same RewardModel (same class, weights) with the potential head as its value head."""
    twin = type(model)(model.config).eval()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        twin.score.weight.copy_(head.weight[None])
    return twin


def _count(model):
    calls = []
    handle = model.transformer.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_prefix_values_with_potential(cpu_packing, packing, normalize, tmp_path):  # noqa: F811
    packed_model, padded_model = _models(normalize)
    model = packed_model if packing else padded_model
    seq, mask, action = _experience(5, 12, seed=4, padding="left")
    head = _head()
    head.save_pretrained(tmp_path / "pot")
    std = 2.0 if normalize else 1.0
    with torch.no_grad():
        base_reward, base = adapter.prefix_values(model, seq, mask, return_reward=True)
        twin_values = adapter.prefix_values(_twin(model, head), seq, mask)
        for pot in (head, tmp_path / "pot"):
            calls, handle = _count(model)
            reward, values, phi = adapter.prefix_values(model, seq, mask, return_reward=True, potential=pot)
            handle.remove()
            assert len(calls) == 1  # both heads from the model's one forward
            assert torch.equal(reward, base_reward) and torch.equal(values, base)
            # Φ' = twin's value + bias, normalised like the values (padding filled the same way)
            want = torch.where(mask.cumsum(1) > 0, twin_values + 0.2 / std, 0.0)
            torch.testing.assert_close(phi, want, rtol=1e-5, atol=1e-6)
        own = PotentialHead(model.score.weight.float())
        values2, phi_own = adapter.prefix_values(model, seq, mask, potential=own)
        torch.testing.assert_close(phi_own, values2, rtol=1e-6, atol=1e-6)

    # compute_dense_reward: ops.token_rewards(potential=) on the separately read heads (the twin),
    # in OpenRLHF's action layout; the RM's own values as the potential: today's numbers exactly.
    B, S = seq.shape
    gen = torch.Generator().manual_seed(1)
    kl = adapter.compute_approx_kl(logprobs(B, S - 1, gen=gen), logprobs(B, S - 1, gen=gen), "k3")
    kw = dict(advantage_estimator="reinforce")
    got = adapter.compute_dense_reward(values, 0.05, kl, action, potential=phi, **kw)
    last = (S - 2 - action.flip(1).to(torch.int64).argmax(1)) + 1  # sequence position of the last action
    shaped = with_final_score(want, base, last)
    has = action.any(1)
    expect = adapter.compute_dense_reward(torch.where(has[:, None], shaped, base), 0.05, kl, action, **kw)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, adapter.compute_dense_reward(values, 0.05, kl, action, **kw))
    torch.testing.assert_close(adapter.compute_dense_reward(values, 0.05, kl, action, potential=values, **kw),
                               adapter.compute_dense_reward(values, 0.05, kl, action, **kw), rtol=0, atol=0)
    if packing:  # the packed stream path gives the same rewards
        with torch.no_grad():
            packed = adapter.packed_prefix_values(model, seq, mask, potential=head)
        assert packed.potential is not None
        torch.testing.assert_close(adapter.packed_dense_reward(packed, 0.05, kl, mask, action, **kw), got,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_compute_advantages_and_returns_with_potential(estimator):
    """Per experience potentials [b, A + 1]: equal to today's dense path on the shaped score
    tensor (Φ' everywhere, R at the last action), and = today's with the scores as potential."""
    n = 3
    exps, scores = experiences_for(4, n, seed=11)
    gen = torch.Generator().manual_seed(3)
    phis = [torch.randn(s.shape, generator=gen) for s in scores]
    shaped = []
    for e, s, p in zip(exps, scores, phis):
        A = e.action_mask.shape[1]
        last = A - 1 - e.action_mask.flip(1).to(torch.int64).argmax(1)
        shaped.append(with_final_score(p, s, last + 1))
    args = make_args(estimator, n, 1.0, 0.95, (-3.0, 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = adapter.compute_advantages_and_returns(clone(exps), args, 0.05, prefix_scores=scores, potential=phis)
        want = adapter.compute_advantages_and_returns(clone(exps), args, 0.05, prefix_scores=shaped)
        today = adapter.compute_advantages_and_returns(clone(exps), args, 0.05, prefix_scores=scores)
        same = adapter.compute_advantages_and_returns(clone(exps), args, 0.05, prefix_scores=scores, potential=scores)
    for g, w, t, s in zip(got, want, today, same):
        torch.testing.assert_close((g.advantages, g.returns, g.info["return"]), (w.advantages, w.returns, w.info["return"]),
                                   rtol=1e-5, atol=1e-5)
        for k in ("advantages", "returns"):
            torch.testing.assert_close(getattr(s, k), getattr(t, k), rtol=0, atol=0)
    # The sum of a row's token rewards (OpenRLHF's info["return"]) moves with Φ'_0 only: R is the RM's.
    assert any(not torch.allclose(g.info["return"], t.info["return"]) for g, t in zip(got, today))


def test_potential_bad_input(tmp_path):
    _, model = _models()
    seq, mask, action = _experience(3, 8, seed=2)
    with pytest.raises(ValueError, match="potential: potential head has D = 8 .* hidden size is 16"):
        adapter.prefix_values(model, seq, mask, potential=PotentialHead(torch.ones(8)))
    with pytest.raises(FileNotFoundError, match="potential: .*holds no potential head"):
        adapter.prefix_values(model, seq, mask, potential=tmp_path / "none")
    with pytest.raises(TypeError, match="potential must be a PotentialHead"):
        adapter.prefix_values(model, seq, mask, potential=torch.ones(16))
    kl = torch.zeros(3, 7)
    scores = torch.zeros(3, 8)
    with pytest.raises(ValueError, match=r"potential must be \[B, A \+ 1\] = \[3, 8\]"):
        adapter.compute_dense_reward(scores, 0.0, kl, action, potential=scores[:, 1:], advantage_estimator="gae")
    exps, sc = experiences_for(2, 2, seed=1)
    with pytest.raises(ValueError, match="potential shapes dense rewards"):
        adapter.compute_advantages_and_returns(clone(exps), make_args("rloo", 2), 0.0, potential=sc)
    with pytest.raises(ValueError, match=r"potential\[0\] must be \[b, A \+ 1\]"):
        adapter.compute_advantages_and_returns(clone(exps), make_args("rloo", 2), 0.0, prefix_scores=sc,
                                               potential=[s[:, 1:] for s in sc])
