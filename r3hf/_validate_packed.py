"""Argument checks for packed batches (`cu_seqlens`, issue 16): every op's normalised arguments.

Layout (flash-attn varlen, veRL remove-padding, OpenRLHF packing_samples): one stream of T
positions; sequence i holds positions cu_seqlens[i] .. cu_seqlens[i+1]-1, its prompt then its
response. Per-token tensors are [T], `hidden` is [T, D] (or [1, T, D]), `bootstrap` and `index` are
per sequence [N]. Normalised as the padded ops' (`r3hf._validate`), plus `cu_seqlens` int64
[N + 1] on the data's device, and `prompt_len` None. Values inside cu_seqlens (and first="prompt"'s
need for a prompt token) are checked here for host data and inside the op for GPU data
(`r3hf._checks`), as prompt_len's are.
"""

from __future__ import annotations

import torch

from . import _checks
from . import _validate as v


def _eager_host(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def as_cu_seqlens(cu_seqlens, T: int, device: torch.device, stream_name: str) -> torch.Tensor:
    """int32/int64 tensor [N + 1] -> int64 [N + 1] on `device`, contiguous."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be None or an int32/int64 tensor [N + 1], got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be an int32 or int64 tensor [N + 1], got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D [N + 1] with N >= 1 sequences, got shape {list(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but {stream_name} is on {device}; "
                         "all tensors must be on the same device")
    if _eager_host(cu_seqlens):
        _checks.cu_seqlens_values(cu_seqlens, T, stream_name)
    return cu_seqlens.to(torch.int64).contiguous()


def _no_prompt_len(prompt_len) -> None:
    if prompt_len is not None:
        raise ValueError("prompt_len must be None with cu_seqlens: in a packed batch each sequence's prompt is the "
                         "positions before its first generated token (response_mask)")


def _per_token(name: str, t, T: int | None = None, floating: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1 or (T is not None and t.shape[0] != T):
        want = "[T]" if T is None else f"[T] = [{T}]"
        raise ValueError(f"{name} must be {want} per stream position with cu_seqlens, got shape {list(t.shape)}")
    if floating:
        v.check_tensor(name, t)
    return t


def _mask(name: str, mask, T: int | None = None) -> torch.Tensor:
    _per_token(name, mask, T, floating=False)
    if mask.is_complex():
        raise TypeError(f"{name} must be bool, integer or float, got {mask.dtype}")
    return mask if mask.dtype == torch.bool else mask != 0


def _hidden(hidden) -> torch.Tensor:
    v.check_tensor("hidden", hidden)
    if hidden.dim() == 3 and hidden.shape[0] == 1:
        hidden = hidden[0]
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [T, D] or [1, T, D] with cu_seqlens, got shape {list(hidden.shape)}")
    return hidden


def _first_check(cu: torch.Tensor, mask: torch.Tensor, first: str) -> None:
    if _eager_host(mask):
        _checks.packed_prompts(cu, mask, first)


def _per_sequence(name: str, x, N: int, device: torch.device):
    """bootstrap: None, a float or [N] -> float32 [N] or None."""
    if isinstance(x, torch.Tensor) and x.dim() == 1 and x.shape[0] != N:
        raise ValueError(f"{name} must be None, a float or [N] = [{N}] (one per sequence of cu_seqlens), got {list(x.shape)}")
    return v.as_bootstrap(x, N, device)


# --- per op ---------------------------------------------------------------------------------


def prefix_scores_args(hidden, weight, bias, cu_seqlens):
    hidden = _hidden(hidden)
    args = v.prefix_scores_args(hidden[None], weight, bias)
    args["hidden"] = hidden
    return args | {"cu_seqlens": as_cu_seqlens(cu_seqlens, hidden.shape[0], hidden.device, "hidden")}


def kl_args(logprobs, ref_logprobs, estimator, clamp, cu_seqlens):
    lp = _per_token("logprobs", logprobs)
    _per_token("ref_logprobs", ref_logprobs, lp.shape[0])
    args = v.kl_args(lp[None], ref_logprobs[None], estimator, clamp)
    args.update(logprobs=logprobs, ref_logprobs=ref_logprobs)
    return args | {"cu_seqlens": as_cu_seqlens(cu_seqlens, lp.shape[0], lp.device, "logprobs")}


def redistribute_args(scores, response_mask, prompt_len, first, beta_c, cu_seqlens, scores_name="scores"):
    _no_prompt_len(prompt_len)
    _per_token(scores_name, scores)
    T = scores.shape[0]
    mask = _mask("response_mask", response_mask, T)
    v.check_same_device(**{scores_name: scores, "response_mask": mask})
    first = v.check_choice("first", first, v.FIRST_MODES)
    cu = as_cu_seqlens(cu_seqlens, T, scores.device, scores_name)
    _first_check(cu, mask, first)
    return dict(scores=scores, response_mask=mask, prompt_len=None, first=first, cu_seqlens=cu) | v.check_beta_c(beta_c)


def token_rewards_args(scores, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp,
                       first, beta_c, reward_clip, cu_seqlens, scores_name="scores"):
    args = redistribute_args(scores, response_mask, prompt_len, first, beta_c, cu_seqlens, scores_name)
    T = args["response_mask"].shape[0]
    kl_coef = v.check_finite_float("kl_coef", kl_coef)
    kl_estimator = v.check_choice("kl_estimator", kl_estimator, v.KL_ESTIMATORS)
    kl_clamp = v.as_range("kl_clamp", kl_clamp)
    if kl_coef != 0.0:
        if logprobs is None or ref_logprobs is None:
            missing = [n for n, x in (("logprobs", logprobs), ("ref_logprobs", ref_logprobs)) if x is None]
            raise ValueError(f"kl_coef = {kl_coef} needs both logprobs and ref_logprobs; missing {', '.join(missing)}")
        _per_token("logprobs", logprobs, T)
        _per_token("ref_logprobs", ref_logprobs, T)
        v.check_same_device(**{scores_name: scores, "logprobs": logprobs, "ref_logprobs": ref_logprobs})
    else:
        logprobs = ref_logprobs = None  # unused when kl_coef == 0, as in the padded ops
    args.update(logprobs=logprobs, ref_logprobs=ref_logprobs, kl_coef=kl_coef, kl_estimator=kl_estimator,
                kl_clamp=kl_clamp, reward_clip=v.as_range("reward_clip", reward_clip))
    return args


def gae_args(rewards, values, response_mask, gamma, lam, bootstrap, carry_masked, cu_seqlens):
    _per_token("rewards", rewards)
    T = rewards.shape[0]
    _per_token("values", values, T)
    mask = _mask("response_mask", response_mask, T)
    device = v.check_same_device(rewards=rewards, values=values, response_mask=mask)
    cu = as_cu_seqlens(cu_seqlens, T, device, "rewards")
    return dict(
        rewards=rewards, values=values, response_mask=mask, gamma=v.check_unit_interval("gamma", gamma),
        lam=v.check_unit_interval("lam", lam), bootstrap=_per_sequence("bootstrap", bootstrap, cu.shape[0] - 1, device),
        cu_seqlens=cu,
    ) | v._options(carry_masked=(v.check_bool("carry_masked", carry_masked), False))


def masked_whiten_args(x, mask, shift_mean, unbiased, eps, group, transform_masked, eps_mode, cu_seqlens):
    _per_token("x", x)
    _mask("mask", mask, x.shape[0])
    args = v.masked_whiten_args(x, mask, shift_mean, unbiased, eps, group, transform_masked, eps_mode)
    return args | {"cu_seqlens": as_cu_seqlens(cu_seqlens, x.shape[0], x.device, "x")}


def fused_args(hidden, weight, bias, values, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef,
               kl_estimator, kl_clamp, gamma, lam, first, beta_c, reward_clip, bootstrap, cu_seqlens):
    proj = prefix_scores_args(hidden, weight, bias, cu_seqlens)
    h = proj["hidden"]
    rew = token_rewards_args(h.new_empty(h.shape[0]), response_mask, prompt_len, logprobs, ref_logprobs, kl_coef,
                             kl_estimator, kl_clamp, first, beta_c, reward_clip, cu_seqlens, scores_name="hidden")
    del rew["scores"]
    _per_token("values", values, h.shape[0])
    v.check_same_device(hidden=h, values=values)
    N = proj["cu_seqlens"].shape[0] - 1
    return {**proj, **rew, "values": values, "gamma": v.check_unit_interval("gamma", gamma),
            "lam": v.check_unit_interval("lam", lam), "bootstrap": _per_sequence("bootstrap", bootstrap, N, h.device)}


def reward_to_go_args(rewards, response_mask, gamma, holes, cu_seqlens):
    _per_token("rewards", rewards)
    T = rewards.shape[0]
    mask = _mask("response_mask", response_mask, T)
    v.check_same_device(rewards=rewards, response_mask=mask)
    return dict(rewards=rewards, response_mask=mask, gamma=v.check_unit_interval("gamma", gamma),
                holes=v.check_choice("holes", holes, v.HOLES), cu_seqlens=as_cu_seqlens(cu_seqlens, T, rewards.device, "rewards"))


def _index(index, N: int, device, group):
    if isinstance(index, torch.Tensor) and index.dim() == 1 and index.shape[0] != N:
        raise ValueError(f"index must be an int G or [N] = [{N}] group ids, one per sequence of cu_seqlens; "
                         f"got {list(index.shape)}")
    return v.as_index(index, N, device, group)


def group_advantages_args(rewards, response_mask, index, estimator, gamma, eps, scale, group, cu_seqlens):
    args = reward_to_go_args(rewards, response_mask, gamma, "skip", cu_seqlens)
    del args["holes"]
    estimator, eps, scale = v._group_options(estimator, eps, scale)
    group = v.check_group(group)
    index = _index(index, args["cu_seqlens"].shape[0] - 1, rewards.device, group)
    v._check_generated(args["response_mask"], group, estimator)
    return dict(args, index=index, estimator=estimator, eps=eps, scale=scale, group=group)


def fused_group_args(hidden, weight, bias, response_mask, prompt_len, index, estimator, logprobs, ref_logprobs,
                     kl_coef, kl_estimator, kl_clamp, first, beta_c, reward_clip, gamma, eps, scale, group, cu_seqlens):
    proj = prefix_scores_args(hidden, weight, bias, cu_seqlens)
    h = proj["hidden"]
    rew = token_rewards_args(h.new_empty(h.shape[0]), response_mask, prompt_len, logprobs, ref_logprobs, kl_coef,
                             kl_estimator, kl_clamp, first, beta_c, reward_clip, cu_seqlens, scores_name="hidden")
    del rew["scores"]
    estimator, eps, scale = v._group_options(estimator, eps, scale)
    group = v.check_group(group)
    index = _index(index, proj["cu_seqlens"].shape[0] - 1, h.device, group)
    v._check_generated(rew["response_mask"], group, estimator)
    return {**proj, **rew, "index": index, "estimator": estimator, "gamma": v.check_unit_interval("gamma", gamma),
            "eps": eps, "scale": scale, "group": group}
