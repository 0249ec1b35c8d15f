"""R3HFGRPOTrainer(potential=...) in TRL 1.16's real GRPOTrainer loop (tiny offline models, as in
tests/test_trl_grpo.py): Φ' read from the same reward-model backbone forward as R (one forward
per batch), the rewards equal ops.token_rewards(scores, potential=Φ') with Φ' read separately
(a twin reward model whose score head IS the potential head, run through the same trainer), and
the RM's own head as the potential reproduces today's numbers exactly."""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")
pytest.importorskip("datasets")

from r3hf import ops  # noqa: E402
from r3hf.integrations.trl import R3HFGRPOTrainer  # noqa: E402
from r3hf.models import PotentialHead  # noqa: E402
from test_trl_grpo import assert_same_batch, loss_mask, plain_reward, run  # noqa: E402
from trl_grpo_harness import ForwardCounter, char_tokenizer, reward_model, word_tokenizer  # noqa: E402
from trl_grpo_harness import CHARS, QUIET, policy, root  # noqa: E402,F401  (fixtures: by name)

pytestmark = QUIET


def head_for(rm, seed=3) -> PotentialHead:
    """A potential head on the RM's hidden size, unlike its own head; bias 0 so that a twin RM
    (GPT-2's score head has no bias) can carry it as its own head."""
    g = torch.Generator().manual_seed(seed)
    return PotentialHead(torch.randn(rm.config.n_embd, generator=g) * 0.5, 0.0)


def twin(rm_seed, head, vocab=None, name="rm"):
    """The same reward model with the potential head as its score head: its prefix scores are Φ'."""
    rm = reward_model(rm_seed, vocab, name)
    with torch.no_grad():
        rm.score.weight.copy_(head.weight[None])
    return rm


@pytest.mark.parametrize("own_tokenizer", [False, True])
def test_grpo_potential_equals_ops_on_separately_read_heads(own_tokenizer, policy, root, tmp_path):
    vocab, name = (len(CHARS) + 2, "crm") if own_tokenizer else (None, "rm")
    rmt = [char_tokenizer() if own_tokenizer else word_tokenizer()]
    head = head_for(reward_model(1, vocab, name))
    head.save_pretrained(tmp_path / "pot")
    # learning_rate 0: every run sees the same two batches (the advantages differ, the policy must not).
    cfg = dict(per_device_train_batch_size=4, num_generations=2, max_steps=2, learning_rate=0.0)
    rm = reward_model(1, vocab, name)
    top, backbone = ForwardCounter(rm), ForwardCounter(rm.transformer)
    ours = run(R3HFGRPOTrainer, policy, root, [rm], rm_tokenizers=rmt, trainer_kw=dict(potential=head), **cfg)
    assert len(ours.recorded) == 2
    assert top.n == 0 and backbone.n == 2, (top.n, backbone.n)  # one backbone forward per batch, both heads
    plain = run(R3HFGRPOTrainer, policy, root, [reward_model(1, vocab, name)], rm_tokenizers=rmt, **cfg)
    phi_run = run(R3HFGRPOTrainer, policy, root, [twin(1, head, vocab, name)], rm_tokenizers=rmt, **cfg)
    by_path = run(R3HFGRPOTrainer, policy, root, [reward_model(1, vocab, name)], rm_tokenizers=rmt,
                  trainer_kw=dict(potential=str(tmp_path / "pot")), **cfg)
    for step in range(2):
        rec, base, sep, path = (t.recorded[step] for t in (ours, plain, phi_run, by_path))
        assert_same_batch(rec, base)
        assert_same_batch(rec, sep)
        scores, phi = base["r3hf"]["scores"], sep["r3hf"]["scores"]
        assert not torch.allclose(scores, phi)
        torch.testing.assert_close(rec["r3hf"]["scores"], scores, rtol=0, atol=0)  # R: the RM's own
        torch.testing.assert_close(rec["r3hf"]["potential"], phi, rtol=1e-6, atol=1e-6)
        mask = rec["r3hf"]["response_mask"]
        want = ops.token_rewards(scores, mask, 1, potential=phi)
        torch.testing.assert_close(rec["r3hf"]["rewards"], want, rtol=1e-5, atol=1e-6)
        adv = ops.group_advantages(rec["r3hf"]["rewards"], mask, 2, "grpo", eps=1e-4, scale="group") * loss_mask(rec)
        torch.testing.assert_close(rec["advantages"], adv)
        assert not torch.allclose(rec["r3hf"]["rewards"], base["r3hf"]["rewards"])
        # The scalar reward TRL logs is R, not Φ'.
        for k in ("r3hf", "advantages"):
            a, b = path[k], rec[k]
            if k == "r3hf":
                for kk in a:
                    torch.testing.assert_close(a[kk], b[kk], rtol=0, atol=0)
            else:
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [h.get("reward") for h in ours.state.log_history[:2]] == [h.get("reward") for h in plain.state.log_history[:2]]
    # Φ'_0 (the shaping baseline) logged next to the RM's prompt score; absent without a potential.
    for step in range(2):
        rec, log = ours.recorded[step]["r3hf"], ours.state.log_history[step]
        assert log["r3hf/potential_prompt"] == pytest.approx(rec["potential"][:, 0].mean().item(), abs=1e-5)
        assert log["r3hf/prompt_score"] == pytest.approx(rec["scores"][:, 0].mean().item(), abs=1e-5)
        assert log["r3hf/potential_prompt"] != pytest.approx(log["r3hf/prompt_score"], abs=1e-4)
    assert "r3hf/potential_prompt" not in plain.state.log_history[0]


