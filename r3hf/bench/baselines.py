"""What users run today, written here (not imported from the peers) so every benchmark compares
against the same code on any machine. These are baselines to beat, not r3hf's math: r3hf's
results come from `r3hf.ops` only."""

from __future__ import annotations

import torch


def verl_style_gae(rewards, values, mask, gamma, lam):
    """A per-position Python loop over [B] vectors with veRL's masked carry (its multi-turn rule)."""
    m = mask.to(values.dtype)
    B, T = rewards.shape
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    last = torch.zeros_like(next_value)
    out = []
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        new_last = delta + gamma * lam * last
        next_value = values[:, t] * m[:, t] + (1 - m[:, t]) * next_value
        last = new_last * m[:, t] + (1 - m[:, t]) * last
        out.append(last)
    adv = torch.stack(out[::-1], dim=1)
    return adv, adv + values


def plain_loop_gae(rewards, values, mask, gamma, lam):
    """The TRL / OpenRLHF loop: padding zeroed, every position visited."""
    m = mask.to(values.dtype)
    values, rewards = values * m, rewards * m
    B, T = rewards.shape
    last = torch.zeros(B, dtype=values.dtype, device=values.device)
    out = []
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t < T - 1 else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        out.append(last)
    adv = torch.stack(out[::-1], dim=1)
    return adv, adv + values


def torchrl_available() -> bool:
    try:
        import torchrl.objectives.value.functional  # noqa: F401
    except Exception:
        return False
    return True


def torchrl_vec_gae(rewards, values, mask, gamma, lam):
    """torchrl's vectorised GAE (conv1d with a geometric kernel); rows end at their last token."""
    from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

    m = mask.to(values.dtype)
    v = (values * m)[..., None]
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)
    done = torch.zeros_like(v, dtype=torch.bool)
    done[:, -1] = True
    adv, ret = vec_generalized_advantage_estimate(gamma, lam, v, next_v, (rewards * m)[..., None], done, done)
    return adv[..., 0], ret[..., 0]


def unfused_rewards(scores, mask, prompt_len: int, logprobs, ref_logprobs, kl_coef):
    """Dense rewards as a user writes them in torch: consecutive differences, KL, mask."""
    L = mask.shape[1]
    r = scores[:, prompt_len : prompt_len + L] - scores[:, prompt_len - 1 : prompt_len + L - 1]
    return (r - kl_coef * (logprobs - ref_logprobs)) * mask


def unfused_reward_gae(hidden, head: torch.nn.Linear, values, mask, prompt_len: int, logprobs, ref_logprobs,
                       kl_coef, gamma, lam):
    """The unfused path: the HF head over all positions, then differences, KL and the loop GAE."""
    scores = head(hidden).squeeze(-1).float()
    rewards = unfused_rewards(scores, mask.float(), prompt_len, logprobs, ref_logprobs, kl_coef)
    adv, ret = plain_loop_gae(rewards, values, mask, gamma, lam)
    return rewards, adv, ret


def read_bandwidth_probe(t: torch.Tensor):
    """Reads every byte of t once: the machine's practical read bandwidth for that tensor.

    A max over the bytes seen as int16: one of torch's fastest vectorised reductions, free of the
    bf16 conversion and float special cases that would make the probe compute-bound.
    """
    return t.reshape(-1).view(torch.int16).amax()


def copy_bandwidth_probe(src: torch.Tensor, dst: torch.Tensor):
    """Reads and writes every byte once: device copy bandwidth (count 2x the bytes)."""
    return dst.copy_(src)
