"""Closed-form ridge regression from streamed sufficient statistics, with the ridge chosen by
K-fold cross-validation, shrinking towards a given weight (the RM's own head) rather than 0.

Minimises Σ (y − x·u − c)² + λ‖u − u0‖² (the intercept c unpenalised). λ is relative: in units of
the mean eigenvalue of the centred scatter Σ (x − x̄)(x − x̄)ᵀ, so λ = 1 weighs the prior as much as
an average direction of the data; λ = 0 is least squares, λ → ∞ keeps u0 (with c refit).
Only [D, D] statistics per fold are kept (float64), never the features.
"""

from __future__ import annotations

import math

import torch

RIDGE_GRID = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3)


class RidgeStats:
    """Per-fold sums n, Σx, Σy, Σxxᵀ, Σxy, Σy² (float64) of (x [D], y) points."""

    def __init__(self, D: int, folds: int = 1, device="cpu"):
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
            raise ValueError(f"folds must be a positive int, got {folds!r}")
        f64 = dict(dtype=torch.float64, device=device)
        self.D, self.folds = D, folds
        self.n = torch.zeros(folds, **f64)
        self.sx = torch.zeros(folds, D, **f64)
        self.sy = torch.zeros(folds, **f64)
        self.sxx = torch.zeros(folds, D, D, **f64)
        self.sxy = torch.zeros(folds, D, **f64)
        self.syy = torch.zeros(folds, **f64)

    def add(self, x: torch.Tensor, y: torch.Tensor, fold: torch.Tensor | None = None) -> None:
        """x [N, D], y [N], fold int64 [N] in [0, folds) (None: fold 0)."""
        x = x.to(self.n.device, torch.float64)
        y = y.to(self.n.device, torch.float64)
        fold = torch.zeros(len(x), dtype=torch.long, device=x.device) if fold is None else fold.to(x.device)
        self.n.index_add_(0, fold, torch.ones_like(y))
        self.sx.index_add_(0, fold, x)
        self.sy.index_add_(0, fold, y)
        self.sxy.index_add_(0, fold, x * y[:, None])
        self.syy.index_add_(0, fold, y * y)
        for f in torch.unique(fold).tolist():
            xf = x[fold == f]
            self.sxx[f] += xf.T @ xf

    def summed(self, keep: torch.Tensor | None = None):
        """(n, Σx, Σy, Σxxᵀ, Σxy, Σy²) over the folds where keep [folds] is True (all: None)."""
        k = slice(None) if keep is None else keep
        return tuple(getattr(self, a)[k].sum(0) for a in ("n", "sx", "sy", "sxx", "sxy", "syy"))


def _centred(stats):
    n, sx, sy, sxx, sxy, _ = stats
    mx, my = sx / n, sy / n
    return mx, my, sxx - n * torch.outer(mx, mx), sxy - n * mx * my


class _Solver:
    """Eigendecomposition of one training set's centred scatter: solves for any λ cheaply."""

    def __init__(self, stats, u0: torch.Tensor):
        n = float(stats[0])
        if n < 2:
            raise ValueError(f"ridge regression needs at least 2 points, got {n:.0f}")
        self.mx, self.my, C, b = _centred(stats)
        self.evals, self.V = torch.linalg.eigh(C)
        self.evals = self.evals.clamp_min(0.0)
        self.scale = float(self.evals.mean()) or 1.0
        self.b, self.u0 = b, u0.to(b)

    def solve(self, lam: float):
        lam_abs = lam * self.scale
        rhs = self.V.T @ (self.b + lam_abs * self.u0)
        denom = self.evals + lam_abs
        # λ = 0 on a rank-deficient scatter: the minimum-norm least-squares solution's directions
        # (eigenvalues ~ 0) keep u0's component instead of dividing by ~0.
        tiny = denom <= 1e-12 * max(float(self.evals.max()), 1e-300)
        coef = torch.where(tiny, self.V.T @ self.u0, rhs / torch.where(tiny, torch.ones_like(denom), denom))
        u = self.V @ coef
        return u, self.my - self.mx @ u


def sse(stats, u: torch.Tensor, c) -> float:
    """Σ (y − x·u − c)² over the points summarised by `stats`."""
    n, sx, sy, sxx, sxy, syy = stats
    return float(syy - 2 * (u @ sxy + c * sy) + u @ sxx @ u + 2 * c * (u @ sx) + n * c * c)


def fit_ridge(stats: RidgeStats, u0: torch.Tensor, ridge="cv", grid=RIDGE_GRID):
    """-> (u float64 [D], c float, info dict). ridge: "cv" (K-fold over the stats' folds, the λ of
    least held-out squared error from `grid`) or a relative λ >= 0."""
    info = {}
    if isinstance(ridge, str):
        if ridge != "cv":
            raise ValueError(f'ridge must be "cv" or a number >= 0, got {ridge!r}')
        used = (stats.n > 0).nonzero().flatten().tolist()
        if len(used) < 2:
            raise ValueError(f"ridge='cv' needs points in at least 2 folds, got {len(used)}; pass more rows or a "
                             "fixed ridge")
        errors = [0.0] * len(grid)
        for f in used:
            keep = torch.ones(stats.folds, dtype=torch.bool, device=stats.n.device)
            keep[f] = False
            solver = _Solver(stats.summed(keep), u0)
            held = tuple(getattr(stats, a)[f] for a in ("n", "sx", "sy", "sxx", "sxy", "syy"))
            for i, lam in enumerate(grid):
                u, c = solver.solve(lam)
                errors[i] += sse(held, u, c)
        n = float(stats.n.sum())
        best = min(range(len(grid)), key=lambda i: (errors[i], -grid[i]))  # ties: the larger ridge
        lam = grid[best]
        info["cv"] = {"grid": list(grid), "mse": [e / n for e in errors], "folds": len(used)}
    else:
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
            raise ValueError(f'ridge must be "cv" or a finite number >= 0, got {ridge!r}')
        lam = float(ridge)
    total = stats.summed()
    solver = _Solver(total, u0)
    u, c = solver.solve(lam)
    n, _, sy, _, _, syy = total
    var_y = float(syy / n - (sy / n) ** 2)
    info.update(ridge=lam, points=int(float(n)), train_mse=sse(total, u, c) / float(n), target_var=var_y)
    return u, float(c), info
