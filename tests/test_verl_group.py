"""veRL 0.9.1, critic-free: r3hf's group estimators and the dense reward manager, through veRL's
own code (`ray_trainer.compute_advantage`, `apply_kl_penalty`, its reward-manager loader).

Runs against the real veRL (CI installs it in .ci/steps/40-verl.sh; .ci/run sets
R3HF_REQUIRE_VERL=1 so that a broken install fails instead of skipping).
"""

import warnings

import numpy as np
import pytest
import torch

from r3hf import ops
from r3hf.integrations.verl import _estimators as est
from r3hf.integrations import verl as adapter

from peer_batches import assert_close, logprobs, randn, response_mask
from verl_harness import import_verl as _import, kl_in_reward

core_algos = _import("verl.trainer.ppo.core_algos")
ray_trainer = _import("verl.trainer.ppo.ray_trainer")
from verl import DataProto  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402

FAMILY = {  # r3hf estimator -> veRL's own estimator of the same family
    "r3hf_grpo": "grpo",
    "r3hf_rloo": "rloo",
    "r3hf_reinforce_pp": "reinforce_plus_plus",
    "r3hf_reinforce_pp_baseline": "reinforce_plus_plus_baseline",
}


@pytest.fixture(autouse=True)
def registered():
    assert adapter.register()
    yield
    adapter.unregister()


def _groups(B, gen):
    """uid strings: groups of 1 to 4 rows, shuffled (veRL's uid is one string per prompt)."""
    sizes, n = [], 0
    while n < B:
        k = min(int(torch.randint(1, 5, (1,), generator=gen)), B - n)
        sizes.append(k)
        n += k
    uid = np.array([f"prompt-{g}" for g, k in enumerate(sizes) for _ in range(k)], dtype=object)
    return uid[torch.randperm(B, generator=gen).numpy()]


def _sparse_batch(B, L, seed, *, kl=False, ties=False):
    """veRL's sparse case: the score at the last valid (generated) response token."""
    gen = torch.Generator().manual_seed(seed)
    mask = response_mask(B, L, gen=gen)
    mask[4::5, 0] = True  # peer_batches makes every 5th row empty; give it one token
    uid = _groups(B, gen)
    score = randn(B, gen=gen, scale=2.0)
    if ties:  # equal scores within a group; multiples of 1/4 so that veRL's fp32 group mean is exact too
        score = (score * 4).round() / 4
        first = {}
        score = torch.tensor([float(first.setdefault(u, float(s))) for u, s in zip(uid, score)])
    last = L - 1 - mask.flip(1).to(torch.int64).argmax(1)
    scores = torch.zeros(B, L).scatter_(1, last[:, None], score[:, None])
    tensors = dict(token_level_scores=scores, response_mask=mask.float())
    if kl:
        tensors.update(old_log_probs=logprobs(B, L, gen=gen), ref_log_prob=logprobs(B, L, gen=gen))
    return DataProto.from_dict(tensors=tensors, non_tensors={"uid": uid})


def _rewards(data, kl):
    if kl:
        data, _ = ray_trainer.apply_kl_penalty(data, core_algos.FixedKLController(kl_coef=0.1), kl_penalty="low_var_kl")
    else:
        data.batch["token_level_rewards"] = data.batch["token_level_scores"].clone()
    return data


def _advantage(data, name, config, **kw):
    copy = DataProto.from_dict(
        tensors={k: v.clone() for k, v in data.batch.items()}, non_tensors=dict(data.non_tensor_batch)
    )
    out = ray_trainer.compute_advantage(copy, name, config=config, **kw)
    return out.batch["advantages"], out.batch["returns"]


SIZES = [(6, 7), (12, 47), (9, 300)]


@pytest.mark.parametrize("B,L", SIZES)
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_sparse_equals_verl_family(B, L, name):
    """The score alone at the last valid token: equal to veRL's estimator at every position."""
    data = _rewards(_sparse_batch(B, L, seed=B * L, ties=(L == 47)), kl=False)
    gamma = 0.9 if name == "r3hf_reinforce_pp" and L == 47 else 1.0  # only veRL's reinforce_plus_plus reads gamma
    config = AlgoConfig(gamma=gamma)
    want_adv, want_ret = _advantage(data, FAMILY[name], config)
    adv, ret = _advantage(data, name, config)
    assert_close(adv, want_adv, f"{name} advantages")
    assert_close(ret, want_ret, f"{name} returns")


