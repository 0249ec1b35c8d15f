"""OpenRLHF 0.11's own source, loaded with its heavy, unused imports stubbed (test helper).

`pip install --no-deps openrlhf==0.11.0` gives OpenRLHF's source but not deepspeed, flash-attn,
vLLM, wandb or tensorboard (CUDA-only or unused here). `load()` imports the modules the tests
need with any of those that are missing replaced by empty stub modules, then removes the stubs
from sys.modules again, so other tests see the environment unchanged. The functions the tests
call (the experience maker's advantage step, RewardModel.forward, compute_reward) use none of
the stubbed packages. Returns None when openrlhf is not installed; with R3HF_REQUIRE_OPENRLHF=1
the tests fail instead of falling back (CI's .ci/run sets it for the main suite).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

STUBBED = ("deepspeed", "flash_attn", "vllm", "wandb", "tensorboard", "bitsandbytes", "aiohttp")
MODULES = (
    "openrlhf.models.utils",
    "openrlhf.models.model",
    "openrlhf.trainer.ppo_utils.experience",
    "openrlhf.trainer.ppo_utils.experience_maker",
    "openrlhf.models.loss",
)
REQUIRED = bool(os.environ.get("R3HF_REQUIRE_OPENRLHF"))


class _Stub(types.ModuleType):
    def __getattr__(self, name):  # `from deepspeed.x import Y` at import time gets a placeholder class
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = roots

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


_cache: dict = {}


def load():
    """-> {module name: module} of OpenRLHF's real modules, or None when openrlhf is absent."""
    if "modules" in _cache:
        return _cache["modules"]
    if importlib.util.find_spec("openrlhf") is None:
        if REQUIRED:
            raise ImportError("R3HF_REQUIRE_OPENRLHF=1 but openrlhf is not installed")
        _cache["modules"] = None
        return None
    missing = {root for root in STUBBED if importlib.util.find_spec(root) is None}
    finder = _Finder(missing)
    sys.meta_path.insert(0, finder)
    try:
        modules = {name: importlib.import_module(name) for name in MODULES}
    except ImportError as e:  # e.g. ray or peft missing: the tests fall back to the transcription
        if REQUIRED:
            raise
        modules = None
        _cache["error"] = repr(e)
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.split(".")[0] in missing]:
            del sys.modules[name]
    _cache["modules"] = modules
    return modules
