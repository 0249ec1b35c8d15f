"""veRL 0.9 adapter: its GAE, KL penalty and reward conventions on `r3hf.ops`.

veRL's layout: `prompts` [B, P] (left-padded), `responses` [B, L] (right-padded), `input_ids` =
prompts ⊕ responses [B, P + L], `response_mask` [B, L] (1 for generated tokens, 0 for padding
and multi-turn observation tokens). Its conventions, which the functions here reproduce:

- GAE (`core_algos.compute_gae_advantage_return`): masked positions pass the next value and the
  running advantage through, and record that carried advantage (not 0); returns = advantages
  before whitening + values at every position; advantages are then whitened over mask == 1
  (unbiased variance, eps 1e-8) with every position transformed.
- KL (`core_algos.kl_penalty`): "kl"/"k1", "abs", "mse"/"k2", "low_var_kl"/"k3" (clamped to ±10).
- Rewards (`apply_kl_penalty`): token_level_rewards = token_level_scores − β·kl·response_mask.

Outputs are float32 (veRL keeps the input dtype); on fp32 inputs they equal veRL's.
"""

from __future__ import annotations

import importlib

import torch

from ... import ops
from ._estimators import ESTIMATORS as GROUP_ESTIMATORS
from ._estimators import warn_if_summing

__all__ = [
    "compute_gae_advantage_return",
    "kl_penalty",
    "token_level_scores",
    "token_level_rewards",
    "r3hf_advantage_estimator",
    "register",
    "unregister",
    "ESTIMATOR_NAME",
    "REWARD_MANAGER_NAME",
    "GROUP_ESTIMATORS",
    "warn_if_summing",
]

ESTIMATOR_NAME = "r3hf"
REWARD_MANAGER_NAME = "r3hf"  # `reward.reward_manager.name=r3hf` (source=register) after register()

# veRL's KL names -> (r3hf estimator, clamp). A trailing "+" (veRL's straight-through gradient
# variant) has the same value; rewards are computed without gradients, so it maps the same way.
_KL_NAMES = {
    "kl": ("k1", None),
    "k1": ("k1", None),
    "abs": ("abs", None),
    "mse": ("k2", None),
    "k2": ("k2", None),
    "low_var_kl": ("k3", 10.0),
    "k3": ("k3", 10.0),
}


def _scalar(name: str, x) -> float:
    # veRL annotates gamma/lam as tensors but passes floats; accept both.
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {list(x.shape)}")
        return float(x.item())
    return x


def compute_gae_advantage_return(token_level_rewards, values, response_mask, gamma=1.0, lam=1.0, *, backend="auto"):
    """veRL 0.9's `compute_gae_advantage_return` on r3hf.ops -> (advantages, returns), float32 [B, L].

    token_level_rewards, values, response_mask [B, L]. Advantages: GAE with masked positions
    carried (and recorded), then whitened over response_mask == 1 at every position. Returns:
    advantages before whitening + values, at every position. Raises ValueError if fewer than
    two positions are unmasked (veRL raises too).
    """
    gamma, lam = _scalar("gamma", gamma), _scalar("lam", lam)
    advantages, returns = ops.gae(
        token_level_rewards, values, response_mask, gamma, lam, carry_masked=True, backend=backend
    )
    advantages = ops.masked_whiten(advantages, response_mask, transform_masked=True, backend=backend)
    return advantages, returns


def _kl_name(kl_penalty: str) -> tuple[str, float | None]:
    base = kl_penalty[:-1] if isinstance(kl_penalty, str) and kl_penalty.endswith("+") else kl_penalty
    if base not in _KL_NAMES:
        raise ValueError(
            f"kl_penalty must be one of {sorted(_KL_NAMES)} (optionally with a trailing '+'), got {kl_penalty!r}"
        )
    return _KL_NAMES[base]


