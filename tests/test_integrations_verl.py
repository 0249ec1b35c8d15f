"""r3hf.integrations.verl against the real veRL package (skipped when veRL is not installed).

CI installs veRL 0.9.1 into its venv in .ci/steps/40-verl.sh, so these run there.
"""

import pytest
import torch

from r3hf import ops
from r3hf.integrations import verl as adapter

from peer_batches import SHAPES, assert_close, logprobs, randn, response_mask
from verl_harness import import_verl as _import

core_algos = _import("verl.trainer.ppo.core_algos")


def _batch(B, L, seed, holes=True):
    gen = torch.Generator().manual_seed(seed)
    mask = response_mask(B, L, gen=gen, holes=holes)
    return dict(
        rewards=randn(B, L, gen=gen),
        values=randn(B, L, gen=gen),
        mask=mask,
        logprob=logprobs(B, L, gen=gen),
        ref_logprob=logprobs(B, L, gen=gen),
    )


@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
@pytest.mark.parametrize("mask_dtype", [torch.int64, torch.float32])
def test_gae_equals_verl(B, L, gamma, lam, mask_dtype):
    b = _batch(B, L, seed=B * 1000 + L)
    mask = b["mask"].to(mask_dtype)  # veRL's loop does arithmetic on the mask, so not bool
    rewards, values = b["rewards"].clone(), b["values"].clone()
    want_adv, want_ret = core_algos.compute_gae_advantage_return(rewards, values, mask, gamma, lam)
    adv, ret = adapter.compute_gae_advantage_return(b["rewards"], b["values"], mask, gamma, lam)
    assert_close(adv, want_adv, "advantages")
    assert_close(ret, want_ret, "returns")
    assert torch.equal(rewards, b["rewards"]) and torch.equal(values, b["values"])


def test_gae_masked_positions_are_not_zero():
    # The convention the adapter exists for: veRL records the carried advantage at holes.
    b = _batch(6, 47, seed=3)
    mask = b["mask"].float()
    adv, ret = adapter.compute_gae_advantage_return(b["rewards"], b["values"], mask, 1.0, 1.0)
    assert (adv[~b["mask"]] != 0).all()
    plain_adv, _ = ops.gae(b["rewards"], b["values"], b["mask"], 1.0, 1.0)
    assert (plain_adv[~b["mask"]] == 0).all()


def test_gae_tensor_gamma_and_too_few_positions():
    b = _batch(3, 7, seed=5)
    mask = b["mask"].float()
    want = core_algos.compute_gae_advantage_return(b["rewards"], b["values"], mask, 0.9, 0.8)
    got = adapter.compute_gae_advantage_return(b["rewards"], b["values"], mask, torch.tensor(0.9), torch.tensor(0.8))
    assert_close(got[0], want[0])
    one = torch.zeros(2, 3)
    one[0, 0] = 1
    with pytest.raises(ValueError):
        core_algos.compute_gae_advantage_return(b["rewards"][:2, :3], b["values"][:2, :3], one, 1.0, 1.0)
    with pytest.raises(ValueError):
        adapter.compute_gae_advantage_return(b["rewards"][:2, :3], b["values"][:2, :3], one, 1.0, 1.0)


@pytest.mark.parametrize("name", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "k3+", "low_var_kl+"])
@pytest.mark.parametrize("B,L", SHAPES[-3:])
def test_kl_penalty_equals_verl(name, B, L):
    b = _batch(B, L, seed=11)
    want = core_algos.kl_penalty(b["logprob"], b["ref_logprob"], name)
    assert_close(adapter.kl_penalty(b["logprob"], b["ref_logprob"], name), want, name)


def test_kl_penalty_unknown_name():
    with pytest.raises(ValueError, match="kl_penalty"):
        adapter.kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "full")


