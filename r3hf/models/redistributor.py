"""Token rewards for a PPO batch straight from Hugging Face reward models."""

from __future__ import annotations

from numbers import Integral

import torch
from torch import nn

from .. import _validate as v
from .. import ops
from .align import aligned_prefix_scores, same_tokenizer
from .heads import find_head, model_config
from .scoring import check_ids, head_hidden_states, project


class Scorer:
    """One reward (or cost) model, its coefficient in the sum and how to read it.

    coef: its weight in the combined reward (e.g. −α for a cost model); head / label: as in
    `r3hf.models.find_head`; tokenizer: the model's own tokenizer when it differs from the
    policy's (None: same ids as the policy); add_special_tokens: whether re-tokenising the
    decoded text adds the RM's special tokens (BOS…).
    """

    def __init__(self, model: nn.Module, coef: float = 1.0, *, head=None, label=None, tokenizer=None,
                 add_special_tokens: bool = True):
        self.model = model
        self.coef = v.check_finite_float("coef", coef)
        self.head_arg, self.label = head, label
        find_head(model, head, label)  # refuse encoders / headless models now, not mid-training
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens

    def head(self):
        # Resolved per call so a label-weighted head follows a model that is still being trained.
        return find_head(self.model, self.head_arg, self.label, check=False)

    def hidden_states(self, input_ids, attention_mask):
        """(hidden [B, S, D], weight [D], bias [1] | None), unscaled by coef."""
        return head_hidden_states(self.head(), input_ids, attention_mask)

    def prefix_scores(self, input_ids, attention_mask, backend="auto") -> torch.Tensor:
        """float32 [B, S] prefix scores of this model on its own ids, unscaled, 0 at padding."""
        ids, mask = check_ids(input_ids, attention_mask)
        hidden, weight, bias = self.hidden_states(ids, mask)
        return project(hidden, weight, bias, backend).masked_fill(~mask, 0.0)


