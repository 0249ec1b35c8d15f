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
    baseline: str = "row",
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

    baseline="position" (grpo, rloo, reinforce_pp_baseline; issue 21): the group baseline (and
    grpo's group std) is taken per position instead of from the scores s: see `_position_baseline`.
    """
    if cu_seqlens is not None:
        from . import packed

        return packed.group_advantages(rewards, response_mask, index, estimator, gamma, eps, scale, group, cu_seqlens,
                                       baseline)
    if group is not None:
        return _on_whole_batch(rewards, response_mask, index, group, estimator, gamma, eps, scale, baseline)
    check_tokens(int(torch.count_nonzero(response_mask)), estimator)
    m = response_mask
    r = torch.where(m, rewards.float(), 0.0)
    G = reward_to_go(r, m, gamma)
    s = r.double().sum(1)  # float64 so group statistics do not depend on summation order

    if baseline == "position":
        adv = _position_baseline(G, m, s, index, estimator, eps, scale)
    elif estimator == "grpo":
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


def _held_returns(G: torch.Tensor, mask: torch.Tensor):
    """H float64 [B, L] and the position p int64 [B, L] of every token (the generated tokens before it).

    H[i, k] = G of row i at its k-th generated token (k from 0) while k < n_i; after its last
    token the row stays present holding that token's G (the absorbing state's value); 0 for an
    all-masked row. So every row of a group is present at every position.
    """
    B, L = mask.shape
    p = mask.long().cumsum(1) - 1
    H = torch.zeros(B, L, dtype=torch.float64, device=G.device)
    for i in range(B):
        g = G[i][mask[i]].double()  # row i's G at its generated tokens, in order
        if g.numel():
            H[i, : g.numel()] = g
            H[i, g.numel():] = g[-1]
    return H, p.clamp_min(0)


def _position_baseline(G, m, s, index, estimator: str, eps: float, scale: str) -> torch.Tensor:
    """A [B, L] float64 with per-position baselines (issue 21; docs/group.md). For row i of group g
    (c_g rows, all counted) at its p-th generated token, over H of `_held_returns`:
    - rloo: A = G − (Σ_{j∈g, j≠i} H_{j,p})/(c_g − 1) (0 baseline for a singleton): row i's
      baseline never reads row i;
    - grpo: A = (G − μ_{g,p})/(sd_{g,p} + eps), μ and sd the mean and unbiased std of H_{·,p} over
      g (singleton: 0 and 1); scale="batch" divides by the std of s over the batch, "none" does not;
    - reinforce_pp_baseline: G − μ_{g,p}, whitened over every generated token of the batch.
    """
    H, p = _held_returns(G, m)
    B, L = H.shape
    base = torch.zeros_like(H)  # the baseline subtracted at each position of each row
    spread = torch.ones_like(H)  # grpo's per-position std
    for g in torch.unique(index):
        rows = torch.nonzero(index == g)[:, 0]
        c = rows.numel()
        if c < 2:
            continue  # a singleton: baseline 0, std 1 (veRL's singleton rule)
        members = H[rows]  # [c, L]
        if estimator == "rloo":
            for a, i in enumerate(rows):
                others = torch.cat([members[:a], members[a + 1:]])
                base[i] = others.sum(0) / (c - 1)
        else:
            base[rows] = members.mean(0)
            spread[rows] = members.std(0)
    at_token = base.gather(1, p)
    adv = G.double() - at_token
    if estimator == "grpo":
        if scale == "group":
            adv = adv / (spread.gather(1, p) + eps)
        elif scale == "batch":
            adv = adv / ((float(s.std()) if s.numel() > 1 else 1.0) + eps)
    elif estimator == "reinforce_pp_baseline":
        adv = masked_whiten(adv, m, eps=eps)
    return adv


def _on_whole_batch(rewards, response_mask, index, group, estimator, gamma, eps, scale, baseline="row"):
    """Gather every rank's rows (padded to the longest L), compute on them, keep this rank's rows."""
    from .dist import all_gather_rows, world_sizes

    B, L = response_mask.shape
    width = max(world_sizes(L, group, rewards.device))
    all_r, start = all_gather_rows(torch.cat([rewards.float(), rewards.new_zeros(B, width - L, dtype=torch.float32)], 1), group)
    all_m, _ = all_gather_rows(torch.cat([response_mask, response_mask.new_zeros(B, width - L)], 1), group)
    all_index, _ = all_gather_rows(index, group)
    adv = group_advantages(all_r, all_m, all_index, estimator, gamma, eps, scale, baseline=baseline)
    return adv[start : start + B, :L].contiguous()
