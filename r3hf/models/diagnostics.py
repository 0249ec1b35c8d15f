"""Does a reward model's prefix score carry signal? `prefix_diagnostics`, without any ground truth.

With γ = 1, R3HF's reward-to-go from response token t is R − Φ_t, where R is the final score and
Φ_t = R(x, y<t) the score of the prefix before t (Φ_0: the prompt alone). R3HF is therefore a
state baseline Φ_t on the sparse return R: it lowers the variance of the return at t exactly when
Var(R − Φ_t) < Var(R), i.e. when Φ_t is a useful value estimate, and raises it otherwise.
These statistics, measured on sampled responses (ideally from the policy being trained), say
where R3HF can help before any GPU hours are spent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from .._extras import require
from .. import _validate as v
from .. import ops
from .scoring import MODEL_PAD, check_ids, prefix_scores


def _response_mask(attention: torch.Tensor, prompt_len: torch.Tensor, L: int) -> torch.Tensor:
    """bool [B, L]: response positions the reward model attends (prompt_len[b] + j)."""
    j = torch.arange(L, device=attention.device)
    idx = (prompt_len[:, None] + j[None, :]).clamp_max(attention.shape[1] - 1)
    inside = prompt_len[:, None] + j[None, :] < attention.shape[1]
    return attention.gather(1, idx) & inside


def _var(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over dim 0 of x [..., B, ...] weighted by a 0/1 mask w (same shape)."""
    n = w.sum(0)
    mean = (x * w).sum(0) / n.clamp_min(1)
    return ((x - mean) ** 2 * w).sum(0) / (n - 1).clamp_min(1)


def _cov(x, y, w):
    n = w.sum(0)
    mx = (x * w).sum(0) / n.clamp_min(1)
    my = (y * w).sum(0) / n.clamp_min(1)
    return ((x - mx) * (y - my) * w).sum(0) / (n - 1).clamp_min(1)


def _stats(final: torch.Tensor, phi: torch.Tensor, present: torch.Tensor) -> dict:
    """final [B] (or [B, L] per position), phi [B, L] (Φ before each token), present [B, L] 0/1 ->
    per-position [L] stats."""
    w = present.double()
    R = final.double() if final.dim() == 2 else final.double()[:, None].expand_as(phi)
    phi = phi.double()
    var_r = _var(R, w)
    var_left = _var(R - phi, w)
    cov = _cov(phi, R, w)
    var_phi = _var(phi, w)
    ratio = var_left / var_r.clamp_min(1e-30)
    corr = cov / (var_phi * var_r).clamp_min(1e-30).sqrt()
    return {"var_ratio": ratio, "corr": corr, "var_r": var_r, "var_phi": var_phi, "cov": cov, "n": w.sum(0)}


def _group_ids(index, B: int, device):
    """index None | int G | integer ids [B] -> int64 [B] group ids or None."""
    if index is None:
        return None
    if isinstance(index, int) and not isinstance(index, bool):
        if index < 1 or B % index:
            raise ValueError(f"index: a group size G must be >= 1 and divide the batch size {B}, got {index}")
        return torch.arange(B, device=device) // index
    if not isinstance(index, torch.Tensor) or index.is_floating_point() or index.dtype == torch.bool:
        raise TypeError(f"index must be None, an int group size or integer group ids [B], got {type(index).__name__}")
    if list(index.shape) != [B]:
        raise ValueError(f"index must be [B] = [{B}], got {list(index.shape)}")
    return torch.unique(index.to(device), return_inverse=True)[1]


def _center(final, phi, present, groups):
    """-> (R [B, L], Φ [B, L]) as deviations from their group means at each position t (over the
    rows present at t)."""
    G = int(groups.max()) + 1
    w = present.double()
    R = final.double()[:, None].expand_as(phi)
    n = torch.zeros(G, phi.shape[1], dtype=torch.float64, device=phi.device).index_add_(0, groups, w).clamp_min(1)
    mean_r = torch.zeros_like(n).index_add_(0, groups, R * w) / n
    mean_x = torch.zeros_like(n).index_add_(0, groups, phi.double() * w) / n
    return R - mean_r[groups], phi.double() - mean_x[groups]


def _buckets(L: int, buckets) -> list[tuple[int, int]]:
    """[(start, end)) response-position ranges: one per position up to 32 positions, else 16 buckets."""
    if buckets is None:
        buckets = L if L <= 32 else 16
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"buckets must be a positive int or None, got {buckets!r}")
    n = min(buckets, L)
    edges = [round(i * L / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n) if edges[i + 1] > edges[i]]


