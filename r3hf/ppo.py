"""A framework-free PPO step on transformers models, with r3hf's token rewards.

For users with no trainer (and for `r3hf demo`). Layout as in `r3hf.ops`: `query_responses`
[B, S] = prompt ⊕ response, response token j of row b at position `prompt_len[b] + j`,
`response_mask` [B, L] (1 = generated token). The policy is a causal LM (`logits` [B, S, V]);
the critic is a sequence-classification model (a backbone found through `base_model_prefix`
and a scalar `score` head) read at every position, as TRL initialises its value model from the
reward model. Values, log-probs and entropies of response token j are read at position
`prompt_len + j − 1`, the state before token j is chosen.

    rollout = Rollout(query_responses, prompt_len, response_mask, logprobs, ref_logprobs, values,
                      rm_hidden=hidden, rm_weight=rm.score.weight)   # or scores=prefix scores [B, S]
    adv = compute_advantages(rollout, PPOConfig(reward="r3hf"))     # or reward="sparse"
    metrics = ppo_update(policy, critic, optimizer, rollout, adv, config)

`reward="sparse"` is the β_c = 0 path of the same ops (the final score at the last generated
token); `reward="r3hf"` mixes with `config.beta_c` (1 = fully dense).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import ops
from .models import position_ids as _position_ids  # left padding: positions count attended tokens

REWARD_MODES = ("r3hf", "sparse")


@dataclass
class PPOConfig:
    """PPO and reward settings; defaults follow TRL's PPO (γ = 1, λ = 0.95, KL 0.05, clip 0.2)."""

    reward: str = "r3hf"  # "r3hf" (dense, mixed by beta_c) or "sparse" (β_c = 0)
    beta_c: float | str = 1.0  # or "auto": β(t)·Φ_t with β estimated on the batch (r3hf.ops)
    first: str = "prompt"
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    ppo_epochs: int = 4
    num_minibatches: int = 4
    max_grad_norm: float | None = 1.0
    temperature: float = 1.0
    backend: str = "auto"

    def __post_init__(self):
        if self.reward not in REWARD_MODES:
            raise ValueError(f"reward must be one of {list(REWARD_MODES)}, got {self.reward!r}")

    @property
    def effective_beta_c(self) -> float | str:
        """β_c handed to r3hf.ops: 0 for sparse rewards, `beta_c` (a float or "auto") for R3HF."""
        if self.reward == "sparse":
            return 0.0
        return self.beta_c if isinstance(self.beta_c, str) else float(self.beta_c)


@dataclass
class Rollout:
    """What a rollout produced (all without grad). Reward-model input: either the RM's last hidden
    states `rm_hidden` [B, S, D] with its head `rm_weight` [D] or [1, D] (+ `rm_bias`), which
    takes r3hf's fused path, or its prefix scores `scores` [B, S].

    potential (optional, docs/potential.md): with rm_hidden, a `r3hf.models.PotentialHead` or the
    folder its save_pretrained wrote, read from the same hidden states in the fused op
    (potential_weight / potential_bias); with scores, the potential's prefix scores [B, S] from
    the same forward (`r3hf.models.potential_scores`). R stays the reward model's."""

    query_responses: torch.Tensor  # [B, S] token ids
    prompt_len: int | torch.Tensor  # context length (int) or [B]
    response_mask: torch.Tensor  # [B, L]
    logprobs: torch.Tensor  # [B, L] of the sampling policy
    ref_logprobs: torch.Tensor  # [B, L] of the reference policy
    values: torch.Tensor  # [B, L] of the critic
    rm_hidden: torch.Tensor | None = None
    rm_weight: torch.Tensor | None = None
    rm_bias: torch.Tensor | float | None = None
    scores: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None  # [B, S]; default: all ones
    potential: object = None  # PotentialHead / its folder (with rm_hidden) or Φ' [B, S] (with scores)

    @property
    def attention(self) -> torch.Tensor:
        if self.attention_mask is not None:
            return self.attention_mask
        return torch.ones_like(self.query_responses, dtype=torch.long)


