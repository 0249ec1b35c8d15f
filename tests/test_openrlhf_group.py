"""r3hf.integrations.openrlhf.compute_advantages_and_returns against OpenRLHF 0.11's own
`RemoteExperienceMaker.compute_advantages_and_returns`, and `prefix_values` against its RewardModel.

Which peer ran: OpenRLHF's real source when it is installed (`pip install --no-deps
openrlhf==0.11.0`; its unused heavy imports stubbed by tests/openrlhf_real.py), else a
transcription below (`peer_compute_advantages_and_returns`, per-row loops written for this test).
Every comparison names the peer in its message, and `test_which_peer_ran` reports it. CI runs the
real one (installed by .ci/steps/41-openrlhf.sh; R3HF_REQUIRE_OPENRLHF=1, no fallback there).
"""

from __future__ import annotations

import copy
import types
import warnings

import pytest
import torch

from r3hf.integrations import openrlhf as adapter

import openrlhf_real
from peer_batches import logprobs, randn, response_mask

REAL = openrlhf_real.load()
PEER = "OpenRLHF 0.11 (real source)" if REAL else "transcription of OpenRLHF 0.11" + (
    f" (openrlhf did not load: {openrlhf_real._cache['error']})" if openrlhf_real._cache.get("error") else "")
ESTIMATORS = ["gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo"]
GROUP = ["rloo", "reinforce_baseline", "group_norm", "dr_grpo"]


def close(actual, expected, what, atol=1e-5):
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=1e-5, msg=lambda m: f"{what} vs {PEER}: {m}")


# --- the peer, transcribed (used only where OpenRLHF cannot be loaded) ------------------------


