"""A potential head through r3hf's own integrations (issue 24, part 3): `RewardRedistributor` and
`r3hf.ppo`. Each takes a PotentialHead or its folder, reads both heads from ONE backbone forward
per batch, gives ops.token_rewards(scores, potential=Φ') of the separately read heads, and with
a head equal to the RM's own reproduces today's numbers exactly. (TRL, veRL and OpenRLHF: their
own test files, tests/test_potential_{trl,verl,openrlhf}.py.)"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from r3hf import ops  # noqa: E402
from r3hf.models import PotentialHead, RewardRedistributor, Scorer, prefix_scores, reward_hidden_states  # noqa: E402
from r3hf.ppo import PPOConfig, Rollout, compute_advantages  # noqa: E402
from test_models import PAD, char_tokenizer, gpt2, llama, policy_batch, ppo_batch, qwen2, word_tokenizer  # noqa: E402


def random_head(model, seed=5, scale=0.3) -> PotentialHead:
    """A head on the model's hidden size that differs from the RM's own (not a fitted one: the
    integrations must carry any head)."""
    D = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    g = torch.Generator().manual_seed(seed)
    return PotentialHead(torch.randn(D, generator=g) * scale, float(torch.randn(1, generator=g)))


def count_forwards(model):
    """A list that grows by one per backbone forward (the backbone r3hf reads)."""
    from r3hf.models import find_backbone

    calls = []
    find_backbone(model).register_forward_hook(lambda *a: calls.append(1))
    return calls


def separate_heads(model, head, ids, mask):
    """The RM's prefix scores and the head's Φ', each read on its own (two forwards)."""
    scores = prefix_scores(model, ids, mask)
    hidden, _, _ = reward_hidden_states(model, ids, mask)
    return scores, head(hidden).masked_fill(~mask, 0.0)