def kl_penalty(logprob, ref_logprob, kl_penalty="kl", *, backend="auto") -> torch.Tensor:
    """veRL's `core_algos.kl_penalty` values on r3hf.ops: [B, L] -> float32 [B, L].

    "kl"/"k1" = logprob − ref_logprob, "abs" = |·|, "mse"/"k2" = ½(·)², "low_var_kl"/"k3" =
    exp(−d) − 1 + d clamped to [−10, 10]. A trailing "+" gives the same values with k2's gradient
    (veRL's straight-through estimator); without it the gradient is the estimator's own.
    """
    estimator, clamp = _kl_name(kl_penalty)
    values = ops.kl_penalty(logprob, ref_logprob, estimator, clamp, backend=backend)
    needs_grad = torch.is_grad_enabled() and (logprob.requires_grad or ref_logprob.requires_grad)
    if kl_penalty.endswith("+") and estimator != "k2" and needs_grad:
        # veRL's straight-through estimator: the values of `estimator`, the gradient of k2.
        k2 = ops.kl_penalty(logprob, ref_logprob, "k2", backend=backend)
        values = k2 - k2.detach() + values.detach()
    return values


def token_level_scores(scores, response_mask, prompt_length, *, first="prompt", beta_c=1.0, backend="auto",
                       potential=None):
    """R3HF dense `token_level_scores` [B, L] from a reward model's prefix scores.

    scores [B, P + L]: the reward head read at every position of veRL's `input_ids` (e.g.
    `ops.prefix_scores(hidden_states, score.weight)`); prompt_length = P, the width of the
    left-padded `prompts` (or an int tensor [B] for other layouts). Token j gets
    scores[P + j] − scores[P + j − 1]; observation tokens (holes) get 0 and their score change is
    credited to the generated token before them; a row sums to its final score minus the
    prompt-only score (first="prompt") or 0 (first="zero"). beta_c < 1 mixes in veRL's sparse
    score at the last generated token. potential [B, P + L] (optional): a potential head's prefix
    scores on the same positions (`r3hf.models.PotentialHead`), the shaping Φ' of `ops.redistribute`.
    """
    return ops.redistribute(scores, response_mask, prompt_length, first=first, beta_c=beta_c, backend=backend,
                            potential=potential)


def token_level_rewards(
    scores, response_mask, prompt_length, old_log_probs=None, ref_log_prob=None, kl_coef=0.0, kl_penalty="kl", *,
    first="prompt", beta_c=1.0, backend="auto", potential=None,
) -> torch.Tensor:
    """`token_level_scores(...)` with veRL's `apply_kl_penalty` in one op -> float32 [B, L].

    Equals token_level_scores − kl_coef · kl_penalty(old_log_probs, ref_log_prob) · response_mask.
    potential: as in `token_level_scores`.
    """
    estimator, clamp = _kl_name(kl_penalty)
    return ops.token_rewards(
        scores, response_mask, prompt_length, logprobs=old_log_probs, ref_logprobs=ref_log_prob, kl_coef=kl_coef,
        kl_estimator=estimator, kl_clamp=clamp, first=first, beta_c=beta_c, backend=backend, potential=potential,
    )


def r3hf_advantage_estimator(token_level_rewards, response_mask, config=None, values=None, **unused):
    """The estimator `register()` adds to veRL's registry -> (advantages, returns).

    veRL 0.9 calls registered estimators with token_level_rewards, response_mask, config (its
    AlgoConfig: gamma, lam) and extras such as index; it passes no values, so without `values`
    this is critic-free (V = 0: advantages are the whitened (γλ)-discounted reward-to-go).
    With values it is exactly `compute_gae_advantage_return`.
    """
    gamma = getattr(config, "gamma", 1.0) if config is not None else 1.0
    lam = getattr(config, "lam", 1.0) if config is not None else 1.0
    if values is None:
        values = torch.zeros_like(token_level_rewards, dtype=torch.float32)
    return compute_gae_advantage_return(token_level_rewards, values, response_mask, gamma, lam)


_replaced_gae = None  # veRL's own compute_gae_advantage_return while replace_gae is in force


def _core_algos():
    try:
        return importlib.import_module("verl.trainer.ppo.core_algos")
    except ImportError:
        return None


