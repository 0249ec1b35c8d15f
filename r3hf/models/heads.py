"""Finding a reward model's causal backbone and its scalar head.

A Hugging Face reward model is a causal backbone (found through `base_model_prefix`) followed by
a linear head read at the last non-pad token. r3hf reads the backbone's last hidden states at
every position and applies the head itself, so the head must be a linear map to a scalar: a
`score` layer (GPT-2, Llama, Qwen2, Mistral, Gemma sequence classifiers), a `v_head` /
`summary` value head (TRL's value-head wrappers), or a `num_labels > 1` head reduced to one
score by a label index or a weight vector over the labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import torch
from torch import nn

# Searched in this order when no head is named.
HEAD_NAMES = ("score", "v_head", "value_head", "summary", "reward_head")


class UnsupportedModelError(ValueError):
    """The model cannot give prefix scores (an encoder, no causal backbone or no scalar head)."""


@dataclass(frozen=True)
class Head:
    """A reward model split for prefix scoring.

    backbone: the module whose `last_hidden_state` [B, S, D] is read; weight [D]; bias None or a
    float32 [1] tensor; name: where the head was found (for messages); model: the whole model
    (its `forward` wrapper, e.g. accelerate's autocast, and its config's pad id are followed).
    """

    backbone: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    name: str
    model: nn.Module | None = None


def model_config(model: nn.Module):
    """The (text) config of a model or of the model a value-head wrapper holds."""
    config = getattr(model, "config", None)
    if config is None:
        inner = getattr(model, "pretrained_model", None)
        config = getattr(inner, "config", None)
    if config is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no `config`; pass a Hugging Face model")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def find_backbone(model: nn.Module) -> nn.Module:
    """The causal backbone: `model.<base_model_prefix>` (inside `pretrained_model` for value-head wrappers)."""
    inner = getattr(model, "pretrained_model", None)
    holder = inner if isinstance(inner, nn.Module) else model
    prefix = getattr(holder, "base_model_prefix", None)
    backbone = getattr(holder, prefix, None) if prefix else None
    if not isinstance(backbone, nn.Module) or backbone is holder:
        raise UnsupportedModelError(
            f"cannot find the backbone of {type(model).__name__}: expected a submodule named by its "
            f"base_model_prefix ({prefix!r})"
        )
    return backbone


def _linear_of(module: nn.Module, name: str) -> nn.Linear:
    """A head module reduced to its linear layer (TRL's ValueHead keeps it in `.summary`)."""
    if isinstance(module, nn.Linear):
        return module
    summary = getattr(module, "summary", None)
    if isinstance(summary, nn.Linear):
        return summary
    if isinstance(module, nn.Sequential):
        layers = [m for m in module if not isinstance(m, (nn.Dropout, nn.Identity))]
        if len(layers) == 1 and isinstance(layers[0], nn.Linear):
            return layers[0]
    raise UnsupportedModelError(
        f"head {name!r} of type {type(module).__name__} is not a linear layer; prefix scores need a linear "
        "head (pass head=<nn.Linear> to choose one)"
    )


def _label_reduce(linear: nn.Linear, label, name: str):
    """[num_labels, D] head -> weight [D], bias [1] | None, by a label index or label weights."""
    w = linear.weight
    b = linear.bias
    n = w.shape[0]
    if label is None:
        if n != 1:
            raise UnsupportedModelError(
                f"head {name!r} has {n} outputs (num_labels = {n}); pass label=<index> or label=<weights [{n}]>"
            )
        return w[0], (b.reshape(1) if b is not None else None)
    if isinstance(label, Integral) and not isinstance(label, bool):
        if not -n <= int(label) < n:
            raise ValueError(f"label must be in [0, {n}) for a head with {n} outputs, got {label}")
        i = int(label)
        return w[i], (b[i].reshape(1) if b is not None else None)
    if isinstance(label, (list, tuple)) and all(isinstance(c, Real) for c in label):
        label = torch.tensor(label, dtype=torch.float32)
    if not isinstance(label, torch.Tensor) or not label.is_floating_point():
        raise TypeError(f"label must be None, an int or label weights (floats [{n}]), got {type(label).__name__}")
    if list(label.shape) != [n]:
        raise ValueError(f"label weights must be [num_labels] = [{n}], got {list(label.shape)}")
    c = label.to(device=w.device, dtype=torch.float32)
    weight = c @ w.float()
    bias = (c @ b.float()).reshape(1) if b is not None else None
    return weight, bias


def find_head(model: nn.Module, head=None, label=None, *, check: bool = True) -> Head:
    """Split `model` into causal backbone + scalar head.

    head: None (search `score`, `v_head`, `value_head`, `summary`, `reward_head`), an attribute
    name ("score", "v_head.summary") or an nn.Linear. label: None (a single-output head), an int
    (one output of a num_labels > 1 head) or float weights [num_labels] (their weighted sum).
    check=False skips the causality check (for a model already checked).
    """
    if check:
        check_causal(model)
    backbone = find_backbone(model)
    if isinstance(head, nn.Module):
        module, name = head, type(head).__name__
    elif head is None or isinstance(head, str):
        names = HEAD_NAMES if head is None else (head,)
        module, name = None, None
        for n in names:
            m = model
            for part in n.split("."):
                m = getattr(m, part, None)
            if isinstance(m, nn.Module):
                module, name = m, n
                break
        if module is None:
            wanted = f"{head!r}" if head is not None else " or ".join(repr(n) for n in HEAD_NAMES)
            raise UnsupportedModelError(
                f"{type(model).__name__} has no reward head named {wanted}; pass head=<name or nn.Linear>"
            )
    else:
        raise TypeError(f"head must be None, an attribute name or an nn.Linear, got {type(head).__name__}")
    linear = _linear_of(module, name)
    weight, bias = _label_reduce(linear, label, name)
    if bias is not None:
        bias = bias.detach().float()
    return Head(backbone=backbone, weight=weight.detach(), bias=bias, name=name, model=model)


def check_causal(model: nn.Module) -> None:
    """Refuse encoder (bidirectional) and encoder-decoder models: their per-position outputs see the
    future, so they are not prefix scores."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = model_config(model)
    kind = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{type(model).__name__} ({kind}) is an encoder-decoder model; r3hf needs a causal (decoder-only) "
            "reward model, whose score at position t depends only on tokens ≤ t"
        )
    # BERT-style types can be built as decoders (is_decoder=True); otherwise they attend both ways.
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise UnsupportedModelError(
            f"{type(model).__name__} ({kind}) is a bidirectional encoder: its output at position t sees later "
            "tokens, so it is not a prefix score. r3hf needs a causal (decoder-only) reward model"
        )
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not _probe_causal(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} ({kind}) is not causal: changing the last token changed earlier hidden "
            "states. r3hf needs a causal (decoder-only) reward model"
        )


@torch.no_grad()
def _probe_causal(model: nn.Module) -> bool:
    """For model types transformers does not list as causal LMs: change the last of 4 tokens and
    check that the first 3 hidden states do not move."""
    backbone = find_backbone(model)
    param = next(backbone.parameters())
    vocab = int(getattr(model_config(model), "vocab_size", 8) or 8)
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5]], device=param.device) % max(vocab, 1)
    was_training = backbone.training
    backbone.eval()
    try:
        hidden = backbone(input_ids=ids).last_hidden_state.float()
    finally:
        backbone.train(was_training)
    return torch.allclose(hidden[0, :3], hidden[1, :3], rtol=1e-3, atol=1e-4)
