"""R3HF token rewards and group advantages for a TRL GRPO batch (the math wiring, no TRL import).

`token_level_advantages` is what `R3HFGRPOTrainer` calls once per generation batch; it is a plain
function so that it can be checked on its own (and on one process against several). Rewards come
from `ops.token_rewards`, advantages from `ops.group_advantages`: this module only arranges TRL's
batch for them.
"""

from __future__ import annotations

import torch

from ... import _validate as v
from ... import ops

# The token-level estimators of ops.group_advantages.
TOKEN_ESTIMATORS = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_process")
# Sequence-level ("outcome") estimators: each row's token rewards are summed first, as TRL's own
# GRPOTrainer and RLOOTrainer (and veRL's grpo/rloo) do; the sum is then the row's only reward.
OUTCOME_ESTIMATORS = {"grpo_outcome": "grpo", "rloo_outcome": "rloo"}
ESTIMATORS = TOKEN_ESTIMATORS + tuple(OUTCOME_ESTIMATORS)
# Estimators whose baseline is the group: a completion whose group has fewer than two scorable
# completions has no baseline, and TRL gives it advantage 0.
GROUP_BASELINE = ("grpo", "rloo", "reinforce_pp_baseline", "grpo_process", "grpo_outcome", "rloo_outcome")
# TRL's GRPOTrainer divides by (std + 1e-4).
TRL_EPS = 1e-4


def check_estimator(estimator) -> str:
    return v.check_choice("estimator", estimator, ESTIMATORS)


def check_baseline(estimator: str, baseline) -> str:
    """baseline "row" | "position" for `estimator`, by the op's own rule (r3hf._validate.group_baseline):
    refused, never ignored, where the op has no per-position baseline (reinforce_pp, grpo_process)."""
    v.group_baseline(baseline, OUTCOME_ESTIMATORS.get(estimator, estimator))
    return baseline


def op_options(estimator: str, eps: float, scale: str, baseline: str = "row") -> dict:
    """The keyword options of ops.group_advantages that `estimator` uses (the op refuses unused ones).

    TRL's scale_rewards ("group", its default, "batch", "none") is the op's `scale`, used by the
    grpo estimators only; eps divides by (std + eps) and is unused by rloo and by scale "none";
    baseline ("row" | "position") goes to the op as it is.
    """
    baseline = check_baseline(estimator, baseline)
    base = OUTCOME_ESTIMATORS.get(estimator, estimator)
    if scale != "group" and base not in ("grpo", "grpo_process"):
        raise ValueError(
            f"scale_rewards={scale!r} is not used by estimator={estimator!r} (only the grpo estimators divide by "
            "a std); leave scale_rewards at 'group' (TRL's default) or choose a grpo estimator"
        )
    kw = {"baseline": baseline} if base not in ("grpo", "grpo_process") else {"scale": scale, "baseline": baseline}
    if base != "rloo" and scale != "none":
        kw["eps"] = eps
    elif eps != TRL_EPS:
        raise ValueError(f"eps={eps} is not used by estimator={estimator!r} with scale_rewards={scale!r}")
    return kw


def last_generated(response_mask: torch.Tensor) -> torch.Tensor:
    """int64 [B]: index of each row's last generated token, −1 for a row with none."""
    L = response_mask.shape[1]
    pos = torch.arange(L, device=response_mask.device).expand_as(response_mask)
    return torch.where(response_mask, pos, torch.full_like(pos, -1)).max(1).values