@dataclass
class Advantages:
    rewards: torch.Tensor  # [B, L] token rewards (RM part − KL)
    advantages: torch.Tensor  # [B, L] whitened when config.whiten_advantages
    returns: torch.Tensor  # [B, L] value targets
    extra: dict = field(default_factory=dict)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over mask == 1 (0 when the mask is empty)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def compute_advantages(rollout: Rollout, config: PPOConfig) -> Advantages:
    """Token rewards (RM part redistributed or sparse, minus kl_coef · KL), GAE and returns via
    `r3hf.ops`; advantages whitened over the generated tokens when `config.whiten_advantages`."""
    common = dict(
        logprobs=rollout.logprobs, ref_logprobs=rollout.ref_logprobs, kl_coef=config.kl_coef,
        kl_estimator=config.kl_estimator, first=config.first, beta_c=config.effective_beta_c,
        backend=config.backend,
    )
    if rollout.rm_hidden is not None:
        if rollout.rm_weight is None:
            raise ValueError("rm_weight is required with rm_hidden")
        pw, pb = _potential_head(rollout)
        rewards, advantages, returns = ops.fused_reward_gae(
            rollout.rm_hidden, rollout.rm_weight, rollout.rm_bias, rollout.values, rollout.response_mask,
            rollout.prompt_len, gamma=config.gamma, lam=config.lam, potential_weight=pw, potential_bias=pb, **common,
        )
    elif rollout.scores is not None:
        potential = rollout.potential
        if potential is not None and not isinstance(potential, torch.Tensor):
            raise ValueError(
                "Rollout.potential: with scores (no rm_hidden) give the potential's prefix scores [B, S] "
                "(r3hf.models.potential_scores); a PotentialHead needs the hidden states: set rm_hidden"
            )
        rewards = ops.token_rewards(rollout.scores, rollout.response_mask, rollout.prompt_len, potential=potential,
                                    **common)
        advantages, returns = ops.gae(
            rewards, rollout.values, rollout.response_mask, config.gamma, config.lam, backend=config.backend
        )
    else:
        raise ValueError("Rollout needs rm_hidden (with rm_weight) or scores")
    if config.whiten_advantages:
        advantages = ops.masked_whiten(advantages, rollout.response_mask, backend=config.backend)
    return Advantages(rewards, advantages, returns)


def _potential_head(rollout: Rollout):
    """Rollout.potential as the fused op's (potential_weight, potential_bias), cast like rm_weight."""
    if rollout.potential is None:
        return None, None
    if isinstance(rollout.potential, torch.Tensor):
        raise ValueError(
            "Rollout.potential: with rm_hidden give a PotentialHead (or its folder), read from the same hidden "
            "states; prefix-score tensors [B, S] go with scores"
        )
    from .models.potential import load_potential

    head = load_potential(rollout.potential, name="Rollout.potential", hidden_size=rollout.rm_hidden.shape[-1])
    hidden = rollout.rm_hidden
    return head.weight.to(device=hidden.device, dtype=hidden.dtype), head.bias.to(hidden.device)


def _response_index(prompt_len, B: int, L: int, device) -> torch.Tensor:
    """[B, L] sequence positions prompt_len[b] + j − 1 (the state before response token j)."""
    if isinstance(prompt_len, torch.Tensor):
        p = prompt_len.to(device=device, dtype=torch.long).reshape(B)
    else:
        p = torch.full((B,), int(prompt_len), dtype=torch.long, device=device)
    return p[:, None] + torch.arange(L, device=device)[None, :] - 1


def response_logprobs(policy, query_responses, prompt_len, L: int, attention_mask=None, temperature: float = 1.0):
    """Log-probability and entropy of each response token under a causal LM -> ([B, L], [B, L])."""
    attention = attention_mask if attention_mask is not None else torch.ones_like(query_responses)
    logits = policy(
        input_ids=query_responses, attention_mask=attention, position_ids=_position_ids(attention)
    ).logits
    B = query_responses.shape[0]
    idx = _response_index(prompt_len, B, L, query_responses.device)
    logits = logits.gather(1, idx[..., None].expand(B, L, logits.shape[-1])).float() / temperature
    targets = query_responses.gather(1, idx + 1)
    logp_all = F.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


