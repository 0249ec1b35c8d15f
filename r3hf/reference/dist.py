"""torch.distributed helpers of the spec's `group=` option: ranks hold consecutive rows in rank order."""

from __future__ import annotations

import torch


def world_sizes(n: int, group, device) -> list[int]:
    """Every rank's n (rank order within `group`)."""
    import torch.distributed as dist

    mine = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return [int(x) for x in out]


def all_gather_rows(t: torch.Tensor, group) -> tuple[torch.Tensor, int]:
    """Concatenate every rank's t [B_r, ...] along dim 0 (B_r may differ; trailing dims must
    match) -> (global tensor, this rank's first row)."""
    import torch.distributed as dist

    sizes = world_sizes(t.shape[0], group, t.device)
    top = max(sizes)
    padded = t.new_zeros((top, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    rank = dist.get_rank(group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sum(sizes[:rank])
