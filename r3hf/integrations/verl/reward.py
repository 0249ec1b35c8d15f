"""A veRL 0.9 reward manager that writes dense R3HF `rm_scores` [B, L] (needs veRL installed).

veRL's reward managers return one float per sample, and `RewardManagerBase.assemble_rm_scores`
puts it at the last valid response token. `R3HFRewardManager` keeps veRL's reward loop and only
changes what a sample's score is and how the batch is assembled:

- `run_single` calls your `compute_score(prompt_ids=..., response_ids=..., **veRL's fields)` for
  one sample and returns its per-position payload;
- `assemble_rm_scores` turns the payloads into dense `rm_scores` [B, L] with
  `r3hf.integrations.verl.token_level_scores`.

`compute_score` returns, per sample (n_p = attended prompt tokens, n_r = valid response tokens):
- `{"prefix_scores": [n_p + n_r]}` (or the sequence itself): the reward model's score of the
  prefix ending at every position of prompt ⊕ response. This is what `r3hf.models.prefix_scores`
  gives for an HF reward model (`hf_prefix_scorer`), and what a reward server returns when it
  pools ALL positions (a vLLM reward model with ALL pooling; `pooling_prefix_scores` reads
  its /pooling answer). Token j gets scores[n_p + j] − scores[n_p + j − 1] (first="prompt": the
  first one is differenced against the prompt-only score), observation spans credited to the
  generated token before them; rows sum to final − prompt-only score.
  With `"potential": [n_p + n_r]` next to it (a potential head read in the same forward:
  `hf_prefix_scorer(model, potential=head)`), the shaping uses Φ' and the last generated token
  gets R − Φ' before it (`ops.redistribute(potential=)`, docs/potential.md).
- `{"token_scores": [n_r]}`: rewards already per response token (e.g. a process reward model),
  written as given.
- a float: veRL's sparse score, at the last valid response token as veRL places it.
Other keys of a returned dict go to `reward_extra_info` (scalars, as veRL expects).

Class attributes `first` ("prompt" | "zero") and `beta_c` (mix of the sparse score) are read by
the classmethod `assemble_rm_scores`; subclass to change them. With veRL 0.9.1 the manager's
`assemble_rm_scores` is used on the colocated reward path (`RewardLoopManager.compute_rm_score`:
reward.reward_model.enable=True, enable_resource_pool=False); see docs/integrations.md.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from .. import verl as _verl
from ._estimators import warn_if_summing

__all__ = ["R3HFRewardManager", "hf_prefix_scorer", "pooling_prefix_scores"]

PAYLOAD_KEYS = ("prefix_scores", "token_scores")


def _as_vector(name: str, values) -> torch.Tensor:
    t = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    t = t.to(torch.float32).cpu()
    if t.dim() == 2 and t.shape[0] == 1:  # [1, S] from a batched scorer
        t = t[0]
    if t.dim() != 1:
        raise ValueError(f"{name} must be one score per position (1-D), got shape {list(t.shape)}")
    return t


def _payload(result) -> tuple[dict, dict]:
    """compute_score's result -> (payload, reward_extra_info)."""
    if isinstance(result, dict):
        keys = [k for k in PAYLOAD_KEYS if k in result]
        if len(keys) != 1:
            raise ValueError(
                f"compute_score must return exactly one of {list(PAYLOAD_KEYS)} (or a float), got keys {sorted(result)}"
            )
        key = keys[0]
        payload = {key: _as_vector(key, result[key])}
        if "potential" in result:
            if key != "prefix_scores":
                raise ValueError("compute_score returned 'potential' with 'token_scores': a potential shapes prefix "
                                 "scores, return it next to 'prefix_scores'")
            payload["potential"] = _as_vector("potential", result["potential"])
        extra = {k: v for k, v in result.items() if k not in (key, "potential")}
        return payload, extra
    if isinstance(result, (int, float)) or (isinstance(result, torch.Tensor) and result.numel() == 1):
        score = float(result)
        return {"score": score}, {"score": score}
    return {"prefix_scores": _as_vector("prefix_scores", result)}, {}


