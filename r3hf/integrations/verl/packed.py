"""veRL 0.9 packed (no-padding) batches: its stream layout <-> its [B, L] response tensors, and
R3HF token rewards computed on the stream (`r3hf.ops` with `cu_seqlens`).

veRL's packed layout (`use_remove_padding`, the nested-tensor engine): `left_right_2_no_padding`
removes padding with `unpad_input(input_ids, attention_mask)`, so sequence i is stream positions
cu_seqlens[i] .. cu_seqlens[i+1] − 1, its attended prompt tokens then its response_lens[i]
response tokens. Model outputs come back as [T] tensors, or jagged nested tensors whose offsets
are cu_seqlens. veRL reads response token j of row i at stream position

    cu_seqlens[i+1] − response_lens[i] + j − 1      (`no_padding_2_padding`, `response_from_nested`)

one to the left, because the output at a position belongs to the token after it (log-probs,
values). That is `shift=1` here. It never reads the output at a sequence's last token, which for
a reward model is the score of the whole sequence: the final score R3HF needs. R3HF rewards are
token-aligned (token j's reward is score(y≤j) − score(y<j)), so they use `shift=0`.

- `packed_layout(data)`: the layout from veRL's batch, read as `no_padding_2_padding` reads it.
- `unpack_responses(packed, layout, shift=...)`: [T] -> [B, L] (shift=1 equals veRL's own).
- `pack_responses(responses, layout, shift=...)`: [B, L] -> [T], the reverse (0 elsewhere).
- `packed_response_mask(response_mask, layout)`: veRL's response_mask on the stream, bool [T].
- `packed_prefix_rewards(scores, response_mask, layout, ...)`: a reward model's packed per-token
  scores -> R3HF `token_level_scores` / `token_level_rewards` [B, L] (or [T]).
- `compute_gae_advantage_return(rewards, values, response_mask, layout, ...)`: veRL's GAE on the
  stream, from the critic's packed values.

Indexing only: the math is `r3hf.ops` with `cu_seqlens=...`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ... import ops
from . import _kl_name

__all__ = [
    "PackedLayout",
    "packed_layout",
    "unpack_responses",
    "pack_responses",
    "packed_response_mask",
    "packed_prefix_rewards",
    "compute_gae_advantage_return",
]


class PackedLayout(NamedTuple):
    """Where veRL's responses sit in its packed stream.

    cu_seqlens int64 [B + 1] (sequence i is stream positions cu_seqlens[i] .. cu_seqlens[i+1] − 1),
    response_lens int64 [B] (the last response_lens[i] of them are its response), response_length
    (L, the width of veRL's [B, L] response tensors, >= every response length).
    """

    cu_seqlens: torch.Tensor
    response_lens: torch.Tensor
    response_length: int


def _shape(x) -> str:
    if isinstance(x, torch.Tensor):
        return "a nested tensor" if x.is_nested else f"shape {list(x.shape)}"
    return type(x).__name__


def _non_tensor(value):
    # veRL stores metadata as tensordict NonTensorData; unwrap it as tu.get_non_tensor_data does.
    return value.data if type(value).__name__ in ("NonTensorData", "NonTensorStack") else value


def _get(data, key):
    try:
        return data[key]
    except (KeyError, TypeError):
        return None


def _int_vector(name: str, x) -> torch.Tensor:
    ok = isinstance(x, torch.Tensor) and not x.is_nested and x.dim() == 1
    if not ok or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        dtype = f" {x.dtype}" if ok else ""
        raise ValueError(f"{name} must be a 1-D integer tensor, got {_shape(x)}{dtype}")
    return x.to(torch.int64)


def packed_layout(data=None, *, cu_seqlens=None, response_lens=None, response_length=None) -> PackedLayout:
    """veRL's packed layout, from its batch or given directly.

    data: veRL's batch (a TensorDict, `DataProto.batch` or a dict) as `no_padding_2_padding`
    reads it: "prompts" [B, P], "responses" [B, L] and "attention_mask" [B, P + L] (left-padded
    prompts, right-padded responses), or "prompts"/"responses" as jagged nested tensors (the
    nested engine's batch). Or, without data: cu_seqlens [B + 1] (a tensor, or the packed nested
    output whose offsets it is, e.g. the engine's "values") and response_lens [B] (a tensor, or
    veRL's nested response_mask, as `response_from_nested` reads it). response_length defaults to
    the batch's response width (L, or the longest response).
    """
    if data is not None:
        if cu_seqlens is not None or response_lens is not None:
            raise ValueError("packed_layout: give either data or cu_seqlens/response_lens, not both")
        prompts, responses = _get(data, "prompts"), _get(data, "responses")
        if not isinstance(prompts, torch.Tensor) or not isinstance(responses, torch.Tensor):
            raise ValueError("packed_layout: data must hold veRL's 'prompts' and 'responses' tensors")
        if prompts.is_nested:
            if not responses.is_nested:
                raise ValueError("packed_layout: data['responses'] must be nested when data['prompts'] is")
            prompt_lens = prompts.offsets().diff()
            resp = responses.offsets().diff()
            width = _non_tensor(_get(data, "max_response_len"))  # set by left_right_2_no_padding
            if width is None or int(width) < 0:  # veRL's default: the longest response
                width = int(resp.max()) if resp.numel() else 0
        else:
            mask = _get(data, "attention_mask")
            if not isinstance(mask, torch.Tensor) or mask.is_nested or mask.dim() != 2 or prompts.dim() != 2 \
                    or responses.dim() != 2 or mask.shape[1] != prompts.shape[1] + responses.shape[1]:
                raise ValueError(
                    "packed_layout: data['attention_mask'] must be [B, P + L] for prompts [B, P] and responses "
                    f"[B, L]; got attention_mask {_shape(mask)}, prompts {_shape(prompts)}, responses {_shape(responses)}"
                )
            P = prompts.shape[1]
            prompt_lens = (mask[:, :P] != 0).sum(1)
            resp = (mask[:, P:] != 0).sum(1)
            width = responses.shape[1]
        cu = torch.nn.functional.pad((prompt_lens + resp).cumsum(0), (1, 0))
        return _checked(cu, resp, width if response_length is None else response_length)
    if cu_seqlens is None or response_lens is None:
        raise ValueError("packed_layout: give veRL's batch (data) or both cu_seqlens and response_lens")
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.is_nested:
        cu_seqlens = cu_seqlens.offsets()
    if isinstance(response_lens, torch.Tensor) and response_lens.is_nested:
        response_lens = response_lens.offsets().diff()
    cu = _int_vector("cu_seqlens", cu_seqlens)
    resp = _int_vector("response_lens", response_lens)
    if response_length is None:
        response_length = int(resp.max()) if resp.numel() else 0
    return _checked(cu, resp, response_length)


def _checked(cu: torch.Tensor, resp: torch.Tensor, width) -> PackedLayout:
    cu, resp = cu.to(torch.int64), resp.to(torch.int64).to(cu.device)
    if cu.numel() != resp.numel() + 1 or cu.numel() < 2:
        raise ValueError(f"cu_seqlens must be [B + 1] for response_lens [B] (B >= 1), got {cu.numel()} and {resp.numel()}")
    seqlens = cu.diff()
    if int(cu[0]) != 0 or bool((seqlens < 0).any()):
        raise ValueError(f"cu_seqlens must start at 0 and be non-decreasing, got {cu.tolist()}")
    if bool((resp < 0).any()) or bool((resp > seqlens).any()):
        raise ValueError(f"response_lens must be in [0, sequence length]: got {resp.tolist()} for sequence "
                         f"lengths {seqlens.tolist()}")
    width = int(width)
    if resp.numel() and width < int(resp.max()):
        raise ValueError(f"response_length must be >= the longest response ({int(resp.max())}), got {width}")
    return PackedLayout(cu, resp, width)


def _as_layout(layout) -> PackedLayout:
    return layout if isinstance(layout, PackedLayout) else packed_layout(layout)


def _stream(name: str, packed, layout: PackedLayout) -> torch.Tensor:
    """packed [T, *] or a jagged nested tensor with offsets cu_seqlens -> [T, *]."""
    if not isinstance(packed, torch.Tensor):
        raise ValueError(f"{name} must be a tensor [T, ...] or a nested tensor, got {_shape(packed)}")
    T = int(layout.cu_seqlens[-1])
    if packed.is_nested:
        offsets = packed.offsets()
        if offsets.numel() != layout.cu_seqlens.numel() or not torch.equal(offsets.cpu().to(torch.int64),
                                                                             layout.cu_seqlens.cpu()):
            raise ValueError(f"{name}: the nested tensor's offsets are not the layout's cu_seqlens")
        packed = packed.values()
    if packed.dim() < 1 or packed.shape[0] != T:
        raise ValueError(f"{name} must be [T, ...] with T = cu_seqlens[-1] = {T}, got {_shape(packed)}")
    return packed


def _positions(layout: PackedLayout, shift: int, width: int, device):
    """(stream index [B, width] of response token j, valid [B, width] = j < response_lens)."""
    if shift not in (0, 1):
        raise ValueError(f"shift must be 0 (token-aligned: rewards, masks) or 1 (veRL's model outputs: "
                         f"log-probs, values), got {shift!r}")
    cu, resp = layout.cu_seqlens.to(device), layout.response_lens.to(device)
    if shift and bool(((cu.diff() - resp < 1) & (resp > 0)).any()):
        # veRL asserts this too: the output before the first response token must exist.
        raise ValueError("shift=1 needs a prompt token before every response (a sequence has none)")
    j = torch.arange(width, device=device)
    valid = j[None, :] < resp[:, None]
    idx = (cu[1:] - resp)[:, None] + j[None, :] - shift
    return torch.where(valid, idx, torch.zeros_like(idx)), valid


def unpack_responses(packed, layout, *, shift: int) -> torch.Tensor:
    """Packed stream [T, *] (or nested, offsets = cu_seqlens) -> veRL's response tensor [B, L, *].

    shift=1: veRL's own `no_padding_2_padding` (log-probs, values: the output one position left of
    each response token). shift=0: token-aligned tensors (R3HF rewards, masks). Positions past a
    response are 0. layout: a `PackedLayout` or veRL's batch (see `packed_layout`). Same dtype.
    """
    layout = _as_layout(layout)
    x = _stream("packed", packed, layout)
    idx, valid = _positions(layout, shift, layout.response_length, x.device)
    out = x[idx]
    valid = valid.reshape(*valid.shape, *([1] * (x.dim() - 1)))
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))


def pack_responses(responses, layout, *, shift: int) -> torch.Tensor:
    """veRL's response tensor [B, L', *] (or nested [B, j, *]) -> packed stream [T, *], 0 elsewhere.

    The reverse of `unpack_responses` with the same shift: response token j of row i goes to stream
    position cu_seqlens[i+1] − response_lens[i] + j − shift. L' >= every response length; a nested
    tensor's rows must be exactly response_lens long. Same dtype; gradients flow.
    """
    layout = _as_layout(layout)
    if not isinstance(responses, torch.Tensor):
        raise ValueError(f"responses must be a [B, L] tensor or a nested tensor, got {_shape(responses)}")
    B = layout.response_lens.numel()
    if responses.is_nested:
        lens = responses.offsets().diff().to(layout.response_lens.device)
        if lens.numel() != B or not torch.equal(lens.to(torch.int64), layout.response_lens):
            raise ValueError(f"responses: nested row lengths {lens.tolist()} are not the layout's response_lens "
                             f"{layout.response_lens.tolist()}")
        values = responses.values()
        width = int(lens.max()) if B else 0
    else:
        longest = int(layout.response_lens.max()) if B else 0
        if responses.dim() < 2 or responses.shape[0] != B or responses.shape[1] < longest:
            raise ValueError(f"responses must be [B, L, ...] with B = {B} and L >= the longest response ({longest}), "
                             f"got {_shape(responses)}")
        width = responses.shape[1]
        values = None
    idx, valid = _positions(layout, shift, width, responses.device)
    if values is None:
        values = responses[valid]
    T = int(layout.cu_seqlens[-1])
    out = values.new_zeros((T, *values.shape[1:]))
    return out.index_put((idx[valid],), values)


def packed_response_mask(response_mask, layout) -> torch.Tensor:
    """veRL's response_mask [B, L] (or nested) -> bool [T]: true at generated stream positions.

    Prompt tokens, multi-turn observation tokens (response_mask 0) and padding are false.
    """
    layout = _as_layout(layout)
    if not isinstance(response_mask, torch.Tensor):
        raise ValueError(f"response_mask must be a [B, L] tensor or a nested tensor, got {_shape(response_mask)}")
    if not response_mask.is_nested and response_mask.dim() == 2 and response_mask.shape[0] == layout.response_lens.numel():
        j = torch.arange(response_mask.shape[1], device=response_mask.device)
        outside = (response_mask != 0) & (j[None, :] >= layout.response_lens.to(response_mask.device)[:, None])
        if bool(outside.any()):
            raise ValueError("response_mask marks tokens past a row's response length (attention_mask says they are "
                             "padding)")
    return pack_responses(response_mask != 0 if not response_mask.is_nested else response_mask.to(torch.bool),
                          layout, shift=0)


def packed_prefix_rewards(
    scores, response_mask, layout, *, old_log_probs=None, ref_log_prob=None, kl_coef=0.0, kl_penalty="kl",
    first="prompt", beta_c=1.0, output="responses", backend="auto",
) -> torch.Tensor:
    """A reward model's packed per-token scores -> R3HF rewards in veRL's [B, L] response layout.

    scores: [T] (also [1, T], [T, 1] or the engine's nested [B, j] output): the reward head read at
    every stream position, score[p] = R(x, y≤p), e.g. the "values" of veRL's value-head engine run
    on a reward model, or `ops.prefix_scores(hidden_rmpad, weight)`. Not left-shifted: the last
    token's score is the final one. response_mask: veRL's [B, L] (or nested) response_mask.
    layout: a `PackedLayout` or veRL's batch.

    Returns float32 [B, L] (output="responses"; veRL's token_level_scores, or token_level_rewards
    with a KL term), or the stream [T] (output="packed"). Token j gets score(p_j) − score(p_j − 1);
    observation spans are credited to the generated token before them; the first generated token
    is differenced against the score of the position just before it (first="prompt") or 0
    (first="zero"); a row sums to its final score minus that. beta_c < 1 mixes in the final score
    at the last generated token. With kl_coef != 0: minus kl_coef · veRL's `kl_penalty`
    (old_log_probs, ref_log_prob: veRL's [B, L] response tensors, or nested) at generated tokens,
    as `apply_kl_penalty`. Equal to `r3hf.integrations.verl.token_level_rewards` on the padded
    batch, except that tokens at the start of a response with response_mask 0 count as prompt.
    """
    if output not in ("responses", "packed"):
        raise ValueError(f"output must be 'responses' ([B, L]) or 'packed' ([T]), got {output!r}")
    layout = _as_layout(layout)
    T = int(layout.cu_seqlens[-1])
    if isinstance(scores, torch.Tensor) and not scores.is_nested and scores.dim() == 2:
        if scores.shape[0] == 1 and scores.shape[1] == T:
            scores = scores[0]
        elif scores.shape[1] == 1:
            scores = scores[:, 0]
    s = _stream("scores", scores, layout)
    if s.dim() != 1:
        raise ValueError(f"scores must be one score per stream position ([T] = [{T}]), got {_shape(scores)}")
    mask = packed_response_mask(response_mask, layout).to(s.device)
    estimator, clamp = _kl_name(kl_penalty)
    kl_coef = float(kl_coef)
    lp = ref = None
    if kl_coef != 0.0:
        if old_log_probs is None or ref_log_prob is None:
            raise ValueError("kl_coef != 0 needs old_log_probs and ref_log_prob ([B, L] response tensors)")
        lp = pack_responses(old_log_probs, layout, shift=0).to(s.device)
        ref = pack_responses(ref_log_prob, layout, shift=0).to(s.device)
    rewards = ops.token_rewards(
        s, mask, logprobs=lp, ref_logprobs=ref, kl_coef=kl_coef, kl_estimator=estimator, kl_clamp=clamp,
        first=first, beta_c=beta_c, cu_seqlens=layout.cu_seqlens.to(s.device), backend=backend,
    )
    return rewards if output == "packed" else unpack_responses(rewards, layout, shift=0)


def _token_aligned(name: str, x, layout: PackedLayout, *, model_output: bool) -> torch.Tensor:
    """A stream [T] as given, or veRL's [B, L] response tensor packed (0 elsewhere).

    model_output: a [T] / nested stream is veRL's raw model output (left-shifted; realigned here).
    """
    if isinstance(x, torch.Tensor) and not x.is_nested and x.dim() == 2:
        return pack_responses(x, layout, shift=0)
    x = _stream(name, x, layout)
    if x.dim() != 1:
        raise ValueError(f"{name} must be [T] or veRL's [B, L] response tensor, got {_shape(x)}")
    return pack_responses(unpack_responses(x, layout, shift=1), layout, shift=0) if model_output else x


def compute_gae_advantage_return(
    token_level_rewards, values, response_mask, layout, gamma=1.0, lam=1.0, *, output="responses", backend="auto",
):
    """veRL's `compute_gae_advantage_return` on the packed stream -> (advantages, returns) float32.

    token_level_rewards: token-aligned, [T] (e.g. `packed_prefix_rewards(..., output="packed")`)
    or veRL's [B, L]. values: the critic's packed output as veRL's value engine returns it ([T] or
    nested; response token j's value is the output one position left, as `no_padding_2_padding`
    reads it), or veRL's [B, L] values. response_mask: veRL's [B, L] (or nested). layout: a
    `PackedLayout` or veRL's batch. Masked positions carry the next value and the running advantage,
    then advantages are whitened over response_mask == 1 (unbiased, eps 1e-8), as veRL does.
    Returns [B, L] response tensors (output="responses"; equal to veRL's at every response token,
    0 past a response's end, where veRL leaves whitened padding) or streams [T] ("packed"; 0 at
    prompt tokens).
    """
    if output not in ("responses", "packed"):
        raise ValueError(f"output must be 'responses' ([B, L]) or 'packed' ([T]), got {output!r}")
    from . import _scalar

    layout = _as_layout(layout)
    rewards = _token_aligned("token_level_rewards", token_level_rewards, layout, model_output=False)
    v = _token_aligned("values", values, layout, model_output=True).to(rewards.device)
    mask = packed_response_mask(response_mask, layout).to(rewards.device)
    cu = layout.cu_seqlens.to(rewards.device)
    advantages, returns = ops.gae(rewards, v, mask, _scalar("gamma", gamma), _scalar("lam", lam), carry_masked=True,
                                  cu_seqlens=cu, backend=backend)
    advantages = ops.masked_whiten(advantages, mask, transform_masked=True, cu_seqlens=cu, backend=backend)
    if output == "packed":
        return advantages, returns
    return unpack_responses(advantages, layout, shift=0), unpack_responses(returns, layout, shift=0)