@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("name", ["kl", "low_var_kl", "mse"])
def test_token_level_rewards_equal_apply_kl_penalty(B, L, name):
    """Dense scores + veRL's apply_kl_penalty == the adapter's one-op token_level_rewards."""
    ray_trainer = _import("verl.trainer.ppo.ray_trainer")
    from verl import DataProto

    gen = torch.Generator().manual_seed(L)
    P = 4
    b = _batch(B, L, seed=L + 7)
    scores = randn(B, P + L, gen=gen)
    dense = adapter.token_level_scores(scores, b["mask"], P)
    data = DataProto.from_dict(
        tensors=dict(
            token_level_scores=dense,
            old_log_probs=b["logprob"],
            ref_log_prob=b["ref_logprob"],
            response_mask=b["mask"].float(),
        )
    )
    kl_ctrl = core_algos.FixedKLController(kl_coef=0.05)
    data, _ = ray_trainer.apply_kl_penalty(data, kl_ctrl, kl_penalty=name)
    got = adapter.token_level_rewards(scores, b["mask"], P, b["logprob"], b["ref_logprob"], 0.05, name)
    assert_close(got, data.batch["token_level_rewards"], "token_level_rewards")


def test_token_level_scores_telescope_and_sparse_mix():
    gen = torch.Generator().manual_seed(0)
    B, L, P = 5, 47, 6
    mask = response_mask(B, L, gen=gen)
    scores = randn(B, P + L, gen=gen)
    dense = adapter.token_level_scores(scores, mask, P)
    for b in range(B):
        idx = mask[b].nonzero().flatten()
        if len(idx) == 0:
            assert (dense[b] == 0).all()
            continue
        last = P + int(idx[-1])
        assert dense[b].sum().item() == pytest.approx((scores[b, last] - scores[b, P - 1]).item(), abs=1e-4)
    sparse = adapter.token_level_scores(scores, mask, P, beta_c=0.0)
    assert (sparse != 0).sum(1).le(1).all()


def _data_proto(b, mask):
    from verl import DataProto

    return DataProto.from_dict(
        tensors=dict(token_level_rewards=b["rewards"], values=b["values"], response_mask=mask)
    )


@pytest.fixture
def registered():
    assert adapter.register(replace_gae=True)
    yield
    adapter.unregister()


def test_register_replaces_gae_in_the_trainer(registered):
    ray_trainer = _import("verl.trainer.ppo.ray_trainer")
    from verl.trainer.config import AlgoConfig

    b = _batch(5, 47, seed=21)
    mask = b["mask"].float()
    original = adapter._replaced_gae
    assert original is not None and core_algos.compute_gae_advantage_return is adapter.compute_gae_advantage_return
    want_adv, want_ret = original(b["rewards"], b["values"], mask, 0.99, 0.95)
    config = AlgoConfig(gamma=0.99, lam=0.95)
    data = ray_trainer.compute_advantage(_data_proto(b, mask), "gae", gamma=0.99, lam=0.95, config=config)
    assert_close(data.batch["advantages"], want_adv, "advantages")
    assert_close(data.batch["returns"], want_ret, "returns")


def test_registered_estimator_through_the_trainer(registered):
    ray_trainer = _import("verl.trainer.ppo.ray_trainer")
    from verl.trainer.config import AlgoConfig

    assert core_algos.get_adv_estimator_fn(adapter.ESTIMATOR_NAME) is adapter.r3hf_advantage_estimator
    b = _batch(5, 47, seed=22)
    mask = b["mask"].float()
    config = AlgoConfig(gamma=0.9, lam=0.8)
    data = ray_trainer.compute_advantage(_data_proto(b, mask), adapter.ESTIMATOR_NAME, config=config)
    # veRL passes no values to registered estimators: critic-free, V = 0.
    want_adv, want_ret = adapter._replaced_gae(b["rewards"], torch.zeros_like(b["values"]), mask, 0.9, 0.8)
    assert_close(data.batch["advantages"], want_adv, "advantages")
    assert_close(data.batch["returns"], want_ret, "returns")
    # with values it is the GAE estimator itself
    got = adapter.r3hf_advantage_estimator(b["rewards"], mask, config=config, values=b["values"])
    want = adapter._replaced_gae(b["rewards"], b["values"], mask, 0.9, 0.8)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_register_is_idempotent_and_unregister_restores():
    original = core_algos.compute_gae_advantage_return
    assert adapter.register(replace_gae=True) and adapter.register(replace_gae=True)
    assert core_algos.compute_gae_advantage_return is adapter.compute_gae_advantage_return
    adapter.unregister()
    assert core_algos.compute_gae_advantage_return is original
    assert adapter.ESTIMATOR_NAME not in core_algos.ADV_ESTIMATOR_REGISTRY