@pytest.mark.parametrize("B,L", SIZES)
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_sparse_with_kl_in_reward(B, L, name):
    """use_kl_in_reward: veRL's apply_kl_penalty makes the rewards dense (−β·KL on every token).

    reinforce_pp is token level in veRL too: equal at every position. veRL's grpo and rloo sum the
    row first, so every token gets the whole row's KL; the r3hf ones give token t only the KL from t
    on (its return-to-go). They agree at each row's first generated token, and inside a row differ
    by exactly the scaled KL of the tokens before t: A_t = A_first − c·Σ_{k<t} m·r_k, c = 1/(σ_g + ε)
    for grpo and 1 for rloo. (reinforce_pp_baseline whitens those different values over the batch,
    so no position agrees; its KL-free sparse case is tested above.)
    """
    data = _rewards(_sparse_batch(B, L, seed=B * L + 1, kl=True), kl=True)
    want, _ = _advantage(data, FAMILY[name], AlgoConfig())
    got, ret = _advantage(data, name, AlgoConfig())
    if name == "r3hf_reinforce_pp":
        assert_close(got, want, "advantages")
        return
    if name == "r3hf_reinforce_pp_baseline":
        assert not torch.allclose(got, want)
        return
    mask = data.batch["response_mask"] != 0
    r = data.batch["token_level_rewards"] * mask
    first = mask.to(torch.int64).argmax(1)
    rows = torch.arange(B)
    assert_close(got[rows, first], want[rows, first], "first generated token")
    if name == "r3hf_grpo":
        s, uid = r.sum(1), data.non_tensor_batch["uid"]
        sigma = torch.stack([s[torch.tensor(uid == u)].std() if (uid == u).sum() > 1 else torch.tensor(1.0) for u in uid])
        c = 1.0 / (sigma + 1e-6)
    else:
        c = torch.ones(B)
    before = r.double().cumsum(1) - r.double()  # Σ_{k<t} m·r_k
    expected = (got[rows, first][:, None] - c[:, None] * (before - before[rows, first][:, None])) * mask
    # fp32 reverse scan vs an fp64 prefix sum over up to 300 KL terms: 1e-4 absolute
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm", [True, False])
def test_grpo_norm_adv_by_std_from_config(norm):
    data = _rewards(_sparse_batch(10, 33, seed=3), kl=False)
    # veRL's trainer passes norm_adv_by_std_in_grpo to its grpo only; registered estimators read the config
    want, _ = _advantage(data, "grpo", AlgoConfig(), norm_adv_by_std_in_grpo=norm)
    got, _ = _advantage(data, "r3hf_grpo", AlgoConfig(norm_adv_by_std_in_grpo=norm))
    assert_close(got, want, "advantages")


def test_score_on_a_trailing_observation_token():
    """veRL's reward managers put the score at the last attended token, here an observation
    (response_mask 0): veRL's grpo counts it, so r3hf_grpo must too; veRL's reinforce_plus_plus
    drops it, r3hf_reinforce_pp credits it to the last generated token instead."""
    B, L = 6, 12
    mask = torch.ones(B, L)
    mask[:, 8:] = 0  # the last 4 response tokens are a tool's answer
    scores = torch.zeros(B, L)
    scores[:, -1] = torch.arange(B, dtype=torch.float32) - 2.5
    uid = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    data = DataProto.from_dict(tensors=dict(token_level_rewards=scores, response_mask=mask), non_tensors={"uid": uid})
    for name in ("r3hf_grpo", "r3hf_rloo", "r3hf_reinforce_pp_baseline"):
        want, _ = _advantage(data, FAMILY[name], AlgoConfig())
        got, _ = _advantage(data, name, AlgoConfig())
        assert_close(got, want, name)
    dropped, _ = _advantage(data, "reinforce_plus_plus", AlgoConfig())
    kept, returns = _advantage(data, "r3hf_reinforce_pp", AlgoConfig())
    assert returns[:, :8].eq(scores[:, -1:]).all()  # the score reaches every generated token
    assert not torch.allclose(dropped, kept)


