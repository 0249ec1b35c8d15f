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


MODEL_PAD = "model"  # pad_token_id default: the model config's pad id, which its own forward pools by


class _Stop(Exception):
    """Raised by the probe hook: the model's forward is stopped before its backbone computes anything."""


def _autocast_dtype(device_type: str):
    """The autocast dtype active now for `device_type`, or None when autocast is off."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError):  # a device type autocast does not know
        pass
    return None


def forward_autocast(model: nn.Module | None, backbone: nn.Module, device: torch.device):
    """The autocast dtype (or None) under which the model's own `forward` runs its backbone.

    A model whose `forward` was replaced on the instance (accelerate/TRL with bf16 or fp16 wrap
    it in autocast) is probed: its forward is called on one token and stopped by a hook before
    the backbone computes anything. Otherwise (or if the probe cannot run) the ambient state.
    """
    ambient = _autocast_dtype(device.type)
    if model is None or "forward" not in vars(model):
        return ambient
    seen = []

    def hook(module, args, kwargs):
        seen.append(_autocast_dtype(device.type))
        raise _Stop

    handle = backbone.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
    except _Stop:
        pass
    except Exception:  # noqa: BLE001 - a wrapper we cannot call this way: keep the ambient state
        return ambient
    finally:
        handle.remove()
    return seen[0] if seen else ambient


def resolve_pad_id(model: nn.Module | None, pad_token_id=MODEL_PAD):
    """pad_token_id as given (an int or None), or the model config's for the default "model"."""
    if isinstance(pad_token_id, str):
        if pad_token_id != MODEL_PAD:
            raise ValueError(f'pad_token_id must be "model", an int or None, got {pad_token_id!r}')
        if model is None:
            return None
        from .heads import model_config

        return getattr(model_config(model), "pad_token_id", None)
    if pad_token_id is None:
        return None
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
        raise TypeError(f'pad_token_id must be "model", an int or None, got {type(pad_token_id).__name__}')
    return int(pad_token_id)


def pooled_index(input_ids: torch.Tensor, mask: torch.Tensor, pad_id: int | None) -> torch.Tensor | None:
    """int64 [B, S]: the position whose head output is the model's own score of the prefix ending
    at t, or None when that is t everywhere.

    Hugging Face sequence classifiers (and TRL's get_reward) pool at the last non-pad token, so a
    pad-id token (pad == eos: an EOS, or one sampled mid-response) keeps the previous prefix's
    score. With no earlier non-pad token the model reads its first token (argmax of all zeros).
    """
    if pad_id is None:
        return None
    is_pad = mask & (input_ids == pad_id)
    if not bool(is_pad.any()):
        return None
    S = input_ids.shape[1]
    pos = torch.arange(S, device=input_ids.device).expand_as(input_ids)
    last_real = torch.where(mask & ~is_pad, pos, torch.full_like(pos, -1)).cummax(1).values
    first_attended = mask.long().argmax(1, keepdim=True).expand_as(pos)
    return torch.where(last_real >= 0, last_real, first_attended)


@torch.no_grad()
def backbone_hidden_states(backbone: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, *,
                           autocast_dtype=None, pad_id: int | None = None) -> torch.Tensor:
    """Last hidden states [B, S, D] in eval mode, 0 at padding positions.

    Pad ids are replaced by 0 (they are masked out anyway; some tokenizers' pad id is outside the
    embedding), and padding rows are zeroed so nothing undefined reaches the reward kernels.
    autocast_dtype: run the backbone under that autocast (as the model's own forward does) or
    with autocast off (None). pad_id: an attended pad-id token carries the hidden state the
    model's own pooling reads for that prefix (see `pooled_index`), so its score is the previous
    prefix's and its R3HF reward is 0.
    """
    ids = input_ids.masked_fill(~mask, 0)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.autocast(ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = backbone(
                input_ids=ids, attention_mask=mask.long(), position_ids=position_ids(mask), use_cache=False,
            )
    finally:
        backbone.train(was_training)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    index = pooled_index(input_ids, mask, pad_id)
    if index is not None:
        hidden = hidden.gather(1, index[..., None].expand_as(hidden))
    # In place: a fresh no-grad output, and [B, S, D] can be the largest tensor here.
    return hidden.masked_fill_(~mask[..., None], 0)


def head_hidden_states(head: Head, input_ids, attention_mask=None, pad_token_id=MODEL_PAD):
    """(hidden [B, S, D], weight [D], bias float32 [1] | None) for an already resolved `Head`.

    Follows the model's own forward: its autocast (hidden and weight then come in the autocast
    dtype, as its head's matmul reads them) and its pad pooling (`pooled_index`).
    """
    device = _model_device(head.backbone)
    ids, mask = check_ids(input_ids, attention_mask, device)
    pad_id = resolve_pad_id(head.model, pad_token_id)
    dtype = forward_autocast(head.model, head.backbone, device)
    hidden = backbone_hidden_states(head.backbone, ids, mask, autocast_dtype=dtype, pad_id=pad_id)
    if dtype is not None and hidden.dtype != dtype:
        hidden = hidden.to(dtype)
    # Same dtype as the hidden states, so every backend gets matching operands; accumulation stays fp32.
    return hidden, head.weight.to(hidden.dtype), head.bias


def reward_hidden_states(model: nn.Module, input_ids, attention_mask=None, *, head=None, label=None,
                         pad_token_id=MODEL_PAD):
    """A reward model's last hidden states and its scalar head, ready for `r3hf.ops.fused_reward_gae`.

    input_ids [B, S] (left padding fine), attention_mask [B, S] or None (all attended) ->
    (hidden [B, S, D] in the model's dtype (its autocast dtype if its forward is wrapped in
    autocast), 0 at padding; weight [D]; bias float32 [1] or None). `hidden @ weight + bias` at
    position t is the model's score of the prefix ending at t; an attended token equal to
    pad_token_id ("model": the config's; None: no pad rule) keeps the previous prefix's score.
    head / label choose the head as in `find_head`.
    """
    return head_hidden_states(find_head(model, head, label), input_ids, attention_mask, pad_token_id)


def prefix_scores(model: nn.Module, input_ids, attention_mask=None, *, head=None, label=None, backend="auto",
                  pad_token_id=MODEL_PAD):
    """Score of every prefix from one forward pass -> float32 [B, S], 0 at padding positions.

    scores[b, t] = the model's score of the attended tokens of input_ids[b, :t+1] run on their own
    (what its own forward pools at the last non-pad token). Position ids come from the attention
    mask (cumsum − 1), so left padding is handled; the model runs in eval mode without gradients;
    vocabulary logits are never computed (only the backbone runs). Any model dtype; fp32 output.
    Pad == eos: an attended token equal to pad_token_id ("model": the config's, as the model's
    own pooling; an int; None: no pad rule) keeps the previous prefix's score, so its R3HF reward
    is 0. A `forward` wrapped in autocast (accelerate, TRL with bf16) is followed.
    """
    ids, mask = check_ids(input_ids, attention_mask)
    hidden, weight, bias = reward_hidden_states(model, ids, mask, head=head, label=label, pad_token_id=pad_token_id)
    return project(hidden, weight, bias, backend).masked_fill(~mask, 0.0)


def project(hidden, weight, bias, backend="auto") -> torch.Tensor:
    """`ops.prefix_scores` with autocast off, so an ambient autocast cannot lower the fp32 result."""
    with torch.autocast(hidden.device.type, enabled=False):
        return ops.prefix_scores(hidden, weight, bias, backend=backend)
