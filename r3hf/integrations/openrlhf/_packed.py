"""OpenRLHF 0.11 `packing_samples=True`: its packed stream <-> its [B, S] / [B, A] tensors, and R3HF
rewards computed on the stream (`r3hf.ops` with `cu_seqlens`).

With packing_samples, OpenRLHF's RewardModel.forward (openrlhf/models/model.py) removes padding
before the base model (`unpad_and_slice_tensor`, openrlhf/models/ring_attn_utils.py): flash-attn's
`unpad_input` keeps each row's attended tokens in order, so sequence b is stream positions
cu_seqlens[b] .. cu_seqlens[b+1] − 1 with cu_seqlens = [0, cumsum(attention_mask.sum(1))], and
stream position k is flat padded position indices[k] = b·S + t (the attended positions in
row-major order). With a ring-attention group the stream is padded to a multiple of the group size
and each rank runs one slice. The value head sees [1, T_local, D]; `gather_and_pad_tensor` then
all-gathers the slices, drops the ring padding and pads back to [B, S] before the reward is read
at the last attended token.

`packed_prefix_values` keeps the value head's output on the stream: the score of every prefix,
one forward, with the model's reward normalisation. `packed_token_rewards` / `packed_dense_reward`
compute R3HF rewards on that stream and return them in OpenRLHF's action layout ([B, A]: action j
is sequence position S − A + j, i.e. j + 1 for OpenRLHF's A = S − 1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ... import ops
from ._head import forward_with_head, head_potential, normalised
from ._rewards import check_dense_estimator, kl_reward

__all__ = ["PackedValues", "stream_layout", "packed_prefix_values", "packed_token_rewards", "packed_dense_reward"]


class PackedValues(NamedTuple):
    """A packing_samples RewardModel's head output on its stream.

    values float32 [T] (values[k] is the reward of the truncation ending at stream position k),
    cu_seqlens int64 [B + 1], indices int64 [T] (flat [B·S] position of stream position k, as
    flash-attn's unpad_input), reward [B] (the model's own return value); potential float32 [T]
    (a potential head read from the same forward, normalised like values) or None.
    """

    values: torch.Tensor
    cu_seqlens: torch.Tensor
    indices: torch.Tensor
    reward: torch.Tensor
    potential: torch.Tensor | None = None


def _check_mask(attention_mask, like=None) -> torch.Tensor:
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2 or (
            like is not None and attention_mask.shape != like.shape):
        want = f"[B, S] = {list(like.shape)}" if like is not None else "[B, S]"
        raise ValueError(f"attention_mask must be {want}, got {getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
    return attention_mask


def stream_layout(attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenRLHF's packing of [B, S] rows -> (cu_seqlens int64 [B + 1], indices int64 [T]).

    The layout `unpad_and_slice_tensor` builds with flash-attn's `unpad_input` (before any ring
    attention padding): each row's attended tokens, in order, rows one after another.
    """
    attended = _check_mask(attention_mask) != 0
    cu = torch.nn.functional.pad(attended.sum(1).cumsum(0), (1, 0))
    indices = attended.flatten().nonzero().flatten()
    return cu, indices