def _dense_batch(B, L, P, seed):
    """Dense R3HF rewards from prefix scores whose prompt part is shared within a group."""
    gen = torch.Generator().manual_seed(seed)
    mask = response_mask(B, L, gen=gen)
    mask[4::5, 0] = True
    uid = _groups(B, gen)
    prompt_part = {u: randn(P, gen=gen) for u in set(uid.tolist())}
    scores = torch.cat([torch.stack([prompt_part[u] for u in uid]), randn(B, L, gen=gen)], dim=1)
    dense = adapter.token_level_scores(scores, mask, P)
    return DataProto.from_dict(tensors=dict(token_level_rewards=dense, response_mask=mask.float()),
                               non_tensors={"uid": uid}), scores, mask


@pytest.mark.parametrize("name", ["r3hf_grpo", "r3hf_rloo", "r3hf_reinforce_pp_baseline"])
def test_dense_keeps_token_level_returns(name):
    """The trap and its fix: veRL's summing estimator gives every token of a row one value (the
    sparse result); the r3hf one differs inside the row and agrees at the row's first token."""
    data, scores, mask = _dense_batch(12, 40, 5, seed=7)
    summed, _ = _advantage(data, FAMILY[name], AlgoConfig())
    ours, _ = _advantage(data, name, AlgoConfig())
    first = mask.to(torch.int64).argmax(1)
    rows = torch.arange(12)
    if name != "r3hf_reinforce_pp_baseline":  # whitening statistics differ once returns vary in a row
        assert_close(ours[rows, first], summed[rows, first], "first generated token")
    assert not torch.allclose(ours[mask], summed[mask])
    assert_close(ours, ops.group_advantages(data.batch["token_level_rewards"], mask,
                                            est.group_ids(data.non_tensor_batch["uid"], 12, "cpu"),
                                            name[5:], eps=1e-6 if name != "r3hf_reinforce_pp_baseline" else 1e-8))


def test_grpo_process_through_the_trainer():
    data, _, mask = _dense_batch(10, 30, 4, seed=11)
    for norm in (True, False):
        got, ret = _advantage(data, "r3hf_grpo_process", AlgoConfig(gamma=0.95, norm_adv_by_std_in_grpo=norm))
        ids = est.group_ids(data.non_tensor_batch["uid"], 10, "cpu")
        want = ops.group_advantages(data.batch["token_level_rewards"], mask, ids, "grpo_process", gamma=0.95,
                                    scale="group" if norm else "none")
        assert_close(got, want)
        assert torch.equal(got, ret)


def test_bad_inputs_and_no_mutation():
    data = _rewards(_sparse_batch(6, 7, seed=1), kl=False)
    r, m = data.batch["token_level_rewards"], data.batch["response_mask"]
    before = r.clone()
    with pytest.raises(ValueError, match="index"):
        est.r3hf_grpo(r, m, index=None)
    with pytest.raises(ValueError, match="index"):
        est.r3hf_rloo(r, m, index=np.array(["a", "b"], dtype=object))
    with pytest.raises(ValueError, match="response_mask"):
        est.r3hf_grpo(r, m[:, :3], index=data.non_tensor_batch["uid"])
    est.r3hf_grpo(r, m, index=data.non_tensor_batch["uid"])
    assert torch.equal(r, before)


# --- baseline="position" by estimator name (issue 21) -------------------------------------------

POSITION = {  # veRL name -> (r3hf op estimator, eps, veRL's own estimator of the family)
    "r3hf_grpo_position": ("grpo", 1e-6, "grpo"),
    "r3hf_rloo_position": ("rloo", 1e-6, "rloo"),
    "r3hf_reinforce_pp_baseline_position": ("reinforce_pp_baseline", 1e-8, "reinforce_plus_plus_baseline"),
}