# --- RewardRedistributor --------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_redistributor_potential_equals_ops_on_separate_heads(arch, tmp_path):
    model = {"gpt2": gpt2, "llama": llama}[arch]()
    d = ppo_batch()
    P = d["prompt"].shape[1]
    qr = torch.cat([d["prompt"], d["response"]], 1)
    head = random_head(model)
    head.save_pretrained(tmp_path / "pot")
    kw = dict(logprobs=d["logprobs"], ref_logprobs=d["ref_logprobs"])
    rr_plain = RewardRedistributor(model, kl_coef=0.05, beta_c=0.7)
    mask = rr_plain.batch(qr, P, d["response_mask"])["attention_mask"]
    scores, phi = separate_heads(model, head, qr, mask)
    assert not torch.allclose(scores, phi)
    expect = ops.token_rewards(scores, d["response_mask"], P, potential=phi, kl_coef=0.05, beta_c=0.7, **kw)
    for pot in (head, tmp_path / "pot", str(tmp_path / "pot")):
        rr = RewardRedistributor(model, kl_coef=0.05, beta_c=0.7, potential=pot)
        calls = count_forwards(model)
        got = rr(qr, P, d["response_mask"], **kw)
        assert len(calls) == 1  # one backbone forward for both heads
        torch.testing.assert_close(got, expect, rtol=0, atol=0)
        calls.clear()
        r, adv, ret = rr.fused_reward_gae(qr, P, d["response_mask"], values=d["values"], lam=0.9, **kw)
        assert len(calls) == 1
        torch.testing.assert_close(r, expect, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close((adv, ret), ops.gae(expect, d["values"], d["response_mask"], 1.0, 0.9),
                                   rtol=1e-5, atol=1e-5)
    # The shaping differs from the RM's own prefix scores, and a row still sums to R − Φ'_0 (no KL).
    rr = RewardRedistributor(model, potential=head)
    got = rr(qr, P, d["response_mask"])
    assert not torch.allclose(got, RewardRedistributor(model)(qr, P, d["response_mask"]))
    last = P + torch.tensor([3, 5, 5])
    R = scores.gather(1, last[:, None])[:, 0]
    torch.testing.assert_close(got.sum(1), R - phi[:, P - 1], rtol=1e-5, atol=1e-5)


def test_redistributor_rm_head_as_potential_reproduces_today():
    model = gpt2(seed=2)
    d = ppo_batch(seed=14)
    P = d["prompt"].shape[1]
    qr = torch.cat([d["prompt"], d["response"]], 1)
    kw = dict(logprobs=d["logprobs"], ref_logprobs=d["ref_logprobs"])
    own = PotentialHead.from_reward_model(model)
    for opts in (dict(), dict(beta_c=0.6, kl_coef=0.1, kl_estimator="k3"), dict(beta_c="auto"), dict(coef=-2.0)):
        base = RewardRedistributor(model, **opts)
        with_own = RewardRedistributor(model, potential=own, **opts)
        torch.testing.assert_close(with_own(qr, P, d["response_mask"], **kw), base(qr, P, d["response_mask"], **kw),
                                   rtol=0, atol=0)
        if opts.get("beta_c") == "auto":
            continue  # fused_reward_gae's beta_c="auto" path is the torch backend's, checked in test_beta_auto
        a = with_own.fused_reward_gae(qr, P, d["response_mask"], values=d["values"], **kw)
        b = base.fused_reward_gae(qr, P, d["response_mask"], values=d["values"], **kw)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_redistributor_several_scorers_and_own_tokenizer():
    rm, cost = gpt2(seed=0), qwen2(seed=1)
    d = ppo_batch(seed=12)
    qr = torch.cat([d["prompt"], d["response"]], 1)
    P = d["prompt"].shape[1]
    head = random_head(rm, seed=7)
    rr = RewardRedistributor([Scorer(rm, potential=head), Scorer(cost, -0.3)])
    mask = rr.batch(qr, P, d["response_mask"])["attention_mask"]
    s_rm, phi_rm = separate_heads(rm, head, qr, mask)
    s_cost = prefix_scores(cost, qr, mask)
    # Linear: Φ' = Σ coef·(the scorer's potential, or its own prefix scores without one).
    expect = ops.token_rewards(s_rm - 0.3 * s_cost, d["response_mask"], P, potential=phi_rm - 0.3 * s_cost)
    torch.testing.assert_close(rr(qr, P, d["response_mask"]), expect, rtol=1e-5, atol=1e-6)

    # A reward model with its own tokenizer: both heads aligned at the same RM prefixes, one forward.
    # Φ' read separately: a copy of the RM whose score head is the potential's weight (bias 0, as
    # GPT-2's score head has none), through today's alignment.
    pol, rmt = word_tokenizer(), char_tokenizer()
    rm2 = gpt2(seed=3)
    head2 = PotentialHead(random_head(rm2, seed=8).weight, 0.0)
    prompt, response, rmask = policy_batch(pol, ["the cat", "a"], ["is good", "dog sat on"])
    rr = RewardRedistributor(rm2, tokenizer=pol, rm_tokenizer=rmt, potential=head2)
    calls = count_forwards(rm2)
    got = rr(prompt_ids=prompt, response_ids=response, response_mask=rmask)
    assert len(calls) == 1
    batch = dict(prompt_ids=prompt, response_ids=response, response_mask=rmask)
    scores = RewardRedistributor(rm2, tokenizer=pol, rm_tokenizer=rmt).scores(**batch)
    twin = gpt2(seed=3)
    with torch.no_grad():
        twin.score.weight.copy_(head2.weight[None])
    phi = RewardRedistributor(twin, tokenizer=pol, rm_tokenizer=rmt).scores(**batch)
    assert not torch.allclose(scores, phi)
    expect = ops.token_rewards(scores, rmask, prompt.shape[1], potential=phi)
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)


