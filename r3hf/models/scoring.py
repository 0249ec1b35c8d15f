"""Every prefix score of a causal reward model from one forward pass of its backbone."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .heads import Head, find_head


def check_ids(input_ids, attention_mask, device: torch.device | None = None):
    """input_ids integer [B, S], attention_mask None or [B, S] -> (input_ids, bool mask [B, S])."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, S], got shape {list(input_ids.shape)}")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    if attention_mask is None:
        mask = torch.ones_like(input_ids, dtype=torch.bool)
    else:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if list(attention_mask.shape) != list(input_ids.shape):
            raise ValueError(
                f"attention_mask must be [B, S] = {list(input_ids.shape)} (the shape of input_ids), "
                f"got {list(attention_mask.shape)}"
            )
        if attention_mask.device != input_ids.device:
            raise ValueError(
                f"attention_mask is on {attention_mask.device} but input_ids is on {input_ids.device}"
            )
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0
    if device is not None and input_ids.device != device:
        raise ValueError(f"input_ids is on {input_ids.device} but the model is on {device}")
    return input_ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """int64 [B, S]: each attended token's index among the attended tokens of its row (cumsum − 1),
    0 at leading padding, so a left-padded row is positioned as if it were run alone."""
    return (mask.long().cumsum(1) - 1).clamp_min(0)


def _model_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def backbone_hidden_states(backbone: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states [B, S, D] (the model's dtype) in eval mode, 0 at padding positions.

    Pad ids are replaced by 0 (they are masked out anyway; some tokenizers' pad id is outside the
    embedding), and padding rows are zeroed so nothing undefined reaches the reward kernels.
    """
    ids = input_ids.masked_fill(~mask, 0)
    was_training = backbone.training
    backbone.eval()
    try:
        out = backbone(
            input_ids=ids, attention_mask=mask.long(), position_ids=position_ids(mask), use_cache=False,
        )
    finally:
        backbone.train(was_training)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    # In place: a fresh no-grad output, and [B, S, D] can be the largest tensor here.
    return hidden.masked_fill_(~mask[..., None], 0)


def head_hidden_states(head: Head, input_ids, attention_mask=None):
    """(hidden [B, S, D], weight [D], bias float32 [1] | None) for an already resolved `Head`."""
    ids, mask = check_ids(input_ids, attention_mask, _model_device(head.backbone))
    hidden = backbone_hidden_states(head.backbone, ids, mask)
    # Same dtype as the hidden states, so every backend gets matching operands; accumulation stays fp32.
    return hidden, head.weight.to(hidden.dtype), head.bias


def reward_hidden_states(model: nn.Module, input_ids, attention_mask=None, *, head=None, label=None):
    """A reward model's last hidden states and its scalar head, ready for `r3hf.ops.fused_reward_gae`.

    input_ids [B, S] (left padding fine), attention_mask [B, S] or None (all attended) ->
    (hidden [B, S, D] in the model's dtype, 0 at padding; weight [D]; bias float32 [1] or None).
    `hidden @ weight + bias` at position t is the model's score of the prefix ending at t.
    head / label choose the head as in `find_head`.
    """
    return head_hidden_states(find_head(model, head, label), input_ids, attention_mask)


def prefix_scores(model: nn.Module, input_ids, attention_mask=None, *, head=None, label=None, backend="auto"):
    """Score of every prefix from one forward pass -> float32 [B, S], 0 at padding positions.

    scores[b, t] = the model's score of the attended tokens of input_ids[b, :t+1] run on their own
    (what its own forward pools at the last non-pad token). Position ids come from the attention
    mask (cumsum − 1), so left padding is handled; the model runs in eval mode without gradients;
    vocabulary logits are never computed (only the backbone runs). Any model dtype; fp32 output.
    """
    ids, mask = check_ids(input_ids, attention_mask)
    hidden, weight, bias = reward_hidden_states(model, ids, mask, head=head, label=label)
    scores = ops.prefix_scores(hidden, weight, bias, backend=backend)
    return scores.masked_fill(~mask, 0.0)
