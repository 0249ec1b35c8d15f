"""OpenRLHF 0.11's per-batch functions on `r3hf.ops` (KL, reward placement, GAE, normalisation):
the helpers that `r3hf.integrations.openrlhf` exports and its private modules share."""

from __future__ import annotations

import torch

from ... import ops

ESTIMATORS = ("gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo")
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_CLAMP = 10.0


def as_mask(action_mask, like: torch.Tensor) -> torch.Tensor:
    if action_mask is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    if not isinstance(action_mask, torch.Tensor) or action_mask.shape != like.shape:
        shape = list(action_mask.shape) if isinstance(action_mask, torch.Tensor) else type(action_mask).__name__
        raise ValueError(f"action_mask must be [B, A] = {list(like.shape)}, got {shape}")
    return action_mask if action_mask.dtype == torch.bool else action_mask != 0


def compute_approx_kl(log_probs, log_probs_base, kl_estimator="k1", *, backend="auto") -> torch.Tensor:
    """OpenRLHF's `compute_approx_kl` values: [B, A] -> float32 [B, A], clamped to [−10, 10]."""
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {list(KL_ESTIMATORS)}, got {kl_estimator!r}")
    return ops.kl_penalty(log_probs, log_probs_base, kl_estimator, KL_CLAMP, backend=backend)


def kl_reward(kl_coef, kl: torch.Tensor) -> torch.Tensor:
    if not isinstance(kl, torch.Tensor) or kl.dim() != 2:
        raise ValueError(f"kl must be a [B, A] tensor, got {getattr(kl, 'shape', type(kl).__name__)}")
    coef = float(kl_coef)
    return -max(coef, 0.0) * kl.float()  # OpenRLHF treats kl_coef <= 0 as no penalty


def clip(r: torch.Tensor, reward_clip_range):
    return r.clamp(min=reward_clip_range[0], max=reward_clip_range[1]) if reward_clip_range else r


def compute_reward(r, kl_coef, kl, action_mask=None, reward_clip_range=None) -> torch.Tensor:
    """OpenRLHF's `compute_reward`: sparse score on the last action token minus kl_coef·kl.

    r [B] (or a float), kl [B, A] (from `compute_approx_kl`), action_mask [B, A] (None: all
    actions) -> float32 [B, A]. r is clamped to reward_clip_range = (low, high) when given. A
    row without an action token gets its score at the last position, as OpenRLHF does. The KL
    term is not masked (OpenRLHF masks it later, in GAE).
    """
    kl_term = kl_reward(kl_coef, kl)
    B, A = kl.shape
    m = as_mask(action_mask, kl)
    if not isinstance(r, torch.Tensor):
        r = torch.full((B,), float(r), device=kl.device)
    if r.shape != (B,):
        raise ValueError(f"r must be [B] = [{B}], got {list(r.shape)}")
    r = clip(r.float(), reward_clip_range)
    # Index of the last action token (A − 1 where there is none): where OpenRLHF puts the score.
    last = A - 1 - m.flip(1).to(torch.int64).argmax(1)
    sparse = torch.zeros(B, A, dtype=torch.float32, device=kl.device).scatter_(1, last[:, None], r[:, None])
    return sparse + kl_term