@torch.no_grad()
def prefix_diagnostics(model: nn.Module, input_ids, attention_mask=None, prompt_len=None, *, response_mask=None,
                       buckets=None, bootstrap: int = 200, seed: int = 0, head=None, label=None,
                       pad_token_id=MODEL_PAD, scores=None, batch_size: int = 64, index=None) -> dict:
    """How much signal a reward model's prefix scores carry, from sampled responses (no ground truth).

    input_ids [B, S] = left-padded prompt ⊕ right-padded response (the PPO layout), attention_mask
    [B, S] (None: all attended), prompt_len an int or int [B] (response token j of row b at
    position prompt_len[b] + j), response_mask [B, L] (None: every attended response position,
    L = S − min(prompt_len)). scores: precomputed prefix scores [B, S] (then `model` is unused);
    otherwise `prefix_scores` of the model, batch_size rows per forward pass.
    Needs at least 3 rows. index: None, or the group of each row (an int G for contiguous groups
    of G rows, or integer ids [B]), e.g. several responses per prompt for a group estimator
    (RLOO, GRPO): R and Φ_t are then taken as deviations from their group means, so the
    statistics describe what is left after the group baseline (the prompt-only score cancels).

    Returns a dict (JSON-ready lists): per response position t
    - var_ratio = Var(R − Φ_t)/Var(R): the return's variance left with the prefix score as a
      baseline (< 1: R3HF's shaping reduces variance at t; > 1: it adds variance);
      var_ratio_ci: a 95 % bootstrap interval over rows;
    - corr = corr(Φ_t, R); beta_opt = Cov(R, Φ_t)/Var(Φ_t), the best scale of Φ_t as a baseline
      (what beta_c="auto" estimates); n: rows with a token at t;
    and the same averaged over position buckets; prompt_var_share = Var(Φ_0)/Var(R) and
    prompt_r2 = corr(Φ_0, R)² (Φ_0, the prompt-only score, cancels in group estimators and in
    R − Φ_0 sums); largest_share: per row, max_t |r̃_t| / Σ_t |r̃_t| of its R3HF token rewards
    (1 = one token carries the whole change, 1/L = spread evenly) with its mean and quantiles;
    verdict: where R3HF can reduce variance and where it would add it.
    """
    ids, attention = check_ids(input_ids, attention_mask)
    B, S = ids.shape
    if prompt_len is None:
        raise ValueError("prompt_len is required (an int or an integer tensor [B]: where each response starts)")
    if B < 3:
        raise ValueError(f"input_ids must have at least 3 rows (sampled responses) for variances, got {B}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap must be a non-negative int (resamples), got {bootstrap!r}")
    p0 = prompt_len if isinstance(prompt_len, int) else None
    L = S - (p0 if p0 is not None else int(torch.as_tensor(prompt_len).min()))
    if L < 1:
        raise ValueError(f"no response positions: prompt_len {prompt_len} >= S = {S}")
    p = v.as_prompt_len(prompt_len, B, S, 1, ids.device, "prompt")
    if response_mask is None:
        rmask = _response_mask(attention, p, L)
    else:
        rmask = v.as_mask("response_mask", response_mask)
        if rmask.shape[0] != B or rmask.device != ids.device or p.max() + rmask.shape[1] > S:
            raise ValueError(f"response_mask must be [B, L] with B = {B}, on {ids.device} and prompt_len + L <= S = {S}, "
                             f"got {list(rmask.shape)}")
        L = rmask.shape[1]
    if scores is None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        scores = torch.cat([
            prefix_scores(model, ids[i:i + batch_size], attention[i:i + batch_size], head=head, label=label,
                          pad_token_id=pad_token_id)
            for i in range(0, B, batch_size)
        ])
    else:
        v.check_tensor("scores", scores, rank=2)
        v.check_shape("scores", scores, [B, S], "BS", "input_ids")
    scores = scores.float()
    has = rmask.any(1)
    if int(has.sum()) < 3:
        raise ValueError("at least 3 rows need a response token (response_mask / attention_mask)")
    groups = _group_ids(index, B, ids.device)
    scores, rmask, p = scores[has], rmask[has], p[has]
    groups = groups[has] if groups is not None else None
    n_rows = int(has.sum())

    last = L - 1 - rmask.flip(1).int().argmax(1)
    final = scores.gather(1, (p + last)[:, None]).squeeze(1)  # R: the head after the last generated token
    j = torch.arange(L, device=scores.device)
    phi = scores.gather(1, (p[:, None] + j[None, :] - 1).clamp_min(0))  # Φ_t = R(x, y<t)
    prompt_score = phi[:, 0]
    present = rmask & (j[None, :] <= last[:, None])  # rows still generating at t
    raw_final = final
    if groups is not None:
        final, phi = _center(final, phi, present, groups)
        prompt_score = phi[:, 0]
    stats = _stats(final, phi, present)

    # Bootstrap over rows for the variance ratio (the verdict's noise).
    lo = hi = None
    if bootstrap:
        gen = torch.Generator().manual_seed(seed)
        draws = []
        for _ in range(bootstrap):
            idx = torch.randint(n_rows, (n_rows,), generator=gen).to(scores.device)
            draws.append(_stats(final[idx], phi[idx], present[idx])["var_ratio"])
        d = torch.stack(draws)
        lo, hi = d.quantile(0.025, dim=0), d.quantile(0.975, dim=0)

    dense = ops.redistribute(scores, rmask, p)
    mag = dense.abs()
    total = mag.sum(1)
    largest = (mag.max(1).values / total.clamp_min(1e-30))[total > 0]
    final0 = final[:, :1] if final.dim() == 2 else final[:, None]
    var_r = float(_var(final0.double(), torch.ones(n_rows, 1, dtype=torch.float64, device=final.device)))
    prompt_stats = _stats(final0, prompt_score[:, None], torch.ones(n_rows, 1, dtype=torch.bool, device=final.device))

    positions = []
    for t in range(L):
        row = {"position": t, "n": int(stats["n"][t]), "var_ratio": _f(stats["var_ratio"][t]),
               "corr": _f(stats["corr"][t]), "beta_opt": _f(stats["cov"][t] / stats["var_phi"][t].clamp_min(1e-30))}
        if lo is not None:
            row["var_ratio_ci"] = [_f(lo[t]), _f(hi[t])]
        row["effect"] = _effect(row, stats["n"][t])
        positions.append(row)
    bucket_rows = []
    for a, b in _buckets(L, buckets):
        rows = [r for r in positions[a:b] if r["n"] >= 3]
        if not rows:
            continue
        bucket = {"start": a, "end": b}
        for key in ("var_ratio", "corr", "beta_opt"):
            bucket[key] = sum(r[key] for r in rows) / len(rows)
        if lo is not None:
            bucket["var_ratio_ci"] = [sum(r["var_ratio_ci"][0] for r in rows) / len(rows),
                                      sum(r["var_ratio_ci"][1] for r in rows) / len(rows)]
        bucket["effect"] = _effect(bucket, min(r["n"] for r in rows))
        bucket_rows.append(bucket)
    result = {
        "rows": n_rows,
        "response_positions": L,
        "final_score": {"mean": float(raw_final.mean()), "var": var_r},
        "grouped": groups is not None,
        "prompt_var_share": float(prompt_stats["var_phi"][0] / max(var_r, 1e-30)),
        "prompt_r2": float(prompt_stats["corr"][0] ** 2),
        "largest_share": {
            "mean": float(largest.mean()) if largest.numel() else float("nan"),
            "quantiles": {str(q): float(largest.quantile(q)) for q in (0.1, 0.5, 0.9)} if largest.numel() else {},
            "uniform": 1.0 / L,
            "per_row": largest.tolist(),
        },
        "positions": positions,
        "buckets": bucket_rows,
    }
    result["verdict"] = verdict(result)
    return result


