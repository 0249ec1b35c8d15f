"""The Ray launchers in a real local Ray (`ray.init(num_cpus=1)`): r3hf registered / applied in the
actor that computes advantages, not only in the driver.

- veRL 0.9.1: `r3hf.integrations.verl.main_ppo`'s task runner (veRL's TaskRunnerV1 / v0 TaskRunner
  plus registration) in its own Ray actor: nothing registered before `run`, then `run` with a real
  veRL config (composed by Hydra from veRL's own ppo_trainer.yaml) registers before veRL builds the
  trainer; veRL's run then stops on this CPU machine (v1: `import transfer_queue`, not installed;
  v0: the missing model) and the actor reports r3hf's estimators and reward manager resolved.
  The driver entry `run(config)` goes through veRL's `run_ppo` to the same point.
- veRL 0.9.1's reward manager with a potential head (issue 24) in a Ray actor: the actor loads a
  tiny GPT-2 RM and a `PotentialHead` from folders (save_pretrained), builds `R3HFRewardManager` on
  `hf_prefix_scorer(rm, potential=folder)` and runs veRL's per-sample reward loop; its rm_scores
  equal `ops.token_rewards(scores, potential=Φ')` with R and Φ' read in the driver.
- OpenRLHF 0.11: the launcher's worker hook in every Ray worker: an actor holding OpenRLHF's own
  RemoteExperienceMaker computes r3hf's drop-in numbers (OpenRLHF's deps are stubbed in the
  workers by tests/openrlhf_ray_hook.py; its training stack cannot start on a CPU).
Slow (Ray starts in ~20-50 s here); one Ray session for the module.
"""

from __future__ import annotations

import copy
import os
import types

import pytest
import torch

ray = pytest.importorskip("ray")
verl = pytest.importorskip("verl")

import openrlhf_real  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def local_ray():
    from r3hf.integrations.openrlhf import train_ppo_ray

    pythonpath = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, runtime_env={
        "worker_process_setup_hook": "openrlhf_ray_hook.setup",
        "env_vars": {"PYTHONPATH": pythonpath, train_ppo_ray.ENV: "1"},
    })
    yield
    ray.shutdown()


def verl_config(*overrides):
    from hydra import compose, initialize_config_dir

    from r3hf.integrations.verl import main_ppo

    with initialize_config_dir(config_dir=main_ppo.CONFIG_DIR, version_base=None):
        return compose("ppo_trainer", overrides=[
            "algorithm.adv_estimator=r3hf_rloo", "actor_rollout_ref.model.path=/nonexistent/r3hf-test-model",
            "trainer.device=cpu", "+r3hf.replace_gae=true", "data.train_batch_size=2", "actor_rollout_ref.rollout.n=2",
            "actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1", "trainer.n_gpus_per_node=1", *overrides,
        ])


@pytest.mark.parametrize("use_v1", [True, False])
def test_verl_task_runner_registers_in_its_actor(local_ray, use_v1):
    from r3hf.integrations.verl import main_ppo

    runner_class = main_ppo.R3HFTaskRunnerV1 if use_v1 else main_ppo.R3HFTaskRunner
    runner = runner_class.remote()
    before = ray.get(runner.r3hf_registered.remote())
    assert before["pid"] != os.getpid()
    assert before["estimators"] == [], before  # a fresh process: nothing registered by importing r3hf
    config = verl_config(f"trainer.use_v1={use_v1}")
    with pytest.raises(ray.exceptions.RayTaskError) as stopped:
        ray.get(runner.run.remote(config))  # registers, then veRL's run stops on this CPU machine
    print(f"veRL {'v1' if use_v1 else 'v0'} task runner stopped at: {str(stopped.value).strip().splitlines()[-1]}")
    after = ray.get(runner.r3hf_registered.remote())
    assert after["pid"] == before["pid"]
    assert {"r3hf", "r3hf_rloo", "r3hf_grpo", "r3hf_reinforce_pp", "r3hf_reinforce_pp_baseline",
            "r3hf_grpo_process"} <= set(after["estimators"]), after
    assert after["reward_manager"] == "r3hf.integrations.verl.reward.R3HFRewardManager", after

    importlib_cfg = {"reward": {"reward_manager": {"source": "importlib", "name": "R3HFRewardManager",
                                                   "module": {"path": "pkg://r3hf.integrations.verl.reward"}}}}
    from omegaconf import OmegaConf

    via_importlib = ray.get(runner.r3hf_registered.remote(OmegaConf.create(importlib_cfg)))
    assert via_importlib["reward_manager"] == "r3hf.integrations.verl.reward.R3HFRewardManager", via_importlib
    fn = ray.get(runner.__ray_call__.remote(lambda self: __import__(
        "verl.trainer.ppo.core_algos", fromlist=["x"]).get_adv_estimator_fn("r3hf_rloo").__qualname__))
    assert fn == "r3hf_rloo"
    replaced = ray.get(runner.__ray_call__.remote(lambda self: __import__(
        "verl.trainer.ppo.core_algos", fromlist=["x"]).compute_gae_advantage_return.__module__))
    assert replaced == "r3hf.integrations.verl"  # r3hf.replace_gae=true reached the actor
    ray.kill(runner)


