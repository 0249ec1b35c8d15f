"""Kept for old imports: `r3hf.integrations.verl_packed` is `r3hf.integrations.verl.packed` (the same module object)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("r3hf.integrations.verl.packed")
