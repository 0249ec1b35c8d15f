"""Kept for old imports: `r3hf.integrations.trl_grpo` is `r3hf.integrations.trl.grpo` (the same module object)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("r3hf.integrations.trl.grpo")
