"""Argument checks and normalisation for every public op, in one place.

`r3hf.ops` calls these before dispatch, so every backend receives the same normalised
arguments and every bad input raises the same clear ValueError/TypeError whatever the
backend. Normalised forms:

- `response_mask` -> bool [B, L] (nonzero = generated token);
- `prompt_len` -> int64 [B] on the scores' device;
- clip/clamp ranges -> `(low, high)` floats or None;
- `weight` -> [D]; `bias` -> float32 [1] or None; `bootstrap` -> float32 [B] or None.

Inputs are never modified: conversions make new tensors.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

from . import _checks

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
FIRST_MODES = ("prompt", "zero")
BACKEND_NAMES = ("auto", "torch", "cpp", "triton")
EPS_MODES = ("add", "max")
# Options that select a peer's convention; a backend declares those it implements in its
# `OPTIONS` dict (op -> names) and "auto" falls back to torch for the others.
OP_OPTIONS = {"gae": ("carry_masked",), "masked_whiten": ("transform_masked", "eps_mode")}
# beta_c="auto" reaches the ops as beta_c_auto=True (beta_c then unused): an option like the above.
OP_OPTIONS.update({op: ("beta_c_auto",) for op in ("redistribute", "token_rewards", "fused_reward_gae",
                                                    "fused_reward_group_advantages")})
# cu_seqlens (a packed batch, r3hf._validate_packed) reaches a backend only if it lists it for the op.
for _op in ("prefix_scores", "redistribute", "kl_penalty", "token_rewards", "gae", "masked_whiten", "fused_reward_gae",
            "reward_to_go", "group_advantages", "fused_reward_group_advantages"):
    OP_OPTIONS[_op] = OP_OPTIONS.get(_op, ()) + ("cu_seqlens",)
# A separate shaping potential (issue 24): `potential` [B, S] / [T] on the reward ops, a second
# head `potential_weight` (+ `potential_bias`) on the fused ops. Options: a backend lists them.
for _op in ("redistribute", "token_rewards"):
    OP_OPTIONS[_op] += ("potential",)
for _op in ("fused_reward_gae", "fused_reward_group_advantages"):
    OP_OPTIONS[_op] += ("potential_weight", "potential_bias")
BETA_C_AUTO = "auto"
# baseline="position" (issue 21) reaches a backend only if it lists "baseline" for the op.
for _op in ("group_advantages", "fused_reward_group_advantages"):
    OP_OPTIONS[_op] = OP_OPTIONS[_op] + ("baseline",)


def _shape(t: torch.Tensor) -> list:
    return list(t.shape)


def check_tensor(name: str, t, *, rank: int | None = None, floating: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if rank is not None and t.dim() != rank:
        raise ValueError(f"{name} must have {rank} dimensions, got shape {_shape(t)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t


def check_shape(name: str, t: torch.Tensor, expected: list, letters: str, source: str) -> None:
    if _shape(t) != list(expected):
        raise ValueError(
            f"{name} must be [{', '.join(letters)}] = {list(expected)}, got {_shape(t)} ({', '.join(letters)} from {source})"
        )


def check_same_device(**tensors) -> torch.device:
    named = [(k, v) for k, v in tensors.items() if isinstance(v, torch.Tensor)]
    first_name, first = named[0]
    for k, v in named[1:]:
        if v.device != first.device:
            raise ValueError(
                f"{k} is on {v.device} but {first_name} is on {first.device}; "
                "all tensors must be on the same device"
            )
    return first.device


def check_unit_interval(name: str, x) -> float:
    if type(x) is not float and (isinstance(x, bool) or not isinstance(x, Real)):  # float: skip the ABC check
        raise TypeError(f"{name} must be a float in [0, 1], got {type(x).__name__}")
    x = float(x)
    if not (0.0 <= x <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {x}")
    return x


def check_finite_float(name: str, x) -> float:
    if type(x) is not float and (isinstance(x, bool) or not isinstance(x, Real)):  # float: skip the ABC check
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_bool(name: str, flag) -> bool:
    if not isinstance(flag, bool):
        raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    return flag


def check_backend(backend) -> str:
    return check_choice("backend", backend, BACKEND_NAMES)


def as_range(name: str, r):
    """None, c (meaning [-c, c]) or (low, high) -> None or (low, high) floats."""
    if r is None:
        return None
    if isinstance(r, (tuple, list)):
        if len(r) != 2:
            raise ValueError(f"{name} must be None, a float c or a (low, high) pair, got {r!r}")
        low, high = (check_range_bound(name, v) for v in r)
    else:
        c = check_range_bound(name, r)
        if c < 0:
            raise ValueError(f"{name} as a single number c means [-c, c] and must be >= 0, got {c}")
        low, high = -c, c
    if low > high:
        raise ValueError(f"{name} must have low <= high, got ({low}, {high})")
    return (low, high)


def check_range_bound(name: str, v) -> float:
    if type(v) is not float and (isinstance(v, bool) or not isinstance(v, Real)):  # float: skip the ABC check
        raise TypeError(f"{name} bounds must be real numbers, got {type(v).__name__}")
    v = float(v)
    if math.isnan(v):
        raise ValueError(f"{name} bounds must not be NaN")
    return v


def as_mask(name: str, mask, B: int | None = None, L: int | None = None) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"{name} must be [B, L], got shape {_shape(mask)}")
    if mask.is_complex():
        raise TypeError(f"{name} must be bool, integer or float, got {mask.dtype}")
    return mask if mask.dtype == torch.bool else mask != 0


def as_prompt_len(
    prompt_len, B: int, S: int, L: int, device: torch.device, first: str, scores_name: str = "scores"
) -> torch.Tensor:
    """int or integer tensor [B] -> int64 [B] on `device`, checked against S and L."""
    if prompt_len is None:
        raise TypeError("prompt_len must be an int or an integer tensor [B] for a padded batch "
                        "(None only with cu_seqlens, for a packed one)")
    if isinstance(prompt_len, torch.Tensor):
        if prompt_len.is_floating_point() or prompt_len.is_complex() or prompt_len.dtype == torch.bool:
            raise TypeError(f"prompt_len must be an int or an integer tensor [B], got {prompt_len.dtype}")
        if prompt_len.dim() == 0:
            prompt_len = prompt_len.reshape(1).expand(B)
        if _shape(prompt_len) != [B]:
            raise ValueError(f"prompt_len must be an int or [B] = [{B}], got {_shape(prompt_len)}")
        if prompt_len.device.type == "cpu" and not torch.compiler.is_compiling():
            # Host data: checked here, before the (non-blocking) copy; values on a GPU are checked
            # inside the op without a host sync (r3hf._checks).
            _checks.prompt_len_values(prompt_len, S, L, first, scores_name)
        return prompt_len.to(device=device, dtype=torch.int64, non_blocking=True)
    else:
        if isinstance(prompt_len, bool) or not isinstance(prompt_len, int):
            raise TypeError(f"prompt_len must be an int or an integer tensor [B], got {type(prompt_len).__name__}")
        p = int(prompt_len)
        _checks.prompt_len_range(p, p, S, L, first, scores_name)
        return torch.full((B,), p, dtype=torch.int64, device=device)


def as_weight(weight, D: int, name: str = "weight") -> torch.Tensor:
    check_tensor(name, weight)
    if weight.dim() == 2 and weight.shape[0] == 1:
        weight = weight[0]
    if _shape(weight) != [D]:
        raise ValueError(f"{name} must be [D] or [1, D] with D = {D} (from hidden), got {_shape(weight)}")
    return weight


# --- the potential (issue 24) ----------------------------------------------------------------


def potential_args(potential, scores: torch.Tensor, scores_name: str = "scores") -> dict:
    """potential: None or a float tensor shaped like the scores ([B, S], or [T] packed) -> {"potential": …}
    when given (an option: absent at its default)."""
    if potential is None:
        return {}
    check_tensor("potential", potential, rank=scores.dim())
    if _shape(potential) != _shape(scores):
        raise ValueError(f"potential must have the shape of {scores_name} = {_shape(scores)} (the same layout), "
                         f"got {_shape(potential)}")
    check_same_device(**{scores_name: scores, "potential": potential})
    return {"potential": potential}


def potential_head_args(potential_weight, potential_bias, hidden: torch.Tensor) -> dict:
    """The potential head of the fused ops: potential_weight [D] or [1, D] (None: no potential),
    potential_bias None, a float or a [1] tensor -> normalised like weight and bias, present only when set."""
    if potential_weight is None:
        if potential_bias is not None:
            raise ValueError("potential_bias is set but potential_weight is None; the potential head needs "
                             "potential_weight [D]")
        return {}
    weight = as_weight(potential_weight, hidden.shape[-1], "potential_weight")
    check_same_device(hidden=hidden, potential_weight=weight)
    out = {"potential_weight": weight}
    bias = as_bias(potential_bias, hidden.device, "potential_bias")
    return out if bias is None else out | {"potential_bias": bias}


def as_bias(bias, device: torch.device, name: str = "bias"):
    if bias is None:
        return None
    if isinstance(bias, torch.Tensor):
        check_tensor(name, bias)
        if bias.numel() != 1 or bias.dim() > 1:
            raise ValueError(f"{name} must be None, a float or a [1] tensor, got shape {_shape(bias)}")
        if bias.device != device:
            raise ValueError(f"{name} is on {bias.device} but hidden is on {device}; all tensors must be on the same device")
        return bias.reshape(1).to(torch.float32)
    # torch.full, not torch.tensor: no host-to-device copy (a sync on CUDA).
    return torch.full((1,), check_finite_float(name, bias), dtype=torch.float32, device=device)


def as_bootstrap(bootstrap, B: int, device: torch.device):
    if bootstrap is None:
        return None
    if isinstance(bootstrap, torch.Tensor):
        check_tensor("bootstrap", bootstrap)
        if bootstrap.dim() == 0:
            bootstrap = bootstrap.reshape(1).expand(B)
        if _shape(bootstrap) != [B]:
            raise ValueError(f"bootstrap must be None, a float or [B] = [{B}], got {_shape(bootstrap)}")
        if bootstrap.device != device:
            raise ValueError(
                f"bootstrap is on {bootstrap.device} but values is on {device}; all tensors must be on the same device"
            )
        return bootstrap.to(torch.float32)
    return torch.full((B,), check_finite_float("bootstrap", bootstrap), dtype=torch.float32, device=device)


# --- per-op argument sets --------------------------------------------------------------


def prefix_scores_args(hidden, weight, bias):
    check_tensor("hidden", hidden, rank=3)
    B, S, D = hidden.shape
    weight = as_weight(weight, D)
    device = check_same_device(hidden=hidden, weight=weight)
    return dict(hidden=hidden, weight=weight, bias=as_bias(bias, device))


def kl_args(logprobs, ref_logprobs, estimator, clamp, mask_shape=None):
    check_tensor("logprobs", logprobs, rank=2)
    check_tensor("ref_logprobs", ref_logprobs, rank=2)
    if mask_shape is not None:
        check_shape("logprobs", logprobs, mask_shape, "BL", "response_mask")
    check_shape("ref_logprobs", ref_logprobs, list(logprobs.shape), "BL", "logprobs")
    check_same_device(logprobs=logprobs, ref_logprobs=ref_logprobs)
    return dict(
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        estimator=check_choice("estimator", estimator, KL_ESTIMATORS),
        clamp=as_range("clamp", clamp),
    )


def redistribute_args(scores, response_mask, prompt_len, first, beta_c, scores_name="scores"):
    check_tensor(scores_name, scores, rank=2)
    mask = as_mask("response_mask", response_mask)
    check_same_device(scores=scores, response_mask=mask)
    first = check_choice("first", first, FIRST_MODES)
    B, S = scores.shape
    if mask.shape[0] != B:
        raise ValueError(f"response_mask must be [B, L] with B = {B} (from {scores_name}), got {_shape(mask)}")
    L = mask.shape[1]
    return dict(
        scores=scores,
        response_mask=mask,
        prompt_len=as_prompt_len(prompt_len, B, S, L, scores.device, first, scores_name),
        first=first,
    ) | check_beta_c(beta_c)


def check_beta_c(beta_c) -> dict:
    """beta_c in [0, 1] or "auto" -> {"beta_c": float} (+ {"beta_c_auto": True} for "auto")."""
    if isinstance(beta_c, str):
        if beta_c != BETA_C_AUTO:
            raise ValueError(f'beta_c must be a float in [0, 1] or "auto", got {beta_c!r}')
        return {"beta_c": 1.0, "beta_c_auto": True}
    return {"beta_c": check_unit_interval("beta_c", beta_c)}


def token_rewards_args(
    scores, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp, first, beta_c, reward_clip,
    scores_name="scores",
):
    args = redistribute_args(scores, response_mask, prompt_len, first, beta_c, scores_name)
    kl_coef = check_finite_float("kl_coef", kl_coef)
    kl_estimator = check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
    kl_clamp = as_range("kl_clamp", kl_clamp)
    if kl_coef != 0.0:
        if logprobs is None or ref_logprobs is None:
            missing = [n for n, v in (("logprobs", logprobs), ("ref_logprobs", ref_logprobs)) if v is None]
            raise ValueError(f"kl_coef = {kl_coef} needs both logprobs and ref_logprobs; missing {', '.join(missing)}")
        kl = kl_args(logprobs, ref_logprobs, kl_estimator, kl_clamp, list(args["response_mask"].shape))
        check_same_device(**{scores_name: scores, "logprobs": logprobs})
        logprobs, ref_logprobs = kl["logprobs"], kl["ref_logprobs"]
    else:
        # Unused when kl_coef == 0; dropping them keeps every backend from reading them.
        logprobs = ref_logprobs = None
    args.update(
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        kl_clamp=kl_clamp,
        reward_clip=as_range("reward_clip", reward_clip),
    )
    return args


def gae_args(rewards, values, response_mask, gamma, lam, bootstrap, carry_masked=False):
    check_tensor("rewards", rewards, rank=2)
    check_tensor("values", values, rank=2)
    B, L = rewards.shape
    check_shape("values", values, [B, L], "BL", "rewards")
    mask = as_mask("response_mask", response_mask)
    check_shape("response_mask", mask, [B, L], "BL", "rewards")
    device = check_same_device(rewards=rewards, values=values, response_mask=mask)
    return dict(
        rewards=rewards,
        values=values,
        response_mask=mask,
        gamma=check_unit_interval("gamma", gamma),
        lam=check_unit_interval("lam", lam),
        bootstrap=as_bootstrap(bootstrap, B, device),
    ) | _options(carry_masked=(check_bool("carry_masked", carry_masked), False))


def _options(**given) -> dict:
    """Peer-convention options, passed to a backend only when they differ from the default, so a
    backend that does not know an option is never handed it (see `r3hf._dispatch.choose`)."""
    return {name: value for name, (value, default) in given.items() if value != default}


def masked_whiten_args(x, mask, shift_mean, unbiased, eps, group, transform_masked=False, eps_mode="add"):
    check_tensor("x", x)
    mask = _as_any_mask(mask)
    if _shape(mask) != _shape(x):
        raise ValueError(f"mask must have the shape of x = {_shape(x)}, got {_shape(mask)}")
    check_same_device(x=x, mask=mask)
    eps = check_finite_float("eps", eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    for name, flag in (("shift_mean", shift_mean), ("unbiased", unbiased)):
        check_bool(name, flag)
    return dict(x=x, mask=mask, shift_mean=shift_mean, unbiased=unbiased, eps=eps, group=group) | _options(
        transform_masked=(check_bool("transform_masked", transform_masked), False),
        eps_mode=(check_choice("eps_mode", eps_mode, EPS_MODES), "add"),
    )


def _as_any_mask(mask) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.is_complex():
        raise TypeError(f"mask must be bool, integer or float, got {mask.dtype}")
    return mask if mask.dtype == torch.bool else mask != 0


def fused_args(
    hidden, weight, bias, values, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator,
    kl_clamp, gamma, lam, first, beta_c, reward_clip, bootstrap,
):
    proj = prefix_scores_args(hidden, weight, bias)
    B, S, _ = hidden.shape
    check_same_device(hidden=hidden, response_mask=as_mask("response_mask", response_mask), values=values,
                      logprobs=logprobs, ref_logprobs=ref_logprobs)
    # Check the rewards part against a [B, S] stand-in for the scores, named after hidden.
    stand_in = hidden.new_empty((B, S))
    rew = token_rewards_args(
        stand_in, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp, first,
        beta_c, reward_clip, scores_name="hidden",
    )
    del rew["scores"]
    mask = rew["response_mask"]
    check_tensor("values", values, rank=2)
    check_shape("values", values, list(mask.shape), "BL", "response_mask")
    check_same_device(hidden=hidden, values=values)
    gae = dict(
        values=values,
        gamma=check_unit_interval("gamma", gamma),
        lam=check_unit_interval("lam", lam),
        bootstrap=as_bootstrap(bootstrap, B, values.device),
    )
    return {**proj, **rew, **gae}


# --- group advantages (issue 12) ---------------------------------------------------------

HOLES = ("skip", "discount")
GROUP_ESTIMATORS = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_process")
GROUP_SCALES = ("group", "batch", "none")
_SCALED = ("grpo", "grpo_process")  # the estimators `scale` applies to
DEFAULT_GROUP_EPS = 1e-6


def reward_to_go_args(rewards, response_mask, gamma, holes):
    check_tensor("rewards", rewards, rank=2)
    mask = as_mask("response_mask", response_mask)
    check_shape("response_mask", mask, list(rewards.shape), "BL", "rewards")
    check_same_device(rewards=rewards, response_mask=mask)
    return dict(rewards=rewards, response_mask=mask, gamma=check_unit_interval("gamma", gamma),
                holes=check_choice("holes", holes, HOLES))


def check_group(group):
    """None or an initialised torch.distributed process group."""
    if group is None:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("group is a torch.distributed process group, but torch.distributed is not initialised")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be None or a torch.distributed ProcessGroup, got {type(group).__name__}")
    return group


def as_index(index, B: int, device: torch.device, group) -> torch.Tensor:
    """Group ids: an integer tensor [B] (any order, ids global across ranks) or an int G (contiguous
    groups of G rows, counted over the global batch when `group` is given) -> int64 [B]."""
    if isinstance(index, torch.Tensor):
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(f"index must be an int G or an integer tensor [B] of group ids, got {index.dtype}")
        if _shape(index) != [B]:
            raise ValueError(f"index must be an int G or [B] = [{B}] group ids (B from response_mask), got {_shape(index)}")
        if index.device != device:
            raise ValueError(f"index is on {index.device} but rewards is on {device}; all tensors must be on the same device")
        return index.to(torch.int64)
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index must be an int G or an integer tensor [B] of group ids, got {type(index).__name__}")
    if index < 1:
        raise ValueError(f"index as an int is the group size G and must be >= 1, got {index}")
    offset, total = 0, B
    if group is not None:
        from ._group_stats import row_offset

        offset, total = row_offset(B, group, device)
    if total % index:
        where = "global batch (all ranks of group)" if group is not None else "batch"
        raise ValueError(f"index = {index} (contiguous groups of {index} rows) must divide the {where} size {total}")
    return (offset + torch.arange(B, device=device)) // index


def _group_options(estimator, eps, scale):
    estimator = check_choice("estimator", estimator, GROUP_ESTIMATORS)
    scale = check_choice("scale", scale, GROUP_SCALES)
    eps = check_finite_float("eps", eps)
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    # An option the chosen estimator does not use is an error, not silently dropped.
    if scale != "group" and estimator not in _SCALED:
        raise ValueError(f"scale={scale!r} applies to estimator 'grpo' or 'grpo_process' only, got estimator={estimator!r}")
    if eps != DEFAULT_GROUP_EPS and (estimator == "rloo" or scale == "none"):
        raise ValueError(f"eps is unused by estimator={estimator!r} with scale={scale!r}; got eps = {eps}")
    return estimator, eps, scale


GROUP_BASELINES = ("row", "position")
POSITION_ESTIMATORS = ("grpo", "rloo", "reinforce_pp_baseline")  # the estimators with a group baseline


def group_baseline(baseline, estimator: str) -> dict:
    """baseline "row" (the default: not passed on, see r3hf._dispatch) or "position" -> {} or
    {"baseline": "position"}. "position" needs an estimator with a group baseline (issue 21)."""
    if not isinstance(baseline, str):
        raise TypeError(f"baseline must be a str, one of {list(GROUP_BASELINES)}, got {type(baseline).__name__}")
    check_choice("baseline", baseline, GROUP_BASELINES)
    if baseline == "row":
        return {}
    if estimator not in POSITION_ESTIMATORS:
        why = ("has no group baseline" if estimator == "reinforce_pp"
               else "normalises rewards, not returns, so it has no per-position baseline")
        raise ValueError(f"baseline='position' is defined for estimator in {list(POSITION_ESTIMATORS)}; "
                         f"estimator={estimator!r} {why}")
    return {"baseline": baseline}


def _check_generated(mask: torch.Tensor, group, estimator: str) -> None:
    # With a group, the whole batch decides (after the all-gather, on every rank alike). GPU masks
    # and compiled code are checked inside the op instead (r3hf._checks.group_tokens: no host sync).
    if group is None and mask.device.type == "cpu" and not torch.compiler.is_compiling():
        from ._group_stats import check_tokens

        # The checks need 2 tokens at most and the first rows almost always hold them, so the whole
        # mask (~1 ms of a ~2 ms op at [1024, 4096]) is counted only when they do not. count_nonzero:
        # torch's bool sum() takes 50 ms at [1024, 4096] on one CPU thread.
        if int(torch.count_nonzero(mask.reshape(-1)[: 4 * mask.shape[-1]])) >= 2:
            return
        check_tokens(int(torch.count_nonzero(mask)), estimator)


def group_advantages_args(rewards, response_mask, index, estimator, gamma, eps, scale, group):
    args = reward_to_go_args(rewards, response_mask, gamma, "skip")
    del args["holes"]
    estimator, eps, scale = _group_options(estimator, eps, scale)
    group = check_group(group)
    B = args["response_mask"].shape[0]
    index = as_index(index, B, rewards.device, group)
    _check_generated(args["response_mask"], group, estimator)
    return dict(args, index=index, estimator=estimator, eps=eps, scale=scale, group=group)


def fused_group_args(
    hidden, weight, bias, response_mask, prompt_len, index, estimator, logprobs, ref_logprobs, kl_coef,
    kl_estimator, kl_clamp, first, beta_c, reward_clip, gamma, eps, scale, group,
):
    proj = prefix_scores_args(hidden, weight, bias)
    B, S, _ = hidden.shape
    check_same_device(hidden=hidden, response_mask=as_mask("response_mask", response_mask), logprobs=logprobs,
                      ref_logprobs=ref_logprobs)
    # Check the rewards part against a [B, S] stand-in for the scores, named after hidden.
    rew = token_rewards_args(
        hidden.new_empty((B, S)), response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator,
        kl_clamp, first, beta_c, reward_clip, scores_name="hidden",
    )
    del rew["scores"]
    estimator, eps, scale = _group_options(estimator, eps, scale)
    group = check_group(group)
    index = as_index(index, B, hidden.device, group)
    _check_generated(rew["response_mask"], group, estimator)
    return {**proj, **rew, "index": index, "estimator": estimator, "gamma": check_unit_interval("gamma", gamma),
            "eps": eps, "scale": scale, "group": group}
