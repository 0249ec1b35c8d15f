"""OpenRLHF 0.11's `compute_advantages_and_returns` on r3hf.ops, with dense R3HF rewards that keep
each estimator's group baseline at the token level.

OpenRLHF 0.11 (trainer/ppo_utils/experience_maker.py), per estimator, from the scalar rewards r
(one per sample, groups = n_samples_per_prompt consecutive sample indices):
- rloo: r − (group sum − r)/(n − 1); reinforce_baseline, dr_grpo: r − group mean;
  group_norm: (r − group mean)/(unbiased group std + 1e-9); gae, reinforce: r unchanged;
- `compute_reward`: r clamped to reward.clip_range, put on the last action token, − kl_coef·KL;
- gae: `get_advantages_and_returns`; the others: `get_cumulative_returns` (rewards × action_mask,
  then a γ-discounted reverse sum over every position; γ forced to 1 for the group estimators),
  advantages = returns;
- gae, reinforce, reinforce_baseline: advantages normalised over every action token of all
  experiences (biased variance, rsqrt(max(var, 1e-8)), every position transformed).

Sparse (no prefix scores) this reproduces those numbers at every position: the baseline comes from
`ops.group_advantages` on the [B, 1] scores, the returns from `ops.reward_to_go`.

Dense (prefix scores [B, A + 1]): the score part of the rewards is R3HF's token rewards r̃, and the
baseline stays at the token level: A_t = c_i·(G̃_t − b_i) + K_t with G̃ the reward-to-go of r̃
(`ops.group_advantages`: rloo → "rloo", reinforce_baseline and dr_grpo → "grpo" with scale "none",
group_norm → "grpo" with eps 1e-9) and K_t the reward-to-go of the KL term, which OpenRLHF never
baselines. Where OpenRLHF's returns are not 0 at masked positions (leading prompt positions and
observation holes carry the return), so are these: the ops run over the positions up to each
row's last action token, with the rewards zeroed off the action tokens first (OpenRLHF's hole
rule, γ-discounted through holes). The scalar reward still counts: r − (final prefix score) is
added on the last action token, so length penalties, rule-based rewards or a different final
reward are kept and a row's rewards sum to r − (prompt-only score) (potential-based shaping of
r with the prefix scores as potential). With r equal to the RM's final score that residual is 0.
reward.clip_range bounds each token's reward-model part (as in `compute_dense_reward`), not the
residual; info["return"] sums the dense rewards and the KL term (no baseline: it is per token).

baseline="position" (keyword, the group estimators only; default "row"): b is the group's
reward-to-go at the same action-token position (`ops.group_advantages(..., baseline="position")`,
leave-one-out for rloo, docs/group.md) instead of the group's row sums. Positions count action
tokens (the k-th action token of each sample lines up, whatever its prompt or observation spans),
so the op runs over the action mask and the baseline part is 0 off the action tokens (only the KL
return is carried there; the loss masks them). Sparse, both baselines give the same numbers.
"""

from __future__ import annotations

import functools
import re
import warnings

import torch

from ... import _validate as v
from ... import ops
from ._rewards import (
    ESTIMATORS,
    as_mask,
    check_estimator,
    compute_dense_reward,
    compute_reward,
    get_advantages_and_returns,
    kl_reward,
    normalize_advantages,
)

GROUP_ESTIMATORS = ("rloo", "reinforce_baseline", "group_norm", "dr_grpo")
NORMALISED = ("gae", "reinforce", "reinforce_baseline")
# OpenRLHF estimator -> ops.group_advantages(estimator, eps, scale)
_GROUP_OP = {
    "rloo": ("rloo", 1e-6, "group"),
    "reinforce_baseline": ("grpo", 1e-6, "none"),
    "dr_grpo": ("grpo", 1e-6, "none"),
    "group_norm": ("grpo", 1e-9, "group"),
}


def check_baseline(estimator: str, baseline) -> str:
    """baseline "row" | "position"; "position" only for the group estimators (gae and reinforce have
    no group baseline to make per position): refused there, never ignored."""
    if not isinstance(baseline, str) or baseline not in v.GROUP_BASELINES:
        raise ValueError(f"baseline must be one of {list(v.GROUP_BASELINES)}, got {baseline!r}")
    if baseline == "position" and estimator not in GROUP_ESTIMATORS:
        raise ValueError(f"baseline='position' needs a group estimator ({', '.join(GROUP_ESTIMATORS)}), got "
                         f"advantage_estimator={estimator!r}, which has no group baseline")
    return baseline


def _up_to_last_action(m: torch.Tensor) -> torch.Tensor:
    """bool [B, A]: positions at or before each row's last action token (OpenRLHF's returns are
    carried there; after it they are 0)."""
    return m.flip(1).to(torch.int8).cummax(1).values.flip(1).bool()