def position_scores(model, input_ids, attention_mask=None) -> torch.Tensor:
    """A sequence-classification model's scalar head at every position -> float32 [B, S] (with grad).

    Used for the critic; for reward models (no grad) prefer `r3hf.models.prefix_scores`.
    """
    attention = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention, position_ids=_position_ids(attention))
    return model.score(hidden.last_hidden_state).squeeze(-1).float()


def response_values(critic, query_responses, prompt_len, L: int, attention_mask=None) -> torch.Tensor:
    """Critic's value of the state before each response token -> float32 [B, L]."""
    s = position_scores(critic, query_responses, attention_mask)
    return s.gather(1, _response_index(prompt_len, s.shape[0], L, s.device))


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """PPO clipped surrogate: mean over mask of max(−A·ρ, −A·clip(ρ, 1 ± ε)), ρ = exp(logp − old).

    Returns (loss, {"clipfrac", "approx_kl"}) with approx_kl = ½·mean((logp − old)²)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, {"clipfrac": clipfrac.item(), "approx_kl": approx_kl.item()}


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """Clipped value loss: ½·mean over mask of max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²).

    Returns (loss, {"vf_clipfrac"})."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, {"vf_clipfrac": clipfrac.item()}


def ppo_update(policy, critic, optimizer, rollout: Rollout, adv: Advantages, config: PPOConfig, generator=None) -> dict:
    """`ppo_epochs` passes over `num_minibatches` shuffled minibatches of the rollout: clipped policy
    loss + vf_coef · clipped value loss − ent_coef · entropy. `optimizer` holds the parameters of
    both models. critic=None: critic-free (advantages from a group estimator), policy loss only.
    Returns metrics averaged over minibatches, plus the rollout's KL to the reference (sum over
    tokens, mean over rows) and mean token reward."""
    B, L = rollout.response_mask.shape
    mask = rollout.response_mask.bool()
    attention = rollout.attention
    p = rollout.prompt_len
    per_mb = max(1, math.ceil(B / config.num_minibatches))
    params = [q for group in optimizer.param_groups for q in group["params"]]
    sums: dict[str, float] = {}
    n = 0
    for _ in range(config.ppo_epochs):
        order = torch.randperm(B, generator=generator).to(rollout.query_responses.device)
        for start in range(0, B, per_mb):
            idx = order[start:start + per_mb]
            mb_p = p[idx] if isinstance(p, torch.Tensor) else p
            logprobs, entropy = response_logprobs(
                policy, rollout.query_responses[idx], mb_p, L, attention[idx], config.temperature
            )
            m = mask[idx]
            pg_loss, pg_stats = policy_loss(logprobs, rollout.logprobs[idx], adv.advantages[idx], m, config.cliprange)
            ent = masked_mean(entropy, m)
            loss = pg_loss - config.ent_coef * ent
            if critic is not None:
                values = response_values(critic, rollout.query_responses[idx], mb_p, L, attention[idx])
                vf_loss, vf_stats = value_loss(values, rollout.values[idx], adv.returns[idx], m, config.cliprange_value)
                loss = loss + config.vf_coef * vf_loss
                pg_stats = {**pg_stats, **vf_stats, "vf_loss": vf_loss.item()}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            stats = {"loss": loss.item(), "pg_loss": pg_loss.item(), "entropy": ent.item()}
            for k, val in {**stats, **pg_stats}.items():
                sums[k] = sums.get(k, 0.0) + val
            n += 1
    metrics = {k: val / max(n, 1) for k, val in sums.items()}
    kl = torch.where(mask, rollout.logprobs.float() - rollout.ref_logprobs.float(), 0.0).sum(1)
    metrics["kl_to_ref"] = kl.mean().item()
    metrics["mean_token_reward"] = masked_mean(adv.rewards, mask).item()
    return metrics