def peer_compute_advantages_and_returns(experiences, args, kl_coef):
    est = args.algo.advantage.estimator
    n = args.rollout.n_samples_per_prompt
    flat = [(e, k) for e in experiences for k in range(len(e.index))]
    r = {e.index[k]: float(e.rewards[k]) for e, k in flat}
    groups = {i: [j for j in r if j // n == i // n] for i in r}
    shaped = {}
    for i, members in groups.items():  # float32 tensor arithmetic, as OpenRLHF's
        vals = torch.tensor([r[j] for j in members], dtype=torch.float32)
        x = torch.tensor(r[i], dtype=torch.float32)
        if est == "rloo":
            x = x - (vals.sum() - x) / (n - 1)
        elif est in ("reinforce_baseline", "dr_grpo"):
            x = x - vals.mean()
        elif est == "group_norm":
            x = (x - vals.mean()) / (vals.std() + 1e-9)
        shaped[i] = float(x)
    gamma = 1.0 if est in GROUP else args.algo.advantage.gamma
    lam = args.algo.advantage.lambd
    clip = args.reward.clip_range
    coef = kl_coef if kl_coef > 0 else 0.0
    for e in experiences:
        b, A = e.action_mask.shape
        adv, ret, total = torch.zeros(b, A), torch.zeros(b, A), torch.zeros(b)
        for k in range(b):
            m = e.action_mask[k].float()
            score = shaped[e.index[k]]
            if clip:
                score = min(max(score, clip[0]), clip[1])
            acts = m.nonzero().flatten().tolist()
            last = acts[-1] if acts else A - 1
            reward = -coef * e.kl[k].float()
            reward[last] += score
            total[k] = reward.sum()
            reward = reward * m
            if est == "gae":
                v = e.values[k].float() * m
                running = 0.0
                for t in range(A - 1, -1, -1):
                    nv = v[t + 1] if t + 1 < A else 0.0
                    running = reward[t] + gamma * nv - v[t] + gamma * lam * running
                    adv[k, t] = running
                ret[k] = adv[k] + v
            else:
                running = 0.0
                for t in range(A - 1, -1, -1):
                    running = reward[t] + gamma * running
                    ret[k, t] = running
                adv[k] = ret[k]
        e.advantages, e.returns = adv, ret
        e.info["return"] = total
        e.kl = None
    if est in ("gae", "reinforce", "reinforce_baseline"):
        a = torch.cat([e.advantages.flatten() for e in experiences]).double()
        mk = torch.cat([e.action_mask.flatten() for e in experiences]).double()
        mean = (a * mk).sum() / mk.sum()
        var = ((a - mean) ** 2 * mk).sum() / mk.sum()
        rstd = var.clamp(min=1e-8).rsqrt()
        for e in experiences:
            e.advantages = ((e.advantages.double() - mean) * rstd).float()
    return experiences


def peer(experiences, args, kl_coef):
    """OpenRLHF's own method where it loads (on a bare instance: it only reads these attributes)."""
    if REAL is None:
        return peer_compute_advantages_and_returns(experiences, args, kl_coef)
    maker_cls = REAL["openrlhf.trainer.ppo_utils.experience_maker"].RemoteExperienceMaker
    maker = object.__new__(maker_cls)
    maker.strategy = types.SimpleNamespace(args=args)
    maker.advantage_estimator = args.algo.advantage.estimator
    maker.kl_ctl = types.SimpleNamespace(value=kl_coef)
    return maker.compute_advantages_and_returns(experiences)


# --- experiences in OpenRLHF's layout ---------------------------------------------------------


class Exp(types.SimpleNamespace):
    """Stand-in for OpenRLHF's Experience (the real dataclass is used when it loads)."""


def make_experience(**fields):
    if REAL is not None:
        cls = REAL["openrlhf.trainer.ppo_utils.experience"].Experience
        return cls(**fields)
    return Exp(**fields)


def make_args(estimator, n, gamma=1.0, lambd=1.0, clip=None, no_std_norm=False):
    ns = types.SimpleNamespace
    return ns(
        algo=ns(advantage=ns(estimator=estimator, gamma=gamma, lambd=lambd, no_std_norm=no_std_norm)),
        rollout=ns(n_samples_per_prompt=n),
        reward=ns(clip_range=clip),
    )


def experiences_for(n_prompts, n, seed, widths=(7, 13, 31), prompt=3):
    """Shuffled samples of n_prompts × n, split into experiences of different widths; each row:
    leading prompt zeros, then turns with holes, then padding (every row has an action token)."""
    gen = torch.Generator().manual_seed(seed)
    N = n_prompts * n
    order = torch.randperm(N, generator=gen).tolist()
    cuts = sorted(torch.randperm(N - 1, generator=gen)[: len(widths) - 1].add(1).tolist())
    chunks = [order[a:b] for a, b in zip([0] + cuts, cuts + [N])]
    exps, scores = [], []
    for idx, A in zip(chunks, widths):
        b = len(idx)
        mask = torch.cat([torch.zeros(b, prompt, dtype=torch.bool), response_mask(b, A - prompt, gen=gen)], 1)
        mask[:, prompt] = True  # OpenRLHF samples always have an action token
        lp, base = logprobs(b, A, gen=gen), logprobs(b, A, gen=gen)
        exps.append(make_experience(
            index=idx, rewards=randn(b, gen=gen, scale=2.0), action_mask=mask, kl=adapter.compute_approx_kl(lp, base, "k3"),
            values=randn(b, A, gen=gen), info={},
        ))
        scores.append(randn(b, A + 1, gen=gen))
    return exps, scores


def clone(exps):
    return [copy.deepcopy(e) for e in exps]


CASES = [
    # estimator, gamma, lambd, kl_coef, clip
    *[(e, 1.0, 1.0, 0.05, None) for e in ESTIMATORS],
    *[(e, 1.0, 1.0, 0.0, (-1.0, 1.5)) for e in ESTIMATORS],
    ("gae", 0.9, 0.95, 0.1, None),
    ("reinforce", 0.8, 1.0, 0.02, (-2.0, 2.0)),
    ("rloo", 0.9, 1.0, 0.05, None),  # OpenRLHF forces gamma to 1 for the group estimators (and warns)
    ("group_norm", 1.0, 1.0, -0.5, None),  # kl_coef <= 0 means no KL
]


@pytest.mark.parametrize("estimator,gamma,lambd,kl_coef,clip", CASES)
@pytest.mark.parametrize("n_prompts,n", [(6, 4), (3, 2)])
def test_sparse_equals_openrlhf(estimator, gamma, lambd, kl_coef, clip, n_prompts, n):
    exps, _ = experiences_for(n_prompts, n, seed=10 * ESTIMATORS.index(estimator) + n + int(10 * gamma))
    want = peer(clone(exps), make_args(estimator, n, gamma, lambd, clip), kl_coef)
    inputs = clone(exps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the gamma-forced warning, as OpenRLHF logs it
        got = adapter.compute_advantages_and_returns(exps, make_args(estimator, n, gamma, lambd, clip), kl_coef)
    assert got is exps
    for k, (g, w) in enumerate(zip(got, want)):
        close(g.advantages, w.advantages, f"{estimator} experience {k} advantages")
        close(g.returns, w.returns, f"{estimator} experience {k} returns")
        close(g.info["return"], w.info["return"], f"{estimator} experience {k} info['return']")
        close(g.info["group_reward_std"], w.info["group_reward_std"], "group_reward_std") if "group_reward_std" in w.info else None
        assert g.kl is None
        assert torch.equal(g.rewards, inputs[k].rewards) and torch.equal(g.action_mask, inputs[k].action_mask)


def test_which_peer_ran(record_property):
    record_property("openrlhf_peer", PEER)
    print(f"OpenRLHF peer: {PEER}")
    if openrlhf_real.REQUIRED:
        assert REAL is not None


@pytest.mark.skipif(REAL is None, reason="needs OpenRLHF's source to compare the transcription against it")
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_transcription_matches_the_real_package(estimator):
    exps, _ = experiences_for(4, 3, seed=5)
    args = make_args(estimator, 3, 0.9, 0.95, (-1.0, 1.0))
    real = peer(clone(exps), copy.deepcopy(args), 0.05)
    ours = peer_compute_advantages_and_returns(clone(exps), copy.deepcopy(args), 0.05)
    for r, o in zip(real, ours):
        close(o.advantages, r.advantages, "transcription advantages")
        close(o.returns, r.returns, "transcription returns")


# --- dense R3HF rewards keep the group baseline ------------------------------------------------


def dense_case(n_prompts, n, seed, residual=False):
    """Prefix scores whose prompt part is shared by the samples of a prompt (it is the same prompt);
    rewards = the final prefix score (residual 0) unless residual=True."""
    exps, scores = experiences_for(n_prompts, n, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    prompt_score = randn(n_prompts, gen=gen)
    for e, s in zip(exps, scores):
        first = e.action_mask.to(torch.int64).argmax(1)
        for k, i in enumerate(e.index):
            s[k, : first[k] + 1] = prompt_score[i // n]  # everything up to the first action: the prompt
        last = e.action_mask.shape[1] - 1 - e.action_mask.flip(1).to(torch.int64).argmax(1)
        final = s.gather(1, (last + 1)[:, None]).squeeze(1)
        e.rewards = final + (randn(len(e.index), gen=gen) if residual else 0.0)
    return exps, scores


@pytest.mark.parametrize("estimator", GROUP)
def test_dense_keeps_the_group_baseline(estimator):
    """With KL off: at each row's first action token dense == sparse (the rows telescope to final −
    prompt score, and the prompt score cancels in every baseline); elsewhere A_t = c·(G̃_t − b),
    checked from scratch: b and c from the group's scalar rewards, G̃ the reward-to-go of the
    dense rewards."""
    n = 4
    exps, scores = dense_case(5, n, seed=3)
    sparse = adapter.compute_advantages_and_returns(clone(exps), make_args(estimator, n), 0.0)
    dense = adapter.compute_advantages_and_returns(clone(exps), make_args(estimator, n), 0.0, prefix_scores=scores)
    # the dense rows sum to s = r − prompt score; baselines come from those sums
    s_row = {i: float(x) - float(sc[k, e.action_mask[k].to(torch.int64).argmax()])
             for e, sc in zip(exps, scores) for k, (i, x) in enumerate(zip(e.index, e.rewards))}
    # returns are the advantages before OpenRLHF's batch normalisation (reinforce_baseline has one)
    for e, sp, de, sc in zip(exps, sparse, dense, scores):
        m = e.action_mask
        first = m.to(torch.int64).argmax(1)
        rows = torch.arange(m.shape[0])
        close(de.returns[rows, first], sp.returns[rows, first], "first action token")
        tokens = adapter.compute_dense_reward(sc, 0.0, torch.zeros_like(e.kl, dtype=torch.float32), m,
                                              advantage_estimator="reinforce")
        for k, i in enumerate(e.index):
            vals = torch.tensor([s_row[j] for j in s_row if j // n == i // n], dtype=torch.float64)
            b = (vals.sum() - s_row[i]) / (n - 1) if estimator == "rloo" else vals.mean()
            c = 1.0 / (vals.std() + 1e-9) if estimator == "group_norm" else 1.0
            G = tokens[k].double().flip(0).cumsum(0).flip(0)
            upto = m[k].flip(0).cummax(0).values.flip(0)
            close(de.returns[k], (c * (G - b) * upto).float(), f"{estimator} row {i}")
        assert not torch.allclose(de.returns[m], sp.returns[m])


def test_dense_with_kl_and_residual():
    """The KL term is never baselined (reward-to-go of −β·KL added), and the scalar reward's
    residual over the final prefix score lands on the last action token."""
    n = 3
    exps, scores = dense_case(4, n, seed=8, residual=True)
    kl_coef = 0.1
    kls = [e.kl.clone() for e in exps]
    dense = adapter.compute_advantages_and_returns(clone(exps), make_args("rloo", n), kl_coef, prefix_scores=scores)
    no_kl = [copy.deepcopy(e) for e in exps]
    for e in no_kl:
        e.kl = torch.zeros_like(e.kl)
    base = adapter.compute_advantages_and_returns(no_kl, make_args("rloo", n), kl_coef, prefix_scores=scores)
    for d, b0, kl, e, s in zip(dense, base, kls, exps, scores):
        m = e.action_mask
        upto = m.flip(1).cummax(1).values.flip(1)
        K = (-kl_coef * kl * m).double().flip(1).cumsum(1).flip(1) * upto
        close(d.advantages, b0.advantages + K.float(), "KL reward-to-go")
        # row sums of the rewards on action tokens: r − prompt-only score (rewards are shaped r)
        first = m.to(torch.int64).argmax(1)
        prompt_score = s.gather(1, first[:, None]).squeeze(1)
        close(b0.info["return"], e.rewards - prompt_score, "row sum of dense rewards")


@pytest.mark.parametrize("estimator", ["gae", "reinforce"])
def test_dense_gae_and_reinforce_equal_dense_reward_path(estimator):
    """For gae/reinforce the drop-in's dense rewards are compute_dense_reward's (residual 0)."""
    exps, scores = dense_case(3, 2, seed=4)
    got = adapter.compute_advantages_and_returns(clone(exps), make_args(estimator, 2, 0.9, 0.95), 0.05,
                                                 prefix_scores=scores)
    for g, e, s in zip(got, exps, scores):
        reward = adapter.compute_dense_reward(s, 0.05, e.kl, e.action_mask, advantage_estimator=estimator)
        close(g.info["return"], reward.sum(-1), "rewards")


def test_compute_dense_reward_refuses_group_estimators():
    kl, m, s = torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool), torch.zeros(2, 5)
    for estimator in GROUP:
        with pytest.raises(ValueError, match="compute_advantages_and_returns"):
            adapter.compute_dense_reward(s, 0.1, kl, m, advantage_estimator=estimator)
    with pytest.raises(TypeError):
        adapter.compute_dense_reward(s, 0.1, kl, m)  # the estimator must be named
    with pytest.raises(ValueError, match="advantage_estimator"):
        adapter.compute_dense_reward(s, 0.1, kl, m, advantage_estimator="grpo")


def test_bad_arguments():
    exps, scores = experiences_for(2, 2, seed=1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        adapter.compute_advantages_and_returns(clone(exps), make_args("rloo", 1), 0.0)
    with pytest.raises(NotImplementedError, match="no_std_norm"):
        adapter.compute_advantages_and_returns(clone(exps), make_args("reinforce", 2, no_std_norm=True), 0.0)
    with pytest.raises(ValueError, match=r"prefix_scores\[0\]"):
        adapter.compute_advantages_and_returns(clone(exps), make_args("rloo", 2), 0.0,
                                               prefix_scores=[s[:, :-1] for s in scores])
    with pytest.raises(ValueError, match="values"):
        adapter.advantages_and_returns("gae", torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 3), kl_coef=0.0)
    with pytest.raises(ValueError, match="index"):
        adapter.advantages_and_returns("rloo", torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 3), kl_coef=0.0)


# --- baseline="position" (issue 21) -------------------------------------------------------------


@pytest.mark.parametrize("estimator", GROUP)
def test_position_baseline_sparse_equals_openrlhf(estimator):
    """Sparse, the per-position baseline is the row baseline: OpenRLHF's numbers either way."""
    exps, _ = experiences_for(5, 3, seed=21)
    want = peer(clone(exps), make_args(estimator, 3), 0.05)
    got = adapter.compute_advantages_and_returns(clone(exps), make_args(estimator, 3), 0.05, baseline="position")
    for k, (g, w) in enumerate(zip(got, want)):
        close(g.advantages, w.advantages, f"{estimator} baseline='position' experience {k} advantages")
        close(g.returns, w.returns, f"{estimator} baseline='position' experience {k} returns")


def _position_baseline(G, m, members, i, estimator):
    """From scratch: row i's baseline and scale at its k-th action token, k = 0.. (held last values)."""
    def H(j):
        g = G[j][m[j]]
        return lambda k: g[min(k, len(g) - 1)]
    hs = {j: H(j) for j in members}
    n_i = int(m[i].sum())
    out_b, out_c = [], []
    for k in range(n_i):
        vals = torch.stack([hs[j](k) for j in members])
        if estimator == "rloo":
            out_b.append((vals.sum() - hs[i](k)) / (len(members) - 1))
            out_c.append(torch.tensor(1.0, dtype=torch.float64))
        else:
            out_b.append(vals.mean())
            out_c.append(1.0 / (vals.std() + 1e-9) if estimator == "group_norm" else torch.tensor(1.0, dtype=torch.float64))
    return torch.stack(out_b), torch.stack(out_c)


@pytest.mark.parametrize("estimator", GROUP)
def test_dense_position_baseline_from_scratch(estimator):
    """Dense, KL off: at the k-th action token A = c·(G̃ − b_k), b_k from the group's returns at
    their k-th action token (leave-one-out for rloo; an ended row holds its last value), c the
    per-position 1/(std + 1e-9) for group_norm; 0 off the action tokens. Rows of different lengths,
    holes and experiences of different widths."""
    n = 4
    exps, scores = dense_case(5, n, seed=13)
    dense = adapter.compute_advantages_and_returns(clone(exps), make_args(estimator, n), 0.0, prefix_scores=scores,
                                                   baseline="position")
    row = adapter.compute_advantages_and_returns(clone(exps), make_args(estimator, n), 0.0, prefix_scores=scores)
    G, M, where = {}, {}, {}
    for e, sc in zip(exps, scores):
        m = e.action_mask
        tokens = adapter.compute_dense_reward(sc, 0.0, torch.zeros_like(e.kl, dtype=torch.float32), m,
                                              advantage_estimator="reinforce")
        for k, i in enumerate(e.index):
            G[i] = tokens[k].double().flip(0).cumsum(0).flip(0)
            M[i] = m[k]
    for e, de, ro in zip(exps, dense, row):
        for k, i in enumerate(e.index):
            members = [j for j in G if j // n == i // n]
            b, c = _position_baseline(G, M, members, i, estimator)
            want = torch.zeros_like(G[i])
            want[M[i]] = c * (G[i][M[i]] - b)
            close(de.returns[k], want.float(), f"{estimator} baseline='position' row {i}")
        m = e.action_mask
        assert not torch.allclose(de.returns[m], ro.returns[m])


def test_position_baseline_refused_where_undefined():
    exps, scores = experiences_for(2, 2, seed=1)
    for estimator in ("gae", "reinforce"):
        with pytest.raises(ValueError, match=f"baseline='position'.*{estimator}"):
            adapter.compute_advantages_and_returns(clone(exps), make_args(estimator, 2), 0.0, baseline="position")
    with pytest.raises(ValueError, match="baseline"):
        adapter.compute_advantages_and_returns(clone(exps), make_args("rloo", 2), 0.0, baseline="column")
    with pytest.raises(ValueError, match="baseline"):
        adapter.advantages_and_returns("rloo", torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 3), kl_coef=0.0,
                                       index=torch.zeros(2, dtype=torch.int64), baseline=None)


# --- prefix_values: every position's value from OpenRLHF's RewardModel -------------------------


def _reward_model(normalize):
    from transformers import GPT2Config, GPT2Model, GPT2PreTrainedModel

    RewardModel = REAL["openrlhf.models.model"]._get_reward_model(GPT2PreTrainedModel, GPT2Model, "score")
    config = GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    config.normalize_reward = normalize
    if normalize:
        config.mean, config.std = 0.3, 2.0
    torch.manual_seed(0)
    return RewardModel(config).eval()


@pytest.mark.skipif(REAL is None, reason="prefix_values is tested on OpenRLHF's own RewardModel, which needs its source")
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_prefix_values_equal_scoring_each_truncation(normalize, padding):
    model = _reward_model(normalize)
    gen = torch.Generator().manual_seed(2)
    B, S = 3, 12
    seq = torch.randint(1, 40, (B, S), generator=gen)
    lengths = [12, 7, 3]
    mask = torch.zeros(B, S, dtype=torch.long)
    for b, n in enumerate(lengths):
        if padding == "right":
            mask[b, :n] = 1
        else:
            mask[b, S - n:] = 1
    with torch.no_grad():
        reward, values = adapter.prefix_values(model, seq, mask, return_reward=True)
        assert torch.equal(reward, model(seq, attention_mask=mask))
        for t in range(S):
            truncated = model(seq[:, : t + 1], attention_mask=mask[:, : t + 1])
            for b in range(B):
                if mask[b, : t + 1].any():
                    close(values[b, t], truncated[b], f"row {b} prefix {t}")
                else:
                    assert values[b, t] == 0  # left padding before the first token


def test_prefix_values_rejects_other_models():
    with pytest.raises(ValueError, match="value_head_prefix"):
        adapter.prefix_values(torch.nn.Linear(2, 1), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2))


# --- KL gradients (issue 14 part 3, built on branch ops-contract) ------------------------------


def test_compute_approx_kl_passes_gradients():
    gen = torch.Generator().manual_seed(0)
    lp = (torch.randn(3, 5, dtype=torch.float64, generator=gen) * 2).requires_grad_()
    base = torch.randn(3, 5, dtype=torch.float64, generator=gen) * 2
    kl = adapter.compute_approx_kl(lp, base, "k3")
    kl.sum().backward()
    assert lp.grad is not None
    d = (lp - base).detach()
    # OpenRLHF clamps the estimate to [-10, 10]: no gradient where the clamp is active.
    inside = (torch.exp(-d) - 1 + d).abs() < 10
    assert inside.any() and not inside.all(), "the batch should exercise both sides of the clamp"
    expected = torch.where(inside, 1 - torch.exp(-d), torch.zeros_like(d))
    torch.testing.assert_close(lp.grad, expected.to(lp.grad.dtype), atol=1e-6, rtol=1e-6)


def test_group_norm_on_a_tied_group_is_zero_where_openrlhf_rounds():
    """A prompt whose 8 samples all score 0.1: the group-normalised reward is 0/(0 + 1e-9) = 0.
    OpenRLHF computes the mean and std in float32, where mean(0.1 × 8) != 0.1 and the rounding
    error divided by 1e-9 gives every sample about −0.83; r3hf's float64 group statistics give 0.
    This is the one place the drop-in deliberately differs from the peer."""
    n, A = 8, 4
    mask = torch.ones(n, A, dtype=torch.bool)
    exps = [make_experience(index=list(range(n)), rewards=torch.full((n,), 0.1), action_mask=mask,
                            kl=torch.zeros(n, A), values=torch.zeros(n, A), info={})]
    ours = adapter.compute_advantages_and_returns(clone(exps), make_args("group_norm", n), 0.0)
    theirs = peer(clone(exps), make_args("group_norm", n), 0.0)
    assert torch.equal(ours[0].advantages, torch.zeros(n, A))
    assert theirs[0].advantages.abs().min() > 0.5, f"{PEER} no longer rounds here: {theirs[0].advantages}"
