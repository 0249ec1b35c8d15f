"""OpenRLHF 0.11's RewardModel forward with its value head's output kept at every position (shared by
`prefix_values` and the packed path)."""

from __future__ import annotations

import torch


def value_head(reward_model) -> torch.nn.Module:
    prefix = getattr(reward_model, "value_head_prefix", None)
    head = getattr(reward_model, prefix, None) if prefix else None
    if not isinstance(head, torch.nn.Module):
        raise ValueError("reward_model must be OpenRLHF's RewardModel (a value head named by value_head_prefix)")
    return head


def forward_with_head(reward_model, sequences, attention_mask, forward_kwargs: dict, *, potential=None):
    """The model's own forward, once -> (its reward [B], its value head's output at every position),
    plus, with a potential head, that head read from the same hidden states (the value head's
    input) -> float32 [..., 1] like the value head's output."""
    captured = []

    def hook(module, args, out):
        phi = None
        if potential is not None:
            phi = potential(args[0])[..., None]  # the hidden states the value head reads, [.., S, D]
        captured.append((out, phi))

    handle = value_head(reward_model).register_forward_hook(hook)
    try:
        reward = reward_model(sequences, attention_mask=attention_mask, **forward_kwargs)
    finally:
        handle.remove()
    if isinstance(reward, tuple):  # return_output=True
        reward = reward[0]
    out, phi = captured[-1]
    return (reward, out) if potential is None else (reward, out, phi)


def head_potential(reward_model, potential, name: str = "potential"):
    """A `potential=` argument -> PotentialHead on the value head's device, D checked against it."""
    from ...models.potential import load_potential

    head = value_head(reward_model)
    weight = getattr(head, "weight", None)
    D = weight.shape[-1] if isinstance(weight, torch.Tensor) else None
    pot = load_potential(potential, name=name, hidden_size=D)
    return pot.to(weight.device) if weight is not None else pot


def normalised(reward_model, values: torch.Tensor) -> torch.Tensor:
    """The model's own reward normalisation (eval mode, normalize_reward), applied to every position
    as OpenRLHF applies it to the last one."""
    if not reward_model.training and getattr(reward_model, "normalize_reward", False):
        return (values - reward_model.mean.float()) / reward_model.std.float()
    return values


def fill_padding(values, attention_mask):
    # Padding positions: the value of the last attended token at or before them (what scoring that
    # truncation returns); 0 before the first attended token.
    attended = attention_mask != 0
    pos = torch.arange(values.shape[1], device=values.device).expand_as(values)
    src = torch.where(attended, pos, torch.full_like(pos, -1)).cummax(1).values
    return torch.where(src >= 0, values.gather(1, src.clamp_min(0)), 0.0)
