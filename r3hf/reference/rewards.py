import torch


def _response_positions(scores: torch.Tensor, prompt_len: torch.Tensor, L: int, shift: int) -> torch.Tensor:
    """scores[b, prompt_len[b] + j + shift] for j in [0, L) -> [B, L] (indices clamped at 0)."""
    j = torch.arange(L, device=scores.device)
    idx = (prompt_len[:, None] + j[None, :] + shift).clamp_min(0)
    return scores.gather(1, idx)


def _next_generated(mask: torch.Tensor) -> torch.Tensor:
    """For each j, the smallest j' > j with mask[b, j'] set, or L if there is none. [B, L] int64."""
    B, L = mask.shape
    pos = torch.arange(L, device=mask.device).expand(B, L)
    gen = torch.where(mask, pos, torch.full_like(pos, L))
    after = torch.cat([gen[:, 1:], torch.full_like(gen[:, :1], L)], dim=1)
    return after.flip(1).cummin(1).values.flip(1)


def auto_beta(phi: torch.Tensor, final: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Leave-one-out β(t) = clip(Cov(R, Φ_t) / Var(Φ_t), 0, 1) per row and response position.

    phi [B, L] (Φ of each generated token), final [B] (R, the final score), mask bool [B, L]
    (which rows have a generated token at t). Row b's β at t is estimated on the other rows with a
    token at t, so its baseline β·Φ_t does not depend on its own return (no bias from reusing the
    sample). Fewer than 2 other rows, or Var(Φ_t) = 0 among them: β = 0 (sparse). float32 [B, L].
    """
    w = mask.double()
    x = torch.where(mask, phi.double(), 0.0)
    y = torch.where(mask, final.double()[:, None].expand_as(x), 0.0)
    # Column sums over all rows, minus row b's own term: the other rows' sufficient statistics.
    n = w.sum(0, keepdim=True) - w
    sx = x.sum(0, keepdim=True) - x
    sy = y.sum(0, keepdim=True) - y
    sxx = (x * x).sum(0, keepdim=True) - x * x
    sxy = (x * y).sum(0, keepdim=True) - x * y
    m = n.clamp_min(1.0)
    cov = sxy - sx * sy / m  # (n − 1)·Cov: the factor cancels in the ratio
    var = sxx - sx * sx / m
    ok = (n >= 2) & (var > 1e-12 * sxx.abs().clamp_min(1e-30))
    beta = torch.where(ok, cov / torch.where(ok, var, 1.0), 0.0).clamp(0.0, 1.0)
    return torch.where(mask, beta, 0.0).float()


def redistribute(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    prompt_len: torch.Tensor,
    first: str = "prompt",
    beta_c: float = 1.0,
    beta_c_auto: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    potential: torch.Tensor | None = None,
) -> torch.Tensor:
    """R3HF/RED token rewards from prefix scores.

    scores [B, S] (reward-model score of every prefix), response_mask bool [B, L],
    prompt_len int64 [B]: response token j of row b sits at position prompt_len[b] + j.

    Let u_1 < … < u_n be the positions of the row's generated (unmasked) tokens. Potentials
    Φ_1 = scores[prompt_len − 1] (first="prompt") or 0 (first="zero"), Φ_k = scores[u_k − 1]
    for k ≥ 2, Φ_{n+1} = scores[u_n]; dense reward at u_k is Φ_{k+1} − Φ_k. A contiguous mask gives
    scores[t] − scores[t − 1]; a masked span between two generated tokens is credited to the
    generated token before it; dense rewards telescope to scores[u_n] − Φ_1. Sparse reward is
    scores[u_n] at u_n. Returns β_c·dense + (1 − β_c)·sparse, float32 [B, L], 0 where masked
    (all 0 for a row with no generated token).

    That mix is potential-based shaping of the sparse reward with potential β_c·Φ_k (0 after the
    last token). beta_c_auto=True (ops' beta_c="auto") uses β(u_k)·Φ_k instead, with β from
    `auto_beta` (leave-one-out over the batch at each response position): the reward-to-go from
    u_k is R − β(u_k)·Φ_k, the variance-minimising scaled baseline.

    potential ([B, S] like scores, or [T] packed): a separate shaping potential Φ' (e.g. a
    potential head on the reward model's hidden states). Then Φ_1 = potential[prompt_len − 1] (or
    0) and Φ_k = potential[u_k − 1], while Φ_{n+1} = scores[u_n] = R stays the reward model's final
    score: token u_n gets R − Φ'_n and a row's dense rewards sum to R − Φ_1. Everything above (holes,
    the β_c mix, "auto") applies with Φ' in place of the prefix scores; sparse is still R at u_n. So
    a number β_c shapes with β_c·Φ'_k, and "auto" uses β(u_k)·Φ'_k with β from auto_beta(Φ', R).
    potential = scores gives exactly the results without it.

    cu_seqlens (int64 [N + 1]): a packed batch, scores, potential and response_mask [T], prompt_len
    None (`r3hf.reference.packed`).
    """
    if cu_seqlens is not None:
        from . import packed

        return packed.redistribute(scores, response_mask, first, beta_c, beta_c_auto, cu_seqlens, potential)
    s = scores.float()
    mask = response_mask
    B, L = mask.shape
    after = _response_positions(s, prompt_len, L, 0)  # R(x, y≤j): read at the last generated token only
    # Φ: the prefix scores themselves, or the separate potential Φ' (same positions).
    pot = s if potential is None else potential.float()
    before = _response_positions(pot, prompt_len, L, -1)  # Φ(x, y<j)

    nxt = _next_generated(mask)
    has_next = nxt < L
    is_first = mask & (mask.cumsum(1) == 1)
    is_last = mask & ~has_next

    if first == "prompt":
        phi_1 = pot.gather(1, (prompt_len - 1)[:, None])
    else:
        phi_1 = torch.zeros((B, 1), dtype=s.dtype, device=s.device)
    phi_in = torch.where(is_first, phi_1, before)  # Φ_k
    phi_out = torch.where(has_next, before.gather(1, nxt.clamp_max(L - 1)), after)  # Φ_{k+1}
    dense = phi_out - phi_in
    sparse = torch.where(is_last, after, torch.zeros_like(after))
    if beta_c_auto:
        final = torch.where(is_last, after, 0.0).sum(1)  # R of each row (0 for an empty row)
        psi = auto_beta(phi_in, final, mask) * phi_in  # Ψ_k = β(u_k)·Φ_k
        psi_next = torch.where(has_next, psi.gather(1, nxt.clamp_max(L - 1)), 0.0)  # Ψ_{k+1}, 0 after the last
        mixed = sparse + psi_next - psi
    else:
        mixed = dense if beta_c == 1.0 else beta_c * dense + (1.0 - beta_c) * sparse
    return torch.where(mask, mixed, torch.zeros_like(mixed))


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: str = "k1",
    clamp: tuple[float, float] | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token KL estimate, d = logprobs − ref_logprobs ([B, L] -> float32 [B, L]).

    Elementwise: a packed stream ([T], cu_seqlens given) is computed at every position alike.

    k1 = d; k2 = d²/2; k3 = exp(−d) − 1 + d (Schulman's low-variance estimator, as veRL's
    "low_var_kl" and OpenRLHF's k3); abs = |d|. clamp = (low, high) bounds the result.
    """
    d = logprobs.float() - ref_logprobs.float()
    if estimator == "k1":
        kl = d
    elif estimator == "k2":
        kl = 0.5 * d * d
    elif estimator == "k3":
        kl = torch.expm1(-d) + d
    elif estimator == "abs":
        kl = d.abs()
    else:
        raise ValueError(f"estimator must be one of ['k1', 'k2', 'k3', 'abs'], got {estimator!r}")
    if clamp is not None:
        kl = kl.clamp(clamp[0], clamp[1])
    return kl


def token_rewards(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    prompt_len: torch.Tensor,
    logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k1",
    kl_clamp: tuple[float, float] | None = None,
    first: str = "prompt",
    beta_c: float = 1.0,
    reward_clip: tuple[float, float] | None = None,
    beta_c_auto: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    potential: torch.Tensor | None = None,
) -> torch.Tensor:
    """mask · (clip(redistribute(scores, potential=potential)) − kl_coef · kl_penalty(logprobs, ref_logprobs)).

    reward_clip bounds the reward-model part only. float32 [B, L], 0 where masked. Packed
    ([T], cu_seqlens): see `r3hf.reference.packed`.
    """
    if cu_seqlens is not None:
        from . import packed

        return packed.token_rewards(scores, response_mask, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp,
                                    first, beta_c, reward_clip, beta_c_auto, cu_seqlens, potential)
    r = redistribute(scores, response_mask, prompt_len, first, beta_c, beta_c_auto, potential=potential)
    if reward_clip is not None:
        r = r.clamp(reward_clip[0], reward_clip[1])
    if kl_coef != 0.0:
        r = r - kl_coef * kl_penalty(logprobs, ref_logprobs, kl_estimator, kl_clamp)
    return torch.where(response_mask, r, torch.zeros_like(r))
