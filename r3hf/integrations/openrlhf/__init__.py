"""OpenRLHF 0.11 adapter: its KL, reward placement, GAE and advantage normalisation on `r3hf.ops`.

OpenRLHF 0.11's layout: per sample, `sequences` [1, S] (prompt, then turns) and `action_mask`
[1, S − 1] over sequences[1:], so action index j is sequence position j + 1; prompt and
observation tokens have action_mask 0 (leading zeros and holes), padding too. Batched tensors
[B, A] work the same way. Its conventions, which the functions here reproduce:

- `compute_approx_kl`: d = log_probs − log_probs_base; k1 = d, k2 = d²/2, k3 = exp(−d) − 1 + d;
  every estimator clamped to [−10, 10].
- `compute_reward`: r clamped to reward_clip_range, placed on the last action token (on the last
  position for a row without one), minus kl_coef·kl at every position (kl_coef ≤ 0 means 0).
- `get_advantages_and_returns`: rewards and values multiplied by action_mask, then the plain GAE
  loop over every position (a hole is a zero-reward, zero-value step, unlike veRL's carry);
  returns = advantages + masked values.
- advantages then normalised over all action tokens of the batch: biased variance, rsqrt of
  max(var, 1e-8), every position transformed (masked ones too).

Outputs are float32; on fp32 inputs they equal OpenRLHF's.
"""

from __future__ import annotations

from ._advantages import advantages_and_returns, compute_advantages_and_returns
from ._packed import PackedValues, packed_dense_reward, packed_prefix_values, packed_token_rewards
from ._prefix import prefix_values
from ._rewards import (
    KL_CLAMP,
    KL_ESTIMATORS,
    compute_approx_kl,
    compute_dense_reward,
    compute_reward,
    get_advantages_and_returns,
    normalize_advantages,
)

__all__ = [
    "compute_approx_kl",
    "compute_reward",
    "compute_dense_reward",
    "get_advantages_and_returns",
    "normalize_advantages",
    "compute_advantages_and_returns",
    "advantages_and_returns",
    "prefix_values",
    "packed_prefix_values",
    "packed_token_rewards",
    "packed_dense_reward",
    "PackedValues",
]