def _last_action(m: torch.Tensor) -> torch.Tensor:
    A = m.shape[1]
    return A - 1 - m.flip(1).to(torch.int64).argmax(1)


def _returns(rewards: torch.Tensor, m: torch.Tensor, gamma: float) -> torch.Tensor:
    """OpenRLHF's get_cumulative_returns: rewards × mask, γ-discounted reverse sum, every position."""
    span = _up_to_last_action(m)
    return ops.reward_to_go(torch.where(m, rewards.float(), 0.0), span, gamma, holes="discount")


def _index(index, B: int, device) -> torch.Tensor:
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.shape[0] != B or index.is_floating_point():
        raise ValueError(
            f"index must be an integer tensor [B] = [{B}] of group ids (OpenRLHF: sample index // "
            f"n_samples_per_prompt), got {getattr(index, 'dtype', type(index).__name__)} {list(getattr(index, 'shape', []))}"
        )
    return index.to(device=device, dtype=torch.int64)


def _check_groups(ids: torch.Tensor, estimator: str) -> None:
    counts = torch.bincount(ids - ids.min())
    if bool(((counts > 0) & (counts < 2)).any()):
        raise ValueError(
            f"advantage_estimator={estimator!r} needs at least 2 samples per prompt (a group baseline); "
            "OpenRLHF divides by n − 1 (rloo) or by a one-sample std (group_norm) and returns NaN, or a zero "
            "reward (reinforce_baseline, dr_grpo)"
        )


def advantages_and_returns(
    advantage_estimator, rewards, kl, action_mask, *, kl_coef, index=None, values=None, gamma=1.0, lambd=1.0,
    reward_clip_range=None, prefix_scores=None, first="prompt", beta_c=1.0, baseline="row", potential=None,
):
    """One batch in OpenRLHF's layout -> (advantages, returns, token_rewards), float32 [B, A].

    rewards [B] (the scalar reward per sample, after length penalties), kl and action_mask
    [B, A], index int64 [B] group ids (group estimators), values [B, A] (gae). prefix_scores
    [B, A + 1] (the reward model's value at every sequence position) switches to dense R3HF
    rewards; potential [B, A + 1] (with prefix_scores) a potential head's values there, the shaping
    Φ' (`compute_dense_reward`). baseline: "row" (OpenRLHF's) or "position" (group estimators, see the module doc).
    Advantages are not yet normalised (see `normalize_advantages`); token_rewards is what OpenRLHF
    sums into info["return"].
    """
    estimator = check_estimator(advantage_estimator)
    baseline = check_baseline(estimator, baseline)
    if not isinstance(kl, torch.Tensor) or kl.dim() != 2:
        raise ValueError(f"kl must be a [B, A] tensor, got {getattr(kl, 'shape', type(kl).__name__)}")
    B, A = kl.shape
    m = as_mask(action_mask, kl)
    if not isinstance(rewards, torch.Tensor) or rewards.shape != (B,):
        raise ValueError(f"rewards must be a [B] = [{B}] tensor, got {getattr(rewards, 'shape', type(rewards).__name__)}")
    if estimator in GROUP_ESTIMATORS:
        ids = _index(index, B, kl.device)
        _check_groups(ids, estimator)
        if gamma != 1.0:
            warnings.warn(f"gamma is set to 1.0 for {estimator}, as OpenRLHF does", UserWarning, stacklevel=3)
            gamma = 1.0
    if estimator == "gae" and values is None:
        raise ValueError("advantage_estimator='gae' needs values [B, A] (the critic's)")

    if potential is not None and prefix_scores is None:
        raise ValueError("potential shapes dense rewards: it needs prefix_scores [B, A + 1] (prefix_values)")
    if prefix_scores is None:
        r = rewards.float()
        if estimator in GROUP_ESTIMATORS:
            op, eps, scale = _GROUP_OP[estimator]
            r = ops.group_advantages(r[:, None], torch.ones(B, 1, dtype=torch.bool, device=r.device), ids, op,
                                     eps=eps, scale=scale, baseline=baseline)[:, 0]
        reward = compute_reward(r, kl_coef, kl, action_mask=m, reward_clip_range=reward_clip_range)
        if estimator == "gae":
            adv, ret = get_advantages_and_returns(values, reward, m, gamma, lambd)
            return adv, ret, reward
        ret = _returns(reward, m, gamma)
        return ret, ret.clone(), reward

    # Dense: score part r̃ (0 off the action tokens) + the scalar reward's residual on the last action.
    zero_kl = torch.zeros_like(kl, dtype=torch.float32)
    dense = compute_dense_reward(prefix_scores, 0.0, zero_kl, m, reward_clip_range, first=first, beta_c=beta_c,
                                 advantage_estimator="gae", potential=potential)
    has_action = m.any(1)
    if estimator in GROUP_ESTIMATORS and not bool(has_action.all()):
        rows = (~has_action).nonzero().flatten().tolist()
        raise ValueError(f"rows {rows[:8]} have no action token: no position to carry their dense rewards or "
                         "group baseline (OpenRLHF never produces such samples)")
    last = _last_action(m)
    final = prefix_scores.float().gather(1, (last + 1)[:, None]).squeeze(1)
    residual = torch.where(has_action, rewards.float() - final, 0.0)
    score = dense.scatter_add(1, last[:, None], residual[:, None])
    kl_term = kl_reward(kl_coef, kl)
    token_rewards = score + kl_term
    if estimator == "gae":
        adv, ret = get_advantages_and_returns(values, token_rewards, m, gamma, lambd)
        return adv, ret, token_rewards
    if estimator == "reinforce":
        ret = _returns(token_rewards, m, gamma)
        return ret, ret.clone(), token_rewards
    op, eps, scale = _GROUP_OP[estimator]
    # "row": over every position up to the last action (OpenRLHF carries returns through holes);
    # "position": over the action tokens, so that positions count action tokens.
    span = _up_to_last_action(m) if baseline == "row" else m
    ret = ops.group_advantages(score, span, ids, op, gamma=1.0, eps=eps, scale=scale, baseline=baseline)
    ret = ret + _returns(kl_term, m, 1.0)
    return ret, ret.clone(), token_rewards


