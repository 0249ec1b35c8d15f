import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    bootstrap: torch.Tensor | None = None,
    carry_masked: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over [B, L] -> (advantages, returns), float32.

    Per row, backwards over positions, with next value v' = bootstrap[b] (or 0) and running
    advantage a = 0: at a generated (unmasked) t, δ = r_t + γ·v' − V_t, a = δ + γλ·a,
    adv_t = a, v' = V_t; at a masked t, adv_t = 0 and v', a carry over unchanged (veRL ≥ 0.5's
    multi-turn rule). returns = (adv + V) at generated positions, 0 elsewhere. With only
    trailing padding this is the TRL/OpenRLHF loop; with γ = λ = 1 it is reward-to-go − V.
    Packed ([T], cu_seqlens, bootstrap [N]): see `r3hf.reference.packed`.
    """
    if cu_seqlens is not None:
        from . import packed

        return packed.gae(rewards, values, response_mask, gamma, lam, bootstrap, carry_masked, cu_seqlens)
    r = rewards.float()
    v = values.float()
    B, L = r.shape
    next_value = bootstrap.float() if bootstrap is not None else r.new_zeros(B)
    running = r.new_zeros(B)
    advantages = r.new_zeros(B, L)
    for t in reversed(range(L)):
        m = response_mask[:, t]
        delta = r[:, t] + gamma * next_value - v[:, t]
        running = torch.where(m, delta + gamma * lam * running, running)
        next_value = torch.where(m, v[:, t], next_value)
        advantages[:, t] = running if carry_masked else torch.where(m, running, torch.zeros_like(running))
    if carry_masked:
        return advantages, advantages + v
    returns = torch.where(response_mask, advantages + v, torch.zeros_like(v))
    return advantages, returns
