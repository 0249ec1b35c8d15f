"""Group ops (issue 12) on every backend that runs here: garbage at masked positions changes
nothing, a NaN reaches only the rows that share its statistics, and results are bitwise
deterministic over runs and thread counts."""

import pytest
import torch

import r3hf.ops as ops
from backends_here import runnable, supports
from batches import make_batch

BACKENDS = runnable()
ESTIMATORS = ["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_process"]
INDEX = torch.tensor([3, 1, 3, 1, 8, 1])  # groups {0, 2}, {1, 3, 5}, {4}


def _call(op, b, backend, estimator):
    if op == "reward_to_go":
        return (ops.reward_to_go(b["rewards"], b["response_mask"], 0.9, holes="discount", backend=backend),)
    if op == "group_advantages":
        return (ops.group_advantages(b["rewards"], b["response_mask"], INDEX, estimator, gamma=0.99, backend=backend),)
    return ops.fused_reward_group_advantages(
        b["hidden"], b["weight"], b["bias"], b["response_mask"], b["prompt_len"], INDEX, estimator,
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, kl_estimator="k3", backend=backend,
    )


CASES = [("reward_to_go", "-")] + [(op, e) for op in ("group_advantages", "fused_reward_group_advantages")
                                    for e in ESTIMATORS]


def _batch(seed, **kw):
    b = make_batch(B=6, L=19, P=4, D=8, seed=seed, **kw)
    b["response_mask"][:, :3] = True  # every row generates, so every row shows its statistics
    return b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op, estimator", CASES)
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_garbage_at_masked_positions_changes_nothing(backend, op, estimator, poison):
    if not supports(backend, op):
        pytest.skip(f"{backend} does not implement {op}")
    b = _batch(31)
    dirty = dict(b)
    for k in ("rewards", "logprobs", "ref_logprobs"):
        dirty[k] = b[k].masked_fill(~b["response_mask"], poison)
    for x, y in zip(_call(op, b, backend, estimator), _call(op, dirty, backend, estimator)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_nan_reaches_only_rows_sharing_its_statistics(backend, estimator):
    if not supports(backend, "group_advantages"):
        pytest.skip(f"{backend} does not implement group_advantages")
    b = _batch(32, empty_rows=False)
    dirty = dict(b, rewards=b["rewards"].clone())
    dirty["rewards"][1, 1] = float("nan")  # row 1, group {1, 3, 5}
    clean, got = _call("group_advantages", b, backend, estimator)[0], _call("group_advantages", dirty, backend, estimator)[0]
    assert torch.isnan(got[1]).any()
    if estimator in ("reinforce_pp", "reinforce_pp_baseline"):  # batch whitening: every row
        assert torch.isnan(got[b["response_mask"]]).all()
    else:
        others = torch.tensor([0, 2, 4])  # the other groups are bitwise unchanged
        assert torch.equal(got[others], clean[others])
        assert torch.isnan(got[3][b["response_mask"][3]]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op, estimator", CASES)
def test_bitwise_deterministic_over_runs_and_thread_counts(backend, op, estimator):
    if not supports(backend, op):
        pytest.skip(f"{backend} does not implement {op}")
    b = _batch(33)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            results.append(_call(op, b, backend, estimator))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        for x, y in zip(results[0], r):
            assert torch.equal(x, y)