def _f(x) -> float:
    return float(x)


def _effect(row: dict, n) -> str:
    """'reduces' / 'adds' variance when the 95 % interval excludes 1 (or, without a bootstrap, by
    more than 2·sqrt(2/n), the ratio's rough standard error); else 'unclear'."""
    if int(n) < 3 or not math.isfinite(row["var_ratio"]):
        return "unclear"
    if "var_ratio_ci" in row:
        low, high = row["var_ratio_ci"]
    else:
        half = 2 * math.sqrt(2.0 / float(n)) * row["var_ratio"]
        low, high = row["var_ratio"] - half, row["var_ratio"] + half
    if high < 1.0:
        return "reduces"
    if low > 1.0:
        return "adds"
    return "unclear"


def _spans(rows, effect) -> str:
    """'0–3, 7' from bucket rows with this effect (response positions, 0-based)."""
    spans = []
    for r in rows:
        if r["effect"] != effect:
            continue
        a, b = r["start"], r["end"] - 1
        if spans and spans[-1][1] == a - 1:
            spans[-1][1] = b
        else:
            spans.append([a, b])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in spans)


def verdict(result: dict) -> str:
    """One paragraph: where Φ_t lowers or raises the return's variance, and what to do about it."""
    rows = result["buckets"]
    red, add, unc = (_spans(rows, e) for e in ("reduces", "adds", "unclear"))
    parts = []
    if red:
        parts.append(f"the prefix score reduces the return's variance at response positions {red}")
    if add:
        parts.append(f"it ADDS variance at positions {add} (Var(R − Φ_t) > Var(R): Φ_t is worse than no baseline there)")
    if unc:
        parts.append(f"no clear effect at positions {unc}")
    text = "; ".join(parts) + "."
    text = text[0].upper() + text[1:]
    if add and not red:
        text += (" R3HF's dense reward is likely to slow learning with this reward model: use sparse rewards, "
                 "beta_c=\"auto\", or train the reward model on prefixes (r3hf.models.prefix_pairs).")
    elif add:
        text += (" Mixed: beta_c=\"auto\" scales Φ_t down where it does not help; prefix-aware reward-model "
                 "training (r3hf.models.prefix_pairs) improves the prefix scores.")
    elif red:
        text += " R3HF's dense reward can lower the variance of per-token returns with this reward model."
    share = result["largest_share"]["mean"]
    text += (f" On average the largest token reward carries {share:.0%} of a row's total |reward| "
             f"(1/L = {result['largest_share']['uniform']:.0%} if spread evenly).")
    if result.get("grouped"):
        text += " Statistics are within groups (deviations from each group's mean), as a group estimator sees them."
    else:
        text += (f" The prompt-only score holds {result['prompt_var_share']:.0%} of Var(R) "
                 "(it cancels when several responses per prompt are compared: pass index= for that view).")
    return text