class R3HFRewardManager(RewardManagerBase):
    """veRL reward manager for dense R3HF rewards: translation only (see the module docstring)."""

    first = "prompt"
    beta_c = 1.0

    def __init__(self, config, tokenizer, compute_score: Callable[..., Any] | None = None,
                 reward_router_address=None, reward_model_tokenizer=None, **unused):
        super().__init__(config, tokenizer, compute_score)
        if compute_score is None:
            raise ValueError(
                "R3HFRewardManager needs compute_score (reward.custom_reward_function.path/name): a function "
                "returning per-position prefix scores or per-token scores for one sample"
            )
        self.is_async = inspect.iscoroutinefunction(compute_score)
        self.reward_router_address = reward_router_address
        self.reward_model_tokenizer = reward_model_tokenizer
        algorithm = config.get("algorithm") if hasattr(config, "get") else getattr(config, "algorithm", None)
        if algorithm is not None:
            estimator = algorithm.get("adv_estimator") if hasattr(algorithm, "get") else getattr(algorithm, "adv_estimator", None)
            warn_if_summing(estimator)

    async def run_single(self, data: DataProto) -> dict:
        """One sample (veRL passes data[i:i+1]) -> {"reward_score": payload, "reward_extra_info": {...}}."""
        item = data[-1]  # multi-sequence outputs: the last one, as veRL's NaiveRewardManager does
        P = item.batch["prompts"].shape[-1]
        attention = item.batch["attention_mask"]
        prompt_ids = item.batch["prompts"][attention[:P] != 0].tolist()
        n_r = int(attention[P:].sum())
        response_ids = item.batch["responses"][:n_r].tolist()
        nt = item.non_tensor_batch
        reward_model = nt.get("reward_model") or {}
        kwargs = dict(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            data_source=nt.get("data_source"),
            ground_truth=reward_model.get("ground_truth") if hasattr(reward_model, "get") else None,
            extra_info=nt.get("extra_info") or {},
            raw_prompt=nt.get("raw_prompt"),
            reward_router_address=self.reward_router_address,
            reward_model_tokenizer=self.reward_model_tokenizer,
        )
        if self.is_async:
            result = await self.compute_score(**kwargs)
        else:
            result = await self.loop.run_in_executor(None, lambda: self.compute_score(**kwargs))
        payload, extra = _payload(result)
        return {"reward_score": payload, "reward_extra_info": extra}

    @classmethod
    def assemble_rm_scores(cls, data: DataProto, scores: list) -> torch.Tensor:
        """Per-sample payloads -> dense `rm_scores` float32 [B, L] (veRL's response layout).

        Uses data.batch "prompts" [B, P], "responses" [B, L], "attention_mask" [B, P + L] and,
        when present, "response_mask" [B, L] (else the response's attention mask: every valid
        response token counts as generated).
        """
        prompts, responses = data.batch["prompts"], data.batch["responses"]
        attention = data.batch["attention_mask"]
        B, P = prompts.shape
        L = responses.shape[1]
        if len(scores) != B:
            raise ValueError(f"scores must have one entry per sample, B = {B}, got {len(scores)}")
        n_p = attention[:, :P].sum(1).tolist()
        n_r = attention[:, P:].sum(1).tolist()
        mask = data.batch["response_mask"] if "response_mask" in data.batch.keys() else attention[:, P:]
        mask = (mask != 0).cpu()

        prefix = torch.zeros(B, 1 + L, dtype=torch.float32)  # [prompt-only score, then each response prefix]
        potential = None  # Φ' in prefix's layout; a row without one shapes with its own prefix scores
        prefix_rows = torch.zeros(B, dtype=torch.bool)
        dense = torch.zeros(B, L, dtype=torch.float32)
        for b, payload in enumerate(scores):
            if not isinstance(payload, dict):
                payload, _ = _payload(payload)
            if "potential" in payload and "prefix_scores" not in payload:
                raise ValueError(f"sample {b}: a payload has 'potential' without 'prefix_scores' (e.g. with "
                                 "'token_scores'): a potential shapes prefix scores, give it next to them")
            if "prefix_scores" in payload:
                s = _as_vector("prefix_scores", payload["prefix_scores"])
                if s.numel() != n_p[b] + n_r[b] or n_p[b] < 1:
                    raise ValueError(
                        f"sample {b}: prefix_scores must have one score per attended prompt and response token, "
                        f"n_p + n_r = {n_p[b]} + {n_r[b]} = {n_p[b] + n_r[b]} (n_p >= 1), got {s.numel()}"
                    )
                prefix[b, : 1 + n_r[b]] = s[n_p[b] - 1:]
                prefix_rows[b] = True
                if "potential" in payload:
                    phi = _as_vector("potential", payload["potential"])
                    if phi.numel() != s.numel():
                        raise ValueError(f"sample {b}: potential must have one value per prefix score "
                                         f"({s.numel()}), got {phi.numel()}")
                    if potential is None:
                        potential = {}
                    potential[b] = phi[n_p[b] - 1:]
            elif "token_scores" in payload:
                s = _as_vector("token_scores", payload["token_scores"])
                if s.numel() != n_r[b]:
                    raise ValueError(
                        f"sample {b}: token_scores must have one score per valid response token, n_r = {n_r[b]}, "
                        f"got {s.numel()}"
                    )
                dense[b, : n_r[b]] = s
            else:  # a float: veRL's own placement
                if n_r[b] < 1:
                    raise ValueError(f"sample {b} has no valid response token to put its score on")
                dense[b, n_r[b] - 1] = float(payload["score"])
        if bool(prefix_rows.any()):
            phi = None
            if potential is not None:
                phi = prefix.clone()
                for b, row in potential.items():
                    phi[b, : row.numel()] = row
            dense_prefix = _verl.token_level_scores(
                prefix, mask & prefix_rows[:, None], 1, first=cls.first, beta_c=cls.beta_c, potential=phi
            )
            dense = torch.where(prefix_rows[:, None], dense_prefix, dense)
        return dense.to(responses.device)


