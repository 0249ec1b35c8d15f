"""`OnlinePotential`: the label-free regression potential, refit between training steps from
earlier batches only.

The potential that shapes a batch must not depend on that batch's own returns (a baseline fit on
the rows it is subtracted from biases the policy gradient). So each step:

    phi = online(hidden)                    # Φ' from the head fit on the previous `window` batches
    ... shape this batch's rewards with phi (R from the RM) ...
    online.update(hidden, R, prompt_len, response_mask)   # this batch's statistics, for later steps

`update` only adds [D, D] statistics (no features are kept) and refits the ridge regression
(`r3hf.models.fit_potential`'s "regression" mode) on the last `window` batches; on the demo's
task this cost about 1 ms per step. Before the first update the initial head (by default the RM's
own) is used.
"""

from __future__ import annotations

from collections import deque

import torch

from .potential import PotentialHead
from .potential_fit import regression_points
from .ridge import RidgeStats, fit_ridge


class OnlinePotential:
    """A potential head refit after every step on the previous `window` steps' samples.

    initial: the PotentialHead used until the first update and the ridge's shrinkage target
    (`PotentialHead.from_reward_model(rm)` for the RM's own head); window: how many earlier
    batches the fit uses (1: the previous step only); ridge: "cv" (folds over the rows of those
    batches) or a relative λ >= 0, as in `fit_potential`.
    """

    def __init__(self, initial: PotentialHead, *, window: int = 1, ridge="cv", folds: int = 5, seed: int = 0):
        if not isinstance(initial, PotentialHead):
            raise TypeError(f"initial must be a PotentialHead (e.g. PotentialHead.from_reward_model(rm)), got "
                            f"{type(initial).__name__}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int (earlier batches used), got {window!r}")
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2 and ridge == "cv":
            raise ValueError(f"folds must be an int >= 2 for ridge='cv', got {folds!r}")
        if isinstance(ridge, str) and ridge != "cv" or not isinstance(ridge, str) and (
                isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0):
            raise ValueError(f'ridge must be "cv" or a number >= 0, got {ridge!r}')
        self.initial = initial
        self.head = initial
        self.window, self.ridge, self.folds = window, ridge, folds
        self._batches: deque = deque(maxlen=window)
        self._gen = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.last_fit: dict | None = None

    def __call__(self, hidden: torch.Tensor, **kwargs) -> torch.Tensor:
        """Φ' [B, S] of `hidden` [B, S, D] from the head fit on earlier batches (see PotentialHead)."""
        return self.head(hidden, **kwargs)

    @torch.no_grad()
    def update(self, hidden: torch.Tensor, final_scores: torch.Tensor, prompt_len, response_mask) -> PotentialHead:
        """Add one batch and refit on the last `window` batches; returns the new head (used from the
        next call on).

        hidden [B, S, D] the RM's last hidden states (as read for this batch), final_scores [B] the
        RM's R of each row, prompt_len int or [B], response_mask [B, L] (the PPO layout, as
        `prefix_diagnostics`). Rows without a response token are skipped.
        """
        from .. import _validate as v

        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            raise ValueError(f"hidden must be a tensor [B, S, D], got {getattr(hidden, 'shape', type(hidden).__name__)}")
        B, S, D = hidden.shape
        if D != self.initial.hidden_size:
            raise ValueError(f"hidden has D = {D} but the potential head has D = {self.initial.hidden_size}")
        v.check_tensor("final_scores", final_scores, rank=1)
        if final_scores.shape[0] != B:
            raise ValueError(f"final_scores must be [B] = [{B}], got {list(final_scores.shape)}")
        rmask = v.as_mask("response_mask", response_mask)
        if rmask.shape[0] != B:
            raise ValueError(f"response_mask must be [B, L] with B = {B}, got {list(rmask.shape)}")
        p = v.as_prompt_len(prompt_len, B, S, rmask.shape[1], hidden.device, "prompt")
        rmask = rmask.to(hidden.device)
        x, _, rows, _ = regression_points(hidden, self.initial.weight.to(hidden), None, p, rmask)
        y = final_scores.to(hidden.device).float()[rows]
        used = rows.unique()
        folds = min(self.folds, int(used.numel())) if self.ridge == "cv" else 1
        stats = RidgeStats(D, max(folds, 1), hidden.device)
        if x.shape[0]:
            fold_of = torch.zeros(B, dtype=torch.long)
            fold_of[used.cpu()] = torch.randperm(used.numel(), generator=self._gen) % max(folds, 1)
            stats.add(x, y, fold_of.to(hidden.device)[rows])
        self._batches.append(stats)
        self.steps += 1
        merged = _merge(list(self._batches))
        if float(merged.n.sum()) < 2 or self.ridge == "cv" and int((merged.n > 0).sum()) < 2:
            self.last_fit = {"skipped": "too few points for a fit: keeping the previous head"}
            return self.head
        u0 = self.initial.weight.to(hidden.device, torch.float64)
        u, c, info = fit_ridge(merged, u0, self.ridge)
        info.update(mode="regression-online", window=self.window, steps=self.steps)
        self.last_fit = info
        self.head = PotentialHead(u.float(), c, reward_model=self.initial.reward_model, fit=info)
        return self.head


def _merge(batches) -> RidgeStats:
    """Sum per-batch statistics fold by fold (batches may have fewer folds than others)."""
    K = max(b.folds for b in batches)
    out = RidgeStats(batches[0].D, K, batches[0].n.device)
    for b in batches:
        for k in ("n", "sx", "sy", "sxx", "sxy", "syy"):
            getattr(out, k)[: b.folds] += getattr(b, k)
    return out