@pytest.mark.parametrize("name", sorted(POSITION))
def test_position_names_through_verls_compute_advantage(name):
    """algorithm.adv_estimator=r3hf_*_position, through veRL's registry and compute_advantage (with
    its AlgoConfig and with a Hydra DictConfig): ops.group_advantages(..., baseline="position") on
    dense rewards, other numbers than the row baseline; sparse (rows of mixed lengths) veRL's own
    estimator of the family, as the row baseline gives."""
    from omegaconf import OmegaConf

    op, eps, family = POSITION[name]
    assert core_algos.get_adv_estimator_fn(name) is est.ESTIMATORS[name]
    data, _, mask = _dense_batch(12, 40, 5, seed=17)
    ids = est.group_ids(data.non_tensor_batch["uid"], 12, "cpu")
    want = ops.group_advantages(data.batch["token_level_rewards"], mask, ids, op, eps=eps, baseline="position")
    for config in (AlgoConfig(), OmegaConf.create({"gamma": 1.0, "norm_adv_by_std_in_grpo": True})):
        got, ret = _advantage(data, name, config)
        assert_close(got, want, f"{name} advantages")
        assert torch.equal(got, ret)
    row, _ = _advantage(data, name[: -len("_position")], AlgoConfig())
    assert not torch.allclose(got[mask], row[mask])

    sparse = _rewards(_sparse_batch(9, 31, seed=5), kl=False)
    verl_adv, _ = _advantage(sparse, family, AlgoConfig())
    got, _ = _advantage(sparse, name, AlgoConfig())
    assert_close(got, verl_adv, f"{name} sparse vs veRL's {family}")


def test_position_baseline_is_never_dropped():
    """A config key r3hf_baseline is refused (the name chooses the baseline); baseline= on a direct
    call reaches the op, which refuses "position" where it is undefined; the _position names take
    no baseline= of their own."""
    from omegaconf import OmegaConf

    data = _rewards(_sparse_batch(6, 7, seed=2), kl=False)
    with pytest.raises(ValueError, match="r3hf_baseline.*r3hf_rloo_position"):
        _advantage(data, "r3hf_rloo", OmegaConf.create({"gamma": 1.0, "r3hf_baseline": "position"}))
    r, m, uid = data.batch["token_level_rewards"], data.batch["response_mask"], data.non_tensor_batch["uid"]
    for fn in (est.r3hf_reinforce_pp, est.r3hf_grpo_process):
        with pytest.raises(ValueError, match="baseline"):
            fn(r, m, index=uid, baseline="position")
    with pytest.raises(ValueError, match="baseline"):
        est.r3hf_rloo(r, m, index=uid, baseline="rows")
    with pytest.raises(TypeError, match="baseline"):
        est.r3hf_rloo_position(r, m, index=uid, baseline="row")
    direct, _ = est.r3hf_grpo(r, m, index=uid, baseline="position")
    named, _ = est.r3hf_grpo_position(r, m, index=uid)
    assert torch.equal(direct, named)


def test_register_adds_and_unregister_removes_every_name():
    for name in est.NAMES:
        assert core_algos.get_adv_estimator_fn(name) is est.ESTIMATORS[name]
    adapter.unregister()
    for name in est.NAMES:
        assert name not in core_algos.ADV_ESTIMATOR_REGISTRY
    assert adapter.register()


def test_warns_once_naming_the_r3hf_estimator():
    est._warned.clear()
    with pytest.warns(UserWarning, match="adv_estimator=r3hf_rloo"):
        assert est.warn_if_summing("rloo")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert est.warn_if_summing("rloo")  # once only
        assert not est.warn_if_summing("reinforce_plus_plus")  # token level already: no warning
        assert not est.warn_if_summing("r3hf_grpo")
    with pytest.warns(UserWarning, match="r3hf_grpo"):
        est.warn_if_summing(core_algos.AdvantageEstimator.GRPO)


# --- the dense reward manager -----------------------------------------------------------------

@pytest.fixture(scope="module")
def verl_reward():
    return _import("r3hf.integrations.verl.reward")  # veRL's reward loop imports aiohttp (ray[default])


def _tiny_rm():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=64, n_embd=16, n_layer=2, n_head=2, num_labels=1, pad_token_id=0)
    return GPT2ForSequenceClassification(config).eval()


