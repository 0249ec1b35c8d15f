"""r3hf's token-level group estimators in veRL 0.9's advantage-estimator registry.

veRL's outcome estimators (grpo, rloo, reinforce_plus_plus_baseline, opo, gpg, ...) first sum
each row's `token_level_rewards` to one number, so dense R3HF rewards give them exactly the
advantages sparse rewards give (docs/group.md). The estimators here keep the reward-to-go at
the token level, computed by `ops.group_advantages` / `ops.reward_to_go`:

| veRL name                    | r3hf op                                   | returns (as veRL's family)      |
|------------------------------|-------------------------------------------|---------------------------------|
| r3hf_grpo                    | group_advantages("grpo")                  | the advantages                  |
| r3hf_rloo                    | group_advantages("rloo")                  | the advantages                  |
| r3hf_reinforce_pp            | group_advantages("reinforce_pp")          | reward_to_go(holes="skip")      |
| r3hf_reinforce_pp_baseline   | group_advantages("reinforce_pp_baseline") | the advantages                  |
| r3hf_grpo_process            | group_advantages("grpo_process")          | the advantages                  |
| r3hf_grpo_position           | group_advantages("grpo", baseline="position")                  | the advantages |
| r3hf_rloo_position           | group_advantages("rloo", baseline="position")                  | the advantages |
| r3hf_reinforce_pp_baseline_position | group_advantages("reinforce_pp_baseline", baseline="position") | the advantages |

The per-position baseline (docs/group.md) is chosen by the estimator NAME, not a config key:
`algorithm.adv_estimator=r3hf_rloo_position`. veRL validates that name itself (an unknown one
raises in `get_adv_estimator_fn`), and it works with Hydra's DictConfig and the frozen AlgoConfig
dataclass alike (which has no room for an extra key). The `_position` names exist for the three
estimators that have a group baseline of the return; r3hf_reinforce_pp and r3hf_grpo_process have
none. Called directly, every estimator also takes `baseline="row" | "position"` as a keyword; a
config that sets `r3hf_baseline` is refused with a pointer to the names (never ignored).

What they read, as veRL passes it to registered estimators (`ray_trainer.compute_advantage`):
token_level_rewards and response_mask [B, L]; `index` = the `uid` column (a numpy array of ids,
any hashable values, rows with equal ids form a group); `config` = veRL's AlgoConfig, of which
`gamma` (every estimator: it discounts the token-level return) and `norm_adv_by_std_in_grpo`
(r3hf_grpo, r3hf_grpo_process: False is Dr. GRPO, no division by the std). veRL passes no
`norm_adv_by_std_in_grpo` or `epsilon` to registered estimators, so both are read from config
or taken as keyword arguments when called directly. The epsilons are veRL's: 1e-6 for the group
std, 1e-8 inside masked_whiten (reinforce_pp, reinforce_pp_baseline).

One translation: veRL's reward managers put the score at `valid_response_length − 1`, the last
attended token, which in a multi-turn row can be an observation token (response_mask 0). veRL's
summing estimators still count it; r3hf's ops read rewards at generated tokens only. So a
reward found at a masked position is credited to the generated token before it (after it, for
masked positions before the first generated token): row sums, and so every summing estimator,
are unchanged, and the token-level return of every generated token includes it. (veRL's own
reinforce_plus_plus drops such a reward; r3hf_reinforce_pp keeps it.)
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ... import ops

NAMES = ("r3hf_grpo", "r3hf_rloo", "r3hf_reinforce_pp", "r3hf_reinforce_pp_baseline", "r3hf_grpo_process",
         "r3hf_grpo_position", "r3hf_rloo_position", "r3hf_reinforce_pp_baseline_position")

# veRL estimators that sum each row's rewards first -> the r3hf estimator to use with dense rewards.
SUMMING = {
    "grpo": "r3hf_grpo",
    "grpo_vectorized": "r3hf_grpo",
    "grpo_passk": "r3hf_grpo",
    "gdpo": "r3hf_grpo",
    "gpg": "r3hf_grpo",
    "opo": "r3hf_rloo",
    "rloo": "r3hf_rloo",
    "rloo_vectorized": "r3hf_rloo",
    "reinforce_plus_plus_baseline": "r3hf_reinforce_pp_baseline",
}

GROUP_EPS = 1e-6  # veRL's `epsilon` for the group std
WHITEN_EPS = 1e-8  # veRL's verl_F.masked_whiten: rsqrt(var + 1e-8)

_warned: set = set()


def warn_if_summing(adv_estimator) -> bool:
    """Warn once per name when dense rewards meet a veRL estimator that sums them away.

    adv_estimator: veRL's `algorithm.adv_estimator` (a str or AdvantageEstimator). Returns True
    when it is one of veRL's summing estimators (grpo, rloo, reinforce_plus_plus_baseline, opo,
    gpg, grpo_passk, gdpo and the vectorized variants).
    """
    name = getattr(adv_estimator, "value", adv_estimator)
    if name not in SUMMING:
        return False
    if name not in _warned:
        _warned.add(name)
        warnings.warn(
            f"dense (R3HF) rewards with algorithm.adv_estimator={name!r}: veRL's {name} sums each row's "
            f"token_level_rewards first, so the dense rewards give exactly the advantages of sparse ones. "
            f"Use algorithm.adv_estimator={SUMMING[name]}_position (the per-position baseline, which is what "
            f"helps with dense rewards: docs/group.md) or {SUMMING[name]} (the row baseline), after "
            "r3hf.integrations.verl.register(), to keep them at the token level.",
            UserWarning,
            stacklevel=2,
        )
    return True


def group_ids(index, B: int, device) -> torch.Tensor:
    """veRL's `uid` column (numpy array or list of hashable ids, or an int tensor) -> int64 [B]."""
    if index is None:
        raise ValueError(
            "index is None: veRL passes the `uid` column as index; the batch has no 'uid' in non_tensor_batch"
        )
    if isinstance(index, torch.Tensor):
        if index.dim() != 1 or index.shape[0] != B or index.is_floating_point():
            raise ValueError(f"index must be an integer tensor [B] = [{B}], got {index.dtype} {list(index.shape)}")
        return index.to(device=device, dtype=torch.int64)
    values = np.asarray(index, dtype=object) if not isinstance(index, np.ndarray) else index
    if values.ndim != 1 or values.shape[0] != B:
        raise ValueError(f"index must have one id per row, [B] = [{B}], got shape {list(values.shape)}")
    lookup: dict = {}
    ids = [lookup.setdefault(v, len(lookup)) for v in values.tolist()]
    return torch.tensor(ids, dtype=torch.int64, device=device)


