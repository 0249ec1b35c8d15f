"""The public entry of r3hf: token-level rewards (R3HF/RED), KL penalty and GAE for PPO.

Layout (TRL, veRL, OpenRLHF): a batch of B sequences = prompt ⊕ response, S positions in all.
Reward-model tensors cover the S positions; response tensors cover L positions, response
token j of row b sitting at sequence position prompt_len[b] + j. `prompt_len` is an int
(left-padded prompts) or an integer tensor [B]. `response_mask` [B, L] is nonzero for the
tokens the policy generated (EOS included) and 0 for padding and multi-turn observation tokens.

Packed batches (no padding; flash-attn varlen, veRL remove-padding, OpenRLHF packing_samples):
every op takes keyword `cu_seqlens` (int32/int64 [N + 1], 0 first, non-decreasing, last = T).
Sequence i is stream positions cu_seqlens[i] .. cu_seqlens[i+1]-1, its prompt then its response.
Then `hidden` is [T, D] (or [1, T, D]), scores and every per-token tensor [T], `bootstrap` and
group `index` per sequence [N], and `prompt_len` None: a sequence's prompt is the positions before
its first generated token. The result equals padding the sequences, calling the padded op and
unpacking, with 0 at prompt positions (docs/packed.md).

Every op validates its arguments (ValueError/TypeError naming the argument), never modifies
an input, returns float32, and takes backend="auto"|"torch"|"cpp"|"triton". The semantics are
those of `r3hf.reference`.
"""

from __future__ import annotations

import torch

from . import _validate as v
from . import _validate_packed as vp
from . import _library
from ._dispatch import BackendUnavailableError, choose_once
from ._dispatch import backends as _backends

__all__ = [
    "prefix_scores",
    "redistribute",
    "kl_penalty",
    "token_rewards",
    "gae",
    "masked_whiten",
    "fused_reward_gae",
    "reward_to_go",
    "group_advantages",
    "fused_reward_group_advantages",
    "backends",
    "BackendUnavailableError",
]


def _packed(cu_seqlens) -> tuple:
    """The extra argument of the packed validators (r3hf._validate_packed), none for the padded ones."""
    return () if cu_seqlens is None else (cu_seqlens,)


def _run(op: str, backend: str, device: torch.device, args: dict):
    options = tuple([k for k in v.OP_OPTIONS.get(op, ()) if k in args])  # present only when non-default
    # Chosen once (a constant under torch.compile), then run as the custom op torch.ops.r3hf_ops.<op>.
    return _library.call(op, choose_once(op, v.check_backend(backend), device.type, options), args)


def prefix_scores(hidden, weight, bias=None, *, cu_seqlens=None, backend="auto") -> torch.Tensor:
    """Reward-head score of every prefix: scores[b, t] = hidden[b, t, :] · weight + bias.

    hidden [B, S, D] (the reward model's last hidden states), weight [D] or [1, D] (a Hugging
    Face `score.weight`), bias None, a float or a [1] tensor -> float32 [B, S], fp32 accumulation.
    """
    args = (
        v.prefix_scores_args(hidden, weight, bias) if cu_seqlens is None
        else vp.prefix_scores_args(hidden, weight, bias, cu_seqlens)
    )
    return _run("prefix_scores", backend, hidden.device, args)


def redistribute(
    scores, response_mask, prompt_len=None, *, first="prompt", beta_c=1.0, cu_seqlens=None, backend="auto"
) -> torch.Tensor:
    """R3HF/RED dense rewards from prefix scores [B, S] -> float32 [B, L].

    Each generated token gets the change in score it caused: scores[t] − scores[t−1] over a
    contiguous mask; a masked span between generated tokens is credited to the token before it;
    the first token is differenced against the prompt-only score (first="prompt") or 0
    (first="zero"). A row's rewards sum to its final score minus that baseline. Mixed as
    β_c·dense + (1 − β_c)·sparse, sparse = the final score at the last generated token.
    beta_c="auto": potential β(t)·Φ_t instead, β(t) = clip(Cov(R, Φ_t)/Var(Φ_t), 0, 1) estimated
    leave-one-out over the batch (`r3hf.reference.rewards.auto_beta`; torch backend only, also in
    token_rewards and fused_reward_gae).
    """
    args = (
        v.redistribute_args(scores, response_mask, prompt_len, first, beta_c) if cu_seqlens is None
        else vp.redistribute_args(scores, response_mask, prompt_len, first, beta_c, cu_seqlens)
    )
    return _run("redistribute", backend, scores.device, args)


