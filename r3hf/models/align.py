"""Prefix scores of a reward model whose tokenizer differs from the policy's.

The policy's tokens are decoded to text; the text is re-tokenised with the reward model's (fast)
tokenizer, whose offset mapping gives the character where each RM token ends. Every RM prefix is
scored in one forward pass. Policy position t, whose decoded prefix ends at character c_t, gets
the score of the longest RM prefix that ends at or before c_t. Differencing these aligned scores
gives each policy token the change in RM score between the RM prefixes ending at or before its
character boundaries, so a row's rewards still telescope to final − prompt-only score.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch


def same_tokenizer(a, b) -> bool:
    """True when a and b tokenise identically (same object, or fast tokenizers with the same
    serialised pipeline and vocabulary): then the policy's ids are the RM's ids."""
    if a is b:
        return True
    try:
        return (
            a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
            and a.get_vocab() == b.get_vocab()
            and a.all_special_ids == b.all_special_ids
        )
    except AttributeError:
        return False


def policy_char_ends(tokenizer, ids: Sequence[int], *, skip_special_tokens: bool = True) -> tuple[str, list[int]]:
    """Decode ids -> (text, ends): ends[k] is the length of the text that ids[:k+1] decode to.

    Streams the ids through the tokenizer's incremental decoder (O(n)); if the streamed pieces do
    not join up to the full decode, falls back to decoding every prefix (O(n²) characters). A
    token that ends inside a character (byte-level BPE) ends where the text decodable so far
    ends: the stream may hold back a few more characters than the prefix decode; either way ends
    never decrease and the last one is len(text), so the alignment preserves row sums.
    """
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)
    ends = _streamed_ends(tokenizer, ids, text, skip_special_tokens)
    if ends is None:
        ends = prefix_decoded_ends(tokenizer, ids, text, skip_special_tokens)
    return text, ends


def _streamed_ends(tokenizer, ids: list[int], text: str, skip_special_tokens: bool) -> list[int] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        from tokenizers.decoders import DecodeStream
    except ImportError:
        return None
    if backend is None:
        return None
    stream = DecodeStream(skip_special_tokens=skip_special_tokens)
    pieces, ends, n = [], [], 0
    try:
        for i in ids:
            piece = stream.step(backend, i)  # None while a character is still incomplete
            if piece:
                pieces.append(piece)
                n += len(piece)
            ends.append(n)
    except Exception:  # a decoder the stream cannot drive: use the exact fallback
        return None
    return ends if "".join(pieces) == text else None


def prefix_decoded_ends(tokenizer, ids: list[int], text: str, skip_special_tokens: bool = True) -> list[int]:
    """ends[k] = length of decode(ids[:k+1]), by decoding every prefix (one batch call). A prefix
    that is not a prefix of `text` (a token ending mid-character) counts up to the common part;
    ends never decrease."""
    kw = dict(skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)
    ends, high = [], 0
    for prefix in tokenizer.batch_decode([ids[: k + 1] for k in range(len(ids))], **kw):
        c = len(prefix) if text.startswith(prefix) else len(os.path.commonprefix([prefix, text]))
        high = max(high, c)
        ends.append(high)
    return ends


def rm_encode(rm_tokenizer, texts: Sequence[str], *, add_special_tokens: bool = True):
    """Tokenise texts with the RM's fast tokenizer -> list of (ids, ends), ends[j] = the character
    where RM token j ends (a running max, so zero-width special tokens attach to what precedes)."""
    if not getattr(rm_tokenizer, "is_fast", False):
        raise TypeError(
            f"rm tokenizer {type(rm_tokenizer).__name__} is not a fast tokenizer; aligning different tokenizers "
            "needs character offsets (return_offsets_mapping), which only fast tokenizers give"
        )
    enc = rm_tokenizer(list(texts), add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    rows = []
    for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"]):
        ends, high = [], 0
        for _, end in offsets:
            high = max(high, int(end))
            ends.append(high)
        rows.append((list(ids), ends))
    return rows


def left_pad(rows: Sequence[Sequence[int]], fill: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ints -> (int64 [B, S] left-padded with `fill`, bool mask [B, S])."""
    S = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), S), fill, dtype=torch.int64)
    mask = torch.zeros((len(rows), S), dtype=torch.bool)
    for b, r in enumerate(rows):
        if r:
            out[b, S - len(r):] = torch.tensor(list(r), dtype=torch.int64)
            mask[b, S - len(r):] = True
    return out.to(device), mask.to(device)


