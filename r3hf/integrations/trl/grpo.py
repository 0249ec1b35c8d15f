"""TRL 1.13 – 1.16 `GRPOTrainer` with R3HF token-level advantages: `R3HFGRPOTrainer`.

Swap `trl.GRPOTrainer` for `R3HFGRPOTrainer`, keep every argument, add `estimator=` (and
`baseline=`, `beta_c=`, `first=`, `kl_in_reward=`). What changes, per generation batch:

- Each reward model in `reward_funcs` (an `nn.Module`: a causal sequence classifier, as TRL
  accepts them) reads the text TRL's own reward path reads (prompt + completion, chat template
  applied, re-tokenised with its `reward_processing_classes` entry) in ONE forward pass of its
  backbone, and every prefix score is kept (`r3hf.models`). TRL's scalar path does not run the
  model again: it receives the last prefix score, which is the score TRL would have computed.
- Completion token k gets the change in reward-model score between the text up to token k − 1
  and up to token k (character-offset alignment, so any reward tokenizer works). Plain reward
  functions add their weighted score on the last generated token. `reward_weights` as in TRL.
- Token rewards (`ops.token_rewards`, optionally minus `kl_in_reward`·KL) become [B, T]
  advantages through `ops.group_advantages`, grouped as TRL groups (`num_generations`
  consecutive rows of the global batch; across processes with the default process group).
  TRL's `_compute_loss` consumes [B, T] advantages as they are.

Everything else is TRL's: generation, tool calls, `tool_mask`, `mask_truncated_completions`,
the loss (its `beta` KL stays a loss term), logging (`reward`, `reward_std`, per-function means
keep their meaning; r3hf adds `r3hf/...` metrics).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..._extras import require

require("trl", "R3HFGRPOTrainer")  # TRL >= 1.13 (the release without PPOTrainer)

from trl import GRPOTrainer  # noqa: E402
from trl.data_utils import apply_chat_template, is_conversational  # noqa: E402

from ... import _validate as v  # noqa: E402
from ...models import Scorer, UnsupportedModelError
from ...models.potential import PotentialHead, load_potential
from .grpo_advantages import (
    OUTCOME_ESTIMATORS,
    TRL_EPS,
    check_baseline,
    check_estimator,
    op_options,
    token_level_advantages,
)
from .grpo_align import aligned_completion_scores, completion_char_ends, prompt_boundary

__all__ = ["R3HFGRPOTrainer", "POSITION_BUCKETS", "SUPPORTED_TRL"]

# The TRL releases this subclass is tested with (1.13.0, 1.14.2, 1.15.0, 1.16.0: .ci/steps/45-trl-versions.sh):
# it overrides GRPOTrainer internals (_generate's return tuple, _calculate_rewards,
# _generate_and_score_completions), which may change in a later release.
SUPPORTED_TRL = (">=1.13", "<1.17")


def trl_supported(version: str) -> bool:
    from packaging.version import Version

    v_ = Version(version)
    return Version(SUPPORTED_TRL[0][2:]) <= v_ < Version(SUPPORTED_TRL[1][1:])


def _check_trl_version():
    import trl

    if not trl_supported(trl.__version__):
        warnings.warn(
            f"R3HFGRPOTrainer is tested with TRL {','.join(SUPPORTED_TRL)} and overrides GRPOTrainer internals; "
            f"TRL {trl.__version__} is installed, so check its results (the parity tests in tests/test_trl_grpo.py)",
            stacklevel=3,
        )


_check_trl_version()

# Token positions of the `r3hf/dense_reward/pos_*` metrics: [0, 1), [1, 2), [2, 4), … , [2^14, ∞).
POSITION_BUCKETS = (0,) + tuple(2**k for k in range(15))
# A stand-in for `beta` while TRL builds its reference model (see __init__).
_BUILD_REF = 1e-12


def _bucket_name(i: int) -> str:
    lo = POSITION_BUCKETS[i]
    if i + 1 == len(POSITION_BUCKETS):
        return f"pos_{lo}+"
    hi = POSITION_BUCKETS[i + 1] - 1
    return f"pos_{lo}" if hi == lo else f"pos_{lo}-{hi}"


class R3HFGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` (TRL 1.13 – 1.16) with R3HF token-level rewards and [B, T] group advantages.

    Every positional and keyword argument of GRPOTrainer is accepted unchanged. Keyword-only:

    - estimator: "grpo" (default), "rloo", "reinforce_pp", "reinforce_pp_baseline",
      "grpo_process" (token level, `ops.group_advantages`), or "grpo_outcome" / "rloo_outcome"
      (sum each row's rewards first, like TRL's own GRPO/RLOO: dense rewards then change nothing,
      see docs/integrations.md). scale_rewards ("group", "batch", "none") applies to the grpo
      estimators as in TRL; eps (default TRL's 1e-4) is the op's eps.
    - baseline: "row" (default: the group's row sums, today's numbers) or "position" (the group's
      reward-to-go at the same generated-token position, leave-one-out for "rloo"; for "grpo",
      "rloo", "reinforce_pp_baseline" and the outcome estimators): the op's `baseline`. With dense
      R3HF rewards "position" is the one that helps (docs/group.md); with sparse rewards both agree.
    - beta_c: 1 = R3HF dense rewards, 0 = sparse (TRL's reward on the last token), in between a mix.
    - first: "prompt" (difference the first token against the prompt-only score) or "zero".
    - kl_in_reward: coefficient of a per-token KL penalty (kl_estimator "k1", "k2", "k3", "abs")
      between the sampling policy and the reference model, put into the rewards through
      `ops.token_rewards` (TRL's `beta` remains the loss's KL term; both may be set).
    - backend: r3hf backend for the ops ("auto").
    - potential: a `r3hf.models.PotentialHead` or the folder its save_pretrained wrote, for the
      one reward model among reward_funcs (or a dict {index in reward_funcs: head or folder}).
      Φ' is read from the same backbone forward as R; shaping uses Φ', the last token still gets
      the RM's R (`ops.token_rewards(potential=)`, docs/potential.md). TRL's scalar reward is unchanged.
    """

    def __init__(self, *args, estimator: str = "grpo", baseline: str = "row", beta_c: float = 1.0,
                 first: str = "prompt", kl_in_reward: float = 0.0, kl_estimator: str = "k1", eps: float = TRL_EPS,
                 backend: str = "auto", potential=None, **kwargs):
        self.r3hf_estimator = check_estimator(estimator)
        self.r3hf_baseline = check_baseline(self.r3hf_estimator, baseline)
        self.r3hf_beta_c = v.check_unit_interval("beta_c", beta_c)
        self.r3hf_first = v.check_choice("first", first, v.FIRST_MODES)
        self.r3hf_kl_in_reward = v.check_finite_float("kl_in_reward", kl_in_reward)
        if self.r3hf_kl_in_reward < 0:
            raise ValueError(f"kl_in_reward must be >= 0 (a penalty coefficient), got {kl_in_reward}")
        self.r3hf_kl_estimator = v.check_choice("kl_estimator", kl_estimator, v.KL_ESTIMATORS)
        self.r3hf_eps = v.check_finite_float("eps", eps)
        if self.r3hf_eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.r3hf_backend = v.check_backend(backend)

        config = kwargs.get("args", args[2] if len(args) > 2 else None)
        if config is not None:  # fail before TRL loads models; checked again on the trainer below
            self._r3hf_check_aggregation(config.multi_objective_aggregation)
            scale = {True: "group", False: "none"}.get(config.scale_rewards, config.scale_rewards)
            op_options(self.r3hf_estimator, self.r3hf_eps, scale, self.r3hf_baseline)
        build_ref = self.r3hf_kl_in_reward > 0 and config is not None and config.beta == 0.0
        if self.r3hf_kl_in_reward > 0 and config is None:
            raise ValueError("kl_in_reward needs a reference model: pass args=GRPOConfig(...)")
        if build_ref:
            # TRL builds its reference model only when beta != 0. kl_in_reward needs one while the
            # loss keeps beta = 0, so TRL is asked to build it and beta is reset right after.
            config.beta = _BUILD_REF
        try:
            super().__init__(*args, **kwargs)
        finally:
            if build_ref:
                config.beta = 0.0
        if build_ref:
            self.beta = 0.0
            if self.ref_model is None:  # PEFT: TRL takes the reference by disabling the adapter
                raise ValueError("kl_in_reward with a PEFT model and beta=0 is not supported; set beta > 0")

        self._r3hf_check_aggregation(self.multi_objective_aggregation)
        self._r3hf_scorers = {}
        for i, (func, name) in enumerate(zip(self.reward_funcs, self.reward_func_names)):
            if not isinstance(func, nn.Module):
                continue
            model = self.accelerator.unwrap_model(func)
            try:
                self._r3hf_scorers[i] = Scorer(model)
            except UnsupportedModelError as e:
                raise UnsupportedModelError(
                    f"reward_funcs[{i}] ({name}, {type(model).__name__}) cannot give prefix scores: R3HF needs a "
                    f"causal sequence-classification model (e.g. AutoModelForSequenceClassification of a decoder). {e}"
                ) from e
            tok = self.reward_processing_classes[i]
            if not getattr(tok, "is_fast", False):
                raise TypeError(
                    f"reward_processing_classes[{i}] must be a fast tokenizer (character offsets align the reward "
                    f"model's prefixes with the policy's tokens), got {type(tok).__name__}"
                )
        self._r3hf_attach_potential(potential)
        self._r3hf_warn_config()
        self._r3hf_gen = None
        self._r3hf_batch = None
        self._r3hf_last = None

    # --- configuration checks -----------------------------------------------------------

    def _r3hf_attach_potential(self, potential):
        if potential is None:
            return
        if isinstance(potential, dict):
            items = dict(potential)
            for i in items:
                if i not in self._r3hf_scorers:
                    raise ValueError(
                        f"potential: key {i!r} is not the index of a reward model in reward_funcs (reward models at "
                        f"{sorted(self._r3hf_scorers)})"
                    )
        elif isinstance(potential, (PotentialHead, str)) or hasattr(potential, "__fspath__"):
            if len(self._r3hf_scorers) != 1:
                raise ValueError(
                    f"potential: one head needs exactly one reward model among reward_funcs, found "
                    f"{len(self._r3hf_scorers)}; give a dict {{index in reward_funcs: head or folder}}"
                )
            items = {next(iter(self._r3hf_scorers)): potential}
        else:
            raise TypeError(f"potential must be a PotentialHead, a folder written by save_pretrained or a dict of "
                            f"them, got {type(potential).__name__}")
        for i, p in items.items():
            scorer = self._r3hf_scorers[i]
            name = "potential" if not isinstance(potential, dict) else f"potential[{i!r}]"
            scorer.potential = load_potential(p, scorer.model, name=name).to(next(scorer.model.parameters()).device)

    @staticmethod
    def _r3hf_check_aggregation(aggregation):
        if aggregation != "sum_then_normalize":
            raise ValueError(
                "R3HFGRPOTrainer redistributes the weighted sum of the reward functions, so it needs "
                f"multi_objective_aggregation='sum_then_normalize', got {aggregation!r}"
            )

    def _r3hf_warn_config(self):
        dense = self.r3hf_beta_c > 0 and bool(self._r3hf_scorers)
        if not self._r3hf_scorers:
            warnings.warn(
                "R3HFGRPOTrainer has no reward model among reward_funcs (only plain functions): there are no prefix "
                "scores to redistribute, so every reward is sparse (on the last generated token)",
                stacklevel=3,
            )
        if dense and self.r3hf_estimator in OUTCOME_ESTIMATORS and (
            self.r3hf_first == "zero" or self.scale_rewards != "batch"
        ):
            warnings.warn(
                f"estimator={self.r3hf_estimator!r} sums each completion's token rewards before the group baseline. "
                "R3HF's dense rewards sum to R(x, y) − R(x, prompt), and the prompt term is the same for every "
                "completion of a group, so these advantages equal the sparse ones (beta_c=0): the dense rewards "
                "change nothing. Use a token-level estimator ('grpo', 'rloo', ...) for token-level credit.",
                stacklevel=3,
            )
        if self.importance_sampling_level == "sequence" and self.r3hf_estimator not in OUTCOME_ESTIMATORS:
            warnings.warn(
                "importance_sampling_level='sequence' (GSPO) shares one importance ratio per completion, so the "
                "gradient sees each completion's token advantages only through their sum: token-level credit "
                "assignment is lost (use importance_sampling_level='token' for R3HF's per-token advantages)",
                stacklevel=3,
            )
        op_options(self.r3hf_estimator, self.r3hf_eps, self.scale_rewards, self.r3hf_baseline)  # refuses options the estimator ignores

    # --- TRL hooks ------------------------------------------------------------------------

    def _generate(self, prompts):
        out = super()._generate(prompts)
        # (prompt_ids, completion_ids, tool_mask, ...): the tool mask before any truncation masking.
        self._r3hf_gen = {"completion_ids": out[1], "tool_mask": out[2]}
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        B = len(prompts)
        device = self.accelerator.device
        ids_list = [[int(t) for t in ids] for ids in completion_ids_list]
        tool_lists = (self._r3hf_gen or {}).get("tool_mask")
        if tool_lists is not None and len(tool_lists) != B:
            tool_lists = None
        T = max((len(x) for x in ids_list), default=0)
        mask = torch.zeros((B, T), dtype=torch.bool)
        for b, ids in enumerate(ids_list):
            mask[b, : len(ids)] = True
            if tool_lists is not None:
                mask[b, : len(ids)] &= torch.tensor([bool(x) for x in tool_lists[b]][: len(ids)], dtype=torch.bool)
        last = [int(r.nonzero().max()) if r.any() else -1 for r in mask]

        conversational = B > 0 and is_conversational({"prompt": prompts[0]})
        tokenizer = getattr(self, "_tokenizer", None)  # TRL's text tokenizer (a processor's, for VLMs)
        if tokenizer is None:
            tokenizer = self.processing_class
        weighted = torch.zeros((B, 1 + T), dtype=torch.float32, device=device)
        has_potential = any(s.potential is not None for s in self._r3hf_scorers.values())
        weighted_phi = torch.zeros_like(weighted) if has_potential else None
        finals = {}
        for i, scorer in self._r3hf_scorers.items():
            tok = self.reward_processing_classes[i]
            if conversational:
                rm_texts = [
                    apply_chat_template({"messages": p + c}, tok, **self.chat_template_kwargs)["text"]
                    for p, c in zip(prompts, completions)
                ]
                prompt_texts = [
                    apply_chat_template({"prompt": p}, tok, **self.chat_template_kwargs)["prompt"] for p in prompts
                ]
            else:
                rm_texts = [p + c for p, c in zip(prompts, completions)]
                prompt_texts = list(prompts)
            prompt_ends = [prompt_boundary(t, p) for t, p in zip(rm_texts, prompt_texts)]
            token_ends = [
                completion_char_ends(t, pe, tokenizer, ids, lg)
                for t, pe, ids, lg in zip(rm_texts, prompt_ends, ids_list, last)
            ]
            rm_device = next(scorer.model.parameters()).device
            with self._r3hf_profile(self.reward_func_names[i]):
                if has_potential:  # both heads from the one forward (phi = scores without a potential)
                    scores, final, phi = aligned_completion_scores(
                        lambda ids, m, s=scorer: s.prefix_scores_and_potential(ids, m, self.r3hf_backend), tok,
                        rm_texts, prompt_ends, token_ends, T, rm_device, outputs=2,
                    )
                    weighted_phi += float(self.reward_weights[i]) * phi.to(device)
                else:
                    scores, final = aligned_completion_scores(
                        lambda ids, m, s=scorer: s.prefix_scores(ids, m, self.r3hf_backend), tok, rm_texts,
                        prompt_ends, token_ends, T, rm_device,
                    )
            weighted += float(self.reward_weights[i]) * scores.to(device)
            finals[i] = final.to(device)

        # TRL's scalar path gets each reward model's final score instead of running it again.
        saved = self.reward_funcs
        self.reward_funcs = [
            _Precomputed(finals[i]) if i in finals else f for i, f in enumerate(saved)
        ]
        try:
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            self.reward_funcs = saved
        self._r3hf_batch = {"scores": weighted, "potential": weighted_phi, "mask": mask,
                            "rewards_per_func": rewards_per_func}
        return rewards_per_func

    def _r3hf_profile(self, name):
        from trl.extras.profiling import profiling_context

        return profiling_context(self, name)

    def _generate_and_score_completions(self, inputs):
        self._r3hf_batch = None
        out = super()._generate_and_score_completions(inputs)
        batch, self._r3hf_batch, self._r3hf_gen = self._r3hf_batch, None, None
        if batch is None:
            raise RuntimeError("R3HFGRPOTrainer: TRL did not call _calculate_rewards for this batch")
        mode = "train" if self.model.training else "eval"
        G = self.num_generations if mode == "train" else self.num_generations_eval
        device = out["completion_ids"].device
        B, T = out["completion_ids"].shape

        mask = torch.zeros((B, T), dtype=torch.bool, device=device)
        t_local = min(T, batch["mask"].shape[1])
        mask[:, :t_local] = batch["mask"][:, :t_local].to(device)
        scores = _fit_width(batch["scores"], B, T)
        potential = None if batch["potential"] is None else _fit_width(batch["potential"], B, T)

        rpf = batch["rewards_per_func"]
        unscorable = torch.isnan(rpf).all(dim=1)
        plain = [i for i in range(len(self.reward_funcs)) if i not in self._r3hf_scorers]
        weights = self.reward_weights.to(rpf.device)
        if plain:  # TRL's nansum over the functions: a None score adds nothing
            sparse_all = (rpf[:, plain] * weights[plain]).nansum(dim=1)
        else:
            sparse_all = torch.zeros(rpf.shape[0], dtype=torch.float32, device=rpf.device)
        offset = self.accelerator.process_index * B
        sparse = sparse_all[offset: offset + B].to(device)

        logprobs = ref_logprobs = None
        if self.r3hf_kl_in_reward > 0:
            logprobs, ref_logprobs = self._r3hf_kl_logprobs(out, mode)
        group = None
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            group = dist.group.WORLD
        rewards, advantages = token_level_advantages(
            scores, sparse, mask, G, unscorable=unscorable.to(device), row_offset=offset,
            estimator=self.r3hf_estimator, baseline=self.r3hf_baseline, beta_c=self.r3hf_beta_c, first=self.r3hf_first, eps=self.r3hf_eps,
            scale=self.scale_rewards, logprobs=logprobs, ref_logprobs=ref_logprobs,
            kl_coef=self.r3hf_kl_in_reward, kl_estimator=self.r3hf_kl_estimator, group=group,
            backend=self.r3hf_backend, potential=potential,
        )
        loss_mask = out["completion_mask"].bool()
        if "tool_mask" in out:
            loss_mask = loss_mask & out["tool_mask"].bool()
        advantages = advantages * loss_mask
        out["advantages"] = advantages
        self._r3hf_last = {"rewards": rewards, "advantages": advantages, "response_mask": mask, "scores": scores}
        if potential is not None:
            self._r3hf_last["potential"] = potential
        self._r3hf_log(mode, scores, rewards, advantages, mask, loss_mask, logprobs, ref_logprobs, potential)
        return out

    # --- KL in the reward ---------------------------------------------------------------------

    @torch.no_grad()
    def _r3hf_kl_logprobs(self, out, mode):
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        keep = out["completion_ids"].shape[1]
        bs = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        logprobs = out.get("old_per_token_logps")
        if logprobs is None:  # on-policy: the current weights sampled this batch
            logprobs = self._get_per_token_logps_and_entropies(self.model, ids, attention, keep, batch_size=bs)[0]
        ref = out.get("ref_per_token_logps")
        if ref is None:
            ref = self._get_per_token_logps_and_entropies(self.ref_model, ids, attention, keep, batch_size=bs)[0]
        return logprobs, ref

    # --- metrics ------------------------------------------------------------------------------

    def _r3hf_log(self, mode, scores, rewards, advantages, mask, loss_mask, logprobs, ref_logprobs, potential=None):
        metrics = self._metrics[mode]
        device = rewards.device
        # The reward models' part of the token rewards (no KL, no plain functions) by position.
        dense = token_level_dense(scores, mask, self.r3hf_first, self.r3hf_beta_c, self.r3hf_backend, potential)
        n_buckets = len(POSITION_BUCKETS)
        pos = torch.arange(mask.shape[1], device=device)
        bucket = torch.bucketize(pos, torch.tensor(POSITION_BUCKETS[1:], device=device), right=True)
        onehot = torch.nn.functional.one_hot(bucket, n_buckets).float()  # [T, K]
        m = mask.float()
        sums = (dense * m).sum(0) @ onehot
        counts = m.sum(0) @ onehot
        row_sum = (rewards * m).sum(1)
        extras = [scores[:, 0].sum(), row_sum.sum(), (advantages.abs() * loss_mask).sum(),
                  loss_mask.float().sum(), torch.tensor(float(mask.shape[0]), device=device)]
        if potential is not None:  # every process has the same potential option, so gather's shapes agree
            extras.append(potential[:, 0].sum())
        local = torch.cat([sums, counts, torch.stack(extras)])
        total = self.accelerator.gather(local[None]).sum(0)
        sums, counts, extra = total[:n_buckets], total[n_buckets: 2 * n_buckets], total[2 * n_buckets:]
        for k in range(n_buckets):
            if counts[k] > 0:
                metrics[f"r3hf/dense_reward/{_bucket_name(k)}"].append((sums[k] / counts[k]).item())
        rows = extra[4].clamp_min(1)
        metrics["r3hf/prompt_score"].append((extra[0] / rows).item())
        if potential is not None:  # Φ'_0: with a potential head a row's shaping baseline (it sums to R − Φ'_0)
            metrics["r3hf/potential_prompt"].append((extra[5] / rows).item())
        metrics["r3hf/token_reward_sum"].append((extra[1] / rows).item())
        metrics["r3hf/advantage_abs_mean"].append((extra[2] / extra[3].clamp_min(1)).item())


def token_level_dense(scores, mask, first, beta_c, backend="auto", potential=None):
    """The reward models' token rewards alone (`ops.token_rewards` without KL), float32 [B, T]."""
    from ... import ops

    return ops.token_rewards(scores, mask, 1, first=first, beta_c=beta_c, backend=backend, potential=potential)


def _fit_width(scores, B: int, T: int):
    """[B, 1 + T'] -> [B, 1 + T]: TRL padded to pad_to_multiple_of, so repeat each row's last score."""
    if scores.shape[1] < 1 + T:
        scores = torch.cat([scores, scores[:, -1:].expand(B, 1 + T - scores.shape[1])], dim=1)
    return scores[:, : 1 + T]


class _Precomputed:
    """Stands in for a reward model inside TRL's `_calculate_rewards`: returns the final prefix
    scores r3hf already computed (the model's own score of the text), so the model runs once."""

    def __init__(self, final: torch.Tensor):
        self.final = final.tolist()

    def __call__(self, *args, **kwargs):
        return list(self.final)