def kl_penalty(logprobs, ref_logprobs, estimator="k1", clamp=None, *, cu_seqlens=None, backend="auto") -> torch.Tensor:
    """Per-token KL estimate [B, L] with d = logprobs − ref_logprobs.

    k1 = d; k2 = d²/2; k3 = exp(−d) − 1 + d; abs = |d|. clamp: None, c for [−c, c], or (low, high).
    """
    args = (
        v.kl_args(logprobs, ref_logprobs, estimator, clamp) if cu_seqlens is None
        else vp.kl_args(logprobs, ref_logprobs, estimator, clamp, cu_seqlens)
    )
    return _run("kl_penalty", backend, logprobs.device, args)


def token_rewards(
    scores, response_mask, prompt_len=None, *, logprobs=None, ref_logprobs=None, kl_coef=0.0, kl_estimator="k1",
    kl_clamp=None, first="prompt", beta_c=1.0, reward_clip=None, cu_seqlens=None, backend="auto",
) -> torch.Tensor:
    """mask · (clip(redistribute(scores)) − kl_coef · kl_penalty(logprobs, ref_logprobs)) -> [B, L].

    reward_clip (None, c or (low, high)) bounds the reward-model part only; kl_clamp bounds
    the KL estimate (veRL's k3 and OpenRLHF use ±10). KL needs both logprob tensors.
    """
    args = (v if cu_seqlens is None else vp).token_rewards_args(
        scores, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp, first,
        beta_c, reward_clip, *_packed(cu_seqlens),
    )
    return _run("token_rewards", backend, scores.device, args)


def gae(
    rewards, values, response_mask, gamma=1.0, lam=0.95, bootstrap=None, *, carry_masked=False, cu_seqlens=None,
    backend="auto",
):
    """GAE over [B, L] -> (advantages, returns), float32, 0 at masked positions.

    Backwards per row: at a generated t, δ = r_t + γ·v' − V_t, a = δ + γλ·a, v' = V_t; masked
    positions carry v' and a unchanged (veRL's multi-turn rule). v' starts at bootstrap (None,
    a float or [B]) or 0. returns = advantages + values.

    carry_masked=True (veRL's recorded values): masked positions hold the carried running
    advantage instead of 0, and returns = advantages + values everywhere. Backends that do not
    declare this option leave it to the torch reference.
    """
    args = (
        v.gae_args(rewards, values, response_mask, gamma, lam, bootstrap, carry_masked) if cu_seqlens is None
        else vp.gae_args(rewards, values, response_mask, gamma, lam, bootstrap, carry_masked, cu_seqlens)
    )
    return _run("gae", backend, rewards.device, args)


def masked_whiten(
    x, mask, shift_mean=True, unbiased=True, eps=1e-8, group=None, *, transform_masked=False, eps_mode="add",
    cu_seqlens=None, backend="auto",
):
    """(x − mean)·rsqrt(var + eps) over mask == 1, 0 where masked; float32, shape of x.

    unbiased=True as TRL/veRL, False as OpenRLHF; shift_mean=False adds the mean back.
    `group` (a torch.distributed process group) all-reduces the statistics across ranks.
    transform_masked=True transforms masked positions too instead of writing 0 (veRL, OpenRLHF);
    eps_mode="max" uses rsqrt(max(var, eps)) (OpenRLHF). Backends that do not declare these
    options leave them to the torch reference.
    """
    args = (
        v.masked_whiten_args(x, mask, shift_mean, unbiased, eps, group, transform_masked, eps_mode) if cu_seqlens is None
        else vp.masked_whiten_args(x, mask, shift_mean, unbiased, eps, group, transform_masked, eps_mode, cu_seqlens)
    )
    return _run("masked_whiten", backend, x.device, args)


def fused_reward_gae(
    hidden, weight, bias, values, response_mask, prompt_len=None, *, logprobs=None, ref_logprobs=None, kl_coef=0.0,
    kl_estimator="k1", kl_clamp=None, gamma=1.0, lam=0.95, first="prompt", beta_c=1.0, reward_clip=None,
    bootstrap=None, cu_seqlens=None, backend="auto",
):
    """Reward-head projection → R3HF rewards → KL → GAE in one call.

    hidden [B, S, D], weight [D] or [1, D], bias, values [B, L], response_mask [B, L] ->
    (rewards, advantages, returns), each float32 [B, L]; equal to
    gae(token_rewards(prefix_scores(hidden, weight, bias), …), values, …). No whitening.
    """
    args = (v if cu_seqlens is None else vp).fused_args(
        hidden, weight, bias, values, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator,
        kl_clamp, gamma, lam, first, beta_c, reward_clip, bootstrap, *_packed(cu_seqlens),
    )
    return _run("fused_reward_gae", backend, hidden.device, args)


