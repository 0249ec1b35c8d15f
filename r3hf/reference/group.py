"""Critic-free group estimators on token rewards (GRPO, RLOO, REINFORCE++), token level.

Notation: m = response_mask, r = token rewards [B, L], s_i = Σ_t m·r_{i,t} (the row's score),
G = reward_to_go(r, m, γ, holes="skip"). Groups are the rows sharing an `index` value.
"""

import torch

from .data_checks import check_tokens
from .returns import reward_to_go
from .whiten import masked_whiten


def _group_mean_std(values: torch.Tensor, index: torch.Tensor):
    """Per-row mean, unbiased std and size of its group. veRL 0.9.1: a singleton has mean 0, std 1."""
    mean = torch.zeros_like(values)
    std = torch.ones_like(values)
    size = torch.ones_like(values)
    for g in torch.unique(index):
        rows = index == g
        members = values[rows]
        size[rows] = members.numel()
        if members.numel() > 1:
            mean[rows] = members.mean()
            std[rows] = members.std()
    return mean, std, size


def _token_mean_std(rewards: torch.Tensor, mask: torch.Tensor, index: torch.Tensor):
    """Per-row mean and unbiased std of r over every generated token of its group (< 2 tokens: 0, 1)."""
    mean = torch.zeros(rewards.shape[0], dtype=torch.float64, device=rewards.device)
    std = torch.ones_like(mean)
    for g in torch.unique(index):
        rows = index == g
        tokens = rewards[rows][mask[rows]].double()
        if tokens.numel() > 1:
            mean[rows] = tokens.mean()
            std[rows] = tokens.std()
    return mean, std


def group_advantages(
    rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: torch.Tensor,
    estimator: str = "grpo",
    gamma: float = 1.0,
    eps: float = 1e-6,
    scale: str = "group",
    group=None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token-level group advantages [B, L] -> float32 [B, L], 0 at masked positions.

    rewards [B, L], response_mask bool [B, L], index int64 [B] (group ids, any order).
    - grpo: (G − mean_g s)/(std_g s + eps); scale="batch" divides by the std of s over the whole
      batch instead, scale="none" does not divide (Dr. GRPO).
    - rloo: G − mean of s over the other rows of the group.
    - reinforce_pp: G whitened over every generated token of the batch, (x − mean)·rsqrt(var + eps).
    - reinforce_pp_baseline: the same whitening of G − mean_g s.
    - grpo_process: r normalised over the generated tokens of its group, r̃ = (r − μ)/(σ + eps)
      (σ per `scale` as for grpo), then A = reward_to_go(r̃, γ).
    Means and unbiased stds follow veRL 0.9.1: a statistic over fewer than 2 values is mean 0,
    std 1 (a singleton group; RLOO's singleton keeps its own return). With a torch.distributed
    `group`, the result is this rank's rows of the same computation on every rank's rows together.
    Packed ([T], cu_seqlens, index [N]: a sequence is a row): `r3hf.reference.packed`.
    """
    if cu_seqlens is not None:
        from . import packed

        return packed.group_advantages(rewards, response_mask, index, estimator, gamma, eps, scale, group, cu_seqlens)
    if group is not None:
        return _on_whole_batch(rewards, response_mask, index, group, estimator, gamma, eps, scale)
    check_tokens(int(torch.count_nonzero(response_mask)), estimator)
    m = response_mask
    r = torch.where(m, rewards.float(), 0.0)
    G = reward_to_go(r, m, gamma)
    s = r.double().sum(1)  # float64 so group statistics do not depend on summation order

    if estimator == "grpo":
        mean, std, _ = _group_mean_std(s, index)
        if scale == "batch":
            std = torch.full_like(s, float(s.std()) if s.numel() > 1 else 1.0)
        adv = G - mean[:, None]
        if scale != "none":
            adv = adv / (std[:, None] + eps)
    elif estimator == "rloo":
        mean, _, k = _group_mean_std(s, index)
        others = torch.where(k > 1, (k * mean - s) / (k - 1).clamp_min(1), 0.0)
        adv = G - others[:, None]
    elif estimator == "reinforce_pp":
        adv = masked_whiten(G, m, eps=eps)
    elif estimator == "reinforce_pp_baseline":
        mean, _, _ = _group_mean_std(s, index)
        adv = masked_whiten(G - mean[:, None], m, eps=eps)
    elif estimator == "grpo_process":
        mean, std = _token_mean_std(r, m, index)
        if scale == "batch":
            std = torch.full_like(std, float(r[m].double().std()) if int(m.sum()) > 1 else 1.0)
        normalised = r - mean[:, None]
        if scale != "none":
            normalised = normalised / (std[:, None] + eps)
        adv = reward_to_go(normalised.float(), m, gamma)
    else:
        raise ValueError(f"unknown estimator {estimator!r}")
    return torch.where(m, adv.float(), 0.0)


def _on_whole_batch(rewards, response_mask, index, group, estimator, gamma, eps, scale):
    """Gather every rank's rows (padded to the longest L), compute on them, keep this rank's rows."""
    from .dist import all_gather_rows, world_sizes

    B, L = response_mask.shape
    width = max(world_sizes(L, group, rewards.device))
    all_r, start = all_gather_rows(torch.cat([rewards.float(), rewards.new_zeros(B, width - L, dtype=torch.float32)], 1), group)
    all_m, _ = all_gather_rows(torch.cat([response_mask, response_mask.new_zeros(B, width - L)], 1), group)
    all_index, _ = all_gather_rows(index, group)
    adv = group_advantages(all_r, all_m, all_index, estimator, gamma, eps, scale)
    return adv[start : start + B, :L].contiguous()
