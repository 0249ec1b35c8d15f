"""Every position's value from OpenRLHF 0.11's RewardModel, from the forward it already runs.

OpenRLHF's `RewardModel.forward` (openrlhf/models/model.py) applies its value head to the last
hidden state at every position, then keeps only the last attended one (normalised by the
model's mean/std in eval mode when `normalize_reward` is set). `prefix_values` runs that same
forward once and also keeps the head's output at every position: the score of every prefix,
which is what R3HF differences (`compute_dense_reward`, `compute_advantages_and_returns`).
"""

from __future__ import annotations

import torch

from ._head import fill_padding, forward_with_head, head_potential, normalised
from ._packed import packed_prefix_values, to_padded


def prefix_values(reward_model, sequences, attention_mask, *, return_reward=False, potential=None, **forward_kwargs):
    """OpenRLHF RewardModel -> values float32 [B, S] (and its reward [B] with return_reward=True).

    potential: a `r3hf.models.PotentialHead` or the folder its save_pretrained wrote. It is read
    from the hidden states the value head reads in the same forward, normalised as the values
    are, and returned after them: (values, potential) or (reward, values, potential), both
    [B, S]. Pass both on (`compute_dense_reward(..., potential=)`, `compute_advantages_and_returns`).

    values[b, t] is the reward the model gives the truncation sequences[b, :t + 1] (its last
    attended token at or before t), the same normalisation applied; positions before a row's
    first attended token (left padding) are 0. One forward: the model's own, with a hook on its
    value head (`value_head_prefix`). A `packing_samples=True` model runs on its packed stream
    (flash-attn's unpadded layout); its head output is put back in [B, S] as OpenRLHF pads its
    values (`packed_prefix_values` keeps the stream).
    """
    if getattr(reward_model, "packing_samples", False):
        packed = packed_prefix_values(reward_model, sequences, attention_mask, potential=potential, **forward_kwargs)
        out = [fill_padding(to_padded(packed.values, packed.indices, *sequences.shape), attention_mask)]
        if potential is not None:
            out.append(fill_padding(to_padded(packed.potential, packed.indices, *sequences.shape), attention_mask))
        return _returned(packed.reward, out, return_reward)
    if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2:
        raise ValueError(f"sequences must be [B, S], got {getattr(sequences, 'shape', type(sequences).__name__)}")
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != sequences.shape:
        raise ValueError(f"attention_mask must be [B, S] = {list(sequences.shape)}, got "
                         f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
    pot = None if potential is None else head_potential(reward_model, potential)
    reward, *outs = forward_with_head(reward_model, sequences, attention_mask, forward_kwargs, potential=pot)
    out = [fill_padding(normalised(reward_model, o.squeeze(-1).float()), attention_mask) for o in outs]
    return _returned(reward, out, return_reward)


def _returned(reward, out: list, return_reward: bool):
    if return_reward:
        return (reward, *out)
    return out[0] if len(out) == 1 else tuple(out)
