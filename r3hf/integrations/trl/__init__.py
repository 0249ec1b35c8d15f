"""TRL ≤ 1.12 adapter: the rewards/GAE block of its PPOTrainer (`trl.experimental.ppo`) on `r3hf.ops`.

For TRL 1.13+ (no PPOTrainer), `R3HFGRPOTrainer` (a `trl.GRPOTrainer` subclass, TRL 1.13 – 1.16, in
`trl/grpo.py`) is re-exported here: `from r3hf.integrations.trl import R3HFGRPOTrainer`.

TRL's layout: `queries` [B, C] left-padded (C = context_length), `responses` [B, L];
`sequence_lengths` [B] = index of the last non-pad response token (first pad − 1: L − 1 for a
truncated row, −1 for a row whose first token is pad). Its conventions, reproduced here:

- logprobs and ref_logprobs are set to INVALID_LOGPROB = 1.0 after sequence_length, so the KL is 0
  there; k1 = logprobs − ref_logprobs, k3 = exp(ref − logp) − 1 − (ref − logp); rewards =
  −kl_coef·KL everywhere, plus the score at sequence_length + 1 (the first position after EOS)
  when that is inside the response, else at sequence_length;
- values are zeroed from sequence_length + 2 on (the position after EOS keeps its value);
- whiten_rewards: rewards whitened over positions ≤ sequence_length + 1 without shifting the
  mean (unbiased variance, eps 1e-8), 0 beyond;
- GAE: the plain loop over every position, next value 0 after the last; returns = advantages +
  values; advantages then whitened over positions ≤ sequence_length and set to 0 after.

mode="r3hf" keeps all of that but replaces the sparse score by R3HF token-level rewards from the
reward model's logits at every position (`reward_logits` from TRL's `get_reward`).

With a potential head (`r3hf.models.PotentialHead`, docs/potential.md): wrap TRL's own
`get_reward` call in `score_head_potential(reward_model, head)` to read Φ' from the hidden
states the score head reads in that same forward, and pass `potential_logits=` too.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ... import ops

__all__ = ["INVALID_LOGPROB", "TRLRewards", "compute_rewards_and_advantages", "padding_masks", "score_head_potential"]

INVALID_LOGPROB = 1.0
KL_ESTIMATORS = ("k1", "k3")  # TRL ≤ 1.12's PPOConfig accepts these two
MODES = ("sparse", "r3hf")


class TRLRewards(NamedTuple):
    rewards: torch.Tensor  # [B, L] float32
    advantages: torch.Tensor  # [B, L] float32, whitened, 0 after sequence_length
    returns: torch.Tensor  # [B, L] float32


def padding_masks(sequence_lengths: torch.Tensor, response_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's (padding_mask, padding_mask_p1), bool [B, L]: positions after sequence_length (+ 1).

    The PPO loss in TRL's loop needs them: policy terms over ~padding_mask, value terms over
    ~padding_mask_p1.
    """
    idx = torch.arange(response_length, device=sequence_lengths.device)[None, :]
    return idx > sequence_lengths[:, None], idx > sequence_lengths[:, None] + 1


