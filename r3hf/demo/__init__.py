"""`r3hf demo`: preference pairs → reward model (TRL RewardTrainer) → PPO with sparse vs R3HF
rewards, on a synthetic task with a known ground truth. Offline and CPU-sized.

    from r3hf.demo import run
    result = run(seeds=3, out="r3hf-demo")   # or quick=True

Modules: `task` (language, ground truth, preference pairs), `reward_model`, `policy`, `train`
(one PPO run via `r3hf.ppo`), `report` (table, plot, verdict), `run` (the whole demo).
"""

from .run import DemoSettings, run

__all__ = ["run", "DemoSettings"]
