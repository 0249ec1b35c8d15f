"""Packed group ops and masked_whiten with a torch.distributed `group` (two gloo CPU processes)
== the padded oracle over the whole packed batch (tests/packed_oracle.py), this rank's positions.

Each rank holds its own packed stream (its own N and T); groups of sequences straddle the ranks, an
int G counts sequences over the global batch in rank order, and whitening statistics span ranks.
"""

import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import packed_oracle as oracle
from r3hf import ops

from backends_here import runnable

WORLD = 2
SEQS = (5, 7)  # sequences per rank: 12 in all
ESTIMATORS = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_process")


def _global():
    """One packed batch of 12 sequences (every kind) and shuffled group ids, some straddling ranks."""
    b = oracle.make_packed(sum(SEQS), 17, 4, seed=99, first="prompt")
    b["index"] = torch.tensor([3, 1, 1, 4, 3, 3, 4, 9, 2, 2, 1, 3])
    return b


def _shard(b, rank):
    """This rank's sequences: a packed batch of its own, and its positions in the global stream."""
    s0 = sum(SEQS[:rank])
    cu = b["cu_seqlens"]
    a, e = int(cu[s0]), int(cu[s0 + SEQS[rank]])
    local = {k: b[k][a:e].clone() for k in ("hidden", "rewards", "values", "response_mask", "logprobs", "ref_logprobs")}
    local.update(cu_seqlens=(cu[s0 : s0 + SEQS[rank] + 1] - a).contiguous(), weight=b["weight"],
                 index=b["index"][s0 : s0 + SEQS[rank]].clone())
    return local, slice(a, e)


def _close(got, want, what):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * (1 + float(want.abs().max())),
                               msg=lambda m: f"{what}: {m}")


def _worker(rank, init_file, backends):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    from r3hf._dispatch import _why_not

    world = dist.group.WORLD
    try:
        g = _global()
        x, pos = _shard(g, rank)
        for backend in backends:
            def runs(op):
                return _why_not(backend, op, torch.device("cpu"), ("cu_seqlens",)) is None

            if runs("group_advantages"):
                for est in ESTIMATORS:
                    for index, gi in ((x["index"], g["index"]), (3, 3)):  # ids; int G = 3 over the global batch
                        want = oracle.group_advantages(g["rewards"], g["response_mask"], gi, est,
                                                       cu_seqlens=g["cu_seqlens"], gamma=0.9)[pos]
                        got = ops.group_advantages(x["rewards"], x["response_mask"], index, est,
                                                   cu_seqlens=x["cu_seqlens"], gamma=0.9, group=world,
                                                   backend=backend)
                        _close(got, want, f"{backend} group_advantages {est} index={type(index).__name__}")
            if runs("fused_reward_group_advantages"):
                want = oracle.fused_reward_group_advantages(
                    g["hidden"], g["weight"], 0.5, g["response_mask"], None, g["index"], "grpo",
                    cu_seqlens=g["cu_seqlens"], logprobs=g["logprobs"], ref_logprobs=g["ref_logprobs"], kl_coef=0.1)
                got = ops.fused_reward_group_advantages(
                    x["hidden"], x["weight"], 0.5, x["response_mask"], None, x["index"], "grpo",
                    cu_seqlens=x["cu_seqlens"], logprobs=x["logprobs"], ref_logprobs=x["ref_logprobs"], kl_coef=0.1,
                    group=world, backend=backend)
                for k, (a, b) in enumerate(zip(got, want)):
                    _close(a, b[pos], f"{backend} fused_reward_group_advantages[{k}]")
            if runs("masked_whiten"):
                for unbiased in (True, False):
                    want = oracle.masked_whiten(g["values"], g["response_mask"], True, unbiased,
                                                cu_seqlens=g["cu_seqlens"])[pos]
                    got = ops.masked_whiten(x["values"], x["response_mask"], True, unbiased, group=world,
                                            cu_seqlens=x["cu_seqlens"], backend=backend)
                    _close(got, want, f"{backend} masked_whiten unbiased={unbiased}")
        # G must divide the global number of sequences (12), not this rank's
        try:
            ops.group_advantages(x["rewards"], x["response_mask"], 5, "grpo", cu_seqlens=x["cu_seqlens"], group=world)
            raise AssertionError("index = 5 with 12 sequences in all did not raise")
        except ValueError as e:
            assert "index" in str(e) and "12" in str(e), e
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_packed_group_ops_across_ranks_equal_the_whole_batch():
    if "cu_seqlens" not in ops.group_advantages.__code__.co_varnames:
        pytest.skip("r3hf.ops takes no cu_seqlens yet (branch core-packed not merged)")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "rendezvous"), runnable()), nprocs=WORLD, join=True)


def test_shards_alone_differ():
    """The distributed test can fail: a rank's own groups and statistics are not the global ones."""
    g = _global()
    x, pos = _shard(g, 0)
    local = oracle.group_advantages(x["rewards"], x["response_mask"], x["index"], "grpo", cu_seqlens=x["cu_seqlens"])
    whole = oracle.group_advantages(g["rewards"], g["response_mask"], g["index"], "grpo", cu_seqlens=g["cu_seqlens"])
    assert not torch.allclose(local, whole[pos], atol=1e-3)
