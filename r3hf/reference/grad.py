"""Analytic gradients of the KL path (the spec every backend's backward follows).

KL losses (OpenRLHF's `compute_approx_kl`, veRL's and TRL's GRPO `kl_loss`) differentiate the
per-token estimate with respect to the policy's log-probs. These are the vector-Jacobian products
that `r3hf.ops` registers as the backward of kl_penalty, token_rewards and fused_reward_gae, so
every backend (torch, C++, Triton) has the same gradient. Everything is computed in float32 and
returned in each input's dtype, as autograd returns the gradient of a `.float()` cast.
"""

from __future__ import annotations

import torch


def kl_penalty_grad(
    grad_out: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: str = "k1",
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """grad_out · ∂kl/∂d as float32 [B, L], d = logprobs − ref_logprobs.

    ∂kl/∂d: k1 → 1; k2 → d; k3 → 1 − exp(−d); abs → sign(d) (0 at d = 0, as torch.abs).
    With clamp = (low, high) the gradient is 0 where kl lies outside [low, high] (torch.clamp's
    rule: the bounds themselves pass the gradient). ∂/∂logprobs = +this, ∂/∂ref_logprobs = −this.
    """
    d = logprobs.float() - ref_logprobs.float()
    if estimator == "k1":
        dkl = torch.ones_like(d)
    elif estimator == "k2":
        dkl = d
    elif estimator == "k3":
        dkl = -torch.expm1(-d)
    elif estimator == "abs":
        dkl = torch.sign(d)
    else:
        raise ValueError(f"estimator must be one of ['k1', 'k2', 'k3', 'abs'], got {estimator!r}")
    g = grad_out.float() * dkl
    if clamp is not None:
        kl = {"k1": d, "k2": 0.5 * d * d, "k3": torch.expm1(-d) + d, "abs": d.abs()}[estimator]
        g = torch.where((kl >= clamp[0]) & (kl <= clamp[1]), g, torch.zeros_like(g))
    return g


def gae_rewards_vjp(
    grad: torch.Tensor, response_mask: torch.Tensor, gamma: float, lam: float, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_t grad[t] · ∂adv_t/∂r_s for GAE (r3hf.reference.gae) -> float32 [B, L].

    adv_t = Σ over generated s ≥ t of (γλ)^(number of generated tokens in (t, s]) · δ_s, and
    ∂δ_s/∂r_s = 1, so the transpose is a forward scan over generated positions:
    acc ← grad[s] + γλ·acc at a generated s (0 at masked positions, whose reward does not count).
    returns = adv + V has the same Jacobian with respect to the rewards. Packed ([T], cu_seqlens):
    the same per sequence (`r3hf.reference.packed`).
    """
    if cu_seqlens is not None:
        from .packed import Packing

        p = Packing(cu_seqlens, response_mask)
        return p.unpack(gae_rewards_vjp(p.rows(grad), p.rows(response_mask), gamma, lam))
    g = grad.float()
    B, L = g.shape
    gl = gamma * lam
    acc = g.new_zeros(B)
    out = g.new_zeros(B, L)
    for s in range(L):
        m = response_mask[:, s]
        acc = torch.where(m, g[:, s] + gl * acc, acc)
        out[:, s] = torch.where(m, acc, torch.zeros_like(acc))
    return out
