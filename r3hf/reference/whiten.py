import torch

from . import data_checks


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    if group is not None:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    unbiased: bool = True,
    eps: float = 1e-8,
    group=None,
    transform_masked: bool = False,
    eps_mode: str = "add",
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Whiten x over the positions where mask is set; any shape, float32 out, 0 where masked.

    mean and var over mask == 1 (unbiased: Bessel-corrected, as TRL and veRL; biased as
    OpenRLHF), x' = (x − mean)·rsqrt(var + eps), with the mean added back when shift_mean is
    False. With a torch.distributed `group` the sums are all-reduced first, so every rank
    whitens with the statistics of the whole global batch.

    Peer conventions, off by default: transform_masked=True transforms every position with the
    statistics of the selected ones instead of writing 0 where masked (veRL, OpenRLHF);
    eps_mode="max" uses rsqrt(max(var, eps)) instead of rsqrt(var + eps) (OpenRLHF).
    Packed ([T], cu_seqlens): the same statistics; 0 outside the response regions
    (`r3hf.reference.packed`).
    """
    if cu_seqlens is not None:
        from . import packed

        return packed.masked_whiten(x, mask, shift_mean, unbiased, eps, group, transform_masked, eps_mode, cu_seqlens)
    xf = x.float()
    zero = torch.zeros_like(xf)
    count = _all_reduce(mask.sum().to(torch.float64).reshape(1), group)
    data_checks.whiten_count(count, unbiased)  # ValueError on CPU, device-side assert on GPU: no host sync
    n = count
    # float64 sums keep large batches' statistics independent of summation order.
    total = _all_reduce(torch.where(mask, xf, zero).sum(dtype=torch.float64).reshape(1), group)
    mean = (total / n).to(torch.float32)
    centered = torch.where(mask, xf - mean, zero)
    sq = _all_reduce((centered.double() ** 2).sum().reshape(1), group)
    var = (sq / (n - 1 if unbiased else n)).to(torch.float32)
    out = (xf - mean) * torch.rsqrt(var.clamp_min(eps) if eps_mode == "max" else var + eps)
    if not shift_mean:
        out = out + mean
    return out if transform_masked else torch.where(mask, out, zero)
