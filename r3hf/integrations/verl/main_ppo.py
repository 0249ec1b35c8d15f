"""veRL 0.9's `main_ppo` with r3hf registered where veRL computes advantages (needs veRL).

    python -m r3hf.integrations.verl.main_ppo <the Hydra overrides of verl.trainer.main_ppo>
                                              [r3hf.replace_gae=true]

veRL builds its trainer, and with it `compute_advantage` and the reward manager, in a Ray actor
(`run_ppo(config, task_runner_class=TaskRunnerV1)`; `trainer.use_v1=False`: `main_ppo_v0`'s
`TaskRunner`), and its reward loop in more actors. Estimator and reward-manager registries are
per process, so `register()` in the driver alone never reaches them. This entry point registers:

- in the driver (veRL's config checks look the reward manager name up there);
- in the task runner's actor, before its `run` builds the trainer (`R3HFTaskRunnerV1`,
  `R3HFTaskRunner`: Ray actors that run veRL's task runner with that one step added);
- in every Ray worker process it starts (reward-loop workers included), through Ray's
  `worker_process_setup_hook` (`setup_worker`) added to `ray_kwargs.ray_init.runtime_env`. That
  applies when veRL itself starts Ray; in a Ray you started, the task runner still registers.

r3hf's own options come as overrides under `r3hf.` (`+r3hf.` works too): `replace_gae` (bool,
default false: `register(replace_gae=...)`, r3hf's GAE for `adv_estimator=gae`). Any other
`r3hf.` key is an error. veRL's config keeps them under `r3hf` until the task runner reads them.
"""

from __future__ import annotations

import os
import sys

import ray
from omegaconf import DictConfig, OmegaConf, open_dict
from verl.trainer import main_ppo as _verl_main

from . import register

__all__ = ["main", "run", "registered", "R3HFTaskRunnerV1", "R3HFTaskRunner", "setup_worker", "options", "SETUP_HOOK", "OPTIONS"]

MODULE = "r3hf.integrations.verl.main_ppo"  # not __name__: under `python -m` that is "__main__"
OPTIONS = {"replace_gae": False}  # r3hf.<key> overrides -> register() keyword arguments, with defaults
SETUP_HOOK = f"{MODULE}.setup_worker"
ENV = "R3HF_VERL_REGISTER"  # register() options for Ray workers: "replace_gae=0|1"
CONFIG_DIR = os.path.join(os.path.dirname(_verl_main.__file__), "config")