def test_verl_driver_entry_runs_veRLs_run_ppo(local_ray):
    """`run(config)`: registration in the driver, veRL's config checks, veRL's run_ppo with the r3hf
    task runner; on this CPU machine veRL stops inside the actor (transfer_queue / model path)."""
    from verl.trainer.ppo import core_algos

    from r3hf.integrations.verl import main_ppo, unregister

    config = verl_config("trainer.use_v1=True")
    try:
        with pytest.raises(ray.exceptions.RayTaskError) as stopped:
            main_ppo.run(config)
        assert "_R3HFTaskRunnerV1" in str(stopped.value)
        assert core_algos.get_adv_estimator_fn("r3hf_rloo").__qualname__ == "r3hf_rloo"  # the driver too
        assert config.ray_kwargs.ray_init.runtime_env.worker_process_setup_hook == main_ppo.SETUP_HOOK
    finally:
        unregister()


def test_verl_options_are_checked():
    from r3hf.integrations.verl import main_ppo

    assert main_ppo.options({}) == {"replace_gae": False}
    assert main_ppo.options({"r3hf": {"replace_gae": True}}) == {"replace_gae": True}
    with pytest.raises(ValueError, match="unknown r3hf option"):
        main_ppo.options({"r3hf": {"replace_gea": True}})
    with pytest.raises(ValueError, match="true or false"):
        main_ppo.options({"r3hf": {"replace_gae": "yes"}})
    assert main_ppo._normalise_argv(["r3hf.replace_gae=true", "+r3hf.x=1", "a.b=2"]) == [
        "+r3hf.replace_gae=true", "+r3hf.x=1", "a.b=2"]
    assert main_ppo._decode(main_ppo._encode({"replace_gae": True})) == {"replace_gae": True}


def test_openrlhf_drop_in_is_applied_in_ray_workers(local_ray):
    real = openrlhf_real.load()
    if real is None:
        pytest.skip("needs OpenRLHF's source")
    from peer_batches import logprobs, randn, response_mask

    from r3hf.integrations import openrlhf as adapter

    gen = torch.Generator().manual_seed(0)
    cls = real["openrlhf.trainer.ppo_utils.experience"].Experience
    exps = []
    for idx, A in (([0, 3, 5], 9), ([1, 2, 4, 6, 7], 14)):
        mask = torch.cat([torch.zeros(len(idx), 2, dtype=torch.bool), response_mask(len(idx), A - 2, gen=gen)], 1)
        mask[:, 2] = True
        exps.append(cls(index=idx, rewards=randn(len(idx), gen=gen), action_mask=mask, info={},
                        kl=adapter.compute_approx_kl(logprobs(len(idx), A, gen=gen), logprobs(len(idx), A, gen=gen))))
    ns = types.SimpleNamespace
    args = ns(algo=ns(advantage=ns(estimator="rloo", gamma=1.0, lambd=1.0, no_std_norm=False)),
              rollout=ns(n_samples_per_prompt=4), reward=ns(clip_range=None))

    @ray.remote
    class Trainer:  # stands in for OpenRLHF's PPOTrainer actor, which owns the experience maker
        def advantages(self, experiences, args):
            import types as t

            from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

            from r3hf.integrations.openrlhf.train_ppo_ray import applied

            maker = object.__new__(RemoteExperienceMaker)
            maker.strategy, maker.advantage_estimator = t.SimpleNamespace(args=args), args.algo.advantage.estimator
            maker.kl_ctl = t.SimpleNamespace(value=0.05)
            return applied(), os.getpid(), maker.compute_advantages_and_returns(experiences)

    is_applied, pid, got = ray.get(Trainer.remote().advantages.remote(copy.deepcopy(exps), args))
    assert is_applied and pid != os.getpid()
    want = adapter.compute_advantages_and_returns(copy.deepcopy(exps), args, 0.05)
    for g, w in zip(got, want):
        assert torch.equal(g.advantages, w.advantages) and torch.equal(g.returns, w.returns)


