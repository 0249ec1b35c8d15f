"""The spec's data checks: values inside tensors that make an op undefined (ValueError on CPU).

Part of the reference (the spec) so that it imports nothing else from r3hf; the backends and
`r3hf._checks` reuse these. A check on GPU data is an asynchronous device-side assert with the
same message (`torch._assert_async`: no host sync; see r3hf/_checks.py and docs/contract.md).
"""

from __future__ import annotations

import torch


def fail(ok: torch.Tensor, message: str) -> None:
    """ValueError(message) unless `ok` (a 1-element bool tensor); a device-side assert off the CPU."""
    if ok.device.type == "cpu":
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)


def whiten_count(count: torch.Tensor, unbiased: bool) -> None:
    """masked_whiten needs >= 2 selected positions (unbiased) or >= 1; count is a 1-element tensor."""
    need = 2 if unbiased else 1
    if count.device.type == "cpu":
        n = int(count.reshape(()))
        if n < need:
            what = "at least 2 positions for an unbiased variance" if unbiased else "at least 1 position"
            raise ValueError(f"mask selects {n} positions; masked_whiten needs {what}")
        return
    fail((count.reshape(()) >= need), f"masked_whiten: mask selects fewer than {need} positions")


def check_tokens(n_tokens: int, estimator: str) -> None:
    """The data errors of a whole batch: no generated token, or fewer than 2 to whiten over."""
    if n_tokens == 0:
        raise ValueError(
            "response_mask has no generated token in the whole batch: group advantages are undefined "
            "(all-masked rows are fine, an all-masked batch is a bug upstream)"
        )
    if n_tokens < 2 and estimator in ("reinforce_pp", "reinforce_pp_baseline"):
        raise ValueError(
            f"response_mask selects {n_tokens} generated token(s) in the batch; estimator={estimator!r} whitens "
            "over tokens with an unbiased variance and needs at least 2"
        )