def hf_prefix_scorer(model, *, device=None, potential=None) -> Callable[..., dict]:
    """compute_score for the r3hf route: an HF reward model (`*ForSequenceClassification`) run by
    `r3hf.models.prefix_scores`, every prefix score of prompt ⊕ response from one forward pass.
    The model must use the policy's tokenizer (see r3hf.models.aligned_prefix_scores otherwise).

    potential: a `r3hf.models.PotentialHead` or the folder its save_pretrained wrote; it is read
    from the same forward's hidden states (`r3hf.models.potential_scores`) and returned as
    "potential" next to "prefix_scores". "score" stays the RM's R."""
    from ...models import potential_scores, prefix_scores
    from ...models.potential import load_potential

    head = None if potential is None else load_potential(potential, model)

    def compute_score(prompt_ids, response_ids, **unused) -> dict:
        ids = torch.tensor([list(prompt_ids) + list(response_ids)], dtype=torch.int64, device=device)
        if head is None:
            scores = prefix_scores(model, ids, torch.ones_like(ids))[0]
            return {"prefix_scores": scores, "score": float(scores[-1])}
        scores, phi = potential_scores(model, head.to(ids.device), ids, torch.ones_like(ids))
        return {"prefix_scores": scores[0], "potential": phi[0], "score": float(scores[0, -1])}

    return compute_score


def pooling_prefix_scores(output: dict) -> list[float]:
    """A reward server's /pooling answer for one input with ALL pooling -> one score per position.

    Reads output["data"][0]["data"], a list of per-position outputs, each a scalar or a
    one-element list (a one-label reward head), as vLLM's pooling API returns them.
    """
    try:
        rows = output["data"][0]["data"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"expected a pooling response {{'data': [{{'data': [...]}}]}}, got {str(output)[:200]}") from e
    values = []
    for v in rows:
        if isinstance(v, (list, tuple)):
            if len(v) != 1:
                raise ValueError(f"each position must carry one score (a one-label head), got {len(v)} values")
            v = v[0]
        values.append(float(v))
    return values
