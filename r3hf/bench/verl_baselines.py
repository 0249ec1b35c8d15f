"""veRL 0.9.1's own advantage estimators, imported from the installed veRL: the baselines of the
group-advantage benchmarks (issue 12). Unlike `baselines.py`, nothing here is re-written: the
point is to time what veRL users run. Without veRL the cases are skipped with the reason."""

from __future__ import annotations

import types

import numpy as np
import torch

# r3hf estimator -> the veRL 0.9.1 function of the same family (equal on sparse rewards)
VERL_FUNCTIONS = {
    "grpo": "compute_grpo_outcome_advantage",
    "rloo": "compute_rloo_outcome_advantage",
    "reinforce_pp": "compute_reinforce_plus_plus_outcome_advantage",
    "reinforce_pp_baseline": "compute_reinforce_plus_plus_baseline_outcome_advantage",
}


def unavailable_reason() -> str | None:
    """None when veRL's core_algos imports, else why not."""
    try:
        import verl.trainer.ppo.core_algos  # noqa: F401
    except Exception as e:  # ImportError, or a missing dependency of veRL
        return f"veRL not importable ({type(e).__name__}: {e}); install it with `bash .ci/steps/40-verl.sh`"
    return None


def version() -> str:
    import verl

    return getattr(verl, "__version__", "?")


def estimator(name: str, rewards: torch.Tensor, mask: torch.Tensor, index: torch.Tensor, gamma: float = 1.0):
    """A zero-argument call of veRL's estimator `name` on these inputs, passed as veRL receives
    them in its trainer: token_level_rewards [B, L], response_mask as numbers (its REINFORCE++
    loop computes 1 − mask), index a numpy array of uids."""
    from verl.trainer.ppo import core_algos

    fn = getattr(core_algos, VERL_FUNCTIONS[name])
    mask_f = mask.to(rewards.dtype)
    uid = np.asarray(index.cpu().numpy())
    if name == "reinforce_pp":
        config = types.SimpleNamespace(gamma=gamma)
        return lambda: fn(token_level_rewards=rewards, response_mask=mask_f, config=config)
    return lambda: fn(token_level_rewards=rewards, response_mask=mask_f, index=uid)
