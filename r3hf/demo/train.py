"""One run of the demo (PPO-GAE or critic-free RLOO; sparse, R3HF, beta_c="auto", the per-position
baseline, a potential head) and the evaluation of a policy."""

from __future__ import annotations

import copy
import time

import torch

from .. import ops, ppo
from . import task
from .policy import sample
from ..models import reward_hidden_states


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def rm_hidden_and_head(rm, query_responses):
    """Reward-model hidden states [B, S, D] and head (weight [D], bias) for r3hf's fused path."""
    return reward_hidden_states(rm, query_responses)


@torch.no_grad()
def evaluate(policy, ref_policy, rm, prompts: torch.Tensor, generator: torch.Generator, batch_size: int = 256) -> dict:
    """Sample one response per prompt; mean ground truth, mean RM score (the head at the last
    response token), mean KL to the reference (Σ_t logπ − logπ_ref over the response, a k1
    estimate), mean response length (tokens, with `<eos>`) and the truncated fraction."""
    P, L = task.PROMPT_LEN, task.RESPONSE_LEN
    gts, rms, kls, lens, truncs = [], [], [], [], []
    for start in range(0, len(prompts), batch_size):
        p = prompts[start:start + batch_size]
        qr, _ = sample(policy, p, L, generator)
        mask = task.response_mask(qr[:, P:])
        logprobs, _ = ppo.response_logprobs(policy, qr, P, L)
        ref_logprobs, _ = ppo.response_logprobs(ref_policy, qr, P, L)
        hidden, w, b = rm_hidden_and_head(rm, qr)
        gts.append(task.ground_truth(qr[:, :P].cpu(), qr[:, P:].cpu()))
        rms.append(final_scores(hidden, w, b, mask, P).cpu())
        kls.append(torch.where(mask, logprobs - ref_logprobs, 0.0).sum(1).cpu())
        lens.append(mask.sum(1).float().cpu())
        truncs.append(task.truncated(qr[:, P:].cpu()).float())
    return {
        "gt_score": torch.cat(gts).mean().item(),
        "rm_score": torch.cat(rms).mean().item(),
        "kl_to_ref": torch.cat(kls).mean().item(),
        "length": torch.cat(lens).mean().item(),
        "truncation_rate": torch.cat(truncs).mean().item(),
    }


def final_scores(hidden, w, b, mask, prompt_len: int) -> torch.Tensor:
    """The RM's score R at each row's last response token: hidden [B, S, D], mask [B, L] -> float [B]."""
    last = prompt_len + mask.sum(1) - 1  # [B]
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
    return h @ w.float().reshape(-1) + (b.float() if b is not None else 0.0)


CRITIC_INITS = ("reward-model", "policy")


def make_critic(rm, init_policy, critic_init: str):
    """The value model. "reward-model": a copy of the RM (TRL's convention), so its values start
    at the RM's prefix scores; "policy": the pre-trained policy's backbone with a zero scalar
    head (values start at 0), as trainers that initialise the critic from the actor do."""
    if critic_init == "reward-model":
        return copy.deepcopy(rm)
    if critic_init == "policy":
        from transformers import GPT2ForSequenceClassification

        critic = GPT2ForSequenceClassification(copy.deepcopy(rm.config))
        critic.transformer.load_state_dict(init_policy.transformer.state_dict())
        torch.nn.init.zeros_(critic.score.weight)
        return critic
    raise ValueError(f"critic_init must be one of {list(CRITIC_INITS)}, got {critic_init!r}")


ESTIMATORS = ("rloo", "ppo")  # critic-free RLOO (group advantages), PPO-GAE with a critic

# The rewards an arm can use: β_c, the shaping potential ("rm": the RM's own prefix scores;
# "head": a potential head fit label-free on the start policy's samples, `fit_demo_potential`) and
# the critic-free group baseline ("row": r3hf's default, "position": the per-position baseline of
# issue 21). PPO has no group baseline; it ignores `baseline`.
REWARD_SETTINGS = {
    "sparse": {"beta_c": 0.0, "potential": "rm", "baseline": "row"},
    "r3hf": {"beta_c": 1.0, "potential": "rm", "baseline": "row"},
    "auto": {"beta_c": "auto", "potential": "rm", "baseline": "row"},
    "position": {"beta_c": 1.0, "potential": "rm", "baseline": "position"},
    "head": {"beta_c": 1.0, "potential": "head", "baseline": "row"},
    # what the measurements recommend (docs/group.md, docs/potential.md, ../shared/learning-signal.md):
    # the potential head for R3HF's shaping, and under RLOO the per-position baseline
    "recommended": {"beta_c": 1.0, "potential": "head", "baseline": "position"},
}
REWARDS = tuple(REWARD_SETTINGS)
SUPPRESSED_IDS = (task.PAD_ID,)