def _check(values, logprobs, ref_logprobs, sequence_lengths):
    for name, t in (("values", values), ("logprobs", logprobs), ("ref_logprobs", ref_logprobs)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a [B, L] tensor, got {getattr(t, 'shape', type(t).__name__)}")
    B, L = values.shape
    for name, t in (("logprobs", logprobs), ("ref_logprobs", ref_logprobs)):
        if t.shape != values.shape:
            raise ValueError(f"{name} must be [B, L] = {[B, L]}, got {list(t.shape)}")
    if not isinstance(sequence_lengths, torch.Tensor) or list(sequence_lengths.shape) != [B]:
        raise ValueError(f"sequence_lengths must be an integer tensor [B] = [{B}], got {sequence_lengths!r}")
    if sequence_lengths.is_floating_point() or sequence_lengths.dtype == torch.bool:
        raise TypeError(f"sequence_lengths must be an integer tensor, got {sequence_lengths.dtype}")
    if B and (int(sequence_lengths.min()) < -1 or int(sequence_lengths.max()) > L - 1):
        raise ValueError(f"sequence_lengths must lie in [-1, L - 1] = [-1, {L - 1}] (TRL's index of the last token)")
    return B, L


def compute_rewards_and_advantages(
    scores, values, logprobs, ref_logprobs, sequence_lengths, context_length=None, kl_coef=0.05, kl_estimator="k1",
    gamma=1.0, lam=0.95, whiten_rewards=False, mode="sparse", *, reward_logits=None, first="prompt", beta_c=1.0,
    backend="auto", potential_logits=None,
) -> TRLRewards:
    """Steps 3–6 of TRL ≤ 1.12's PPO rollout -> TRLRewards(rewards, advantages, returns), float32 [B, L].

    scores [B]: `get_reward(reward_model, postprocessed_query_response, ...)[1]` (after any
    missing_eos_penalty); values [B, L]; logprobs, ref_logprobs [B, L] (padding set to
    INVALID_LOGPROB here too, so raw ones work); sequence_lengths [B] (response-relative, as the
    trainer computes them); kl_coef, kl_estimator ("k1"/"k3"), gamma, lam, whiten_rewards as in
    PPOConfig. mode="sparse" returns exactly what TRL's loop computes.

    mode="r3hf": reward_logits [B, C + L, 1] or [B, C + L] (`get_reward(...)[0]` on the same
    postprocessed query-responses) and context_length = C are required. Each token t ≤
    sequence_length gets reward_logits[C + t] − reward_logits[C + t − 1] (the first one against
    the prompt-only score, or 0 with first="zero"; beta_c < 1 mixes in the sparse score on the
    last token), minus the KL term; TRL's value, whitening and GAE conventions are unchanged.
    If `scores` is given too, its difference from reward_logits at the last token (TRL's
    missing_eos_penalty) is added on that token, so rows still sum to scores − prompt-only score.
    potential_logits (mode="r3hf" only): a potential head's values at the same positions, laid out
    as reward_logits (`score_head_potential`): the shaping Φ' of `ops.token_rewards(potential=)`;
    the last generated token still gets the reward model's R.
    """
    B, L = _check(values, logprobs, ref_logprobs, sequence_lengths)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {list(KL_ESTIMATORS)} (TRL's PPOConfig), got {kl_estimator!r}")
    if not isinstance(whiten_rewards, bool):
        raise TypeError(f"whiten_rewards must be a bool, got {type(whiten_rewards).__name__}")
    seq = sequence_lengths.to(device=values.device, dtype=torch.int64)
    padding_mask, padding_mask_p1 = padding_masks(seq, L)
    logprobs = logprobs.masked_fill(padding_mask, INVALID_LOGPROB)
    ref_logprobs = ref_logprobs.masked_fill(padding_mask, INVALID_LOGPROB)
    values = values.masked_fill(padding_mask_p1, 0)
    idx = torch.arange(L, device=values.device)[None, :]

    if mode == "sparse":
        if scores is None:
            raise ValueError("mode='sparse' needs scores [B] (get_reward's final scores)")
        if potential_logits is not None:
            raise ValueError("potential_logits shapes dense rewards: use mode='r3hf' (mode='sparse' has no shaping)")
        scores = _scores(scores, B, values.device)
        # TRL's score position: right after EOS when inside the response, else the last token.
        end = torch.where(seq + 1 < L, seq + 1, seq)
        # r3hf's sparse reward (beta_c=0) is the score tensor read at a row's last generated
        # token; give it the score at `end` and a mask that ends there. KL is 0 on the padding
        # (INVALID_LOGPROB), so masking it after `end` changes nothing.
        placed = torch.zeros(B, L, dtype=torch.float32, device=values.device)
        placed.scatter_(1, end[:, None], scores[:, None])
        rewards = ops.token_rewards(
            placed, idx <= end[:, None], 0, logprobs=logprobs, ref_logprobs=ref_logprobs, kl_coef=kl_coef,
            kl_estimator=kl_estimator, first="zero", beta_c=0.0, backend=backend,
        )
    else:
        rewards = _dense_rewards(
            reward_logits, scores, context_length, seq, idx, logprobs, ref_logprobs, kl_coef, kl_estimator, first,
            beta_c, backend, potential_logits,
        )

    if whiten_rewards:
        rewards = ops.masked_whiten(rewards, ~padding_mask_p1, shift_mean=False, backend=backend)
    everywhere = torch.ones(B, L, dtype=torch.bool, device=values.device)
    advantages, returns = ops.gae(rewards, values, everywhere, gamma, lam, backend=backend)
    advantages = ops.masked_whiten(advantages, ~padding_mask, backend=backend)
    return TRLRewards(rewards, advantages, returns)


def _scores(scores, B: int, device) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or scores.numel() != B or scores.dim() > 2:
        raise ValueError(f"scores must be a tensor [B] = [{B}], got {getattr(scores, 'shape', type(scores).__name__)}")
    return scores.reshape(B).to(device=device, dtype=torch.float32)


def _dense_rewards(
    reward_logits, scores, context_length, seq, idx, logprobs, ref_logprobs, kl_coef, kl_estimator, first, beta_c,
    backend, potential_logits=None,
):
    B, L = logprobs.shape
    if reward_logits is None or context_length is None:
        raise ValueError("mode='r3hf' needs reward_logits [B, C + L, 1] and context_length = C (from get_reward)")
    if not isinstance(reward_logits, torch.Tensor):
        raise TypeError(f"reward_logits must be a tensor, got {type(reward_logits).__name__}")
    prefix = reward_logits[..., 0] if reward_logits.dim() == 3 and reward_logits.shape[-1] == 1 else reward_logits
    phi = None
    if potential_logits is not None:
        if not isinstance(potential_logits, torch.Tensor):
            raise TypeError(f"potential_logits must be a tensor like reward_logits, got {type(potential_logits).__name__}")
        phi = potential_logits
        if phi.dim() == 3 and phi.shape[-1] == 1:
            phi = phi[..., 0]
        if phi.shape != prefix.shape:
            raise ValueError(f"potential_logits must be laid out as reward_logits ({list(reward_logits.shape)}), "
                             f"got {list(potential_logits.shape)}")
        phi = phi.to(prefix.dtype)
    generated = idx <= seq[:, None]
    rewards = ops.token_rewards(
        prefix, generated, context_length, logprobs=logprobs, ref_logprobs=ref_logprobs, kl_coef=kl_coef,
        kl_estimator=kl_estimator, first=first, beta_c=beta_c, backend=backend, potential=phi,
    )
    if scores is not None:
        # A penalty TRL applied to the final score only (missing_eos_penalty) is not in the prefix
        # scores; put it on the last generated token, where the sparse score would be.
        scores = _scores(scores, B, logprobs.device)
        last = (context_length + seq).clamp_min(0)
        final = prefix.float().gather(1, last[:, None]).squeeze(1)
        has = seq >= 0
        correction = torch.zeros_like(rewards)
        correction.scatter_(1, seq.clamp_min(0)[:, None], torch.where(has, scores - final, 0.0)[:, None])
        rewards = rewards + correction
    return rewards


class score_head_potential:
    """Read a potential head from the hidden states the reward model's score head reads, in the
    forward TRL's `get_reward` already runs (no second forward):

        with score_head_potential(reward_model, head) as pot:
            reward_logits, scores, sequence_lengths = get_reward(reward_model, query_responses, pad, C)
        compute_rewards_and_advantages(..., mode="r3hf", reward_logits=reward_logits,
                                       potential_logits=pot.logits)

    head: a `r3hf.models.PotentialHead` or the folder its save_pretrained wrote (D checked against
    the score head). pot.logits: float32 [B, S, 1], laid out as reward_logits (last forward inside).
    """

    def __init__(self, reward_model, potential, *, head_name: str = "score"):
        from ...models.potential import load_potential

        score = getattr(reward_model, head_name, None)
        weight = getattr(score, "weight", None)
        if not isinstance(score, torch.nn.Module) or not isinstance(weight, torch.Tensor):
            raise ValueError(f"reward_model has no score head {head_name!r} (an nn.Module with a weight)")
        self.head = load_potential(potential, name="potential", hidden_size=weight.shape[-1]).to(weight.device)
        self.score = score
        self.logits = None
        self._handle = None

    def _hook(self, module, args, out):
        self.logits = self.head(args[0])[..., None]

    def __enter__(self):
        self._handle = self.score.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False


def __getattr__(name):
    # TRL 1.13+ GRPO trainer, imported on first use so this module keeps working with TRL <= 1.12.
    if name == "R3HFGRPOTrainer":
        from .grpo import R3HFGRPOTrainer

        return R3HFGRPOTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
