"""One realistic call of every public op (a table new ops join), on a small batch with holes and
all-masked rows. Used by tests/test_compile.py and tests/torch_only_check.py (no pytest here: that
script runs in a venv holding torch alone)."""

from __future__ import annotations

import torch

import r3hf.ops as ops
from batches import make_batch


def batch(prompt_tensor: bool):
    b = make_batch(B=4, L=23, P=4, D=16, seed=11, per_row_prompt=prompt_tensor)
    b["mask_f"] = b["response_mask"].float()
    b["response_mask"][:, 0] = True  # every row generates (group estimators need tokens in each group)
    b["index"] = torch.tensor([7, 3, 7, 3], device=b["rewards"].device)
    return b


# op name -> function of a batch (and keyword arguments of the op, e.g. backend=) calling that op with a
# realistic set of arguments.
CASES = {
    "prefix_scores": lambda b, **kw: ops.prefix_scores(b["hidden"], b["weight"], b["bias"], **kw),
    "redistribute": lambda b, **kw: ops.redistribute(
        b["scores"], b["response_mask"], b["prompt_len"], beta_c=0.5, **kw),
    "kl_penalty": lambda b, **kw: ops.kl_penalty(b["logprobs"], b["ref_logprobs"], "k3", 10.0, **kw),
    "token_rewards": lambda b, **kw: ops.token_rewards(
        b["scores"], b["response_mask"], b["prompt_len"], logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"],
        kl_coef=0.05, kl_estimator="k3", kl_clamp=10.0, reward_clip=5.0, **kw),
    "gae": lambda b, **kw: ops.gae(b["rewards"], b["values"], b["mask_f"], 0.99, 0.95, **kw),
    "masked_whiten": lambda b, **kw: ops.masked_whiten(
        b["rewards"], b["response_mask"], transform_masked=True, eps_mode="max", unbiased=False, **kw),
    "fused_reward_gae": lambda b, **kw: ops.fused_reward_gae(
        b["hidden"], b["weight"], b["bias"], b["values"], b["response_mask"], b["prompt_len"],
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05, kl_estimator="k1", gamma=1.0,
        lam=0.95, **kw),
    "reward_to_go": lambda b, **kw: ops.reward_to_go(
        b["rewards"], b["response_mask"], 0.99, holes="discount", **kw),
    "group_advantages": lambda b, **kw: ops.group_advantages(
        b["rewards"], b["response_mask"], b["index"], "rloo", **kw),
    "fused_reward_group_advantages": lambda b, **kw: ops.fused_reward_group_advantages(
        b["hidden"], b["weight"], b["bias"], b["response_mask"], b["prompt_len"], 2, "grpo",
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05, **kw),
}

# Non-default options with their own kernels, as more cases (keys "op[option]"): test_compile and
# test_contract_cuda (fullgraph, no host sync on CUDA) run CASES | OPTION_CASES.
OPTION_CASES = {
    # baseline="position" (issue 21)
    "group_advantages[position]": lambda b, **kw: ops.group_advantages(
        b["rewards"], b["response_mask"], b["index"], "grpo", baseline="position", **kw),
    "fused_reward_group_advantages[position]": lambda b, **kw: ops.fused_reward_group_advantages(
        b["hidden"], b["weight"], b["bias"], b["response_mask"], b["prompt_len"], 2, "rloo",
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05, baseline="position", **kw),
}
