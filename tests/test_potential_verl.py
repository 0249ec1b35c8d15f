"""veRL 0.9.1's reward loop with a potential head: `R3HFRewardManager` (veRL's RewardManagerBase
subclass, run as veRL's RewardLoopManager runs it) on `hf_prefix_scorer(model, potential=...)`.
Φ' comes from the same forward as R (no extra forward), the rewards follow the rule from scratch
(Φ' from a twin reward model whose head IS the potential head, R from the reward model's own
forward), and the RM's own head as the potential reproduces today's rm_scores exactly."""

import pytest
import torch

from r3hf import ops
from r3hf.models import PotentialHead, find_backbone

from peer_batches import assert_close
from test_verl_group import _manager, _rm_scores, _rollout, _tiny_rm
from verl_harness import import_verl as _import, kl_in_reward

_import("verl.trainer.ppo.ray_trainer")  # the module needs veRL itself (kl_in_reward runs its code)


@pytest.fixture(scope="module")
def verl_reward():
    return _import("r3hf.integrations.verl.reward")


def _head(bias=0.25, seed=4):
    g = torch.Generator().manual_seed(seed)
    return PotentialHead(torch.randn(16, generator=g) * 0.5, bias)


def _twin(head):
    rm = _tiny_rm()
    with torch.no_grad():
        rm.score.weight.copy_(head.weight[None])
    return rm


@torch.no_grad()
def _by_definition(rm, twin, bias, data, n_p, n_r):
    """Per sample from scratch: Φ'(prefix) = twin's own score + bias, R = rm's own score of the whole
    row; r = Φ' differences, the last generated token gets R − Φ' before it, observation spans
    credited to the generated token before them."""
    P = data.batch["prompts"].shape[1]
    L = data.batch["responses"].shape[1]
    out = torch.zeros(len(n_p), L)
    for b in range(len(n_p)):
        prompt = data.batch["prompts"][b][data.batch["attention_mask"][b, :P] != 0]
        ids = torch.cat([prompt, data.batch["responses"][b, : n_r[b]]])
        phi = torch.stack([twin(ids[None, : t + 1]).logits[0, 0] for t in range(len(ids))]) + bias
        gen_pos = [j for j in range(n_r[b]) if data.batch["response_mask"][b, j]]
        for k, j in enumerate(gen_pos):
            phi_in = phi[n_p[b] - 1] if k == 0 else phi[n_p[b] + j - 1]
            if k + 1 < len(gen_pos):
                out[b, j] = phi[n_p[b] + gen_pos[k + 1] - 1] - phi_in
            else:
                out[b, j] = rm(ids[None, : n_p[b] + j + 1]).logits[0, 0] - phi_in
    return out


def _count(rm):
    calls = []
    handle = find_backbone(rm).register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("holes", [False, True])
def test_manager_with_potential_follows_the_rule(verl_reward, padding, holes, tmp_path):
    rm, head = _tiny_rm(), _head()
    head.save_pretrained(tmp_path / "pot")
    data, n_p, n_r = _rollout(padding, holes)
    want = _by_definition(rm, _twin(head), 0.25, data, n_p, n_r)
    for pot in (head, tmp_path / "pot"):
        calls, handle = _count(rm)
        rm_scores, outputs = _rm_scores(_manager(verl_reward, verl_reward.hf_prefix_scorer(rm, potential=pot)), data)
        handle.remove()
        assert len(calls) == len(n_p)  # one forward per sample (veRL's run_single), as without a potential
        assert_close(rm_scores, want, "rm_scores")
        # "score" (veRL's scalar, logged) stays R
        plain = _rm_scores(_manager(verl_reward, verl_reward.hf_prefix_scorer(rm)), data)[1]
        assert [o["reward_extra_info"]["score"] for o in outputs] == [o["reward_extra_info"]["score"] for o in plain]
        assert all("potential" not in o["reward_extra_info"] for o in outputs)
    # ...which is ops.token_rewards on separately read heads, in veRL's [prompt-only, response] layout.
    P = data.batch["prompts"].shape[1]
    s, phi = torch.zeros(len(n_p), 1 + data.batch["responses"].shape[1]), None
    phi = torch.zeros_like(s)
    from r3hf.models import prefix_scores, reward_hidden_states

    for b in range(len(n_p)):
        ids = torch.cat([data.batch["prompts"][b][data.batch["attention_mask"][b, :P] != 0],
                         data.batch["responses"][b, : n_r[b]]])[None]
        s[b, : 1 + n_r[b]] = prefix_scores(rm, ids)[0, n_p[b] - 1:]
        phi[b, : 1 + n_r[b]] = head(reward_hidden_states(rm, ids)[0])[0, n_p[b] - 1:]
    mask = data.batch["response_mask"] != 0
    assert_close(rm_scores, ops.token_rewards(s, mask, 1, potential=phi), "rm_scores vs ops")


def test_manager_rm_head_as_potential_is_today_and_end_to_end(verl_reward):
    rm = _tiny_rm()
    data, n_p, n_r = _rollout("right", holes=True, seed=2)
    base, _ = _rm_scores(_manager(verl_reward, verl_reward.hf_prefix_scorer(rm)), data)
    own = PotentialHead.from_reward_model(rm)
    same, _ = _rm_scores(_manager(verl_reward, verl_reward.hf_prefix_scorer(rm, potential=own)), data)
    torch.testing.assert_close(same, base, rtol=0, atol=0)
    # With a fitted-style head: veRL's own apply_kl_penalty on the manager's rm_scores.
    shaped, _ = _rm_scores(_manager(verl_reward, verl_reward.hf_prefix_scorer(rm, potential=_head())), data)
    assert not torch.allclose(shaped, base)
    batch = kl_in_reward(shaped, data.batch["response_mask"], ["x", "x", "y", "y"], kl_coef=0.05)
    kl = ops.kl_penalty(batch.batch["old_log_probs"], batch.batch["ref_log_prob"]) * data.batch["response_mask"]
    assert_close(batch.batch["token_level_rewards"], shaped - 0.05 * kl, "token_level_rewards")


def test_manager_potential_bad_input(verl_reward, tmp_path):
    rm = _tiny_rm()
    with pytest.raises(ValueError, match="potential: potential head has D = 8"):
        verl_reward.hf_prefix_scorer(rm, potential=PotentialHead(torch.ones(8)))
    with pytest.raises(FileNotFoundError, match="potential: .*holds no potential head"):
        verl_reward.hf_prefix_scorer(rm, potential=tmp_path / "none")
    data, _, _ = _rollout("right", holes=False)
    with pytest.raises(ValueError, match="sample 0: a payload has 'potential' without 'prefix_scores'"):
        verl_reward.R3HFRewardManager.assemble_rm_scores(
            data, [{"token_scores": torch.zeros(2), "potential": torch.zeros(2)}] * 4)
    n = [int(x) for x in data.batch["attention_mask"].sum(1)]
    payload = [{"prefix_scores": torch.zeros(k), "potential": torch.zeros(k - 1)} for k in n]
    with pytest.raises(ValueError, match="sample 0: potential must have one value per prefix score"):
        verl_reward.R3HFRewardManager.assemble_rm_scores(data, payload)
    with pytest.raises(ValueError, match="returned 'potential' with 'token_scores'"):
        verl_reward._payload({"token_scores": [1.0], "potential": [0.0]})