def _reward_registry():
    """veRL 0.9's reward-loop manager registry (name -> class), or None where it does not import."""
    try:
        return importlib.import_module("verl.experimental.reward_loop.reward_manager.registry").REWARD_MANAGER
    except ImportError:
        return None


def register(name: str = ESTIMATOR_NAME, *, replace_gae: bool = False) -> bool:
    """Register r3hf with veRL (when importable) in this process; False when veRL is not installed.

    - Adds `r3hf_advantage_estimator` to veRL's registry under `name` (`register_adv_est`), for
      `algorithm.adv_estimator=<name>` (critic-free in stock veRL 0.9, see that function).
    - Adds the token-level group estimators `GROUP_ESTIMATORS` (r3hf_grpo, r3hf_rloo,
      r3hf_reinforce_pp, r3hf_reinforce_pp_baseline, r3hf_grpo_process; see
      r3hf/integrations/verl/_estimators.py) under their own names.
    - Adds `reward.R3HFRewardManager` to veRL's reward-manager registry as `REWARD_MANAGER_NAME`
      ("r3hf"), for `reward.reward_manager.name=r3hf` (the importlib route,
      `module.path=pkg://r3hf.integrations.verl.reward`, needs no registration).
    - replace_gae=True also points `core_algos.compute_gae_advantage_return` at this module's
      (same outputs, r3hf kernels): veRL 0.9's trainer calls that function directly for
      `adv_estimator=gae`, the PPO-with-critic path. `unregister()` restores veRL's.
    Registries are per process and veRL builds its trainer in a Ray actor: launch with
    `python -m r3hf.integrations.verl.main_ppo` (registers in the driver, the trainer's actor and
    every Ray worker) rather than calling this in the driver only. Idempotent.
    """
    global _replaced_gae
    core = _core_algos()
    if core is None:
        return False
    if core.ADV_ESTIMATOR_REGISTRY.get(name) is not r3hf_advantage_estimator:
        core.register_adv_est(name)(r3hf_advantage_estimator)
    for group_name, fn in GROUP_ESTIMATORS.items():
        if core.ADV_ESTIMATOR_REGISTRY.get(group_name) is not fn:
            core.register_adv_est(group_name)(fn)
    managers = _reward_registry()
    if managers is not None:
        from .reward import R3HFRewardManager

        if managers.get(REWARD_MANAGER_NAME, R3HFRewardManager) is not R3HFRewardManager:
            raise ValueError(
                f"veRL's reward manager {REWARD_MANAGER_NAME!r} is already registered as "
                f"{managers[REWARD_MANAGER_NAME]!r}, not r3hf's R3HFRewardManager"
            )
        managers[REWARD_MANAGER_NAME] = R3HFRewardManager
    if replace_gae and core.compute_gae_advantage_return is not compute_gae_advantage_return:
        _replaced_gae = core.compute_gae_advantage_return
        core.compute_gae_advantage_return = compute_gae_advantage_return
    return True


def unregister(name: str = ESTIMATOR_NAME) -> None:
    """Undo `register()`: remove the estimators and the reward manager, restore veRL's GAE function."""
    global _replaced_gae
    core = _core_algos()
    if core is None:
        return
    if core.ADV_ESTIMATOR_REGISTRY.get(name) is r3hf_advantage_estimator:
        del core.ADV_ESTIMATOR_REGISTRY[name]
    for group_name, fn in GROUP_ESTIMATORS.items():
        if core.ADV_ESTIMATOR_REGISTRY.get(group_name) is fn:
            del core.ADV_ESTIMATOR_REGISTRY[group_name]
    managers = _reward_registry()
    if managers is not None and REWARD_MANAGER_NAME in managers:
        from .reward import R3HFRewardManager

        if managers[REWARD_MANAGER_NAME] is R3HFRewardManager:
            del managers[REWARD_MANAGER_NAME]
    if _replaced_gae is not None:
        core.compute_gae_advantage_return = _replaced_gae
        _replaced_gae = None
