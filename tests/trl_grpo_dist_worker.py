"""One rank of tests/test_trl_grpo_distributed.py (run as a script with accelerate's env vars:
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Trains R3HFGRPOTrainer for one step per
configuration on CPU (accelerate picks MULTI_CPU with gloo) and saves what each rank recorded."""

from __future__ import annotations

import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trl_grpo_harness import (  # noqa: E402
    deterministic_rollout,
    grpo_config,
    prompt_dataset,
    recording,
    reward_model,
    word_tokenizer,
)

# (estimator, scale_rewards, with a reward model[, baseline]); groups of 2 straddle the ranks (3 rows each)
# (the plain-function-only config stays last: the test reads it as single[-1])
CONFIGS = [("grpo", "batch", True), ("reinforce_pp_baseline", "group", True), ("rloo", "group", True, "position"),
           ("grpo", "group", False)]


def sometimes_none(completions, **kwargs):
    """Rule-based; None (unscorable) for completions that mention "sat"."""
    return [None if "sat" in c else float("good" in c) + 0.1 * len(c) for c in completions]


def run_config(policy: str, out: str, per_device: int, estimator: str, scale: str, with_rm: bool,
               baseline: str = "row"):
    from r3hf.integrations.trl import R3HFGRPOTrainer

    funcs = [reward_model(), sometimes_none] if with_rm else [sometimes_none]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = grpo_config(out, per_device_train_batch_size=per_device, num_generations=2, scale_rewards=scale)
        trainer = recording(R3HFGRPOTrainer)(
            model=policy, reward_funcs=funcs, args=args, train_dataset=prompt_dataset(),
            processing_class=word_tokenizer(),
            reward_processing_classes=[word_tokenizer() if isinstance(f, torch.nn.Module) else None for f in funcs],
            rollout_func=deterministic_rollout, estimator=estimator, baseline=baseline,
        )
        trainer.train()
    rec = trainer.recorded[0]
    return {k: rec[k] for k in ("prompt_ids", "completion_ids", "advantages")} | {
        "rewards": rec["r3hf"]["rewards"], "num_processes": trainer.accelerator.num_processes}


def main(policy: str, out: str, per_device: int):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    results = [run_config(policy, f"{out}.run", per_device, *c) for c in CONFIGS]
    rank = int(os.environ.get("RANK", 0))
    torch.save(results, f"{out}.rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
