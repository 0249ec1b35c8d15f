"""`r3hf demo`: when does R3HF help? Preference pairs → reward models (TRL RewardTrainer; full
responses and prefix-aware via `r3hf.models.prefix_pairs`) → their prefix diagnostics → critic-free
RLOO and PPO-GAE with sparse, R3HF and beta_c="auto" rewards, on a synthetic task with a known
ground truth. Offline and CPU-sized.

    from r3hf.demo import run
    result = run(seeds=3, out="r3hf-demo")   # or quick=True / full=True

Modules: `task` (language, ground truth, preference pairs), `reward_model`, `policy`, `train`
(one run: PPO or RLOO via `r3hf.ppo` / `r3hf.ops`), `report` (metrics, paired verdicts, table,
figure), `run` (the whole study).
"""

from .._extras import require

require("demo", "r3hf demo")  # before any work: a missing package fails here, not after training

from .run import DemoSettings, run  # noqa: E402

__all__ = ["run", "DemoSettings"]