def test_redistributor_potential_bad_input(tmp_path):
    model = gpt2()
    with pytest.raises(ValueError, match="potential.*D = 8.*hidden size is 32"):
        RewardRedistributor(model, potential=PotentialHead(torch.ones(8)))
    with pytest.raises(FileNotFoundError, match="potential.*holds no potential head"):
        RewardRedistributor(model, potential=tmp_path / "missing")
    with pytest.raises(TypeError, match="potential must be a PotentialHead or a folder"):
        RewardRedistributor(model, potential=torch.ones(32))
    with pytest.raises(ValueError, match="potential to each Scorer"):
        RewardRedistributor([Scorer(model), Scorer(gpt2(seed=1))], potential=random_head(model))
    with pytest.raises(ValueError, match="potential.*D = 8"):
        Scorer(model, potential=PotentialHead(torch.ones(8)))


# --- r3hf.ppo --------------------------------------------------------------------------------


def test_ppo_rollout_potential(tmp_path):
    model = gpt2(seed=4)
    d = ppo_batch(seed=16)
    P = d["prompt"].shape[1]
    qr = torch.cat([d["prompt"], d["response"]], 1)
    mask = RewardRedistributor(model).batch(qr, P, d["response_mask"])["attention_mask"]
    head = random_head(model, seed=9)
    head.save_pretrained(tmp_path / "pot")
    calls = count_forwards(model)
    hidden, weight, bias = reward_hidden_states(model, qr, mask)
    assert len(calls) == 1
    common = dict(query_responses=qr, prompt_len=P, response_mask=d["response_mask"], logprobs=d["logprobs"],
                  ref_logprobs=d["ref_logprobs"], values=d["values"], attention_mask=mask)
    config = PPOConfig(beta_c=0.8, whiten_advantages=False)
    scores, phi = separate_heads(model, head, qr, mask)
    expect = ops.token_rewards(scores, d["response_mask"], P, potential=phi, logprobs=d["logprobs"],
                               ref_logprobs=d["ref_logprobs"], kl_coef=config.kl_coef, beta_c=0.8)
    for pot in (head, tmp_path / "pot"):
        fused = compute_advantages(Rollout(**common, rm_hidden=hidden, rm_weight=weight, rm_bias=bias, potential=pot),
                                   config)
        torch.testing.assert_close(fused.rewards, expect, rtol=1e-5, atol=1e-6)
    unfused = compute_advantages(Rollout(**common, scores=scores, potential=phi), config)
    torch.testing.assert_close(unfused.rewards, expect, rtol=0, atol=0)
    torch.testing.assert_close((fused.advantages, fused.returns), (unfused.advantages, unfused.returns),
                               rtol=1e-5, atol=1e-5)
    # The RM's own head as the potential: today's numbers.
    own = PotentialHead.from_reward_model(model)
    base = compute_advantages(Rollout(**common, rm_hidden=hidden, rm_weight=weight, rm_bias=bias), config)
    same = compute_advantages(Rollout(**common, rm_hidden=hidden, rm_weight=weight, rm_bias=bias, potential=own), config)
    torch.testing.assert_close((same.rewards, same.advantages, same.returns),
                               (base.rewards, base.advantages, base.returns), rtol=0, atol=0)
    # Bad input names the argument.
    with pytest.raises(ValueError, match="Rollout.potential.*D = 8"):
        compute_advantages(Rollout(**common, rm_hidden=hidden, rm_weight=weight, potential=PotentialHead(torch.ones(8))),
                           config)
    with pytest.raises(FileNotFoundError, match="Rollout.potential"):
        compute_advantages(Rollout(**common, rm_hidden=hidden, rm_weight=weight, potential=tmp_path / "nope"), config)
    with pytest.raises(ValueError, match="Rollout.potential.*needs the hidden states"):
        compute_advantages(Rollout(**common, scores=scores, potential=head), config)
    with pytest.raises(ValueError, match="Rollout.potential.*same hidden"):
        compute_advantages(Rollout(**common, rm_hidden=hidden, rm_weight=weight, potential=phi), config)
    with pytest.raises(ValueError, match="potential must have the shape"):
        compute_advantages(Rollout(**common, scores=scores, potential=phi[:, 1:]), config)


# --- TRL <= 1.12 PPO adapter (r3hf.integrations.trl) ----------------------------------------------