def test_grpo_own_head_as_potential_reproduces_today(policy, root):
    """The RM's own head as Φ', with a plain reward function and KL in the reward: same numbers."""
    cfg = dict(per_device_train_batch_size=4, num_generations=2, reward_weights=[1.0, 0.5], beta=0.04)
    kw = dict(kl_in_reward=0.1, beta_c=0.8)
    base = run(R3HFGRPOTrainer, policy, root, [reward_model(), plain_reward], trainer_kw=kw, **cfg).recorded[0]
    rm = reward_model()
    same = run(R3HFGRPOTrainer, policy, root, [rm, plain_reward],
               trainer_kw=dict(kw, potential={0: PotentialHead.from_reward_model(rm)}), **cfg).recorded[0]
    assert_same_batch(same, base)
    for k in ("rewards", "scores"):
        torch.testing.assert_close(same["r3hf"][k], base["r3hf"][k], rtol=0, atol=0)
    torch.testing.assert_close(same["advantages"], base["advantages"], rtol=0, atol=0)


def test_grpo_potential_bad_input(policy, root, tmp_path):
    rm = reward_model()
    with pytest.raises(ValueError, match=r"potential: potential head has D = 8 .* hidden size is 16"):
        run(R3HFGRPOTrainer, policy, root, [rm], trainer_kw=dict(potential=PotentialHead(torch.ones(8))), train=None)
    with pytest.raises(FileNotFoundError, match="potential: .*holds no potential head"):
        run(R3HFGRPOTrainer, policy, root, [rm], trainer_kw=dict(potential=str(tmp_path / "none")), train=None)
    with pytest.raises(ValueError, match="exactly one reward model"):
        run(R3HFGRPOTrainer, policy, root, [rm, reward_model(2)], rm_tokenizers=[word_tokenizer()] * 2,
            trainer_kw=dict(potential=head_for(rm)), train=None)
    with pytest.raises(ValueError, match="potential: key 1 is not the index of a reward model"):
        run(R3HFGRPOTrainer, policy, root, [rm, plain_reward], trainer_kw=dict(potential={1: head_for(rm)}),
            train=None)
    with pytest.raises(TypeError, match="potential must be a PotentialHead"):
        run(R3HFGRPOTrainer, policy, root, [rm], trainer_kw=dict(potential=torch.ones(16)), train=None)
