"""What a group estimator really does with R3HF rewards: the advantage's second moment and variance
per response position, relative to the same estimator on sparse rewards (`prefix_diagnostics`'
`estimator=` view).

The prefix statistics (Var(R − Φ_t)/Var(R) within groups) describe a per-position group baseline.
An estimator with a row baseline (r3hf's `rloo`: the other rows' totals) leaves the shaping term
−(Φ_{i,t} − Φ_{i,0}) uncentred in every token's advantage, so its second moment can be far above
sparse's even where that variance ratio is below 1. This module measures the advantages the op
returns — `ops.group_advantages(rewards, mask, groups, estimator, baseline=...)` on the R3HF
rewards and on the sparse ones (the final score on the last generated token) — so it shows what
training will see, for either baseline.
"""

from __future__ import annotations

import math

import torch

from .. import _validate as v
from .. import ops

BASELINES = v.GROUP_BASELINES
POSITION_ESTIMATORS = v.POSITION_ESTIMATORS  # the estimators with a group baseline of the return


def _moments(adv: torch.Tensor, present: torch.Tensor, spans) -> tuple:
    """adv [B, L], present bool [B, L] -> (second moment [L], unbiased variance [L], the same two
    pooled per span [S]: mean of A² over the span's tokens, mean of the per-position variances)."""
    a = adv.double()
    w = present.double()
    n = w.sum(0)
    nan = torch.full_like(n, math.nan)
    # NaN where too few rows have a token (no statistic there; its effect reads "unclear")
    m2 = torch.where(n >= 1, (a * a * w).sum(0) / n.clamp_min(1), nan)
    mean = (a * w).sum(0) / n.clamp_min(1)
    var = torch.where(n >= 2, ((a - mean) ** 2 * w).sum(0) / (n - 1).clamp_min(1), nan)
    span_m2 = torch.stack([(a[:, s:e] ** 2 * w[:, s:e]).sum() / w[:, s:e].sum() for s, e in spans])
    span_var = torch.stack([var[s:e][n[s:e] >= 2].mean() if bool((n[s:e] >= 2).any()) else var.new_tensor(math.nan)
                            for s, e in spans])
    return m2, var, span_m2, span_var


def _group_local(estimator: str, options: dict) -> bool:
    """True when a row's advantage depends on its own group only (no batch statistic): resampling
    whole groups then permutes advantages, and the op need not run again per bootstrap draw."""
    return estimator in ("rloo", "grpo", "grpo_process") and options.get("scale", "group") != "batch"


def _advantages(dense, sparse, mask, groups, estimator, baseline, options):
    return (ops.group_advantages(dense, mask, groups, estimator, baseline=baseline, **options),
            ops.group_advantages(sparse, mask, groups, estimator, baseline=baseline, **options))


def _ratios(a_d, a_s, mask, spans):
    """(second-moment ratio [L], variance ratio [L], span ratios [S] x 2, raw moments) of the dense
    and sparse advantages [B, L] of one batch."""
    m2_d, var_d, sm2_d, svar_d = _moments(a_d, mask, spans)
    m2_s, var_s, sm2_s, svar_s = _moments(a_s, mask, spans)
    tiny = 1e-30
    return {
        "m2": m2_d / m2_s.clamp_min(tiny), "var": var_d / var_s.clamp_min(tiny),
        "span_m2": sm2_d / sm2_s.clamp_min(tiny), "span_var": svar_d / svar_s.clamp_min(tiny),
        "raw": (m2_d, m2_s, var_d, var_s),
    }


def _group_table(groups: torch.Tensor) -> torch.Tensor:
    """int64 [num_groups, max group size]: each group's rows, −1 padded."""
    order = torch.argsort(groups, stable=True)
    counts = torch.bincount(groups)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(groups.numel(), device=groups.device) - starts[groups[order]]
    table = torch.full((counts.numel(), int(counts.max())), -1, dtype=torch.int64, device=groups.device)
    table[groups[order], slot] = order
    return table


def _group_resample(table: torch.Tensor, gen: torch.Generator):
    """As many groups as `table` has, drawn with replacement -> (row indices, new group ids, sorted):
    a bootstrap batch (a group drawn twice becomes two groups). Indexing only."""
    n_groups, width = table.shape
    draw = torch.randint(n_groups, (n_groups,), generator=gen).to(table.device)
    rows = table[draw].flatten()
    ids = torch.arange(n_groups, device=table.device)[:, None].expand(n_groups, width).flatten()
    keep = rows >= 0
    return rows[keep], ids[keep]


def _effect(value: float, ci) -> str:
    """'reduces' / 'raises' when the 95 % interval of the ratio excludes 1 (without a bootstrap:
    when the ratio itself is off 1), else 'unclear'."""
    if not math.isfinite(value):
        return "unclear"
    low, high = ci if ci is not None else (value, value)
    # 1e-4: advantages are float32, and dense rewards' reward-to-go rounds differently from sparse
    # ones, so equal advantages can give a ratio of 1 ± 1e-6 with a zero-width interval.
    if high < 1.0 - 1e-4:
        return "reduces"
    if low > 1.0 + 1e-4:
        return "raises"
    return "unclear"


