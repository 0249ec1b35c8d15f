import torch


def reward_to_go(
    rewards: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
    holes: str = "skip",
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked discounted reward-to-go G [B, L] -> float32 [B, L], 0 at masked positions.

    Per row, backwards with a running return R = 0:
    - holes="skip" (veRL 0.9 reinforce_plus_plus): at a generated t, R = r_t + γ·R and G_t = R;
      a masked t carries R unchanged (observation spans are skipped, not discounted).
    - holes="discount" (OpenRLHF 0.11 get_cumulative_returns): rewards are masked first, then
      every position discounts, R = m_t·r_t + γ·R. OpenRLHF keeps R at masked positions; r3hf
      writes 0 there as every op does (a loss multiplies by the mask anyway).
    With only trailing padding both rules agree. Packed ([T], cu_seqlens): `r3hf.reference.packed`.
    """
    if cu_seqlens is not None:
        from . import packed

        return packed.reward_to_go(rewards, response_mask, gamma, holes, cu_seqlens)
    r = torch.where(response_mask, rewards.float(), 0.0)
    B, L = r.shape
    running = r.new_zeros(B)
    out = r.new_zeros(B, L)
    for t in reversed(range(L)):
        m = response_mask[:, t]
        step = r[:, t] + gamma * running
        running = torch.where(m, step, running) if holes == "skip" else step
        out[:, t] = torch.where(m, running, 0.0)
    return out