def _get(obj, path: str, default=None):
    for key in path.split("."):
        if obj is None:
            return default
        obj = obj.get(key, None) if isinstance(obj, dict) else getattr(obj, key, None)
    return default if obj is None else obj


@functools.lru_cache(maxsize=None)
def _version(dist: str = "openrlhf") -> tuple[int, ...] | None:
    """The installed OpenRLHF's (major, minor, patch), None when it is not installed."""
    from importlib import metadata

    try:
        text = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
    parts = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(p or 0) for p in parts.groups()) if parts else None


def upcasts_rewards(version: tuple[int, ...] | None = None) -> bool:
    """Whether OpenRLHF (`version`, default: the installed one) casts each experience's rewards to at
    least float32 before its length penalties and group statistics: 0.11.2 does, 0.11.0 and
    0.11.1 penalise in the rewards' own dtype (bfloat16 from a bf16 reward model). Not installed:
    True (r3hf computes in float32)."""
    version = _version() if version is None else version
    return version is None or version >= (0, 11, 2)


def _upcast(experiences) -> None:
    # OpenRLHF >= 0.11.2: "Use at least FP32 for reward penalties and group statistics".
    for e in experiences:
        e.rewards = e.rewards.to(torch.promote_types(e.rewards.dtype, torch.float32))


def _length_penalties(experiences, args) -> None:
    wanted = _get(args, "reward.overlong_buffer_len") is not None or _get(args, "reward.stop_properly_penalty_coef") is not None
    if not wanted:
        return
    try:
        from openrlhf.trainer.ppo_utils.length_penalty import apply_length_penalties
    except ImportError as e:  # the options are set: never drop them silently
        raise ImportError(
            "args.reward sets a length penalty (overlong_buffer_len / stop_properly_penalty_coef), applied by "
            "OpenRLHF's own apply_length_penalties, which could not be imported"
        ) from e
    apply_length_penalties(experiences, args)


def _pad_cat(tensors, width: int, fill=0):
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill) for t in tensors], dim=0)