def _gather_ring(local: torch.Tensor, group, total: int) -> torch.Tensor:
    """Each ring rank's slice [T_local] -> the whole stream [T] (ring padding dropped)."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather  # keeps the gradient, as OpenRLHF's gather does

    size = dist.get_world_size(group=group)
    pad = (size - total % size) % size
    if local.numel() * size != total + pad:
        raise ValueError(f"ring attention: this rank's value head saw {local.numel()} positions, expected "
                         f"{(total + pad) // size} (T = {total} over a group of {size})")
    return torch.cat(all_gather(local.contiguous(), group=group))[:total]


def packed_prefix_values(reward_model, sequences, attention_mask, *, potential=None, **forward_kwargs) -> PackedValues:
    """A `packing_samples=True` OpenRLHF RewardModel -> its value head's output on the stream.

    sequences, attention_mask [B, S] as OpenRLHF passes them; forward_kwargs go to the model
    (ring_attn_group: the slices of all ranks are gathered, as OpenRLHF gathers its values). One
    forward, the model's own; values are normalised like its reward in eval mode when
    normalize_reward is set. See `PackedValues`. potential: a PotentialHead or its folder, read
    from the value head's input in the same forward (`PackedValues.potential`).
    """
    if not getattr(reward_model, "packing_samples", False):
        raise ValueError("packed_prefix_values needs a RewardModel with packing_samples=True "
                         "(use prefix_values for a padded one)")
    if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2:
        raise ValueError(f"sequences must be [B, S], got {getattr(sequences, 'shape', type(sequences).__name__)}")
    _check_mask(attention_mask, sequences)
    pot = None if potential is None else head_potential(reward_model, potential)
    reward, out, *phi = forward_with_head(reward_model, sequences, attention_mask, forward_kwargs, potential=pot)
    cu, indices = stream_layout(attention_mask)
    cu, indices = cu.to(sequences.device), indices.to(sequences.device)
    T = indices.numel()
    if out.dim() != 3 or out.shape[0] != 1 or out.shape[-1] != 1:
        raise ValueError(f"the value head's output must be [1, T, 1] on the packed stream, got {list(out.shape)}")
    streams = [out[0, :, 0].float()] + [p[0, :, 0].float() for p in phi]
    group = forward_kwargs.get("ring_attn_group")
    if group is not None:
        streams = [_gather_ring(s, group, T) for s in streams]
    elif streams[0].numel() != T:
        raise ValueError(f"the value head saw {streams[0].numel()} positions, but attention_mask has {T} attended tokens")
    streams = [normalised(reward_model, s) for s in streams]
    return PackedValues(streams[0], cu, indices, reward, streams[1] if phi else None)


def to_padded(values: torch.Tensor, indices: torch.Tensor, B: int, S: int) -> torch.Tensor:
    """Stream [T] -> [B, S], 0 at padding (OpenRLHF's `pad_input`)."""
    return values.new_zeros(B * S).index_put((indices,), values).view(B, S)


def _stream_values(packed, attention_mask) -> torch.Tensor:
    values = packed.values if isinstance(packed, PackedValues) else packed
    T = int((attention_mask != 0).sum())
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.numel() != T:
        raise ValueError(f"packed values must be [T] with T = {T} attended tokens in attention_mask (or "
                         f"PackedValues), got {getattr(values, 'shape', type(values).__name__)}")
    return values


def _action_positions(attention_mask: torch.Tensor, action_mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(stream position [B, A] of each action, attended [B, A], action_mask bool [B, A])."""
    B, S = attention_mask.shape
    if not isinstance(action_mask, torch.Tensor) or action_mask.dim() != 2 or action_mask.shape[0] != B \
            or not 0 < action_mask.shape[1] < S:
        raise ValueError(f"action_mask must be [B, A] with B = {B} and 0 < A < S = {S}, "
                         f"got {getattr(action_mask, 'shape', type(action_mask).__name__)}")
    A = action_mask.shape[1]
    attended = attention_mask != 0
    stream_pos = attended.flatten().cumsum(0).view(B, S) - 1  # stream position of each attended token
    pos = stream_pos[:, S - A:]
    att = attended[:, S - A:]
    m = action_mask.to(attention_mask.device) != 0
    if bool((m & ~att).any()):
        raise ValueError("action_mask marks a position that attention_mask says is padding")
    return pos.clamp_min(0), att, m


def packed_token_rewards(
    packed, attention_mask, action_mask, *, first="prompt", beta_c=1.0, reward_clip_range=None, output="actions",
    backend="auto", potential=None,
) -> torch.Tensor:
    """R3HF rewards from the packed head output, computed on the stream -> float32 [B, A] (or [T]).

    packed: `PackedValues` or its values [T]; attention_mask [B, S] (the stream's layout);
    potential [T] (default: packed.potential, a PotentialHead read by `packed_prefix_values`): the
    shaping Φ' of `ops.token_rewards(potential=)`;
    action_mask [B, A] (action j is sequence position S − A + j). Each action token gets the
    score change it caused; observation spans are credited to the action before them; the first
    action is differenced against the score just before it (first="prompt") or 0 ("zero");
    beta_c < 1 mixes in the final score at the last action; reward_clip_range bounds each token's
    reward. output="actions": OpenRLHF's [B, A] (0 at non-action positions); "packed": the stream [T].
    No KL term: see `packed_dense_reward`.
    """
    if output not in ("actions", "packed"):
        raise ValueError(f"output must be 'actions' ([B, A]) or 'packed' ([T]), got {output!r}")
    attention_mask = _check_mask(attention_mask)
    values = _stream_values(packed, attention_mask)
    if potential is None and isinstance(packed, PackedValues):
        potential = packed.potential
    if potential is not None:
        potential = _stream_values(potential, attention_mask).to(values.device)
    cu, _ = stream_layout(attention_mask)
    pos, att, m = _action_positions(attention_mask, action_mask)
    stream_mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    stream_mask = stream_mask.index_put((pos[m].to(values.device),), torch.ones((), dtype=torch.bool,
                                                                               device=values.device))
    rewards = ops.token_rewards(
        values, stream_mask, first=first, beta_c=beta_c, reward_clip=tuple(reward_clip_range) if reward_clip_range
        else None, cu_seqlens=cu.to(values.device), backend=backend, potential=potential,
    )
    if output == "packed":
        return rewards
    return torch.where(att.to(rewards.device), rewards[pos.to(rewards.device)], 0.0)


def packed_dense_reward(
    packed, kl_coef, kl, attention_mask, action_mask, reward_clip_range=None, *, advantage_estimator,
    first="prompt", beta_c=1.0, backend="auto", potential=None,
) -> torch.Tensor:
    """The packed drop-in for OpenRLHF's `compute_reward`: R3HF rewards [B, A] minus kl_coef·kl.

    `packed_token_rewards` (computed on the stream) in the action layout, then OpenRLHF's unmasked
    KL term, exactly as `r3hf.integrations.openrlhf.compute_dense_reward` on the padded
    `prefix_values`. advantage_estimator as there: only "gae" and "reinforce" (the group
    estimators need `compute_advantages_and_returns`).
    """
    check_dense_estimator(advantage_estimator)
    kl_term = kl_reward(kl_coef, kl)
    if not isinstance(action_mask, torch.Tensor) or action_mask.shape != kl.shape:
        raise ValueError(f"action_mask must be [B, A] = {list(kl.shape)}, got "
                         f"{getattr(action_mask, 'shape', type(action_mask).__name__)}")
    dense = packed_token_rewards(packed, attention_mask, action_mask, first=first, beta_c=beta_c,
                                 reward_clip_range=reward_clip_range, backend=backend, potential=potential)
    return dense.to(kl_term.device) + kl_term
