"""Research study (issue 21's open item): what the per-position group baseline should give a row of the
group that has already ended, on the demo's variable-length task. Not a test; numbers in docs/group.md.

    .venv/bin/python benchmarks/demo_ended_rows.py [seeds] [steps] [reward]   # default 12 24 recommended

A_{i,t} = G_{i,t} − b_{i,t}, with G the reward-to-go of the token rewards (γ = 1) and b_{i,t} built
from the other rows j ≠ i of the group at generated-token position t. A row j that ended before t
(t > T_j) contributes, by variant:
- "hold": its last return G_{j,T_j} (what `ops.group_advantages(..., baseline="position")` does);
- "drop": nothing (the mean over the other rows still present; no other row present: b = 0);
- "zero": 0 (its reward-to-go after the end);
- "row": nothing, and where no other row is present, the row baseline mean_{j≠i} G_{j,1}.
The variants live here only (r3hf.ops implements "hold"); "hold" is checked against the op on
every batch. Every run: the demo's default settings and the full-response RM, the reward of the
demo's REWARD_SETTINGS (default "recommended": potential head + per-position baseline), 2 worker
processes; paired 2-SE differences against "hold" (AUC, final ground truth, final length).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from r3hf import ops
from r3hf.demo import report, task, train
from r3hf.demo.policy import make_policy, pretrain
from r3hf.demo.reward_model import make_reward_model, pairwise_accuracy, train_reward_model
from r3hf.demo.run import DemoSettings
from r3hf.ppo import PPOConfig

VARIANTS = ("hold", "drop", "zero", "row")


def variant_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int, variant: str) -> torch.Tensor:
    """rewards, mask [B, L] (responses without holes, ended rows padded after their last token) ->
    per-position leave-one-out advantages [B, L] with the ended-row rule `variant`."""
    B, L = rewards.shape
    m = mask.float()
    G = (rewards * m).flip(1).cumsum(1).flip(1) * m  # reward-to-go, 0 after the end
    n = m.sum(1).long()  # T_j
    last = G.gather(1, (n - 1).clamp_min(0)[:, None])  # G_{j,T_j} [B, 1]
    g = B // group_size
    if variant == "hold":
        contrib, weight = torch.where(mask, G, last), torch.ones_like(m)
    elif variant == "zero":
        contrib, weight = G, torch.ones_like(m)
    else:  # "drop", "row": only rows still present count
        contrib, weight = G, m
    cs = contrib.reshape(g, group_size, L)
    ws = weight.reshape(g, group_size, L)
    others = (cs.sum(1, keepdim=True) - cs) / (ws.sum(1, keepdim=True) - ws).clamp_min(1.0)
    present_others = (ws.sum(1, keepdim=True) - ws) > 0
    if variant in ("drop", "row"):
        fallback = torch.zeros_like(others)
        if variant == "row":
            tot = G[:, :1].reshape(g, group_size, 1)
            fallback = ((tot.sum(1, keepdim=True) - tot) / (group_size - 1)).expand_as(others)
        others = torch.where(present_others, others, fallback)
    return (G - others.reshape(B, L)) * m


def _patched(variant: str):
    def critic_free_advantages(hidden, w, b, mask, logprobs, ref_logprobs, config, group_size, method, potential=None):
        rewards, adv_op = ORIGINAL(hidden, w, b, mask, logprobs, ref_logprobs, config, group_size, method, potential)
        if train.reward_settings(method)["baseline"] != "position":
            raise ValueError("the ended-row variants are variants of the per-position baseline")
        hold = variant_advantages(rewards, mask, group_size, "hold")
        torch.testing.assert_close(hold, adv_op, rtol=1e-4, atol=1e-5)  # the research code's "hold" is the op
        return rewards, variant_advantages(rewards, mask, group_size, variant)

    return critic_free_advantages


ORIGINAL = train.critic_free_advantages
_S: dict = {}


def _job(args):
    variant, seed = args
    torch.set_num_threads(1)
    s = _S["settings"]
    train.critic_free_advantages = _patched(variant)
    res = train.run_ppo(_S["reward"], seed, init_policy=_S["policy0"], rm=_S["rm"], steps=s.steps,
                        batch_size=s.batch_size, lr=s.lr, config=PPOConfig(ppo_epochs=s.ppo_epochs,
                        num_minibatches=s.num_minibatches), eval_prompts=_S["eval_prompts"], estimator="rloo",
                        group_size=s.group_size, potential=_S["potential"])
    res.pop("policy")
    return variant, seed, res


def main(argv):
    seeds = int(argv[0]) if argv else 12
    steps = int(argv[1]) if len(argv) > 1 else 24
    reward = argv[2] if len(argv) > 2 else "recommended"
    torch.set_num_threads(1)
    s = DemoSettings()
    s.steps = steps
    t0 = time.perf_counter()
    reference = task.ReferencePolicy.make()
    gen = torch.Generator().manual_seed(0)
    pairs = task.preference_pairs(s.train_pairs, gen, reference, noise=s.label_noise)
    test_pairs = task.preference_pairs(s.test_pairs, gen, reference, noise=s.label_noise)
    rm, _ = train_reward_model(pairs, epochs=s.rm_epochs)  # the demo's "full" RM, same data and seeds
    state = {k: v.detach().clone() for k, v in rm.state_dict().items()}
    rm = make_reward_model(0)
    rm.load_state_dict(state)
    rm.eval()
    acc = pairwise_accuracy(rm, test_pairs)
    policy0 = train.restrict_vocab(make_policy(0))
    pretrain(policy0, reference, steps=s.pretrain_steps, generator=torch.Generator().manual_seed(1))
    potential = train.fit_demo_potential(rm, policy0, samples=s.potential_samples) \
        if train.reward_settings(reward)["potential"] == "head" else None
    _S.update(settings=s, reward=reward, policy0=policy0, rm=rm, potential=potential,
              eval_prompts=task.sample_prompts(s.eval_prompts, torch.Generator().manual_seed(99)))
    jobs = [(v, seed) for v in VARIANTS for seed in range(seeds)]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    runs = {v: [None] * seeds for v in VARIANTS}
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("fork")) as pool:
        for v, seed, res in pool.map(_job, jobs):
            runs[v][seed] = res
            print(f"{v} seed {seed}: final ground truth {res['final']['gt_score']:.3f}", file=sys.stderr, flush=True)
    per = {v: [report.run_metrics(r) for r in rs] for v, rs in runs.items()}
    out = {"reward": reward, "seeds": seeds, "steps": steps, "rm_accuracy": acc, "variants": {}}
    for v in VARIANTS:
        row = {m: statistics.fmean(p[m] for p in per[v]) for m in ("auc", "final", "length")}
        row["length_per_step"] = [statistics.fmean(r["history"][k]["length"] for r in runs[v]) for k in range(steps)]
        if v != "hold":
            for m in ("auc", "final", "length"):
                c = report.compare([p[m] for p in per[v]], [p[m] for p in per["hold"]],
                                   m if m != "length" else "auc")
                row[f"d_{m}"], row[f"2se_{m}"] = c["diff"], 2 * c["se"]
        out["variants"][v] = row
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
