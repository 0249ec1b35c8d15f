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
from op_cases import CASES, OPTION_CASES, batch as _batch

CASES = {**CASES, **OPTION_CASES}

torch._dynamo.config.cache_size_limit = 64


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
