"""ops.masked_whiten(..., group=...) across two CPU processes (gloo) == whitening the whole batch.

Each rank holds a different-sized shard of one global batch (padding, holes, an all-masked row);
whitening the shards with the process group must give, on every rank, its slice of whitening the
concatenated batch. One spawn runs every configuration to keep the test short.
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from r3hf import ops
from r3hf.integrations import openrlhf, verl

from peer_batches import assert_close, randn, response_mask

WORLD = 2
ROWS = (3, 5)  # rows per rank: shards of unequal size
L = 13

CONFIGS = [
    dict(),
    dict(unbiased=False),
    dict(shift_mean=False),
    dict(transform_masked=True),
    dict(unbiased=False, transform_masked=True, eps_mode="max"),
]


def _global_batch():
    gen = torch.Generator().manual_seed(1234)
    B = sum(ROWS)
    return randn(B, L, gen=gen, scale=2.0) + 0.5, response_mask(B, L, gen=gen)


def _worker(rank: int, init_file: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, mask = _global_batch()
        start = sum(ROWS[:rank])
        rows = slice(start, start + ROWS[rank])
        x_local, mask_local = x[rows].clone(), mask[rows].clone()
        for config in CONFIGS:
            got = ops.masked_whiten(x_local, mask_local, group=dist.group.WORLD, **config)
            want = ops.masked_whiten(x, mask, **config)[rows]
            assert_close(got, want, f"rank {rank}, {config}")
        # a sub-group made of both ranks works the same as WORLD
        group = dist.new_group([0, 1])
        assert_close(ops.masked_whiten(x_local, mask_local, group=group), ops.masked_whiten(x, mask)[rows], "new_group")
        assert torch.equal(x_local, x[rows]) and torch.equal(mask_local, mask[rows])
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_masked_whiten_group_equals_global_batch():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "rendezvous"),), nprocs=WORLD, join=True)


def test_statistics_differ_per_shard_without_group():
    """Sanity check that the distributed test can fail: local statistics are not global ones."""
    x, mask = _global_batch()
    local = ops.masked_whiten(x[: ROWS[0]], mask[: ROWS[0]])
    assert not torch.allclose(local, ops.masked_whiten(x, mask)[: ROWS[0]], atol=1e-3)


def test_adapters_whiten_like_the_global_op():
    # The adapters' whitening is ops.masked_whiten with their conventions, so `group` semantics
    # carry over; pin the conventions here.
    x, mask = _global_batch()
    assert_close(
        openrlhf.normalize_advantages(x, mask),
        ops.masked_whiten(x, mask, unbiased=False, transform_masked=True, eps_mode="max"),
    )
    zeros = torch.zeros_like(x)
    adv, _ = verl.compute_gae_advantage_return(x, zeros, mask, 1.0, 0.0)  # λ = 0, V = 0: adv = rewards
    carried, _ = ops.gae(x, zeros, mask, 1.0, 0.0, carry_masked=True)
    assert_close(adv, ops.masked_whiten(carried, mask, transform_masked=True))
