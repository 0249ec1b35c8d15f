"""Drop-in adapters for the trainers users run: veRL 0.9, OpenRLHF 0.11 and TRL (≤ 1.12 PPO,
1.13 – 1.16 GRPO). One subpackage per trainer:

    r3hf.integrations.verl       veRL 0.9: GAE / KL / dense rewards, `r3hf_*` group estimators
                                 (`register()`), `.reward` (reward manager, needs veRL), `.packed`
                                 (remove-padding and nested layouts), `.main_ppo` (the launcher)
    r3hf.integrations.openrlhf   OpenRLHF 0.11: rewards, GAE, `compute_advantages_and_returns`,
                                 prefix values of its RewardModel, packed samples,
                                 `.train_ppo_ray` (the launcher)
    r3hf.integrations.trl        TRL ≤ 1.12 PPO rewards and advantages; `R3HFGRPOTrainer`
                                 (`.grpo`, TRL 1.13 – 1.16)

Each adapter takes the tensors its trainer already has, in that trainer's layout and padding
conventions, translates them to r3hf's (prompt ⊕ response, `response_mask`) and calls
`r3hf.ops`; none re-implements the math. Each returns what the trainer's own function returns,
position for position (float32), so swapping one in changes nothing but speed, or, with the
dense variants, replaces the trainer's sparse score with R3HF token-level rewards.

veRL and OpenRLHF compute advantages in Ray actors, where a registration or patch made in the
driver does not reach: launch them with `python -m r3hf.integrations.verl.main_ppo` /
`python -m r3hf.integrations.openrlhf.train_ppo_ray`, which apply r3hf in those processes.

The subpackages import their trainer only where needed, so all three import without veRL,
OpenRLHF or TRL installed. The old module paths (`verl_packed`, `verl_reward`, `trl_grpo`,
`trl_grpo_advantages`, `trl_grpo_align`) still import: each is the same module object as its new
path. See docs/integrations.md.
"""

__all__ = ["verl", "openrlhf", "trl"]