def restrict_vocab(policy):
    """The policy must never sample <pad> (a response is words, ended by <eos> or truncated at
    task.RESPONSE_LEN): a fixed (untrained) −1e4 bias on that logit of the LM head. Every path
    that reads the policy's logits (sampling, log-probs, pre-training) then sees the same
    restricted distribution, so PPO's ratios stay exact. Returns the policy."""
    head = policy.get_output_embeddings()
    bias = torch.zeros(head.out_features, device=head.weight.device)
    bias[list(SUPPRESSED_IDS)] = -1e4
    head.bias = torch.nn.Parameter(bias, requires_grad=False)
    return policy


def reward_settings(reward: str) -> dict:
    """β_c, potential ("rm" or "head") and group baseline of a reward name (REWARD_SETTINGS)."""
    if reward not in REWARD_SETTINGS:
        raise ValueError(f"reward must be one of {list(REWARDS)}, got {reward!r}")
    return REWARD_SETTINGS[reward]


@torch.no_grad()
def fit_demo_potential(rm, policy, *, samples: int = 512, seed: int = 13, device: str = "cpu"):
    """The potential head of the "head"/"recommended" rewards: `r3hf.models.fit_potential` in its
    default label-free mode (ridge regression of Φ'(h_t) on the RM's own final score R, every
    prefix position, ridge by cross-validation) on `samples` responses of the start policy, with
    fixed seeds (one head per RM, shared by every run seed). Returns the PotentialHead."""
    from ..models import fit_potential

    gen = torch.Generator().manual_seed(seed)
    qr, _ = sample(policy, task.sample_prompts(samples, gen).to(device), task.RESPONSE_LEN, gen)
    mask = task.response_mask(qr[:, task.PROMPT_LEN:])
    # attention over every column, as the runs read the RM (causal: what follows <eos> is never seen)
    data = {"input_ids": qr, "attention_mask": torch.ones_like(qr), "prompt_len": task.PROMPT_LEN,
            "response_mask": mask}
    return fit_potential(rm, data, mode="regression", progress=False, seed=seed)


def critic_free_advantages(hidden, w, b, mask, logprobs, ref_logprobs, config: ppo.PPOConfig, group_size: int,
                           method: str, potential=None):
    """The demo loop's critic-free step: RM hidden states [B, S, D] with its head (w, b), response
    mask [B, L], log-probs [B, L] of the sampling and reference policies -> (token rewards,
    advantages) float32 [B, L] from `ops.fused_reward_group_advantages(..., "rloo")` with the
    reward's β_c, potential and baseline (REWARD_SETTINGS); groups are `group_size` consecutive rows."""
    rs = reward_settings(method)
    head = {}
    if rs["potential"] == "head":
        if potential is None:
            raise ValueError(f"reward {method!r} shapes with a potential head: pass potential= (fit_demo_potential)")
        head = dict(potential_weight=potential.weight.to(hidden.device), potential_bias=potential.bias.to(hidden.device))
    beta_c = 0.0 if method == "sparse" else (rs["beta_c"] if isinstance(rs["beta_c"], str) else float(rs["beta_c"]))
    return ops.fused_reward_group_advantages(
        hidden, w, b, mask, task.PROMPT_LEN, group_size, "rloo", logprobs=logprobs, ref_logprobs=ref_logprobs,
        kl_coef=config.kl_coef, kl_estimator=config.kl_estimator, first=config.first, beta_c=beta_c,
        backend=config.backend, baseline=rs["baseline"], **head,
    )