def compute_dense_reward(
    scores, kl_coef, kl, action_mask, reward_clip_range=None, *, advantage_estimator, first="prompt", beta_c=1.0,
    backend="auto", potential=None,
) -> torch.Tensor:
    """R3HF dense rewards in OpenRLHF's layout, minus kl_coef·kl: the drop-in for `compute_reward`.

    scores [B, A + 1]: the reward head read at every sequence position (scores[:, t] is the score
    of the prefix ending with sequence token t; action j is sequence token j + 1), kl and
    action_mask [B, A]. Each action token gets the score change it caused; observation spans
    (holes) are credited to the action token before them; the first action token is
    differenced against the score of everything before it (first="prompt") or 0 (first="zero").
    beta_c < 1 mixes in the final score on the last action token; reward_clip_range bounds each
    token's reward-model part. Non-action positions get only the (unmasked) KL term, as in
    `compute_reward`; a row without an action token gets no score. potential [B, A + 1]: a
    potential head's values at the same positions (`prefix_values(..., potential=)`), the shaping
    Φ' of `ops.token_rewards(potential=)`: the last action token still gets the score's R.

    advantage_estimator (required): OpenRLHF's `algo.advantage.estimator`. Only "gae" and
    "reinforce" use these rewards as they are; rloo, reinforce_baseline, group_norm and dr_grpo
    apply a group baseline to the scalar reward before `compute_reward`, which per-experience
    rewards cannot carry, so they raise: use `compute_advantages_and_returns` for them.
    """
    check_dense_estimator(advantage_estimator)
    kl_term = kl_reward(kl_coef, kl)
    B, A = kl.shape
    m = as_mask(action_mask, kl)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or list(scores.shape) != [B, A + 1]:
        raise ValueError(
            f"scores must be [B, A + 1] = [{B}, {A + 1}] (every sequence position), "
            f"got {getattr(scores, 'shape', type(scores).__name__)}"
        )
    # r3hf's layout puts response token j at sequence position prompt_len + j. Per row, let the
    # response start at the first action token f (so prompt_len = f + 1) by reading the mask from
    # f on, and map the rewards back to action positions afterwards. This is indexing only.
    first_action = torch.where(m.any(1), m.to(torch.int64).argmax(1), torch.zeros_like(m[:, 0], dtype=torch.int64))
    src = first_action[:, None] + torch.arange(A, device=m.device)[None, :]
    inside = src < A
    src = src.clamp_max(A - 1)
    window = m.gather(1, src) & inside
    padded = torch.cat([scores, scores.new_zeros(B, A)], dim=1)  # so S >= prompt_len + A for every row
    if potential is not None:
        if not isinstance(potential, torch.Tensor) or list(potential.shape) != [B, A + 1]:
            raise ValueError(f"potential must be [B, A + 1] = [{B}, {A + 1}] like scores, "
                             f"got {getattr(potential, 'shape', type(potential).__name__)}")
        potential = torch.cat([potential, potential.new_zeros(B, A)], dim=1).to(padded.device)
    dense_w = ops.token_rewards(
        padded, window, first_action + 1, first=first, beta_c=beta_c, reward_clip=reward_clip_range or None,
        backend=backend, potential=potential,
    )
    dense = torch.zeros(B, A, dtype=torch.float32, device=m.device).scatter_add_(1, src, dense_w * inside)
    return dense + kl_term


def check_dense_estimator(advantage_estimator):
    estimator = check_estimator(advantage_estimator)
    if estimator not in ("gae", "reinforce"):
        raise ValueError(
            f"compute_dense_reward cannot apply the group baseline of advantage_estimator={estimator!r} (OpenRLHF "
            "subtracts it from the scalar reward before compute_reward); use "
            "r3hf.integrations.openrlhf.compute_advantages_and_returns(experiences, args, kl_coef, prefix_scores=...)"
        )
    return estimator


def get_advantages_and_returns(values, rewards, action_mask, gamma=1.0, lambd=1.0, *, backend="auto"):
    """OpenRLHF's `get_advantages_and_returns` -> (advantages, returns), float32 [B, A], not normalised.

    values and rewards are multiplied by action_mask, then GAE runs over every position (holes
    are zero-reward, zero-value steps); returns = advantages + masked values. Normalise with
    `normalize_advantages` over the whole batch afterwards, as OpenRLHF does.
    """
    if action_mask is not None:
        m = as_mask(action_mask, rewards).to(rewards.dtype)
        values, rewards = values * m.to(values.dtype), rewards * m
    everywhere = torch.ones(rewards.shape, dtype=torch.bool, device=rewards.device)
    return ops.gae(rewards, values, everywhere, gamma, lambd, backend=backend)


def normalize_advantages(advantages, action_mask, *, backend="auto"):
    """OpenRLHF's batch advantage normalisation: (adv − mean)·rsqrt(max(var, 1e-8)).

    mean and biased variance over every action token of all the given tensors together; every
    position is transformed. advantages/action_mask: [B, A] tensors, or lists of them (OpenRLHF's
    experiences, possibly of different lengths) -> the same structure, float32.
    """
    if isinstance(advantages, (list, tuple)):
        if not isinstance(action_mask, (list, tuple)) or len(action_mask) != len(advantages):
            raise ValueError("advantages and action_mask must both be tensors or lists of the same length")
        flat = torch.cat([a.reshape(-1).float() for a in advantages])
        flat_mask = torch.cat([as_mask(m, a).reshape(-1) for a, m in zip(advantages, action_mask)])
        out = normalize_advantages(flat, flat_mask, backend=backend)
        pieces = torch.split(out, [a.numel() for a in advantages])
        return [p.reshape(a.shape) for p, a in zip(pieces, advantages)]
    return ops.masked_whiten(
        advantages, as_mask(action_mask, advantages), unbiased=False, eps=1e-8, transform_masked=True, eps_mode="max",
        backend=backend,
    )


def check_estimator(advantage_estimator) -> str:
    if advantage_estimator not in ESTIMATORS:
        raise ValueError(f"advantage_estimator must be one of {list(ESTIMATORS)}, got {advantage_estimator!r}")
    return advantage_estimator