def advantage_ratios(dense: torch.Tensor, sparse: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor,
                     estimator: str, baseline: str, spans, *, bootstrap: int = 200, seed: int = 0,
                     options: dict | None = None) -> dict:
    """R3HF vs sparse advantages of one estimator/baseline, per position and per span.

    dense [B, L] (R3HF token rewards), sparse [B, L] (the final score on each row's last generated
    token), mask bool [B, L], groups int64 [B] -> dict with per-position rows (n, second moment and
    variance under both rewards, their ratios dense/sparse with 95 % bootstrap intervals over
    groups, effect) and the same per span [(start, end)). Advantages are the op's
    (`ops.group_advantages(..., estimator, baseline=baseline)`); a position's statistics are over
    the rows with a generated token there.
    """
    options = dict(options or {})
    spans = list(spans)
    a_d, a_s = _advantages(dense, sparse, mask, groups, estimator, baseline, options)
    point = _ratios(a_d, a_s, mask, spans)
    local = _group_local(estimator, options)
    cis = {}
    if bootstrap:
        gen = torch.Generator().manual_seed(seed)
        table = _group_table(groups)
        draws = {k: [] for k in ("m2", "var", "span_m2", "span_var")}
        for _ in range(bootstrap):
            rows, ids = _group_resample(table, gen)
            if local:
                r = _ratios(a_d[rows], a_s[rows], mask[rows], spans)
            else:  # batch statistics (whitening, scale="batch") change with the resampled batch
                r = _ratios(*_advantages(dense[rows], sparse[rows], mask[rows], ids, estimator, baseline, options),
                            mask[rows], spans)
            for k in draws:
                draws[k].append(r[k])
        for k, d in draws.items():
            d = torch.stack(d)
            cis[k] = (torch.nanquantile(d, 0.025, dim=0), torch.nanquantile(d, 0.975, dim=0))
    m2_d, m2_s, var_d, var_s = point["raw"]
    n = mask.sum(0)

    def row(key, i):
        value = float(point[key][i])
        ci = [float(cis[key][0][i]), float(cis[key][1][i])] if cis else None
        return value, ci

    positions = []
    for t in range(mask.shape[1]):
        m2, m2_ci = row("m2", t)
        var, var_ci = row("var", t)
        positions.append({
            "position": t, "n": int(n[t]), "second_moment": float(m2_d[t]), "second_moment_sparse": float(m2_s[t]),
            "variance": float(var_d[t]), "variance_sparse": float(var_s[t]),
            "second_moment_ratio": m2, "second_moment_ratio_ci": m2_ci, "variance_ratio": var, "variance_ratio_ci": var_ci,
            "second_moment_effect": _effect(m2, m2_ci), "variance_effect": _effect(var, var_ci),
        })
    span_rows = []
    for i, (s, e) in enumerate(spans):
        m2, m2_ci = row("span_m2", i)
        var, var_ci = row("span_var", i)
        span_rows.append({
            "start": s, "end": e, "second_moment_ratio": m2, "second_moment_ratio_ci": m2_ci,
            "variance_ratio": var, "variance_ratio_ci": var_ci,
            "second_moment_effect": _effect(m2, m2_ci), "variance_effect": _effect(var, var_ci),
        })
    return {"estimator": estimator, "baseline": baseline, "bootstrap": bootstrap, "positions": positions,
            "quarters": span_rows}


def _fmt(q: dict, key: str) -> str:
    ci = q[f"{key}_ratio_ci"]
    text = f"×{q[f'{key}_ratio']:.2f}"
    return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _where(quarters, key, effect) -> str:
    return ", ".join(f"Q{i + 1}" for i, q in enumerate(quarters) if q[f"{key}_effect"] == effect)


def _describe(res: dict) -> str:
    qs = res["quarters"]
    parts = []
    for key, name in (("second_moment", "second moment"), ("variance", "variance")):
        values = ", ".join(_fmt(q, key) for q in qs)
        up, down = _where(qs, key, "raises"), _where(qs, key, "reduces")
        verdict = []
        if up:
            verdict.append(f"raises it in {up}")
        if down:
            verdict.append(f"reduces it in {down}")
        parts.append(f"{name} by quarter {values} ({'; '.join(verdict) or 'no clear change'})")
    return "; ".join(parts)


def advantage_verdict(results: dict, baseline: str) -> str:
    """One paragraph from {baseline: advantage_ratios(...)}: what R3HF rewards do to the advantage
    of this estimator, relative to sparse rewards, and which baseline reduces it."""
    main = results[baseline]
    est = main["estimator"]
    text = (f"Advantages of estimator={est!r} with R3HF rewards relative to sparse rewards (dense/sparse), "
            f"baseline={baseline!r}: {_describe(main)}.")
    other = [b for b in results if b != baseline]
    if other:
        o = other[0]
        text += f" With baseline={o!r}: {_describe(results[o])}."
        m2 = {b: [q["second_moment_ratio"] for q in results[b]["quarters"]] for b in results}
        best = [b for b in results if all(x <= y for x, y in zip(m2[b], m2[o if b == baseline else baseline]))]
        if best:
            best = best[0]
            raised = _where(results[best]["quarters"], "second_moment", "raises")
            text += f" baseline={best!r} gives the lower second moment in every quarter"
            text += (f", but still above sparse in {raised}." if raised
                     else " and does not raise it above sparse in any quarter: use it with R3HF rewards.")
        else:
            text += " Neither baseline gives the lower second moment in every quarter."
    elif est not in POSITION_ESTIMATORS:
        text += f" ({est!r} has no group baseline of the return: baseline='position' does not apply.)"
    up = _where(main["quarters"], "second_moment", "raises")
    if up:
        text += (f" With baseline={baseline!r}, where the second moment is raised ({up}), the dense rewards add "
                 "noise to the policy gradient compared with sparse rewards.")
    return text