@ray.remote
class _VerlRewardWorker:  # where veRL runs the reward loop: a Ray actor, not the driver
    def rm_scores(self, rm_dir, potential_dir, data):
        from omegaconf import OmegaConf
        from transformers import GPT2ForSequenceClassification

        from r3hf.integrations.verl import reward

        rm = GPT2ForSequenceClassification.from_pretrained(rm_dir).eval()
        config = OmegaConf.create({"algorithm": {"adv_estimator": "r3hf_grpo"}, "reward": {}})
        manager = reward.R3HFRewardManager(config, tokenizer=None,
                                           compute_score=reward.hf_prefix_scorer(rm, potential=potential_dir))
        # as veRL's RewardLoopManager.compute_rm_score: run_single per sample, then the class's assembly
        outputs = [manager.loop.run_until_complete(manager.run_single(data[i: i + 1])) for i in range(len(data))]
        scores = type(manager).assemble_rm_scores(data, [o["reward_score"] for o in outputs])
        return os.getpid(), scores, [o["reward_extra_info"]["score"] for o in outputs]


@torch.no_grad()
def test_verl_reward_manager_with_potential_folder_in_a_ray_actor(local_ray, tmp_path):
    from peer_batches import assert_close
    from test_verl_group import _rollout, _tiny_rm

    from r3hf import ops
    from r3hf.models import PotentialHead, prefix_scores, reward_hidden_states

    rm = _tiny_rm()
    rm.save_pretrained(tmp_path / "rm")
    g = torch.Generator().manual_seed(4)
    PotentialHead(torch.randn(rm.config.n_embd, generator=g) * 0.5, 0.25).save_pretrained(tmp_path / "pot")
    head = PotentialHead.from_pretrained(tmp_path / "pot")
    data, n_p, n_r = _rollout("left", holes=True)

    pid, got, final = ray.get(_VerlRewardWorker.remote().rm_scores.remote(str(tmp_path / "rm"), str(tmp_path / "pot"), data))
    assert pid != os.getpid()

    # R and Φ' read separately in the driver, in veRL's [prompt-only score, response prefixes] layout
    P, L = data.batch["prompts"].shape[1], data.batch["responses"].shape[1]
    s, phi = torch.zeros(len(n_p), 1 + L), torch.zeros(len(n_p), 1 + L)
    for b in range(len(n_p)):
        ids = torch.cat([data.batch["prompts"][b][data.batch["attention_mask"][b, :P] != 0],
                         data.batch["responses"][b, : n_r[b]]])[None]
        s[b, : 1 + n_r[b]] = prefix_scores(rm, ids)[0, n_p[b] - 1:]
        phi[b, : 1 + n_r[b]] = head(reward_hidden_states(rm, ids)[0])[0, n_p[b] - 1:]
        assert final[b] == pytest.approx(s[b, n_r[b]].item(), abs=1e-5)  # veRL's scalar "score" stays R
    mask = data.batch["response_mask"] != 0
    want = ops.token_rewards(s, mask, 1, potential=phi)
    assert_close(got, want, "rm_scores from the Ray actor vs ops.token_rewards(potential=)")
    assert not torch.allclose(want, ops.token_rewards(s, mask, 1), atol=1e-3)  # the head changed the rewards
