"""Every position's value from OpenRLHF 0.11's RewardModel, from the forward it already runs.

OpenRLHF's `RewardModel.forward` (openrlhf/models/model.py) applies its value head to the last
hidden state at every position, then keeps only the last attended one (normalised by the
model's mean/std in eval mode when `normalize_reward` is set). `prefix_values` runs that same
forward once and also keeps the head's output at every position: the score of every prefix,
which is what R3HF differences (`compute_dense_reward`, `compute_advantages_and_returns`).
"""

from __future__ import annotations

import torch

from ._head import fill_padding, forward_with_head, normalised
from ._packed import packed_prefix_values, to_padded


def prefix_values(reward_model, sequences, attention_mask, *, return_reward=False, **forward_kwargs):
    """OpenRLHF RewardModel -> values float32 [B, S] (and its reward [B] with return_reward=True).

    values[b, t] is the reward the model gives the truncation sequences[b, :t + 1] (its last
    attended token at or before t), the same normalisation applied; positions before a row's
    first attended token (left padding) are 0. One forward: the model's own, with a hook on its
    value head (`value_head_prefix`). A `packing_samples=True` model runs on its packed stream
    (flash-attn's unpadded layout); its head output is put back in [B, S] as OpenRLHF pads its
    values (`packed_prefix_values` keeps the stream).
    """
    if getattr(reward_model, "packing_samples", False):
        packed = packed_prefix_values(reward_model, sequences, attention_mask, **forward_kwargs)
        values = to_padded(packed.values, packed.indices, *sequences.shape)
        values = fill_padding(values, attention_mask)
        return (packed.reward, values) if return_reward else values
    if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2:
        raise ValueError(f"sequences must be [B, S], got {getattr(sequences, 'shape', type(sequences).__name__)}")
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != sequences.shape:
        raise ValueError(f"attention_mask must be [B, S] = {list(sequences.shape)}, got "
                         f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
    reward, out = forward_with_head(reward_model, sequences, attention_mask, forward_kwargs)
    values = fill_padding(normalised(reward_model, out.squeeze(-1).float()), attention_mask)
    return (reward, values) if return_reward else values
