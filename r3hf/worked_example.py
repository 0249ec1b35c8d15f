"""A small worked example: a tiny random GPT-2 reward model scores every prefix of a batch in one
forward pass, and r3hf turns those scores into token rewards, KL-penalised, then GAE.

Offline: the model is built from a config, the data is made in code.
"""

from __future__ import annotations

import torch

from . import ops


def run(seed: int = 0, out=print) -> dict:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2, num_labels=1, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    rm = GPT2ForSequenceClassification(config).eval()

    B, P, L = 3, 5, 8
    prompt = torch.randint(1, 64, (B, P))
    response = torch.randint(1, 64, (B, L))
    response_mask = torch.ones(B, L, dtype=torch.bool)
    response_mask[1, 6:] = False  # row 1 stopped early (trailing padding)
    response_mask[2, 2:4] = False  # row 2 has a multi-turn observation span (a hole)
    ids = torch.cat([prompt, torch.where(response_mask, response, 0)], dim=1)
    attention = torch.cat([torch.ones(B, P, dtype=torch.bool), response_mask], dim=1)

    with torch.no_grad():
        hidden = rm.transformer(input_ids=ids, attention_mask=attention).last_hidden_state  # [B, S, D]
    values = torch.randn(B, L) * 0.1
    logprobs = -torch.rand(B, L)
    ref_logprobs = logprobs + 0.05 * torch.randn(B, L)

    rewards, advantages, returns = ops.fused_reward_gae(
        hidden, rm.score.weight, None, values, response_mask, P,
        logprobs=logprobs, ref_logprobs=ref_logprobs, kl_coef=0.05, gamma=1.0, lam=0.95,
    )
    scores = ops.prefix_scores(hidden, rm.score.weight)
    backend = ops.backends()["ops"]["fused_reward_gae"]["cpu"]

    out(f"r3hf worked example (backend for fused_reward_gae on cpu: {backend})")
    for b in range(B):
        last = int(response_mask[b].nonzero().max()) + P
        out(f"\nrow {b}: prompt-only score {scores[b, P - 1]:+.4f}, final score {scores[b, last]:+.4f}")
        out("  token  mask   reward   advantage   return")
        for j in range(L):
            out(f"  {j:5d}  {int(response_mask[b, j]):4d}  {rewards[b, j]:+.4f}   {advantages[b, j]:+.4f}    {returns[b, j]:+.4f}")
        dense = ops.redistribute(scores, response_mask, P)[b].sum()
        out(f"  dense rewards sum to {dense:+.4f} = final − prompt-only score {scores[b, last] - scores[b, P - 1]:+.4f}")
    return {"rewards": rewards, "advantages": advantages, "returns": returns}