def _trl112_get_reward(model, query_responses, pad_token_id, context_length):
    """TRL 1.12's `get_reward` (trl/trainer/utils.py), restated for this test: TRL 1.13+ (the venv's)
    no longer ships it and the PPO trainer around it cannot be installed next to TRL 1.16."""
    attention_mask = query_responses != pad_token_id
    position_ids = attention_mask.cumsum(1) - attention_mask.long()
    backbone = getattr(model, model.base_model_prefix)
    input_ids = torch.masked_fill(query_responses, ~attention_mask, 0)
    output = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True,
                      output_hidden_states=True, use_cache=False)
    reward_logits = model.score(output.hidden_states[-1])
    is_pad = query_responses[:, context_length:] == pad_token_id
    first_pad = torch.where(is_pad.any(1), is_pad.int().argmax(1), torch.full_like(is_pad[:, 0], is_pad.shape[1],
                                                                                    dtype=torch.long))
    seq = first_pad - 1 + context_length
    return reward_logits, reward_logits[torch.arange(len(seq)), seq].squeeze(-1), seq


def test_trl_ppo_adapter_potential_logits(tmp_path):
    from r3hf.integrations import trl as adapter
    from r3hf.models.potential import with_final_score

    model = gpt2(seed=6)
    gen = torch.Generator().manual_seed(3)
    B, C, L = 4, 5, 7
    qr = torch.randint(2, 64, (B, C + L), generator=gen)
    for b, n in enumerate([7, 3, 5, 1]):
        qr[b, C + n:] = PAD  # TRL's rows: a response, then padding
    head = PotentialHead(random_head(model, seed=2).weight, 0.15)
    head.save_pretrained(tmp_path / "pot")
    calls = count_forwards(model)
    with torch.no_grad(), adapter.score_head_potential(model, tmp_path / "pot") as pot:
        reward_logits, scores, seq_abs = _trl112_get_reward(model, qr, PAD, C)
    assert len(calls) == 1 and pot.logits.shape == reward_logits.shape
    twin = gpt2(seed=6)
    with torch.no_grad():
        twin.score.weight.copy_(head.weight[None])
        twin_logits = _trl112_get_reward(twin, qr, PAD, C)[0]
    torch.testing.assert_close(pot.logits, twin_logits + 0.15, rtol=1e-5, atol=1e-6)  # Φ' read separately
    seq = seq_abs - C
    values, lp, ref = torch.randn(B, L, generator=gen), -torch.rand(B, L, generator=gen), -torch.rand(B, L, generator=gen)
    kw = dict(kl_coef=0.05, mode="r3hf")
    got = adapter.compute_rewards_and_advantages(scores, values, lp, ref, seq, C, reward_logits=reward_logits,
                                                 potential_logits=pot.logits, **kw)
    # = today's path on the shaped tensor: Φ' everywhere, R (the RM's logit) at the last generated token
    shaped = with_final_score(pot.logits[..., 0], reward_logits[..., 0], seq_abs.clamp_min(0))
    want = adapter.compute_rewards_and_advantages(scores, values, lp, ref, seq, C, reward_logits=shaped, **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    today = adapter.compute_rewards_and_advantages(scores, values, lp, ref, seq, C, reward_logits=reward_logits, **kw)
    assert not torch.allclose(got.rewards, today.rewards)
    same = adapter.compute_rewards_and_advantages(scores, values, lp, ref, seq, C, reward_logits=reward_logits,
                                                  potential_logits=reward_logits, **kw)
    torch.testing.assert_close(same, today, rtol=0, atol=0)
    with pytest.raises(ValueError, match="potential: potential head has D = 8"):
        adapter.score_head_potential(model, PotentialHead(torch.ones(8)))
    with pytest.raises(ValueError, match="potential_logits must be laid out as reward_logits"):
        adapter.compute_rewards_and_advantages(scores, values, lp, ref, seq, C, reward_logits=reward_logits,
                                               potential_logits=pot.logits[:, 1:], **kw)
    with pytest.raises(ValueError, match="use mode='r3hf'"):
        adapter.compute_rewards_and_advantages(scores, values, lp, ref, seq, C, potential_logits=pot.logits)