class RewardRedistributor:
    """R3HF/RED token rewards for PPO batches from one or several reward models.

    model: a causal reward model, a `Scorer`, or a list of Scorers / (model, coef) pairs whose
    redistributed rewards are summed with their coefficients (reward − α·cost: one Scorer with
    coef 1, one with coef −α). Redistribution is linear, so this is the redistribution of the
    coefficient-weighted sum of prefix scores; reward_clip bounds that sum's rewards.
    tokenizer: the policy's tokenizer (needed only when a reward model has its own tokenizer);
    rm_tokenizer: the single model's tokenizer if it differs from the policy's. pad_token_id:
    for masks derived from ids (default: the tokenizer's, else the reward model's config).
    first, beta_c, reward_clip, kl_coef, kl_estimator, kl_clamp, backend: as in `r3hf.ops`.

    Batches come in the PPO layout, either as `query_response` [B, S] + `context_length` (an int
    for left-padded prompts, or [B]) + `response_mask` [B, L], or as `prompt_ids` [B, P]
    (left-padded) + `response_ids` [B, L] (right-padded) + `response_mask`. The reward models
    attend to the prompt's non-pad tokens (or `prompt_mask`) and to the response up to its last
    generated token, observation spans included; or pass `attention_mask` [B, S] yourself.
    """

    def __init__(
        self, model, *, coef: float = 1.0, head=None, label=None, tokenizer=None, rm_tokenizer=None,
        pad_token_id: int | None = None, first: str = "prompt", beta_c: float = 1.0, reward_clip=None,
        kl_coef: float = 0.0, kl_estimator: str = "k1", kl_clamp=None, skip_special_tokens: bool = True,
        backend: str = "auto",
    ):
        if isinstance(model, (list, tuple)):
            if coef != 1.0 or head is not None or label is not None or rm_tokenizer is not None:
                raise ValueError("with several scorers give coef/head/label/tokenizer to each Scorer, not here")
            scorers = [s if isinstance(s, Scorer) else Scorer(*s) for s in model]
            if not scorers:
                raise ValueError("model: give at least one reward model")
        elif isinstance(model, Scorer):
            scorers = [model]
        elif isinstance(model, nn.Module):
            scorers = [Scorer(model, coef, head=head, label=label, tokenizer=rm_tokenizer)]
        else:
            raise TypeError(f"model must be a reward model, a Scorer or a list of them, got {type(model).__name__}")
        self.scorers = scorers
        self.tokenizer = tokenizer
        for s in scorers:
            if s.tokenizer is not None and tokenizer is None:
                raise ValueError(
                    "a reward model has its own tokenizer, so the policy's tokenizer is needed to decode the "
                    "batch: pass tokenizer=<policy tokenizer>"
                )
        # Decided once: comparing two tokenizers serialises them.
        self._fast = [s.tokenizer is None or same_tokenizer(s.tokenizer, tokenizer) for s in scorers]
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = getattr(model_config(scorers[0].model), "pad_token_id", None)
        self.pad_token_id = pad_token_id
        self.skip_special_tokens = skip_special_tokens
        # Checked once here so a bad setting fails at construction, not after a rollout.
        self.first = v.check_choice("first", first, v.FIRST_MODES)
        self.beta_c = beta_c if v.check_beta_c(beta_c).get("beta_c_auto") else v.check_unit_interval("beta_c", beta_c)
        self.reward_clip = v.as_range("reward_clip", reward_clip)
        self.kl_coef = v.check_finite_float("kl_coef", kl_coef)
        self.kl_estimator = v.check_choice("kl_estimator", kl_estimator, v.KL_ESTIMATORS)
        self.kl_clamp = v.as_range("kl_clamp", kl_clamp)
        self.backend = v.check_backend(backend)

    # --- batch layout ------------------------------------------------------------------

    def batch(self, query_response=None, context_length=None, response_mask=None, *, prompt_ids=None,
              response_ids=None, prompt_mask=None, attention_mask=None) -> dict:
        """The PPO batch normalised: input_ids [B, S], attention_mask bool [B, S], prompt_len
        (int or int64 [B]) and response_mask bool [B, L]."""
        if query_response is not None:
            if prompt_ids is not None or response_ids is not None:
                raise ValueError("give either query_response + context_length or prompt_ids + response_ids, not both")
            if context_length is None:
                raise ValueError("query_response needs context_length (an int or an integer tensor [B])")
            ids = query_response
            prompt_len = context_length
        else:
            if prompt_ids is None or response_ids is None:
                raise ValueError("give query_response + context_length, or prompt_ids + response_ids")
            check_ids(prompt_ids, prompt_mask)
            check_ids(response_ids, None)
            if response_ids.shape[0] != prompt_ids.shape[0] or response_ids.device != prompt_ids.device:
                raise ValueError(
                    f"response_ids must be [B, L] with B = {prompt_ids.shape[0]} on {prompt_ids.device} "
                    f"(from prompt_ids), got {list(response_ids.shape)} on {response_ids.device}"
                )
            ids = torch.cat([prompt_ids, response_ids], dim=1)
            prompt_len = prompt_ids.shape[1]
        ids, _ = check_ids(ids, attention_mask)
        if response_mask is None:
            raise ValueError("response_mask [B, L] is required (1 for generated tokens, 0 for padding and observations)")
        mask = v.as_mask("response_mask", response_mask)
        B, S = ids.shape
        if mask.shape[0] != B or mask.device != ids.device:
            raise ValueError(
                f"response_mask must be [B, L] with B = {B} on {ids.device} (from the ids), "
                f"got {list(mask.shape)} on {mask.device}"
            )
        L = mask.shape[1]
        p = v.as_prompt_len(prompt_len, B, S, L, ids.device, "zero")
        if isinstance(prompt_len, Integral):
            prompt_len = int(prompt_len)
        else:
            prompt_len = p
        if prompt_mask is not None and (
            not isinstance(prompt_mask, torch.Tensor) or prompt_mask.dim() != 2 or prompt_mask.shape[0] != B
            or prompt_mask.shape[1] > S
        ):
            shape = list(prompt_mask.shape) if isinstance(prompt_mask, torch.Tensor) else type(prompt_mask).__name__
            raise ValueError(f"prompt_mask must be [B, P] with B = {B} and P <= S = {S}, got {shape}")
        if attention_mask is None:
            attention_mask = self._attention(ids, p, mask, prompt_mask)
        else:
            attention_mask = check_ids(ids, attention_mask)[1]
        return dict(input_ids=ids, attention_mask=attention_mask, prompt_len=prompt_len, response_mask=mask)

    def _attention(self, ids, prompt_len, response_mask, prompt_mask):
        B, S = ids.shape
        L = response_mask.shape[1]
        j = torch.arange(S, device=ids.device)[None, :] - prompt_len[:, None]  # response index of each position
        has = response_mask.any(1)
        last = torch.where(has, L - 1 - response_mask.flip(1).int().argmax(1), torch.full_like(prompt_len, -1))
        response_part = (j >= 0) & (j <= last[:, None])
        if prompt_mask is not None:
            prompt_part = torch.zeros_like(response_part)
            prompt_part[:, : prompt_mask.shape[1]] = prompt_mask != 0
        elif self.pad_token_id is not None:
            prompt_part = ids != self.pad_token_id
        else:
            prompt_part = torch.ones_like(response_part)
        return response_part | ((j < 0) & prompt_part)

    # --- scores and rewards ------------------------------------------------------------

    def _scorer_scores(self, i: int, ids, attention) -> torch.Tensor:
        scorer = self.scorers[i]
        if self._fast[i]:
            return scorer.prefix_scores(ids, attention, self.backend)
        return aligned_prefix_scores(
            lambda rm_ids, rm_mask: scorer.prefix_scores(rm_ids, rm_mask, self.backend),
            self.tokenizer, scorer.tokenizer, ids, attention,
            skip_special_tokens=self.skip_special_tokens, add_special_tokens=scorer.add_special_tokens,
        )

    def scores(self, *args, **kwargs) -> torch.Tensor:
        """Σ coef · prefix scores at the policy's positions, float32 [B, S] (takes a batch as `batch`)."""
        b = self.batch(*args, **kwargs)
        return self._combined(b["input_ids"], b["attention_mask"])

    def _combined(self, ids, attention) -> torch.Tensor:
        total = None
        for i, s in enumerate(self.scorers):
            part = self._scorer_scores(i, ids, attention)
            part = part if s.coef == 1.0 else s.coef * part
            total = part if total is None else total + part
        return total

    def token_rewards(self, query_response=None, context_length=None, response_mask=None, *, prompt_ids=None,
                      response_ids=None, prompt_mask=None, attention_mask=None, logprobs=None,
                      ref_logprobs=None) -> torch.Tensor:
        """Token rewards float32 [B, L]: `r3hf.ops.token_rewards` of the combined prefix scores."""
        b = self.batch(query_response, context_length, response_mask, prompt_ids=prompt_ids,
                       response_ids=response_ids, prompt_mask=prompt_mask, attention_mask=attention_mask)
        scores = self._combined(b["input_ids"], b["attention_mask"])
        return ops.token_rewards(scores, b["response_mask"], b["prompt_len"], **self._reward_kwargs(logprobs, ref_logprobs))

    __call__ = token_rewards

    def fused_reward_gae(self, query_response=None, context_length=None, response_mask=None, *, values,
                         prompt_ids=None, response_ids=None, prompt_mask=None, attention_mask=None, logprobs=None,
                         ref_logprobs=None, gamma: float = 1.0, lam: float = 0.95, bootstrap=None):
        """(rewards, advantages, returns), each float32 [B, L]; values [B, L] from the critic.

        One reward model on the policy's tokenizer: its hidden states go straight into
        `r3hf.ops.fused_reward_gae` (head scaled by coef). Otherwise token_rewards then `ops.gae`.
        """
        b = self.batch(query_response, context_length, response_mask, prompt_ids=prompt_ids,
                       response_ids=response_ids, prompt_mask=prompt_mask, attention_mask=attention_mask)
        kw = self._reward_kwargs(logprobs, ref_logprobs)
        if len(self.scorers) == 1 and self._fast[0]:
            s = self.scorers[0]
            hidden, weight, bias = s.hidden_states(b["input_ids"], b["attention_mask"])
            if s.coef != 1.0:
                weight = weight * s.coef
                bias = bias * s.coef if bias is not None else None
            return ops.fused_reward_gae(hidden, weight, bias, values, b["response_mask"], b["prompt_len"],
                                        gamma=gamma, lam=lam, bootstrap=bootstrap, **kw)
        scores = self._combined(b["input_ids"], b["attention_mask"])
        rewards = ops.token_rewards(scores, b["response_mask"], b["prompt_len"], **kw)
        advantages, returns = ops.gae(rewards, values, b["response_mask"], gamma, lam, bootstrap, backend=self.backend)
        return rewards, advantages, returns

    def _reward_kwargs(self, logprobs, ref_logprobs) -> dict:
        return dict(
            logprobs=logprobs, ref_logprobs=ref_logprobs, kl_coef=self.kl_coef, kl_estimator=self.kl_estimator,
            kl_clamp=self.kl_clamp, first=self.first, beta_c=self.beta_c, reward_clip=self.reward_clip,
            backend=self.backend,
        )