def _rollout(padding, holes, seed=0):
    """A veRL batch: prompts [B, P] (left-padded as rollout makes them, or right-padded as the
    colocated reward path rebuilds them), right-padded responses, attention_mask, response_mask."""
    gen = torch.Generator().manual_seed(seed)
    B, P, L = 4, 6, 9
    n_p, n_r = [6, 3, 5, 1], [9, 4, 1, 7]
    prompts, responses = torch.zeros(B, P, dtype=torch.int64), torch.zeros(B, L, dtype=torch.int64)
    attention = torch.zeros(B, P + L, dtype=torch.int64)
    for b in range(B):
        p = torch.randint(1, 50, (n_p[b],), generator=gen)
        if padding == "left":
            prompts[b, P - n_p[b]:], attention[b, P - n_p[b]:P] = p, 1
        else:
            prompts[b, : n_p[b]], attention[b, : n_p[b]] = p, 1
        responses[b, : n_r[b]] = torch.randint(1, 50, (n_r[b],), generator=gen)
        attention[b, P : P + n_r[b]] = 1
    rmask = attention[:, P:].clone()
    if holes:
        rmask[0, 3:5] = 0  # a tool's answer inside row 0
        rmask[3, 4:6] = 0
    tensors = dict(prompts=prompts, responses=responses, attention_mask=attention, response_mask=rmask)
    return DataProto.from_dict(tensors=tensors, non_tensors={"raw_prompt": np.array([None] * B, dtype=object)}), n_p, n_r


def _by_definition(rm, data, n_p, n_r, first="prompt"):
    """R3HF per sample from scratch: score every truncation of prompt ⊕ response with the model's own
    forward (last-token pooling), difference, credit each observation span to the token before it."""
    P = data.batch["prompts"].shape[1]
    L = data.batch["responses"].shape[1]
    out = torch.zeros(len(n_p), L)
    for b in range(len(n_p)):
        prompt = data.batch["prompts"][b][data.batch["attention_mask"][b, :P] != 0]
        ids = torch.cat([prompt, data.batch["responses"][b, : n_r[b]]])
        with torch.no_grad():
            phi = torch.stack([rm(ids[None, : t + 1]).logits[0, 0] for t in range(len(ids))])
        gen_pos = [j for j in range(n_r[b]) if data.batch["response_mask"][b, j]]
        for k, j in enumerate(gen_pos):
            phi_in = phi[n_p[b] - 1] if k == 0 else phi[n_p[b] + j - 1]
            if k == 0 and first == "zero":
                phi_in = torch.tensor(0.0)
            phi_out = phi[n_p[b] + gen_pos[k + 1] - 1] if k + 1 < len(gen_pos) else phi[n_p[b] + j]
            out[b, j] = phi_out - phi_in
    return out


def _manager(verl_reward, compute_score, adv_estimator="r3hf_grpo"):
    from omegaconf import OmegaConf

    config = OmegaConf.create({"algorithm": {"adv_estimator": adv_estimator}, "reward": {}})
    return verl_reward.R3HFRewardManager(config, tokenizer=None, compute_score=compute_score)


def _rm_scores(manager, data):
    # what veRL's RewardLoopManager.compute_rm_score does: run_single per sample, then the class's
    # assemble_rm_scores over the batch
    outputs = [manager.loop.run_until_complete(manager.run_single(data[i : i + 1])) for i in range(len(data))]
    return type(manager).assemble_rm_scores(data, [o["reward_score"] for o in outputs]), outputs


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("holes", [False, True])
def test_reward_manager_prefix_route_hf_model(verl_reward, padding, holes):
    rm = _tiny_rm()
    data, n_p, n_r = _rollout(padding, holes)
    rm_scores, outputs = _rm_scores(_manager(verl_reward, verl_reward.hf_prefix_scorer(rm)), data)
    assert rm_scores.shape == data.batch["responses"].shape and rm_scores.dtype == torch.float32
    assert_close(rm_scores, _by_definition(rm, data, n_p, n_r), "rm_scores")
    assert all("score" in o["reward_extra_info"] for o in outputs)


def test_reward_manager_server_route_all_pooling(verl_reward):
    """A reward server pooling ALL positions (vLLM's /pooling answer format), faked in process:
    it returns the model's head at every position, as a vLLM reward model with ALL pooling does."""
    rm = _tiny_rm()
    data, n_p, n_r = _rollout("right", holes=True, seed=1)
    requests = []

    async def fake_server_post(payload):
        requests.append(payload)
        ids = torch.tensor([payload["input"]])
        with torch.no_grad():
            hidden = rm.transformer(ids).last_hidden_state
            per_position = rm.score(hidden)[0].tolist()  # [[v], [v], ...]
        return {"data": [{"index": 0, "object": "pooling", "data": per_position}]}

    async def compute_score(prompt_ids, response_ids, reward_router_address=None, **unused):
        answer = await fake_server_post({"model": "rm", "input": prompt_ids + response_ids})
        return {"prefix_scores": verl_reward.pooling_prefix_scores(answer)}

    rm_scores, _ = _rm_scores(_manager(verl_reward, compute_score), data)
    assert len(requests) == len(data)
    assert_close(rm_scores, _by_definition(rm, data, n_p, n_r), "rm_scores")


