"""Reward-model prefix scores at a TRL GRPO batch's completion tokens (no TRL import here).

TRL's GRPOTrainer scores a completion by re-tokenising the text prompt + completion (after its chat
template, for conversational data) with the reward model's own tokenizer and reading the score at
the last token. R3HFGRPOTrainer keeps exactly that input, so the final score is TRL's reward, and
reads every prefix score of it in the same single forward pass (`r3hf.models`). Completion token k
of the policy is then given the score of the longest reward-model prefix that ends at or before
the character where token k ends in that text (the alignment of `r3hf.models.align`, with the
policy's text located inside the text the reward model reads).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ...models.align import left_pad, policy_char_ends, rm_encode, rm_prefix_index


def completion_char_ends(
    rm_text: str, prompt_end: int, tokenizer, completion_ids: Sequence[int], last_generated: int,
) -> list[int]:
    """Where each completion token ends in `rm_text` (character offsets, nondecreasing).

    The policy's completion is decoded piece by piece (special tokens skipped, as TRL decodes
    it) and each piece is looked up in `rm_text` from where the previous one ended, starting at
    `prompt_end`. For plain-text prompts the pieces follow one another exactly; a chat template
    that rewrites the completion leaves a piece unmatched, and that token then ends where the
    previous one did (its score change moves to a later token; the row sum is unchanged).
    Tokens from `last_generated` on end at len(rm_text), so the last generated token carries the
    score of the whole text: TRL's reward.
    """
    text, ends = policy_char_ends(tokenizer, completion_ids, skip_special_tokens=True)
    out, cursor, prev = [], prompt_end, 0
    for k, end in enumerate(ends):
        piece = text[prev:end]
        prev = end
        if k >= last_generated >= 0:
            cursor = len(rm_text)
        elif piece:
            pos = rm_text.find(piece, cursor)
            if pos >= 0:
                cursor = pos + len(piece)
        out.append(cursor)
    return out


def prompt_boundary(rm_text: str, prompt_text: str) -> int:
    """Characters of `rm_text` that belong to the prompt: all of `prompt_text` when it is a prefix
    (plain text, or a chat template rendered with its generation prompt), else the common prefix."""
    if rm_text.startswith(prompt_text):
        return len(prompt_text)
    n = 0
    for a, b in zip(rm_text, prompt_text):
        if a != b:
            break
        n += 1
    return n


def aligned_completion_scores(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    rm_tokenizer,
    rm_texts: Sequence[str],
    prompt_ends: Sequence[int],
    token_ends: Sequence[Sequence[int]],
    T: int,
    device,
    outputs: int = 1,
) -> tuple[torch.Tensor, ...]:
    """One reward-model forward over `rm_texts` -> (scores float32 [B, 1 + T], final float32 [B]).

    score_fn(rm_ids [B, S_rm], rm_mask [B, S_rm]) -> float32 [B, S_rm] prefix scores (one forward).
    rm_texts are tokenised as TRL tokenises them (the RM's tokenizer, no special tokens added).
    scores[:, 0] is the score of the longest RM prefix ending at or before prompt_ends[b] (the
    prompt-only score; 0 if none), scores[:, 1 + k] that of the longest ending at or before
    token_ends[b][k]; columns past a row's completion repeat its last value. final[b] is the score
    of the whole text, what TRL's own reward path reads (logits[:, 0]).

    outputs=2: score_fn returns (scores, phi) from the same forward (the RM's head and a potential
    head); then (scores, final, phi [B, 1 + T]) come back, phi picked at the same RM prefixes.
    """
    B = len(rm_texts)
    encoded = rm_encode(rm_tokenizer, rm_texts, add_special_tokens=False)
    rm_ids, rm_mask = left_pad([ids for ids, _ in encoded], 0, device)
    rm_ends, _ = left_pad([ends for _, ends in encoded], 0, device)
    boundaries = torch.zeros((B, 1 + T), dtype=torch.int64)
    for b in range(B):
        row = [int(prompt_ends[b])] + [int(e) for e in token_ends[b]]
        boundaries[b, : len(row)] = torch.tensor(row, dtype=torch.int64)
        boundaries[b, len(row):] = row[-1]
    if rm_ids.shape[1] == 0:  # every text empty
        zeros = torch.zeros((B, 1 + T), dtype=torch.float32, device=device)
        return (zeros, zeros[:, 0].clone()) + ((zeros.clone(),) if outputs == 2 else ())
    rm_out = score_fn(rm_ids, rm_mask)
    rm_scores = rm_out[0] if outputs == 2 else rm_out
    idx = rm_prefix_index(rm_ends, rm_mask, boundaries.to(device))

    def pick(t):
        picked = t.gather(1, idx.clamp_min(0))
        return torch.where(idx >= 0, picked, torch.zeros_like(picked)).float()

    final = torch.where(rm_mask[:, -1], rm_scores[:, -1], torch.zeros_like(rm_scores[:, -1]))  # left-padded
    return (pick(rm_scores), final.float()) + ((pick(rm_out[1]),) if outputs == 2 else ())