def options(config) -> dict:
    """The `r3hf` section of a veRL config -> register() keyword arguments (ValueError on unknown keys)."""
    section = config.get("r3hf") if hasattr(config, "get") else None
    section = {} if section is None else OmegaConf.to_container(section) if isinstance(section, DictConfig) else section
    if not isinstance(section, dict):
        raise ValueError(f"config.r3hf must be a mapping of r3hf options {sorted(OPTIONS)}, got {section!r}")
    unknown = sorted(set(section) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown r3hf option(s) {unknown}; r3hf.<option> takes {sorted(OPTIONS)}")
    out = dict(OPTIONS)
    for key, value in section.items():
        if not isinstance(value, bool):
            raise ValueError(f"r3hf.{key} must be true or false, got {value!r}")
        out[key] = value
    return out


def _encode(opts: dict) -> str:
    return ",".join(f"{k}={int(v)}" for k, v in sorted(opts.items()))


def _decode(text: str) -> dict:
    out = dict(OPTIONS)
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in OPTIONS or value not in ("0", "1"):
            raise ValueError(f"{ENV}={text!r}: expected comma-separated key=0|1 with keys {sorted(OPTIONS)}")
        out[key] = value == "1"
    return out


def setup_worker() -> None:
    """Ray `worker_process_setup_hook`: register r3hf in a Ray worker with the launcher's options."""
    register(**_decode(os.environ.get(ENV, "")))


def _register_in_actor(config) -> None:
    opts = options(config)
    if not register(**opts):
        raise ImportError("r3hf could not register with veRL in its trainer's actor: veRL does not import there")
    with open_dict(config):
        config.pop("r3hf", None)  # veRL's own code never sees r3hf's section


def registered(config=None) -> dict:
    """What this process resolves (also an actor method of the task runners, for checks from the
    driver): {"estimators": r3hf names in veRL's registry, "reward_manager": the class name veRL's
    `resolve_reward_manager_cls` gives for `config` (or for source=register, name=r3hf)}."""
    from verl.trainer.ppo import core_algos

    out = {"pid": os.getpid(), "estimators": sorted(k for k in core_algos.ADV_ESTIMATOR_REGISTRY if k.startswith("r3hf"))}
    try:
        from verl.trainer.ppo.reward import resolve_reward_manager_cls

        cfg = config if config is not None else OmegaConf.create(
            {"reward": {"reward_manager": {"source": "register", "name": "r3hf"}}})
        cls = resolve_reward_manager_cls(cfg)
        out["reward_manager"] = f"{cls.__module__}.{cls.__qualname__}"
    except Exception as e:  # reported, not raised: this is a probe
        out["reward_manager"] = f"error: {e!r}"
    return out


class _TaskRunner:
    """veRL's task runner (`_verl`: module, name of its Ray actor class) run inside this actor, with
    r3hf registered before its `run` builds the trainer. It wraps rather than subclasses veRL's
    class: Ray hands a module attribute that is an ActorClass, not the class, and a subclass of
    `__ray_actor_class__` is pickled with a copy of veRL's class whose `super()` calls break."""

    _verl: tuple[str, str]

    def __init__(self):
        import importlib

        module, name = self._verl
        self._runner = getattr(importlib.import_module(module), name).__ray_actor_class__()

    def run(self, config):
        """r3hf's register() in this actor (options from config.r3hf, then removed), then veRL's run."""
        _register_in_actor(config)
        return self._runner.run(config)

    def r3hf_registered(self, config=None) -> dict:
        return registered(config)


class _R3HFTaskRunnerV1(_TaskRunner):
    _verl = ("verl.trainer.main_ppo", "TaskRunnerV1")


class _R3HFTaskRunner(_TaskRunner):
    _verl = ("verl.trainer.main_ppo_v0", "TaskRunner")


def _actor(cls, verl_actor_class):
    options_ = getattr(verl_actor_class, "_default_options", None) or {}
    return ray.remote(**options_)(cls) if options_ else ray.remote(cls)


R3HFTaskRunnerV1 = _actor(_R3HFTaskRunnerV1, _verl_main.TaskRunnerV1)


def __getattr__(name):
    # main_ppo_v0 is veRL's legacy trainer: import it only when asked for.
    if name == "R3HFTaskRunner":
        from verl.trainer.main_ppo_v0 import TaskRunner

        runner = globals()["R3HFTaskRunner"] = _actor(_R3HFTaskRunner, TaskRunner)
        return runner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _add_setup_hook(config, opts: dict) -> None:
    with open_dict(config):
        ray_init = config.ray_kwargs.setdefault("ray_init", {})
        runtime_env = ray_init.get("runtime_env") or {}
        hook = runtime_env.get("worker_process_setup_hook")
        if hook not in (None, SETUP_HOOK):
            raise ValueError(
                f"ray_kwargs.ray_init.runtime_env.worker_process_setup_hook is already {hook!r}; r3hf needs "
                f"{SETUP_HOOK!r} there to register in veRL's Ray workers (call r3hf's setup_worker from yours)"
            )
        env_vars = dict(runtime_env.get("env_vars") or {})
        env_vars[ENV] = _encode(opts)
        ray_init.runtime_env = {**runtime_env, "worker_process_setup_hook": SETUP_HOOK, "env_vars": env_vars}


def run(config) -> None:
    """veRL's `main` body on a composed config, with r3hf registered in the driver, the task runner's
    actor and (when veRL starts Ray) every Ray worker."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    opts = options(config)
    if not register(**opts):  # the driver: veRL's config checks look the reward manager up here
        raise ImportError("veRL is not importable")
    os.environ[ENV] = _encode(opts)
    _add_setup_hook(config, opts)
    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    runner = R3HFTaskRunnerV1 if config.trainer.use_v1 else __getattr__("R3HFTaskRunner")
    _verl_main.run_ppo(config, task_runner_class=runner)


def _normalise_argv(argv: list[str]) -> list[str]:
    # r3hf's section is not in veRL's schema: Hydra needs "+r3hf.x=..." to add it; accept "r3hf.x=...".
    return ["+" + a if a.startswith("r3hf.") else a for a in argv]


def main(argv: list[str] | None = None) -> None:
    """`python -m r3hf.integrations.verl.main_ppo`: veRL's Hydra config (verl/trainer/config,
    `ppo_trainer`; `--config-name` / `--config-path` as with veRL's own entry), then `run`."""
    import hydra

    sys.argv = [sys.argv[0], *_normalise_argv(sys.argv[1:] if argv is None else list(argv))]
    hydra.main(config_path=CONFIG_DIR, config_name="ppo_trainer", version_base=None)(run)()


if __name__ == "__main__":
    # Run the importable module's main, so that Ray pickles its task-runner classes by reference.
    from r3hf.integrations.verl.main_ppo import main as _main

    _main()
