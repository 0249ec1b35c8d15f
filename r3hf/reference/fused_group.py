import torch

from .group import group_advantages
from .projection import prefix_scores
from .rewards import token_rewards


def fused_reward_group_advantages(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    response_mask: torch.Tensor,
    prompt_len: torch.Tensor,
    index: torch.Tensor,
    estimator: str = "grpo",
    logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k1",
    kl_clamp: tuple[float, float] | None = None,
    first: str = "prompt",
    beta_c: float = 1.0,
    reward_clip: tuple[float, float] | None = None,
    gamma: float = 1.0,
    eps: float = 1e-6,
    scale: str = "group",
    group=None,
    beta_c_auto: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    baseline: str = "row",
) -> tuple[torch.Tensor, torch.Tensor]:
    """group_advantages(token_rewards(prefix_scores(hidden, weight, bias), …), …).

    hidden [B, S, D], response_mask [B, L], index int64 [B] -> (rewards, advantages), each
    float32 [B, L]. Packed: hidden [T, D], the rest [T], index [N], cu_seqlens.
    """
    scores = prefix_scores(hidden, weight, bias)
    rewards = token_rewards(
        scores, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp,
        first, beta_c, reward_clip, beta_c_auto, cu_seqlens,
    )
    return rewards, group_advantages(rewards, response_mask, index, estimator, gamma, eps, scale, group, cu_seqlens,
                                     baseline)