def place_at_last(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """values [B] -> float32 [B, L] holding each value at its row's last generated token (0 elsewhere)."""
    last = last_generated(response_mask)
    out = torch.zeros(response_mask.shape, dtype=torch.float32, device=response_mask.device)
    has = last >= 0
    out[has, last[has]] = values[has].float()
    return out


def token_level_advantages(
    scores: torch.Tensor,
    sparse: torch.Tensor,
    response_mask: torch.Tensor,
    num_generations: int,
    *,
    unscorable: torch.Tensor | None = None,
    row_offset: int = 0,
    estimator: str = "grpo",
    beta_c: float = 1.0,
    first: str = "prompt",
    eps: float = TRL_EPS,
    scale: str = "group",
    baseline: str = "row",
    logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k1",
    group=None,
    backend: str = "auto",
    potential: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL GRPO batch -> (token rewards, advantages), float32 [B, T] each, 0 where not generated.

    scores [B, 1 + T]: Σ_f w_f·(prefix score of reward model f), column 0 the prompt-only score,
    column 1 + k the score after completion token k (`aligned_completion_scores`); sparse [B]:
    the weighted sum of the plain (rule-based) reward functions, NaN-free, placed as a sparse
    reward on the last generated token; response_mask bool [B, T]: generated tokens (tool and
    environment output are holes; truncated rows are NOT masked here, they still count in their
    group's statistics as in TRL: mask them in the loss).

    Rewards: ops.token_rewards(scores, response_mask, 1, first, beta_c, KL: kl_coef·kl_estimator of
    logprobs − ref_logprobs) + sparse. Advantages: ops.group_advantages over groups of
    `num_generations` consecutive rows of the global batch (this process holds global rows
    row_offset …; `group`, a torch.distributed process group, spans the statistics across ranks).
    "grpo_outcome"/"rloo_outcome" sum each row first (TRL's scalar GRPO/RLOO advantage, broadcast).
    baseline: the op's "row" (default) or "position" (the group's reward-to-go at the same
    generated-token position, leave-one-out for rloo; docs/group.md).

    potential [B, 1 + T] (optional, laid out as scores): Σ_f w_f·Φ'_f, a potential head's prefix
    scores (a reward model without one contributes its own scores), for ops.token_rewards(potential=).

    unscorable bool [N_global] (every reward function returned None: TRL's NaN rows) is left out
    of every statistic and gets advantage 0; so does every completion whose group has fewer than
    two scorable completions under an estimator with a group baseline (TRL's rule).
    """
    estimator = check_estimator(estimator)
    options = op_options(estimator, eps, scale, baseline)
    mask = v.as_mask("response_mask", response_mask)
    B, T = mask.shape
    if not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"num_generations must be a positive int, got {num_generations!r}")
    if not isinstance(sparse, torch.Tensor) or list(sparse.shape) != [B]:
        got = getattr(sparse, "shape", sparse)
        raise ValueError(f"sparse must be a tensor [B] = [{B}] (B from response_mask), got {got}")
    if unscorable is not None and (
        not isinstance(unscorable, torch.Tensor) or unscorable.dim() != 1 or unscorable.numel() < row_offset + B
    ):
        raise ValueError(
            f"unscorable must be a bool tensor over the global batch (at least row_offset + B = {row_offset + B} "
            f"rows), got {getattr(unscorable, 'shape', unscorable)}"
        )
    rewards = ops.token_rewards(
        scores, mask, 1, logprobs=logprobs, ref_logprobs=ref_logprobs, kl_coef=kl_coef, kl_estimator=kl_estimator,
        first=first, beta_c=beta_c, backend=backend, potential=potential,
    )
    rewards = rewards + place_at_last(sparse.to(rewards.device), mask)

    base = OUTCOME_ESTIMATORS.get(estimator, estimator)
    if estimator in OUTCOME_ESTIMATORS:
        # The row's sum as its only reward, on its last generated token: with γ = 1 its reward-to-go
        # is that sum at every generated token, so the op returns the scalar advantage broadcast.
        r_adv = place_at_last(torch.where(mask, rewards, 0.0).sum(1), mask)
    else:
        r_adv = rewards

    n_global = B if unscorable is None else int(unscorable.numel())
    if unscorable is None:
        bad = torch.zeros(n_global, dtype=torch.bool, device=mask.device)
    else:
        bad = unscorable.to(mask.device)
    rows = torch.arange(n_global, device=mask.device)
    ids = rows // num_generations
    local = slice(row_offset, row_offset + B)
    keep = ~bad[local]
    index = ids[local]

    advantages = torch.zeros((B, T), dtype=torch.float32, device=mask.device)
    if group is not None or bool(keep.any()):
        advantages[keep] = ops.group_advantages(
            r_adv[keep], mask[keep], index[keep], base, group=group, backend=backend, **options,
        )
    if estimator in GROUP_BASELINE:
        scorable = torch.zeros(int(ids.max()) + 1 if n_global else 0, device=mask.device).index_add_(
            0, ids, (~bad).float()
        )
        lonely = scorable[index] < 2
        advantages[lonely] = 0.0
    return rewards, advantages