def rm_prefix_index(rm_ends: torch.Tensor, rm_mask: torch.Tensor, policy_ends: torch.Tensor) -> torch.Tensor:
    """For each policy position, the RM position of the longest RM prefix ending at or before its
    character boundary; -1 where no RM token ends that early.

    rm_ends int64 [B, S_rm] (nondecreasing over attended positions), rm_mask bool [B, S_rm]
    (left padding), policy_ends int64 [B, S] -> int64 [B, S].
    """
    ends = torch.where(rm_mask, rm_ends, torch.full_like(rm_ends, -1))  # padding sorts first
    idx = torch.searchsorted(ends.contiguous(), policy_ends.contiguous(), right=True) - 1
    first = (~rm_mask).sum(1, keepdim=True)  # first attended RM position of each row
    return torch.where(idx >= first, idx, torch.full_like(idx, -1))


def aligned_prefix_scores(
    score_fn, policy_tokenizer, rm_tokenizer, input_ids: torch.Tensor, mask: torch.Tensor, *,
    skip_special_tokens: bool = True, add_special_tokens: bool = True, outputs: int = 1,
):
    """Policy-positioned prefix scores [B, S] of a reward model with its own tokenizer.

    score_fn(rm_ids [B, S_rm], rm_mask [B, S_rm]) -> float32 [B, S_rm] prefix scores. outputs > 1:
    score_fn returns that many such tensors from one forward (the RM's head and a potential head)
    and a tuple of aligned tensors comes back, each picked at the same RM prefixes.
    input_ids/mask [B, S]: the policy batch; masked positions are not decoded. aligned[b, t] =
    RM score of the longest RM prefix ending at or before the end of the text of the policy's
    attended tokens up to t; 0 where no RM prefix is that short.
    """
    B, S = input_ids.shape
    texts, policy_ends = [], torch.zeros((B, S), dtype=torch.int64)
    ids_cpu, mask_cpu = input_ids.cpu(), mask.cpu()
    for b in range(B):
        pos = mask_cpu[b].nonzero().flatten()
        text, ends = policy_char_ends(policy_tokenizer, ids_cpu[b, pos].tolist(), skip_special_tokens=skip_special_tokens)
        texts.append(text)
        row = torch.zeros(S, dtype=torch.int64)
        if len(pos):
            row[pos] = torch.tensor(ends, dtype=torch.int64)
        policy_ends[b] = row.cummax(0).values  # unattended positions carry the boundary before them
    encoded = rm_encode(rm_tokenizer, texts, add_special_tokens=add_special_tokens)
    device = input_ids.device
    rm_ids, rm_mask = left_pad([ids for ids, _ in encoded], 0, device)
    rm_ends, _ = left_pad([ends for _, ends in encoded], 0, device)
    if rm_ids.shape[1] == 0:  # every text empty: no RM prefix at all
        zeros = [torch.zeros((B, S), dtype=torch.float32, device=device) for _ in range(outputs)]
        return zeros[0] if outputs == 1 else tuple(zeros)
    rm_scores = score_fn(rm_ids, rm_mask)
    idx = rm_prefix_index(rm_ends, rm_mask, policy_ends.to(device))

    def pick(t):
        picked = t.gather(1, idx.clamp_min(0))
        return torch.where(idx >= 0, picked, torch.zeros_like(picked))

    return pick(rm_scores) if outputs == 1 else tuple(pick(t) for t in rm_scores)
