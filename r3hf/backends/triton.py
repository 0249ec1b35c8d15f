"""Triton backend of r3hf.ops (kernels in `r3hf.kernels`, source folder kernels/).

Available for CUDA tensors when Triton imports, and for CPU tensors only when TRITON_INTERPRET=1
was set before r3hf.kernels was imported (Triton's interpreter; slow, meant for tests), so
backend="auto" never picks the interpreter for CPU tensors unless asked to.
Functions take the normalised arguments of r3hf._validate and follow r3hf.reference exactly.
"""

from __future__ import annotations

import torch
import triton

from r3hf import _group_stats
from r3hf.kernels import _common
from r3hf.kernels import fused as _fused
from r3hf.kernels import gae as _gae
from r3hf.kernels import group as _group
from r3hf.kernels import projection as _projection
from r3hf.kernels import returns as _returns
from r3hf.kernels import rewards as _rewards
from r3hf.kernels import whiten as _whiten
from r3hf import _checks
from r3hf.reference.whiten import _all_reduce

OPS = ("prefix_scores", "redistribute", "kl_penalty", "token_rewards", "gae", "fused_reward_gae", "masked_whiten",
       "reward_to_go", "group_advantages", "fused_reward_group_advantages")
# Packed sequences (cu_seqlens, PACKED_CONTRACT.md): every op, over kernels/varlen.py's chunk index.
OPTIONS = {op: ("cu_seqlens",) for op in OPS}
OPTIONS["masked_whiten"] = ("transform_masked", "eps_mode", "cu_seqlens")
# A separate potential (issue 24): `potential` on the reward ops, a potential head on the fused ones.
for _op in ("redistribute", "token_rewards"):
    OPTIONS[_op] += ("potential",)
for _op in ("fused_reward_gae", "fused_reward_group_advantages"):
    OPTIONS[_op] += ("potential_weight", "potential_bias")
# baseline="position" (issue 21): the row pass adds G to per-position tables (kernels/position.py),
# padded and packed; float64 atomics, so GPU results are order-dependent in the last bits.
for _op in ("group_advantages", "fused_reward_group_advantages"):
    OPTIONS[_op] += ("baseline",)


def unavailable_reason(device: torch.device) -> str | None:
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if _common.INTERPRET:
            return None
        return "Triton kernels run on CUDA tensors (set TRITON_INTERPRET=1 before importing r3hf to run them on CPU)"
    return f"Triton kernels do not run on {device.type} tensors"


def describe() -> str:
    mode = "interpreter (TRITON_INTERPRET=1)" if _common.INTERPRET else "compiled for CUDA"
    return f"Triton {triton.__version__} kernels, {mode}"


def build_info() -> dict:
    return {"triton": triton.__version__, "interpret": _common.INTERPRET,
            "scan": "flip" if _common.flip_scans() else "reverse"}


# Packed mode (cu_seqlens int64 [N + 1] given): prompt_len is None, hidden [T, D], per-token
# tensors and outputs [T], bootstrap and index [N]; semantics "pad, call the padded op, unpack".


def prefix_scores(hidden, weight, bias, cu_seqlens=None):
    if cu_seqlens is not None:  # per position: the stream is one row
        return _projection.prefix_scores(hidden.unsqueeze(0), weight, bias)[0]
    return _projection.prefix_scores(hidden, weight, bias)


def redistribute(scores, response_mask, prompt_len, first="prompt", beta_c=1.0, cu_seqlens=None, potential=None):
    # token_rewards without clip or KL is exactly mask · redistribute.
    return _rewards.token_rewards(scores, response_mask, prompt_len, first=first, beta_c=beta_c,
                                  cu_seqlens=cu_seqlens, potential=potential)


def kl_penalty(logprobs, ref_logprobs, estimator="k1", clamp=None, cu_seqlens=None):
    # elementwise over all T positions: cu_seqlens changes nothing
    return _rewards.kl_penalty(logprobs, ref_logprobs, estimator, clamp)


def token_rewards(scores, response_mask, prompt_len, logprobs=None, ref_logprobs=None, kl_coef=0.0,
                  kl_estimator="k1", kl_clamp=None, first="prompt", beta_c=1.0, reward_clip=None, cu_seqlens=None,
                  potential=None):
    return _rewards.token_rewards(scores, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator,
                                  kl_clamp, first, beta_c, reward_clip, cu_seqlens=cu_seqlens, potential=potential)


def gae(rewards, values, response_mask, gamma=1.0, lam=0.95, bootstrap=None, cu_seqlens=None):
    return _gae.gae(rewards, values, response_mask, gamma, lam, bootstrap, cu_seqlens=cu_seqlens)


def fused_reward_gae(hidden, weight, bias, values, response_mask, prompt_len, logprobs=None, ref_logprobs=None,
                     kl_coef=0.0, kl_estimator="k1", kl_clamp=None, gamma=1.0, lam=0.95, first="prompt", beta_c=1.0,
                     reward_clip=None, bootstrap=None, cu_seqlens=None, potential_weight=None, potential_bias=None):
    return _fused.fused_reward_gae(hidden, weight, bias, values, response_mask, prompt_len, logprobs, ref_logprobs,
                                   kl_coef, kl_estimator, kl_clamp, gamma, lam, first, beta_c, reward_clip, bootstrap,
                                   cu_seqlens=cu_seqlens, potential_weight=potential_weight,
                                   potential_bias=potential_bias)


def reward_to_go(rewards, response_mask, gamma=1.0, holes="skip", cu_seqlens=None):
    return _returns.reward_to_go(rewards, response_mask, gamma, holes, cu_seqlens=cu_seqlens)


# The group estimators: the kernels' row pass and finish around the shared group statistics
# (packed: the passes take cu_seqlens, each sequence a row).
def group_advantages(rewards, response_mask, index, estimator="grpo", gamma=1.0, eps=1e-6, scale="group", group=None,
                     cu_seqlens=None, baseline="row"):
    return _group_stats.group_advantages(_returns.row_pass, _returns.finish, rewards, response_mask, index,
                                         estimator, gamma, eps, scale, group, cu_seqlens=cu_seqlens,
                                         baseline=baseline)


def fused_reward_group_advantages(hidden, weight, bias, response_mask, prompt_len, index, estimator="grpo",
                                  logprobs=None, ref_logprobs=None, kl_coef=0.0, kl_estimator="k1", kl_clamp=None,
                                  first="prompt", beta_c=1.0, reward_clip=None, gamma=1.0, eps=1e-6, scale="group",
                                  group=None, cu_seqlens=None, potential_weight=None, potential_bias=None,
                                  baseline="row"):
    return _group_stats.fused_reward_group_advantages(
        _group.fused_row_pass, _returns.finish, hidden, weight, bias, response_mask, prompt_len, index, estimator,
        logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp, first, beta_c, reward_clip, gamma, eps, scale, group,
        cu_seqlens=cu_seqlens, baseline=baseline, potential_weight=potential_weight, potential_bias=potential_bias)


def masked_whiten(x, mask, shift_mean=True, unbiased=True, eps=1e-8, group=None, transform_masked=False,
                  eps_mode="add", cu_seqlens=None):
    # Statistics, then the all-reduce across ranks (Python, between the phases), then the transform.
    sums = _all_reduce(_whiten.whiten_sums(x, mask), group)
    _checks.whiten_count(sums[:1], unbiased)
    sqsum = _all_reduce(_whiten.whiten_sqsum(x, mask, sums), group)
    return _whiten.whiten_apply(x, mask, sums, sqsum, shift_mean, unbiased, eps, eps_mode == "max", transform_masked,
                                cu_seqlens)
