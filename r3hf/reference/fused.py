import torch

from .gae import gae
from .projection import prefix_scores
from .rewards import token_rewards


def fused_reward_gae(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    prompt_len: torch.Tensor,
    logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k1",
    kl_clamp: tuple[float, float] | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    first: str = "prompt",
    beta_c: float = 1.0,
    reward_clip: tuple[float, float] | None = None,
    bootstrap: torch.Tensor | None = None,
    beta_c_auto: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    potential_weight: torch.Tensor | None = None,
    potential_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gae(token_rewards(prefix_scores(hidden, weight, bias), …), values, …).

    hidden [B, S, D], values/response_mask/logprobs [B, L] -> (rewards, advantages, returns),
    each float32 [B, L]. Whitening is not part of it.
    potential_weight/potential_bias: a second head on the same hidden states gives the potential
    (token_rewards(potential=prefix_scores(hidden, potential_weight, potential_bias))). Packed: hidden [T, D], the rest [T], cu_seqlens.
    """
    scores = prefix_scores(hidden, weight, bias)
    # A potential head (potential_weight [D], potential_bias [1] | None): Φ' = its prefix scores.
    potential = None if potential_weight is None else prefix_scores(hidden, potential_weight, potential_bias)
    rewards = token_rewards(
        scores, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp,
        first, beta_c, reward_clip, beta_c_auto, cu_seqlens, potential,
    )
    advantages, returns = gae(rewards, values, response_mask, gamma, lam, bootstrap, cu_seqlens=cu_seqlens)
    return rewards, advantages, returns
