"""Kept for old imports: `r3hf.integrations.verl_reward` is `r3hf.integrations.verl.reward` (the same module object)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("r3hf.integrations.verl.reward")
