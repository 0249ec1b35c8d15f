"""The demo's critic-free arm through TRL 1.16's real GRPOTrainer (`R3HFGRPOTrainer`): one step of
it and one step of the demo's own loop give the same advantages on the same batch.

The batch is sampled once by the demo's sampler and handed to TRL through its `rollout_func` hook,
so both see the same completions; everything after generation is TRL's real code (decoding,
R3HFGRPOTrainer's reward-model pass on re-tokenised text, TRL's log-probs for the KL in the
reward, the group advantages)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from r3hf.demo import task  # noqa: E402
from r3hf.demo.policy import make_policy, sample  # noqa: E402
from r3hf.demo.reward_model import make_reward_model  # noqa: E402
from r3hf.demo.train import critic_free_advantages, fit_demo_potential, restrict_vocab, rm_hidden_and_head  # noqa: E402
from r3hf import ppo  # noqa: E402
from trl_grpo_harness import recording  # noqa: E402  (the recorder of the GRPO parity tests)

B, G = 8, 4


def _demo_batch(policy):
    """What one step of the demo's loop samples: B // G prompts, each G times."""
    gen = torch.Generator().manual_seed(3)
    prompts = task.sample_prompts(B // G, gen)
    qr, _ = sample(policy, prompts.repeat_interleave(G, 0), task.RESPONSE_LEN, gen)
    return prompts, qr


def _rollout_func(qr):
    P = task.PROMPT_LEN

    def rollout(prompts, trainer):
        assert len(prompts) == B
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": []}
        for b, text in enumerate(prompts):
            ids = trainer.processing_class(text, add_special_tokens=False)["input_ids"]
            assert ids == qr[b, :P].tolist(), (text, ids)  # TRL's prompt order is the demo's
            n = int(task.response_mask(qr[b:b + 1, P:]).sum())
            out["prompt_ids"].append(ids)
            out["completion_ids"].append(qr[b, P:P + n].tolist())
            out["logprobs"].append([0.0] * n)
        return out

    return rollout


@pytest.mark.parametrize("reward,baseline", [("sparse", "row"), ("r3hf", "row"), ("position", "position"),
                                             ("recommended", "position")])
def test_one_trl_step_gives_the_demo_loops_advantages(reward, baseline):
    from r3hf.demo.trl_arm import make_trainer
    from r3hf.integrations.trl import R3HFGRPOTrainer

    torch.manual_seed(0)
    policy = restrict_vocab(make_policy(0)).eval()
    rm = make_reward_model(0).eval()
    prompts, qr = _demo_batch(policy)
    lengths = task.response_mask(qr[:, task.PROMPT_LEN:]).sum(1)
    assert lengths.min() < lengths.max(), "the batch should have varying lengths"

    # the demo's loop on this batch
    config = ppo.PPOConfig()
    P, L = task.PROMPT_LEN, task.RESPONSE_LEN
    with torch.no_grad():
        logprobs, _ = ppo.response_logprobs(policy, qr, P, L)
        ref_logprobs, _ = ppo.response_logprobs(policy, qr, P, L)
        hidden, w, b = rm_hidden_and_head(rm, qr)
    mask = task.response_mask(qr[:, P:])
    head = fit_demo_potential(rm, policy, samples=64) if reward == "recommended" else None
    _, want = critic_free_advantages(hidden, w, b, mask, logprobs, ref_logprobs, config, G, reward, head)

    # TRL's GRPOTrainer loop on the same batch
    trainer = make_trainer(policy, rm, prompts, estimator="rloo", baseline=baseline,
                           beta_c=0.0 if reward == "sparse" else 1.0, kl_coef=config.kl_coef, batch_size=B,
                           group_size=G, steps=1, lr=0.0, rollout_func=_rollout_func(qr),
                           trainer_cls=recording(R3HFGRPOTrainer), potential=head)
    trainer.train()
    rec = trainer.recorded[0]
    got = rec["advantages"]
    assert torch.equal(rec["completion_ids"][:, : int(lengths.max())].ne(task.PAD_ID) & rec["completion_mask"].bool()[:, : int(lengths.max())],
                       mask[:, : int(lengths.max())])
    T = got.shape[1]
    assert T == int(lengths.max()) and bool((want[:, T:] == 0).all())
    torch.testing.assert_close(got.float(), want[:, :T], rtol=1e-4, atol=1e-5)
    assert want.abs().sum() > 0


def test_trl_arm_runs_through_the_demo_and_refuses_what_it_cannot_run():
    """The --full arm "trl-rloo": two TRL steps through run._run_arm give the demo's result layout;
    a head reward without its head, and beta_c="auto" (R3HFGRPOTrainer takes a number), are errors."""
    import importlib

    from r3hf.demo.trl_arm import run_trl

    run = importlib.import_module("r3hf.demo.run")  # the module (r3hf.demo.run is also the function's name)

    policy = restrict_vocab(make_policy(0)).eval()
    rm = make_reward_model(0).eval()
    s = run.DemoSettings(seeds=1, steps=2, batch_size=8, group_size=4)
    run._SHARED.update(settings=s, policy0=policy, rms={"full": rm}, device="cpu", potentials={},
                       eval_prompts=task.sample_prompts(8, torch.Generator().manual_seed(1)))
    try:
        arm, seed, res = run._run_arm(("trl-rloo", "full", "position", 0))
    finally:
        run._SHARED.clear()
    assert arm == "trl-rloo/full/position" and seed == 0 and len(res["history"]) == 2
    for h in res["history"]:
        assert -1 / 3 <= h["gt_score"] <= 1 and 1 <= h["length"] <= task.RESPONSE_LEN and 0 <= h["truncation_rate"] <= 1
    assert set(res["final"]) >= {"gt_score", "length", "kl_to_ref"}
    for reward in ("recommended", "auto"):  # no head given; "auto" is not a number
        with pytest.raises(ValueError, match="potential=|beta_c"):
            run_trl(reward, 0, init_policy=policy, rm=rm, steps=1, batch_size=8)
