"""The integrations are one subpackage per trainer; the module paths of earlier releases still
import, as the very same module objects (so a monkeypatch on either path is seen by both)."""

import importlib
import sys

import pytest

OLD_TO_NEW = {
    "r3hf.integrations.verl_packed": "r3hf.integrations.verl.packed",
    "r3hf.integrations.verl_reward": "r3hf.integrations.verl.reward",
    "r3hf.integrations.trl_grpo": "r3hf.integrations.trl.grpo",
    "r3hf.integrations.trl_grpo_advantages": "r3hf.integrations.trl.grpo_advantages",
    "r3hf.integrations.trl_grpo_align": "r3hf.integrations.trl.grpo_align",
}


def _needs(module: str) -> None:
    if module.endswith("verl.reward"):
        pytest.importorskip("verl")
    if "trl.grpo" in module and module.endswith("grpo"):
        pytest.importorskip("trl", minversion="1.13")  # the [trl] extra's floor


@pytest.mark.parametrize("old, new", sorted(OLD_TO_NEW.items()))
def test_old_path_is_the_new_module(old, new):
    _needs(new)
    assert importlib.import_module(old) is importlib.import_module(new)
    assert sys.modules[old] is sys.modules[new]


@pytest.mark.parametrize("name", ["verl", "openrlhf", "trl"])
def test_one_subpackage_per_trainer(name):
    mod = importlib.import_module(f"r3hf.integrations.{name}")
    assert mod.__file__.endswith(f"integrations/{name}/__init__.py"), mod.__file__


def test_trl_reexports_the_grpo_trainer():
    pytest.importorskip("trl", minversion="1.13")
    from r3hf.integrations.trl import R3HFGRPOTrainer
    from r3hf.integrations.trl.grpo import R3HFGRPOTrainer as direct

    assert R3HFGRPOTrainer is direct
