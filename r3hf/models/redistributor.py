"""Token rewards for a PPO batch straight from Hugging Face reward models."""

from __future__ import annotations

from numbers import Integral

import torch
from torch import nn

from .. import _validate as v
from .. import ops
from .align import aligned_prefix_scores, same_tokenizer
from .heads import find_head, model_config
from .potential import load_potential
from .scoring import check_ids, head_hidden_states, project


class Scorer:
    """One reward (or cost) model, its coefficient in the sum and how to read it.

    coef: its weight in the combined reward (e.g. −α for a cost model); head / label: as in
    `r3hf.models.find_head`; tokenizer: the model's own tokenizer when it differs from the
    policy's (None: same ids as the policy); add_special_tokens: whether re-tokenising the
    decoded text adds the RM's special tokens (BOS…). potential: a `PotentialHead` (or the folder
    its save_pretrained wrote) read from the same hidden states as the RM's head: Φ' for shaping,
    R still from the RM (`r3hf.ops.token_rewards(potential=)`); None: the RM's own prefix scores.
    """

    def __init__(self, model: nn.Module, coef: float = 1.0, *, head=None, label=None, tokenizer=None,
                 add_special_tokens: bool = True, potential=None):
        self.model = model
        self.coef = v.check_finite_float("coef", coef)
        self.head_arg, self.label = head, label
        find_head(model, head, label)  # refuse encoders / headless models now, not mid-training
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        self.potential = None if potential is None else load_potential(potential, model, head=head, label=label)

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

    def prefix_scores_and_potential(self, input_ids, attention_mask, backend="auto"):
        """(scores, phi), each float32 [B, S] and 0 at padding, from ONE backbone forward: the RM's
        head and the potential head read from the same hidden states (phi is scores without a
        potential)."""
        ids, mask = check_ids(input_ids, attention_mask)
        hidden, weight, bias = self.hidden_states(ids, mask)
        scores = project(hidden, weight, bias, backend).masked_fill(~mask, 0.0)
        if self.potential is None:
            return scores, scores
        return scores, self.potential(hidden, backend=backend).masked_fill(~mask, 0.0)


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
    potential: a `PotentialHead` or its folder (save_pretrained), for the single reward model (give
    each `Scorer` its own otherwise): the shaping potential Φ' is read from the same backbone
    forward as R, and the rewards are `ops.token_rewards(scores, potential=Φ')` (docs/potential.md).

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
        backend: str = "auto", potential=None,
    ):
        if isinstance(model, (list, tuple)):
            if coef != 1.0 or head is not None or label is not None or rm_tokenizer is not None or potential is not None:
                raise ValueError("with several scorers give coef/head/label/tokenizer/potential to each Scorer, not here")
            scorers = [s if isinstance(s, Scorer) else Scorer(*s) for s in model]
            if not scorers:
                raise ValueError("model: give at least one reward model")
        elif isinstance(model, Scorer):
            if potential is not None:
                if model.potential is not None:
                    raise ValueError("potential is given twice: here and on the Scorer; give it once")
                model.potential = load_potential(potential, model.model, head=model.head_arg, label=model.label)
            scorers = [model]
        elif isinstance(model, nn.Module):
            scorers = [Scorer(model, coef, head=head, label=label, tokenizer=rm_tokenizer, potential=potential)]
        else:
            raise TypeError(f"model must be a reward model, a Scorer or a list of them, got {type(model).__name__}")
        self.scorers = scorers
        self.has_potential = any(s.potential is not None for s in scorers)
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

    def _scorer_scores(self, i: int, ids, attention, with_potential: bool = False):
        """Scorer i's prefix scores [B, S] at the policy's positions; with_potential: (scores, phi)
        from the same forward (phi = scores for a scorer without a potential)."""
        scorer = self.scorers[i]
        fn = scorer.prefix_scores_and_potential if with_potential else scorer.prefix_scores
        if self._fast[i]:
            return fn(ids, attention, self.backend)
        return aligned_prefix_scores(
            lambda rm_ids, rm_mask: fn(rm_ids, rm_mask, self.backend),
            self.tokenizer, scorer.tokenizer, ids, attention, outputs=2 if with_potential else 1,
            skip_special_tokens=self.skip_special_tokens, add_special_tokens=scorer.add_special_tokens,
        )

    def scores(self, *args, **kwargs) -> torch.Tensor:
        """Σ coef · prefix scores at the policy's positions, float32 [B, S] (takes a batch as `batch`)."""
        b = self.batch(*args, **kwargs)
        return self._combined(b["input_ids"], b["attention_mask"])

    def scores_and_potential(self, *args, **kwargs):
        """(Σ coef · prefix scores, Σ coef · potential), float32 [B, S] each, from one forward per
        reward model (takes a batch as `batch`; a scorer without a potential adds its own scores
        to both)."""
        b = self.batch(*args, **kwargs)
        return self._combined_with_potential(b["input_ids"], b["attention_mask"])

    def _combined(self, ids, attention) -> torch.Tensor:
        total = None
        for i, s in enumerate(self.scorers):
            part = self._scorer_scores(i, ids, attention)
            part = part if s.coef == 1.0 else s.coef * part
            total = part if total is None else total + part
        return total

    def _combined_with_potential(self, ids, attention):
        total = phi = None
        for i, s in enumerate(self.scorers):
            part, pot = self._scorer_scores(i, ids, attention, with_potential=True)
            if s.coef != 1.0:
                part, pot = s.coef * part, s.coef * pot
            total = part if total is None else total + part
            phi = pot if phi is None else phi + pot
        return total, phi

    def _scores_for_rewards(self, ids, attention):
        """(scores, potential or None) for ops.token_rewards."""
        if self.has_potential:
            return self._combined_with_potential(ids, attention)
        return self._combined(ids, attention), None

    def token_rewards(self, query_response=None, context_length=None, response_mask=None, *, prompt_ids=None,
                      response_ids=None, prompt_mask=None, attention_mask=None, logprobs=None,
                      ref_logprobs=None) -> torch.Tensor:
        """Token rewards float32 [B, L]: `r3hf.ops.token_rewards` of the combined prefix scores (and
        the combined potential, when a scorer has one)."""
        b = self.batch(query_response, context_length, response_mask, prompt_ids=prompt_ids,
                       response_ids=response_ids, prompt_mask=prompt_mask, attention_mask=attention_mask)
        scores, phi = self._scores_for_rewards(b["input_ids"], b["attention_mask"])
        return ops.token_rewards(scores, b["response_mask"], b["prompt_len"], potential=phi,
                                 **self._reward_kwargs(logprobs, ref_logprobs))

    __call__ = token_rewards

    def fused_reward_gae(self, query_response=None, context_length=None, response_mask=None, *, values,
                         prompt_ids=None, response_ids=None, prompt_mask=None, attention_mask=None, logprobs=None,
                         ref_logprobs=None, gamma: float = 1.0, lam: float = 0.95, bootstrap=None):
        """(rewards, advantages, returns), each float32 [B, L]; values [B, L] from the critic.

        One reward model on the policy's tokenizer: its hidden states go straight into
        `r3hf.ops.fused_reward_gae` (head scaled by coef; a potential head goes in as
        potential_weight / potential_bias, read in the same pass). Otherwise token_rewards then `ops.gae`.
        """
        b = self.batch(query_response, context_length, response_mask, prompt_ids=prompt_ids,
                       response_ids=response_ids, prompt_mask=prompt_mask, attention_mask=attention_mask)
        kw = self._reward_kwargs(logprobs, ref_logprobs)
        if len(self.scorers) == 1 and self._fast[0]:
            s = self.scorers[0]
            hidden, weight, bias = s.hidden_states(b["input_ids"], b["attention_mask"])
            pw = pb = None
            if s.potential is not None:
                # Cast like the RM's own head (`head_hidden_states`), so this equals the unfused path.
                pw, pb = s.potential.weight.to(device=hidden.device, dtype=hidden.dtype), s.potential.bias.to(hidden.device)
            if s.coef != 1.0:
                weight = weight * s.coef
                bias = bias * s.coef if bias is not None else None
                if pw is not None:
                    pw, pb = pw * s.coef, pb * s.coef
            return ops.fused_reward_gae(hidden, weight, bias, values, b["response_mask"], b["prompt_len"],
                                        gamma=gamma, lam=lam, bootstrap=bootstrap, potential_weight=pw,
                                        potential_bias=pb, **kw)
        scores, phi = self._scores_for_rewards(b["input_ids"], b["attention_mask"])
        rewards = ops.token_rewards(scores, b["response_mask"], b["prompt_len"], potential=phi, **kw)
        advantages, returns = ops.gae(rewards, values, b["response_mask"], gamma, lam, bootstrap, backend=self.backend)
        return rewards, advantages, returns

    def _reward_kwargs(self, logprobs, ref_logprobs) -> dict:
        return dict(
            logprobs=logprobs, ref_logprobs=ref_logprobs, kl_coef=self.kl_coef, kl_estimator=self.kl_estimator,
            kl_clamp=self.kl_clamp, first=self.first, beta_c=self.beta_c, reward_clip=self.reward_clip,
            backend=self.backend,
        )
