"""The demo's policy: a tiny GPT-2 LM pre-trained on the reference policy's samples, and sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import task
from .reward_model import init_gpt2_weights, tiny_gpt2_config


def make_policy(seed: int = 0):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return init_gpt2_weights(GPT2LMHeadModel(tiny_gpt2_config()), seed)  # same start under every transformers


def pretrain(policy, reference: task.ReferencePolicy, *, steps: int, batch_size: int = 64, lr: float = 3e-3,
             generator: torch.Generator, device: str = "cpu", progress=None) -> list[float]:
    """Teach the policy the reference language: next-token loss on the response part of
    prompt ⊕ reference-sample sequences. Returns the loss per step."""
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    P = task.PROMPT_LEN
    for _ in range(steps):
        prompts = task.sample_prompts(batch_size, generator)
        responses = reference.sample(batch_size, generator)
        ids = torch.cat([prompts, responses], 1).to(device)
        logits = policy(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, P - 1:-1]
        # the response's tokens up to and including <eos>; the padding after it is not language
        targets = ids[:, P:].masked_fill(~task.response_mask(responses).to(device), -100)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(1)
    policy.eval()
    return losses


@torch.no_grad()
def sample(policy, prompts: torch.Tensor, length: int, generator: torch.Generator, temperature: float = 1.0):
    """Sample up to `length` tokens after each prompt with the KV cache; a row that samples `<eos>`
    is right-padded with `<pad>` from there on -> ([B, P + length] query_responses, [B, length]
    log-probs of the sampled tokens, 0 after `<eos>`). `task.response_mask` gives the response's
    tokens."""
    ids = prompts
    attention = torch.ones_like(ids)
    out = policy(input_ids=ids, attention_mask=attention, use_cache=True)
    cache, logits = _kv_cache(out), out.logits[:, -1]
    cache_arg = _cache_argument(policy)
    tokens, logprobs = [], []
    ended = torch.zeros(ids.shape[0], 1, dtype=torch.bool, device=ids.device)
    for _ in range(length):
        logp = F.log_softmax(logits.float() / temperature, dim=-1)
        # sample on the CPU generator so runs are reproducible on every device
        tok = torch.multinomial(logp.exp().cpu(), 1, generator=generator).to(ids.device)
        lp = logp.gather(1, tok)
        tok = tok.masked_fill(ended, task.PAD_ID)
        tokens.append(tok)
        logprobs.append(lp.masked_fill(ended, 0.0))
        ended = ended | (tok == task.EOS_ID)
        attention = torch.cat([attention, torch.ones_like(tok)], 1)
        out = policy(input_ids=tok, attention_mask=attention, use_cache=True, **{cache_arg: cache})
        cache, logits = _kv_cache(out), out.logits[:, -1]
    return torch.cat([ids, *tokens], 1), torch.cat(logprobs, 1)


# The KV cache's name changed across transformers releases: `past_key_values` (output field and
# forward argument) in older ones (4.56, 5.10), `cache` in newer ones (5.24). Both forms are supported so that the demo runs
# over the whole declared range (CI's floors step runs the oldest, the main run the newest).


def _kv_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _cache_argument(policy) -> str:
    import inspect

    params = inspect.signature(policy.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