def save_diagnostics(result: dict, out, title: str = "prefix-score diagnostics") -> dict:
    """Write `<out>.json` and `<out>.png` (out: a path without suffix, or ending in .json/.png) -> paths."""
    out = Path(out)
    if out.suffix in (".json", ".png"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out.with_suffix(".json")), "png": str(out.with_suffix(".png"))}
    Path(paths["json"]).write_text(json.dumps(result, indent=1), encoding="utf-8")
    plot_diagnostics(result, paths["png"], title)
    return paths


def plot_diagnostics(result: dict, path, title: str = "prefix-score diagnostics", axes=None) -> None:
    """Var(R − Φ_t)/Var(R) with its bootstrap interval and corr(Φ_t, R) per response position,
    and the histogram of each row's largest-token share."""
    require("demo", "plot_diagnostics", packages=("matplotlib",))
    import matplotlib

    if axes is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = axes is None
    if own:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    pos = result["positions"]
    xs = [r["position"] for r in pos]
    ax = axes[0]
    ax.plot(xs, [r["var_ratio"] for r in pos], marker="o", ms=3, label="Var(R − Φ_t) / Var(R)")
    if pos and "var_ratio_ci" in pos[0]:
        ax.fill_between(xs, [r["var_ratio_ci"][0] for r in pos], [r["var_ratio_ci"][1] for r in pos], alpha=0.25,
                        linewidth=0, label="95% bootstrap")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("response position t")
    ax.set_title("< 1: R3HF reduces variance; > 1: adds", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(xs, [r["corr"] for r in pos], marker="o", ms=3, color="tab:green")
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("response position t")
    ax.set_title("corr(Φ_t, R)", fontsize=9)
    ax = axes[2]
    shares = result["largest_share"]["per_row"]
    if shares:
        ax.hist(shares, bins=20, range=(0, 1), color="tab:purple", alpha=0.8)
    ax.axvline(result["largest_share"]["uniform"], color="k", lw=0.8, ls="--")
    ax.set_xlabel("largest |token reward| / Σ |token rewards| per row")
    ax.set_title("how concentrated the R3HF rewards are", fontsize=9)
    for a in axes:
        a.grid(alpha=0.3)
    if own:
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