def reward_to_go(rewards, response_mask, gamma=1.0, *, holes="skip", cu_seqlens=None, backend="auto") -> torch.Tensor:
    """Masked discounted reward-to-go [B, L] -> float32 [B, L], 0 at masked positions.

    Backwards per row, R = r_t + γ·R at generated positions. holes="skip" (veRL's
    reinforce_plus_plus): a masked position carries R unchanged; holes="discount" (OpenRLHF's
    get_cumulative_returns): a masked position has reward 0 but still discounts R by γ.
    """
    args = (
        v.reward_to_go_args(rewards, response_mask, gamma, holes) if cu_seqlens is None
        else vp.reward_to_go_args(rewards, response_mask, gamma, holes, cu_seqlens)
    )
    return _run("reward_to_go", backend, rewards.device, args)


def group_advantages(
    rewards, response_mask, index, estimator="grpo", *, gamma=1.0, eps=1e-6, scale="group", group=None,
    cu_seqlens=None, backend="auto",
    baseline="row",
) -> torch.Tensor:
    """Critic-free token-level advantages of token rewards [B, L] -> float32 [B, L], 0 where masked.

    index: group ids, an integer tensor [B] (rows with equal ids form a group, in any order, like
    veRL's uid) or an int G (contiguous groups of G rows, TRL's layout). With s_i = Σ_t m·r and
    G = reward_to_go(r, m, γ):
    grpo m·(G − mean_g s)/(std_g s + eps) (scale="batch": the batch std of s; "none": no division);
    rloo m·(G − mean of s over the rest of the group); reinforce_pp: G whitened over the batch's
    tokens, rsqrt(var + eps); reinforce_pp_baseline: G − mean_g s whitened likewise; grpo_process:
    rewards normalised over the group's tokens, then their reward-to-go. Singleton groups follow
    veRL 0.9.1 (mean 0, std 1). With sparse rewards (the score at the last generated token) grpo,
    rloo, reinforce_pp and reinforce_pp_baseline equal veRL's estimators (docs/group.md).
    `group` (torch.distributed) spans groups and batch statistics over ranks; groups may straddle
    ranks, and an int G counts rows over the global batch in rank order.
    baseline="position" (grpo, rloo, reinforce_pp_baseline; issue 21): the group mean (and grpo's
    std) is taken per response position over the rows' reward-to-go, an ended row holding its last
    value; rloo then subtracts the other rows' mean H at the same position (docs/group.md).
    """
    args = (
        v.group_advantages_args(rewards, response_mask, index, estimator, gamma, eps, scale, group) if cu_seqlens is None
        else vp.group_advantages_args(rewards, response_mask, index, estimator, gamma, eps, scale, group, cu_seqlens)
    )
    args.update(v.group_baseline(baseline, args["estimator"]))
    return _run("group_advantages", backend, rewards.device, args)


def fused_reward_group_advantages(
    hidden, weight, bias, response_mask, prompt_len=None, index=None, estimator="grpo", *, logprobs=None, ref_logprobs=None,
    kl_coef=0.0, kl_estimator="k1", kl_clamp=None, first="prompt", beta_c=1.0, reward_clip=None, gamma=1.0,
    eps=1e-6, scale="group", group=None, cu_seqlens=None, backend="auto",
    baseline="row",
):
    """Reward-head projection → R3HF rewards → KL → group advantages in one call.

    hidden [B, S, D], weight [D] or [1, D], bias, response_mask [B, L], index -> (rewards,
    advantages), float32 [B, L] each; equal to
    group_advantages(token_rewards(prefix_scores(hidden, weight, bias), …), response_mask, index, …).
    beta_c="auto" (torch backend): β(t) is estimated on this process's batch, also with `group`.
    """
    if index is None:
        raise TypeError("index is required: an int G or an integer tensor of group ids ([B], or [N] with cu_seqlens)")
    args = (v if cu_seqlens is None else vp).fused_group_args(
        hidden, weight, bias, response_mask, prompt_len, index, estimator, logprobs, ref_logprobs, kl_coef,
        kl_estimator, kl_clamp, first, beta_c, reward_clip, gamma, eps, scale, group, *_packed(cu_seqlens),
    )
    args.update(v.group_baseline(baseline, args["estimator"]))
    return _run("fused_reward_group_advantages", backend, hidden.device, args)


def backends() -> dict:
    """Available backends (with the reason for any that is not) and the one each op uses per device."""
    return _backends()
