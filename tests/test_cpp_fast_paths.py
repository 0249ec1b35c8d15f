"""The C++ token_rewards fast path for rows without holes (one contiguous run of generated tokens):
bitwise equal to the torch reference for every option (k3: to the last bit of expm1), alone and mixed with rows that have holes."""

from __future__ import annotations

import os

import pytest
import torch

import r3hf.ops as ops
from batches import make_batch

if os.environ.get("R3HF_NO_EXT", "0") == "1":
    pytest.skip("R3HF_NO_EXT=1", allow_module_level=True)

OPTIONS = [
    dict(),
    dict(first="zero"),
    dict(beta_c=0.3),
    dict(beta_c=0.0, first="zero"),
    dict(reward_clip=(-0.5, 0.7)),
    dict(kl_coef=0.1, kl_estimator="k1"),
    dict(kl_coef=0.1, kl_estimator="k3", kl_clamp=0.5, reward_clip=1.0, beta_c=0.6),
    dict(kl_coef=-0.2, kl_estimator="abs"),
]


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("L", [1, 2, 47, 1000])
@pytest.mark.parametrize("opt", range(len(OPTIONS)))
def test_token_rewards_bitwise(holes, L, opt):
    b = make_batch(B=6, L=L, seed=L + opt, holes=holes)
    m = b["response_mask"].clone()
    if not holes and L > 3:
        m[0, :3] = False  # a run that starts late
        m[1, :] = True  # a full row
        m[2, L // 2] = True  # one token
    kw = dict(OPTIONS[opt])
    if kw.get("kl_coef"):
        kw.update(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"])
    got = ops.token_rewards(b["scores"], m, b["prompt_len"], **kw, backend="cpp")
    want = ops.token_rewards(b["scores"], m, b["prompt_len"], **kw, backend="torch")
    if kw.get("kl_estimator") == "k3":
        # expm1: the C++ expm1f and torch's vectorised expm1 may differ in the last bit.
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(got, want), (got - want).abs().max()