def run_ppo(method: str, seed: int, *, init_policy, rm, steps: int, batch_size: int = 64, lr: float = 1e-3,
            config: ppo.PPOConfig | None = None, device: str = "cpu", eval_prompts=None, progress=None,
            critic_init: str = "policy", estimator: str = "ppo", group_size: int = 4, potential=None) -> dict:
    """One run from `init_policy` (also the frozen reference). method: a reward of
    REWARD_SETTINGS ("sparse", "r3hf", "auto", "position", "head", "recommended"). estimator
    "ppo": PPO-GAE with the critic from `make_critic`; "rloo": critic-free, `group_size` responses
    per prompt, advantages from `r3hf.ops.fused_reward_group_advantages(..., "rloo", baseline=...)`
    (no critic, no whitening). potential: the PotentialHead the "head" rewards need
    (`fit_demo_potential`). Returns the per-step history (rollout ground truth, RM score, KL,
    losses, timings) and the final evaluation."""
    config = copy.deepcopy(config) if config is not None else ppo.PPOConfig()
    rs = reward_settings(method)
    config.reward = "sparse" if method == "sparse" else "r3hf"
    config.beta_c = 1.0 if method == "sparse" else rs["beta_c"]
    if rs["potential"] == "head" and potential is None:
        raise ValueError(f"reward {method!r} shapes with a potential head: pass potential= (fit_demo_potential)")
    head = potential.to(device) if rs["potential"] == "head" else None
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    if critic_init not in CRITIC_INITS:
        raise ValueError(f"critic_init must be one of {list(CRITIC_INITS)}, got {critic_init!r}")
    if estimator == "rloo" and (group_size < 2 or batch_size % group_size):
        raise ValueError(f"rloo needs group_size >= 2 dividing batch_size, got {group_size} and {batch_size}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    policy = copy.deepcopy(init_policy).to(device).train()
    ref_policy = copy.deepcopy(init_policy).to(device).eval()
    critic = make_critic(rm, init_policy, critic_init).to(device).train() if estimator == "ppo" else None
    rm = rm.to(device).eval()
    params = list(policy.parameters()) + (list(critic.parameters()) if critic is not None else [])
    optimizer = torch.optim.Adam([q for q in params if q.requires_grad], lr=lr, eps=1e-5)
    P, L = task.PROMPT_LEN, task.RESPONSE_LEN
    history = []
    for step in range(steps):
        _sync(device)
        t_step = time.perf_counter()
        if estimator == "rloo":
            prompts = task.sample_prompts(batch_size // group_size, gen).repeat_interleave(group_size, 0).to(device)
        else:
            prompts = task.sample_prompts(batch_size, gen).to(device)
        with torch.no_grad():
            qr, _ = sample(policy, prompts, L, gen, config.temperature)
            logprobs, _ = ppo.response_logprobs(policy, qr, P, L, temperature=config.temperature)
            ref_logprobs, _ = ppo.response_logprobs(ref_policy, qr, P, L, temperature=config.temperature)
            values = ppo.response_values(critic, qr, P, L) if critic is not None else torch.zeros_like(logprobs)
            hidden, w, b = rm_hidden_and_head(rm, qr)
        mask = task.response_mask(qr[:, P:])  # up to and including <eos>: variable length
        rollout = ppo.Rollout(qr, P, mask, logprobs, ref_logprobs, values, rm_hidden=hidden, rm_weight=w, rm_bias=b,
                              potential=head)
        _sync(device)
        t_ops = time.perf_counter()
        if estimator == "ppo":
            adv = ppo.compute_advantages(rollout, config)  # r3hf.ops: fused_reward_gae + masked_whiten
        else:
            rewards, advantages = critic_free_advantages(hidden, w, b, mask, logprobs, ref_logprobs, config, group_size,
                                                         method, potential)
            adv = ppo.Advantages(rewards, advantages, advantages)
        _sync(device)
        t_ops = time.perf_counter() - t_ops
        if step == 0:  # a fingerprint of the estimator's output, for CI's reference check
            first_step = {"mean_abs_advantage": ppo.masked_mean(adv.advantages.abs().float(), mask).item(),
                          "advantages_row0": adv.advantages[0][mask[0]].float().tolist(),
                          "lengths": mask.sum(1).tolist()}
        metrics = ppo.ppo_update(policy, critic, optimizer, rollout, adv, config, generator=gen)
        _sync(device)
        t_step = time.perf_counter() - t_step
        with torch.no_grad():
            rm_final = final_scores(hidden, w, b, mask, P)
        history.append({
            "step": step + 1,
            "gt_score": task.ground_truth(qr[:, :P].cpu(), qr[:, P:].cpu()).mean().item(),
            "rm_score": rm_final.mean().item(),
            "length": mask.sum(1).float().mean().item(),
            "truncation_rate": task.truncated(qr[:, P:].cpu()).float().mean().item(),
            "time_r3hf_ops_s": t_ops,
            "time_step_s": t_step,
            **metrics,
        })
        if progress is not None:
            progress.update(1)
            progress.set_postfix(gt=f"{history[-1]['gt_score']:.2f}", kl=f"{metrics['kl_to_ref']:.2f}")
    policy.eval()
    final = evaluate(policy, ref_policy, rm, eval_prompts.to(device), torch.Generator().manual_seed(10_000 + seed)) \
        if eval_prompts is not None else {}
    return {"method": method, "estimator": estimator, "seed": seed, "history": history, "final": final,
            "first_step": first_step, "policy": policy}