def _generated_rewards(token_level_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Move rewards at masked positions onto the nearest generated token before them (after them
    before a row's first generated token). Indexing only; a new tensor, input untouched."""
    B, L = mask.shape
    r = token_level_rewards.float()
    stray = (~mask) & (r != 0)
    if not bool(stray.any()):
        return r
    pos = torch.arange(L, device=mask.device).expand(B, L)
    before = torch.where(mask, pos, torch.full_like(pos, -1)).cummax(1).values
    after = torch.where(mask, pos, torch.full_like(pos, L)).flip(1).cummin(1).values.flip(1)
    target = torch.where(before >= 0, before, after)
    lost = stray & (target >= L)  # a row without any generated token
    if bool(lost.any()):
        rows = sorted(set(lost.nonzero()[:, 0].tolist()))
        warnings.warn(
            f"token_level_rewards has nonzero rewards in rows {rows[:8]} that have no generated token "
            "(response_mask all 0): r3hf's group estimators count them as 0",
            UserWarning,
            stacklevel=3,
        )
    target = target.clamp_max(L - 1)
    moved = torch.where(stray & ~lost, r, 0.0)
    kept = torch.where(stray, 0.0, r)
    return kept.scatter_add(1, target, moved)


def _config_value(config, key: str, default):
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    getter = getattr(config, "get", None)
    if callable(getter):  # AlgoConfig and DictConfig both have .get
        value = getter(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None else value


def _check_config_baseline(config) -> None:
    # The baseline is chosen by estimator name; a config key for it would be read by nothing.
    if _config_value(config, "r3hf_baseline", None) is not None:
        raise ValueError(
            f"algorithm.r3hf_baseline={_config_value(config, 'r3hf_baseline', None)!r} is not read: r3hf chooses the "
            "baseline by estimator name. Use algorithm.adv_estimator=r3hf_rloo_position (or r3hf_grpo_position, "
            "r3hf_reinforce_pp_baseline_position) for the per-position baseline, the plain names for the row baseline"
        )


def _inputs(token_level_rewards, response_mask, index, config, needs_index=True):
    _check_config_baseline(config)
    if not isinstance(token_level_rewards, torch.Tensor) or token_level_rewards.dim() != 2:
        raise ValueError(
            f"token_level_rewards must be a [B, L] tensor, got {getattr(token_level_rewards, 'shape', type(token_level_rewards).__name__)}"
        )
    if not isinstance(response_mask, torch.Tensor) or response_mask.shape != token_level_rewards.shape:
        raise ValueError(
            f"response_mask must be [B, L] = {list(token_level_rewards.shape)}, "
            f"got {getattr(response_mask, 'shape', type(response_mask).__name__)}"
        )
    mask = response_mask if response_mask.dtype == torch.bool else response_mask != 0
    B = token_level_rewards.shape[0]
    ids = group_ids(index, B, token_level_rewards.device) if needs_index else None
    gamma = float(_config_value(config, "gamma", 1.0))
    return _generated_rewards(token_level_rewards, mask), mask, ids, gamma


def _norm_by_std(config, norm_adv_by_std_in_grpo):
    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = _config_value(config, "norm_adv_by_std_in_grpo", True)
    return "group" if norm_adv_by_std_in_grpo else "none"


def r3hf_grpo(token_level_rewards, response_mask, index=None, epsilon=GROUP_EPS, norm_adv_by_std_in_grpo=None,
              config=None, baseline="row", **unused):
    """GRPO at the token level -> (advantages, returns = advantages), float32 [B, L].

    m·(G − mean_g s)/(std_g s + epsilon), G the γ-discounted reward-to-go (config.gamma), s the
    row sums; norm_adv_by_std_in_grpo False (or config's) drops the division. Sparse rewards at
    γ = 1: veRL's compute_grpo_outcome_advantage. baseline: the op's "row" | "position".
    """
    r, m, ids, gamma = _inputs(token_level_rewards, response_mask, index, config)
    adv = ops.group_advantages(r, m, ids, "grpo", gamma=gamma, eps=epsilon,
                               scale=_norm_by_std(config, norm_adv_by_std_in_grpo), baseline=baseline)
    return adv, adv


def r3hf_rloo(token_level_rewards, response_mask, index=None, epsilon=GROUP_EPS, config=None, baseline="row",
              **unused):
    """RLOO at the token level -> (advantages, returns = advantages), float32 [B, L].

    m·(G − mean of the other rows' sums); a singleton keeps its return. Sparse rewards at γ = 1:
    veRL's compute_rloo_outcome_advantage. baseline: the op's "row" | "position".
    """
    r, m, ids, gamma = _inputs(token_level_rewards, response_mask, index, config)
    adv = ops.group_advantages(r, m, ids, "rloo", gamma=gamma, eps=epsilon, baseline=baseline)
    return adv, adv


def r3hf_reinforce_pp(token_level_rewards, response_mask, config=None, index=None, baseline="row", **unused):
    """REINFORCE++ -> (advantages, returns), float32 [B, L]: veRL's reinforce_plus_plus.

    returns = the γ-discounted reward-to-go with observation spans skipped (0 where masked);
    advantages = returns whitened over the batch's generated tokens (unbiased, eps 1e-8), 0
    where masked. No groups (index unused).
    """
    r, m, _, gamma = _inputs(token_level_rewards, response_mask, index, config, needs_index=False)
    ids = torch.zeros(r.shape[0], dtype=torch.int64, device=r.device)
    # baseline goes to the op, which refuses "position" here (no group baseline to make per position)
    adv = ops.group_advantages(r, m, ids, "reinforce_pp", gamma=gamma, eps=WHITEN_EPS, baseline=baseline)
    returns = ops.reward_to_go(r, m, gamma, holes="skip")
    return adv, returns


def r3hf_reinforce_pp_baseline(token_level_rewards, response_mask, index=None, epsilon=GROUP_EPS, config=None,
                               baseline="row", **unused):
    """REINFORCE++ with the group-mean baseline at the token level -> (advantages, returns =
    advantages), float32 [B, L]: G − mean_g s, whitened over the batch (unbiased, eps 1e-8).
    Sparse rewards at γ = 1: veRL's compute_reinforce_plus_plus_baseline_outcome_advantage.
    (`epsilon` is accepted for veRL's signature; veRL does not use it either.) baseline: the op's
    "row" | "position".
    """
    r, m, ids, gamma = _inputs(token_level_rewards, response_mask, index, config)
    adv = ops.group_advantages(r, m, ids, "reinforce_pp_baseline", gamma=gamma, eps=WHITEN_EPS, baseline=baseline)
    return adv, adv


def r3hf_grpo_process(token_level_rewards, response_mask, index=None, epsilon=GROUP_EPS,
                      norm_adv_by_std_in_grpo=None, config=None, baseline="row", **unused):
    """DeepSeekMath process-supervised GRPO, every generated token a step -> (advantages, returns
    = advantages), float32 [B, L]: rewards normalised over the group's generated tokens, then
    their γ-discounted reward-to-go. No veRL counterpart.
    """
    r, m, ids, gamma = _inputs(token_level_rewards, response_mask, index, config)
    adv = ops.group_advantages(r, m, ids, "grpo_process", gamma=gamma, eps=epsilon,
                               scale=_norm_by_std(config, norm_adv_by_std_in_grpo), baseline=baseline)
    return adv, adv


def _refuse_baseline(kwargs, name):
    if "baseline" in kwargs:
        raise TypeError(f"{name} sets its baseline by name ('position'); it takes no baseline= argument, "
                        f"got baseline={kwargs['baseline']!r}")


def r3hf_grpo_position(token_level_rewards, response_mask, index=None, epsilon=GROUP_EPS, norm_adv_by_std_in_grpo=None,
                       config=None, **unused):
    """r3hf_grpo with baseline="position": per-position group mean (and std) of the reward-to-go."""
    _refuse_baseline(unused, "r3hf_grpo_position")
    return r3hf_grpo(token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo, config,
                     baseline="position")


def r3hf_rloo_position(token_level_rewards, response_mask, index=None, epsilon=GROUP_EPS, config=None, **unused):
    """r3hf_rloo with baseline="position": m·(G_t − mean of the other rows' G at the same position)."""
    _refuse_baseline(unused, "r3hf_rloo_position")
    return r3hf_rloo(token_level_rewards, response_mask, index, epsilon, config, baseline="position")


def r3hf_reinforce_pp_baseline_position(token_level_rewards, response_mask, index=None, epsilon=GROUP_EPS, config=None,
                                        **unused):
    """r3hf_reinforce_pp_baseline with baseline="position": G − per-position group mean, whitened."""
    _refuse_baseline(unused, "r3hf_reinforce_pp_baseline_position")
    return r3hf_reinforce_pp_baseline(token_level_rewards, response_mask, index, epsilon, config, baseline="position")


ESTIMATORS = {
    "r3hf_grpo": r3hf_grpo,
    "r3hf_rloo": r3hf_rloo,
    "r3hf_reinforce_pp": r3hf_reinforce_pp,
    "r3hf_reinforce_pp_baseline": r3hf_reinforce_pp_baseline,
    "r3hf_grpo_process": r3hf_grpo_process,
    "r3hf_grpo_position": r3hf_grpo_position,
    "r3hf_rloo_position": r3hf_rloo_position,
    "r3hf_reinforce_pp_baseline_position": r3hf_reinforce_pp_baseline_position,
}