def test_reward_manager_token_scores_and_floats(verl_reward):
    data, n_p, n_r = _rollout("left", holes=False)
    payload = [{"token_scores": torch.arange(n, dtype=torch.float32)} for n in n_r[:3]] + [{"score": 2.5}]
    rm_scores = verl_reward.R3HFRewardManager.assemble_rm_scores(data, payload)
    for b in range(3):
        assert rm_scores[b, : n_r[b]].tolist() == list(range(n_r[b])) and (rm_scores[b, n_r[b]:] == 0).all()
    assert rm_scores[3, n_r[3] - 1] == 2.5 and rm_scores[3].count_nonzero() == 1
    with pytest.raises(ValueError, match="token_scores"):
        verl_reward.R3HFRewardManager.assemble_rm_scores(data, [{"token_scores": torch.zeros(2)}] * 4)
    with pytest.raises(ValueError, match="prefix_scores"):
        verl_reward.R3HFRewardManager.assemble_rm_scores(data, [{"prefix_scores": torch.zeros(3)}] * 4)
    with pytest.raises(ValueError, match="exactly one"):
        verl_reward._payload({"prefix_scores": [1.0], "token_scores": [1.0]})


def test_reward_manager_warns_on_summing_estimator_and_loads_through_verl(verl_reward):
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    est._warned.clear()
    with pytest.warns(UserWarning, match="r3hf_reinforce_pp_baseline"):
        _manager(verl_reward, lambda **kw: 0.0, adv_estimator="reinforce_plus_plus_baseline")
    with pytest.raises(ValueError, match="compute_score"):
        _manager(verl_reward, None)
    config = OmegaConf.create({"reward": {"reward_manager": {
        "source": "importlib", "name": "R3HFRewardManager",
        "module": {"path": "pkg://r3hf.integrations.verl.reward"},
    }}})
    assert resolve_reward_manager_cls(config) is verl_reward.R3HFRewardManager


def test_dense_end_to_end_through_verl(verl_reward):
    """rm_scores from the manager -> veRL's apply_kl_penalty -> compute_advantage("r3hf_grpo")."""
    rm = _tiny_rm()
    data, n_p, n_r = _rollout("right", holes=True, seed=2)
    rm_scores, _ = _rm_scores(_manager(verl_reward, verl_reward.hf_prefix_scorer(rm)), data)
    batch = kl_in_reward(rm_scores, data.batch["response_mask"], ["x", "x", "y", "y"], kl_coef=0.05)
    adv, _ = _advantage(batch, "r3hf_grpo", AlgoConfig())
    mask = data.batch["response_mask"] != 0
    want = ops.group_advantages(batch.batch["token_level_rewards"], mask, torch.tensor([0, 0, 1, 1]), "grpo")
    assert_close(adv, want)


def test_colocated_path_without_response_mask_gives_the_same_advantages(verl_reward):
    """veRL's colocated reward path passes no response_mask: the manager then scores observation
    tokens too, and the r3hf estimators credit those rewards to the generated token before them,
    R3HF's rule for observation spans (holes here are inside the rows, none trailing)."""
    rm = _tiny_rm()
    data, n_p, n_r = _rollout("right", holes=True, seed=3)
    with_mask, _ = _rm_scores(_manager(verl_reward, verl_reward.hf_prefix_scorer(rm)), data)
    bare = DataProto.from_dict(tensors={k: v for k, v in data.batch.items() if k != "response_mask"},
                               non_tensors=dict(data.non_tensor_batch))
    without_mask, _ = _rm_scores(_manager(verl_reward, verl_reward.hf_prefix_scorer(rm)), bare)
    assert not torch.allclose(with_mask, without_mask)
    uid = np.array(["x", "x", "y", "y"], dtype=object)
    mask = data.batch["response_mask"]
    a, _ = est.r3hf_grpo(with_mask, mask, index=uid)
    b, _ = est.r3hf_grpo(without_mask, mask, index=uid)
    assert_close(b, a, "advantages")
