"""torch.compile(fullgraph=True) over r3hf.ops on CPU (inductor): every public op, and a realistic
rollout-to-advantages function compared bitwise with eager, for int and tensor prompt_len.

The ops are custom ops (r3hf/_library.py) with the backend chosen before tracing, so dynamo sees one
opaque node per op. New ops join by adding a case to CASES.
"""

from __future__ import annotations

import pytest
import torch

import r3hf.ops as ops
from r3hf._library import OPS
from batches import make_batch

torch._dynamo.config.cache_size_limit = 64


def _batch(prompt_tensor: bool):
    b = make_batch(B=4, L=23, P=4, D=16, seed=11, per_row_prompt=prompt_tensor)
    b["mask_f"] = b["response_mask"].float()
    b["response_mask"][:, 0] = True  # every row generates (group estimators need tokens in each group)
    b["index"] = torch.tensor([7, 3, 7, 3], device=b["rewards"].device)
    return b


# op name -> function of a batch calling that op with a realistic set of arguments.
CASES = {
    "prefix_scores": lambda b: ops.prefix_scores(b["hidden"], b["weight"], b["bias"]),
    "redistribute": lambda b: ops.redistribute(b["scores"], b["response_mask"], b["prompt_len"], beta_c=0.5),
    "kl_penalty": lambda b: ops.kl_penalty(b["logprobs"], b["ref_logprobs"], "k3", 10.0),
    "token_rewards": lambda b: ops.token_rewards(
        b["scores"], b["response_mask"], b["prompt_len"], logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"],
        kl_coef=0.05, kl_estimator="k3", kl_clamp=10.0, reward_clip=5.0),
    "gae": lambda b: ops.gae(b["rewards"], b["values"], b["mask_f"], 0.99, 0.95),
    "masked_whiten": lambda b: ops.masked_whiten(b["rewards"], b["response_mask"], transform_masked=True,
                                                 eps_mode="max", unbiased=False),
    "fused_reward_gae": lambda b: ops.fused_reward_gae(
        b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"],
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05, kl_estimator="k1", gamma=1.0,
        lam=0.95),
    "reward_to_go": lambda b: ops.reward_to_go(b["rewards"], b["response_mask"], 0.99, holes="discount"),
    "group_advantages": lambda b: ops.group_advantages(b["rewards"], b["response_mask"], b["index"], "rloo"),
    "fused_reward_group_advantages": lambda b: ops.fused_reward_group_advantages(
        b["hidden"], b["weight"], b["bias"], b["response_mask"], b["prompt_len"], 2, "grpo",
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05),
    # baseline="position" (issue 21): also run by test_contract_cuda (fullgraph and no host sync on CUDA)
    "group_advantages[position]": lambda b: ops.group_advantages(
        b["rewards"], b["response_mask"], b["index"], "grpo", baseline="position"),
    "fused_reward_group_advantages[position]": lambda b: ops.fused_reward_group_advantages(
        b["hidden"], b["weight"], b["bias"], b["response_mask"], b["prompt_len"], 2, "rloo",
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05, baseline="position"),
}


def test_every_registered_op_has_a_case():
    assert set(OPS) <= set(CASES), set(OPS) - set(CASES)


def _same(a, b):
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("op", sorted(CASES))
def test_op_compiles_fullgraph(op):
    torch._dynamo.reset()
    b = _batch(prompt_tensor=True)
    fn = CASES[op]
    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    _same(compiled(b), fn(b))


def rollout_to_advantages(hidden, weight, values, response_mask, prompt_len, logprobs, ref_logprobs, index=None):
    """The trainer step between a rollout and the PPO loss: R3HF rewards, KL, GAE, whitened advantages;
    with group ids also the critic-free GRPO advantages of the same rollout."""
    rewards, advantages, returns = ops.fused_reward_gae(
        hidden, weight, None, values, response_mask, prompt_len, logprobs=logprobs, ref_logprobs=ref_logprobs,
        kl_coef=0.05, kl_estimator="k3", kl_clamp=10.0, gamma=1.0, lam=0.95)
    advantages = ops.masked_whiten(advantages, response_mask)
    if index is None:
        return rewards, advantages, returns
    _, group_adv = ops.fused_reward_group_advantages(
        hidden, weight, None, response_mask, prompt_len, index, "grpo", logprobs=logprobs, ref_logprobs=ref_logprobs,
        kl_coef=0.05, kl_estimator="k3", kl_clamp=10.0)
    return rewards, advantages, returns, group_adv, ops.group_advantages(rewards, response_mask, index, "rloo")


@pytest.mark.parametrize("prompt_tensor", [False, True], ids=["int-prompt_len", "tensor-prompt_len"])
def test_rollout_to_advantages_compiled_equals_eager_bitwise(prompt_tensor):
    torch._dynamo.reset()
    b = _batch(prompt_tensor)
    args = (b["hidden"], b["weight"], b["values"], b["response_mask"], b["prompt_len"], b["logprobs"],
            b["ref_logprobs"], b["index"])
    compiled = torch.compile(rollout_to_advantages, fullgraph=True, backend="inductor")
    _same(compiled(*args), rollout_to_advantages(*args))


def test_compiled_range_check_still_raises_value_error():
    # Data-dependent checks run inside the op with real tensors: on CPU still a ValueError.
    torch._dynamo.reset()
    b = _batch(prompt_tensor=True)
    bad = b["prompt_len"].clone()
    bad[1] = 10_000
    fn = torch.compile(lambda s, m, p: ops.redistribute(s, m, p), fullgraph=True, backend="inductor")
    with pytest.raises(ValueError, match="prompt_len"):
        fn(b["scores"], b["response_mask"], bad)
