"""ops.group_advantages(..., group=...) across two CPU processes (gloo) == one process with the whole batch.

Ranks hold shards of unequal size (and unequal L), groups straddle the rank boundary, ids come in
shuffled order, and an int G counts contiguous rows over the global batch. Every backend that runs
here is checked, and so is the contract layer (r3hf._group_stats with its torch passes), which
the compiled backends reuse. One spawn runs every configuration to keep the test short.
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import r3hf._group_stats as gs
from r3hf import ops

from backends_here import runnable, supports
from r3hf._dispatch import _why_not

WORLD = 2
ROWS = (5, 7)  # rows per rank
LENGTHS = (11, 8)  # each rank pads to its own longest response
EPS = 1e-6


def _global_batch():
    gen = torch.Generator().manual_seed(4321)
    B, L = sum(ROWS), max(LENGTHS)
    rewards = torch.randn(B, L, generator=gen)
    mask = torch.rand(B, L, generator=gen) > 0.25
    mask[:, LENGTHS[1]:] = False  # rank 1's rows fit its shorter L
    mask[2] = False  # an all-masked row
    # shuffled ids; group 3 has rows on both ranks, group 9 is a singleton on rank 1
    index = torch.tensor([3, 1, 1, 4, 3, 3, 4, 9, 2, 2, 1, 3])
    return rewards, mask, index


def _shard(rank, *tensors):
    start = sum(ROWS[:rank])
    rows = slice(start, start + ROWS[rank])
    return [t[rows, : LENGTHS[rank]].clone() if t.dim() == 2 else t[rows].clone() for t in tensors], rows


def _configs():
    for est in gs.ESTIMATORS:
        for scale in (gs.SCALES if est in ("grpo", "grpo_process") else ("group",)):
            for gamma in (1.0, 0.9):
                yield est, scale, gamma


def _worker(rank: int, init_file: str, backends):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        rewards, mask, index = _global_batch()
        (r, m, idx), rows = _shard(rank, rewards, mask, index)
        L = LENGTHS[rank]
        for est, scale, gamma in _configs():
            opts = dict(gamma=gamma, scale=scale, backend="torch")
            want = ops.group_advantages(rewards, mask, index, est, **opts)[rows, :L]
            for backend in backends:
                if supports(backend, "group_advantages"):
                    got = ops.group_advantages(r, m, idx, est, **{**opts, "backend": backend}, group=dist.group.WORLD)
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda s: f"{backend} {est}: {s}")
            layered = gs.group_advantages(gs.row_pass, gs.finish, r, m, idx, est, gamma, EPS, scale, dist.group.WORLD)
            torch.testing.assert_close(layered, want, rtol=1e-5, atol=1e-5, msg=lambda s: f"layer {est}: {s}")
        # baseline="position" (issue 21): per-position sums all-reduced over the global group ids
        for est in gs.POSITION_ESTIMATORS:
            for scale in (gs.SCALES if est == "grpo" else ("group",)):
                opts = dict(gamma=0.9, scale=scale, baseline="position")
                want = ops.group_advantages(rewards, mask, index, est, **opts, backend="torch")[rows, :L]
                for backend in backends:
                    if _why_not(backend, "group_advantages", torch.device("cpu"), ("baseline",)) is None:
                        got = ops.group_advantages(r, m, idx, est, **opts, backend=backend, group=dist.group.WORLD)
                        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5,
                                                   msg=lambda s: f"position {backend} {est}: {s}")
                layered = gs.group_advantages(gs.row_pass, gs.finish, r, m, idx, est, 0.9, EPS, scale,
                                              dist.group.WORLD, baseline="position")
                torch.testing.assert_close(layered, want, rtol=1e-5, atol=1e-5, msg=lambda s: f"layer pos {est}: {s}")
        # int G: contiguous groups of 3 over the global batch (rows 3..5 straddle the ranks)
        want = ops.group_advantages(rewards, mask, 3, "grpo")[rows, :L]
        got = ops.group_advantages(r, m, 3, "grpo", group=dist.group.WORLD)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # G must divide the global batch (12), checked on every rank alike, not per shard (5, 7)
        try:
            ops.group_advantages(r, m, 5, "grpo", group=dist.group.WORLD)
            raise AssertionError("index = 5 with a global batch of 12 did not raise")
        except ValueError as e:
            assert "global batch" in str(e) and "12" in str(e)
        # a rank whose rows are all masked is fine while the global batch has tokens
        empty = torch.zeros_like(m) if rank == 1 else m
        full_mask = mask.clone()
        full_mask[sum(ROWS[:1]):] = False
        want = ops.group_advantages(rewards, full_mask, index, "rloo")[rows, :L]
        torch.testing.assert_close(ops.group_advantages(r, empty, idx, "rloo", group=dist.group.WORLD), want)
        # fused: same as the composition on the whole batch
        gen = torch.Generator().manual_seed(7 + rank)
        hidden = torch.randn(ROWS[rank], L + 3, 4, generator=gen)
        weight = torch.ones(4)
        rew, adv = ops.fused_reward_group_advantages(hidden, weight, None, m, 2, idx, "reinforce_pp_baseline",
                                                     group=dist.group.WORLD)
        torch.testing.assert_close(adv, ops.group_advantages(rew, m, idx, "reinforce_pp_baseline",
                                                             group=dist.group.WORLD))
        assert torch.equal(r, _shard(rank, rewards)[0][0]) and torch.equal(m, _shard(rank, mask)[0][0])
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_group_advantages_across_ranks_equal_one_process():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "rendezvous"), runnable()), nprocs=WORLD, join=True)


def test_shards_alone_differ():
    """Sanity check that the distributed test can fail: a shard's own groups are not the global ones."""
    rewards, mask, index = _global_batch()
    (r, m, idx), rows = _shard(0, rewards, mask, index)
    local = ops.group_advantages(r, m, idx, "grpo")
    assert not torch.allclose(local, ops.group_advantages(rewards, mask, index, "grpo")[rows, : LENGTHS[0]], atol=1e-3)