def compute_advantages_and_returns(experiences, args, kl_coef, *, prefix_scores=None, first="prompt", beta_c=1.0,
                                   baseline="row", length_penalties=True, potential=None):
    """Drop-in for OpenRLHF 0.11's `RemoteExperienceMaker.compute_advantages_and_returns`.

    experiences: OpenRLHF `Experience`s (uses .index, .rewards [b], .kl, .action_mask [b, A_e],
    .values for gae, .info); args: OpenRLHF's args (algo.advantage.estimator / gamma / lambd /
    no_std_norm, rollout.n_samples_per_prompt, reward.clip_range); kl_coef: `self.kl_ctl.value`.
    prefix_scores: None (OpenRLHF's sparse numbers) or, per experience, the reward model's value
    at every sequence position [b, A_e + 1] (`prefix_values`) for dense R3HF rewards.
    baseline: "row" (OpenRLHF's group baseline) or "position" (the group estimators' per-position
    baseline, docs/group.md; what helps with dense rewards). potential: None or, per experience,
    a potential head's values [b, A_e + 1] from the same forward (`prefix_values(..., potential=)`).
    Sets advantages, returns, info["return"] (and info["group_reward_std"] when
    n_samples_per_prompt > 1), kl = None, as OpenRLHF does; returns the experiences.
    Length penalties are OpenRLHF's own `apply_length_penalties`, run first when args set them,
    in the dtype the installed OpenRLHF uses (`upcasts_rewards`: 0.11.2 casts the rewards to
    float32 first and leaves them so on the experiences; 0.11.0/0.11.1 penalise bf16 in bf16).
    """
    estimator = check_estimator(_get(args, "algo.advantage.estimator"))
    baseline = check_baseline(estimator, baseline)
    n = int(_get(args, "rollout.n_samples_per_prompt", 1))
    if estimator in NORMALISED and _get(args, "algo.advantage.no_std_norm", False):
        raise NotImplementedError(
            "algo.advantage.no_std_norm=True (mean subtraction without scaling) needs an ops.masked_whiten option "
            "that r3hf does not have yet"
        )
    if prefix_scores is not None and len(prefix_scores) != len(experiences):
        raise ValueError(f"prefix_scores must have one tensor per experience ({len(experiences)}), got {len(prefix_scores)}")
    if upcasts_rewards():
        _upcast(experiences)
    if length_penalties:
        _length_penalties(experiences, args)

    sizes = [len(e.index) for e in experiences]
    widths = [e.action_mask.shape[1] for e in experiences]
    W = max(widths)
    mask = _pad_cat([e.action_mask.bool() for e in experiences], W, False)
    kl = _pad_cat([e.kl.float() for e in experiences], W, 0.0)
    rewards = torch.cat([e.rewards.float().reshape(-1) for e in experiences])
    sample = torch.tensor([i for e in experiences for i in e.index], dtype=torch.int64, device=kl.device)
    values = _pad_cat([e.values.float() for e in experiences], W, 0.0) if estimator == "gae" else None
    scores = None
    if prefix_scores is not None:
        for k, (s, w) in enumerate(zip(prefix_scores, widths)):
            if not isinstance(s, torch.Tensor) or s.dim() != 2 or s.shape[1] != w + 1 or s.shape[0] != sizes[k]:
                raise ValueError(f"prefix_scores[{k}] must be [b, A + 1] = [{sizes[k]}, {w + 1}], got "
                                 f"{getattr(s, 'shape', type(s).__name__)}")
        scores = _pad_cat([s.float() for s in prefix_scores], W + 1, 0.0)
    phi = None
    if potential is not None:
        if prefix_scores is None:
            raise ValueError("potential shapes dense rewards: it needs prefix_scores (prefix_values, per experience)")
        if len(potential) != len(experiences):
            raise ValueError(f"potential must have one tensor per experience ({len(experiences)}), got {len(potential)}")
        for k, (s, w) in enumerate(zip(potential, widths)):
            if not isinstance(s, torch.Tensor) or list(s.shape) != [sizes[k], w + 1]:
                raise ValueError(f"potential[{k}] must be [b, A + 1] = [{sizes[k]}, {w + 1}] like prefix_scores[{k}], "
                                 f"got {getattr(s, 'shape', type(s).__name__)}")
        phi = _pad_cat([s.float() for s in potential], W + 1, 0.0)

    if n > 1:  # logging, as OpenRLHF: the std of the (penalised) scalar rewards of each prompt's group
        ordered = torch.empty_like(rewards)
        ordered[sample] = rewards
        group_std = ordered.reshape(-1, n).std(-1, keepdim=True).repeat(1, n).reshape(-1)[sample]
        for e, std in zip(experiences, group_std.split(sizes)):
            e.info["group_reward_std"] = std

    adv, ret, token_rewards = advantages_and_returns(
        estimator, rewards, kl, mask, kl_coef=kl_coef, index=sample // n, values=values,
        gamma=float(_get(args, "algo.advantage.gamma", 1.0)), lambd=float(_get(args, "algo.advantage.lambd", 1.0)),
        reward_clip_range=_get(args, "reward.clip_range"), prefix_scores=scores, first=first, beta_c=beta_c,
        baseline=baseline, potential=phi,
    )
    if estimator in NORMALISED:
        adv = normalize_advantages(adv, mask)
    for e, a, r, t, w in zip(experiences, adv.split(sizes), ret.split(sizes), token_rewards.split(sizes), widths):
        e.advantages, e.returns = a[:, :w].contiguous(), r[:, :w].contiguous()
        e.info["return"] = t[:, :w].sum(dim=-1)
        e.kl = None
    return experiences
