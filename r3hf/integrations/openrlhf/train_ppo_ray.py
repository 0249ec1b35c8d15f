"""OpenRLHF 0.11's `openrlhf.cli.train_ppo_ray` with r3hf's advantage step in its experience maker.

    python -m r3hf.integrations.openrlhf.train_ppo_ray <the arguments of openrlhf.cli.train_ppo_ray>

OpenRLHF builds its `RemoteExperienceMaker` inside a Ray actor (`PPOTrainer`, or the
`TrainingActor` of `--train.async_enable`), so patching it in the driver changes nothing there.
This entry point starts Ray with a `worker_process_setup_hook` (`setup_worker`) that, in every Ray
worker, points `RemoteExperienceMaker.compute_advantages_and_returns` at r3hf's drop-in
(`r3hf.integrations.openrlhf.compute_advantages_and_returns`: OpenRLHF's numbers, its length
penalties included, on r3hf's kernels), patches the driver the same way, then runs OpenRLHF's own
`train_ppo_ray` main (its argument parser and `train(args)` unchanged). Ray is started with
OpenRLHF's own environment variables (the defaults its `train` would set), so nothing else
changes. With Ray already initialised in this process (`ray.init` before `main`), the hook cannot
be added: `main` raises rather than run without r3hf.

The patched method computes OpenRLHF's sparse rewards: its reward models return one score per
sample. Dense R3HF rewards need prefix scores per experience (`prefix_values`), which OpenRLHF's
reward-model actors do not return; see docs/integrations.md.
"""

from __future__ import annotations

import os
import runpy
import sys

__all__ = ["main", "apply", "applied", "setup_worker", "SETUP_HOOK", "ENTRY"]

MODULE = "r3hf.integrations.openrlhf.train_ppo_ray"  # not __name__: under `python -m` that is "__main__"
SETUP_HOOK = f"{MODULE}.setup_worker"
ENTRY = "openrlhf.cli.train_ppo_ray"
ENV = "R3HF_OPENRLHF_DROPIN"  # "1" in the Ray workers' environment: the hook patches


def _maker_class():
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    return RemoteExperienceMaker


def _r3hf_compute_advantages_and_returns(self, experiences):
    """r3hf's drop-in in OpenRLHF's method slot: its args and adaptive KL coefficient, as OpenRLHF passes."""
    from . import compute_advantages_and_returns

    return compute_advantages_and_returns(experiences, self.strategy.args, self.kl_ctl.value)


_r3hf_compute_advantages_and_returns._r3hf = True


def applied(maker_class=None) -> bool:
    """Whether OpenRLHF's experience maker (in this process) runs r3hf's drop-in."""
    cls = _maker_class() if maker_class is None else maker_class
    return getattr(cls.compute_advantages_and_returns, "_r3hf", False)


def apply(maker_class=None) -> None:
    """Point `RemoteExperienceMaker.compute_advantages_and_returns` at r3hf's drop-in in this process
    (idempotent). `maker_class`: the class to patch (default: OpenRLHF's, imported)."""
    cls = _maker_class() if maker_class is None else maker_class
    if not applied(cls):
        cls._openrlhf_compute_advantages_and_returns = cls.compute_advantages_and_returns
        cls.compute_advantages_and_returns = _r3hf_compute_advantages_and_returns


def setup_worker() -> None:
    """Ray `worker_process_setup_hook`: apply the drop-in in this worker (every Ray worker the
    launcher's Ray starts, the trainer's actor among them)."""
    if os.environ.get(ENV) == "1":
        apply()


def _runtime_env() -> dict:
    # OpenRLHF's train() starts Ray with these (user values win); add r3hf's hook and switch.
    env_vars = {
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "true"),
        "NCCL_DEBUG": os.environ.get("NCCL_DEBUG", "WARN"),
        "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": os.environ.get("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", "1"),
        ENV: "1",
    }
    return {"env_vars": env_vars, "worker_process_setup_hook": SETUP_HOOK}


def init_ray(**ray_init_kwargs) -> None:
    """`ray.init` with r3hf's worker hook (for callers that start Ray themselves, e.g. tests);
    raises when Ray is already initialised without it."""
    import ray

    if ray.is_initialized():
        raise RuntimeError(
            "Ray is already initialised in this process, so r3hf cannot add its worker_process_setup_hook; "
            f"start Ray with runtime_env={{'worker_process_setup_hook': {SETUP_HOOK!r}, 'env_vars': {{{ENV!r}: '1'}}}}"
        )
    runtime_env = dict(ray_init_kwargs.pop("runtime_env", None) or {})
    ours = _runtime_env()
    runtime_env["env_vars"] = {**ours["env_vars"], **(runtime_env.get("env_vars") or {}), ENV: "1"}
    runtime_env["worker_process_setup_hook"] = SETUP_HOOK
    ray.init(runtime_env=runtime_env, **ray_init_kwargs)


def main(argv: list[str] | None = None) -> None:
    """Apply the drop-in here and in every Ray worker, then run OpenRLHF's `train_ppo_ray` main."""
    os.environ[ENV] = "1"
    apply()
    init_ray()
    sys.argv = [ENTRY.replace(".", "/") + ".py", *(sys.argv[1:] if argv is None else list(argv))]
    runpy.run_module(ENTRY, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # Run the importable module's main, so that Ray workers find the hook by its module path.
    from r3hf.integrations.openrlhf.train_ppo_ray import main as _main

    _main()
