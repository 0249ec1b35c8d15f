"""Summaries of the demo's runs: the table, the plot and the verdict (what was measured, no more)."""

from __future__ import annotations

import math
import statistics

METHODS = ("sparse", "r3hf")
SMOOTH = 5  # steps in the moving average used for "steps to reach"


def _mean_std(xs):
    xs = [float(x) for x in xs]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def mean_curve(runs, key: str) -> list[float]:
    """Mean over seeds of history[key] at each step."""
    steps = min(len(r["history"]) for r in runs)
    return [statistics.fmean(r["history"][i][key] for r in runs) for i in range(steps)]


def smooth(xs, k: int = SMOOTH) -> list[float]:
    """Trailing moving average (window k, shorter at the start)."""
    out = []
    for i in range(len(xs)):
        w = xs[max(0, i - k + 1): i + 1]
        out.append(sum(w) / len(w))
    return out


def steps_to_reach(curve, target: float):
    """First step (1-based) at which the curve reaches target, or None."""
    for i, x in enumerate(curve):
        if x >= target - 1e-12:
            return i + 1
    return None


def summarise(runs_by_method: dict) -> dict:
    """Per method: final ground truth / RM score / KL (mean, std over seeds), steps for the
    smoothed mean rollout ground-truth curve to reach the sparse run's final smoothed value,
    and time in r3hf ops vs the whole PPO step."""
    target = smooth(mean_curve(runs_by_method["sparse"], "gt_score"))[-1]
    summary = {"target_gt_for_steps_to_reach": target, "smoothing_window": SMOOTH, "methods": {}}
    for method, runs in runs_by_method.items():
        row = {}
        for key in ("gt_score", "rm_score", "kl_to_ref"):
            m, s = _mean_std([r["final"][key] for r in runs])
            row[key] = {"mean": m, "std": s, "per_seed": [r["final"][key] for r in runs]}
        row["steps_to_reach_sparse_final_gt"] = steps_to_reach(smooth(mean_curve(runs, "gt_score")), target)
        row["steps_to_reach_per_seed"] = [steps_to_reach(smooth([h["gt_score"] for h in r["history"]]), target)
                                          for r in runs]
        ops_t = [h["time_r3hf_ops_s"] for r in runs for h in r["history"]]
        step_t = [h["time_step_s"] for r in runs for h in r["history"]]
        row["time_r3hf_ops_ms_per_step"] = 1e3 * statistics.fmean(ops_t)
        row["time_step_ms"] = 1e3 * statistics.fmean(step_t)
        row["r3hf_ops_fraction"] = sum(ops_t) / sum(step_t)
        row["steps"] = len(runs[0]["history"])
        row["seeds"] = [r["seed"] for r in runs]
        summary["methods"][method] = row
    summary["verdict"] = verdict(summary)
    return summary


def verdict(summary: dict) -> str:
    """Honest sentences comparing R3HF and sparse: final ground truth (against the spread over
    seeds), then learning speed (steps to reach the sparse run's final ground truth)."""
    return _final_verdict(summary) + " " + _speed_verdict(summary)


def _speed_verdict(summary: dict) -> str:
    s = summary["methods"]["sparse"]["steps_to_reach_sparse_final_gt"]
    r = summary["methods"]["r3hf"]["steps_to_reach_sparse_final_gt"]
    n = len(summary["methods"]["sparse"]["seeds"])
    if r is None:
        return f"Speed: R3HF never reached the sparse run's final ground truth (mean curves of {n} seed(s))."
    if s is None or r < s:
        how = "faster than"
    elif r > s:
        how = "slower than"
    else:
        how = "as fast as"
    return (f"Speed: R3HF reached the sparse run's final ground truth at step {r}, sparse at step {s} "
            f"(R3HF {how} sparse, on the mean curves of {n} seed(s)).")


def _final_verdict(summary: dict) -> str:
    s, r = summary["methods"]["sparse"]["gt_score"], summary["methods"]["r3hf"]["gt_score"]
    n = len(s["per_seed"])
    diff = r["mean"] - s["mean"]
    if n < 2:
        return (f"R3HF - sparse final ground truth = {diff:+.3f} from a single seed: no spread over seeds, "
                "so no conclusion can be drawn (run with --seeds 3 or more).")
    se = math.sqrt(s["std"] ** 2 / n + r["std"] ** 2 / n)
    if abs(diff) <= 2 * se:
        return (f"No clear difference: R3HF - sparse final ground truth = {diff:+.3f}, within twice its standard "
                f"error ({2 * se:.3f}) over {n} seeds.")
    better = "R3HF beat sparse" if diff > 0 else "R3HF did NOT beat sparse: sparse was better"
    return f"{better} on final ground truth by {abs(diff):.3f} (> twice the standard error {2 * se:.3f}, {n} seeds)."


def table(summary: dict) -> str:
    """Plain-text table of the summary."""
    head = ("method", "GT score (final)", "RM score", "KL to ref", "steps to sparse final GT",
            "r3hf ops / step")
    rows = [head]
    for method, row in summary["methods"].items():
        reach = row["steps_to_reach_sparse_final_gt"]
        rows.append((
            method,
            f"{row['gt_score']['mean']:.3f} ± {row['gt_score']['std']:.3f}",
            f"{row['rm_score']['mean']:+.3f} ± {row['rm_score']['std']:.3f}",
            f"{row['kl_to_ref']['mean']:.2f} ± {row['kl_to_ref']['std']:.2f}",
            f"{reach} of {row['steps']}" if reach is not None else f"not reached in {row['steps']}",
            f"{row['time_r3hf_ops_ms_per_step']:.2f} / {row['time_step_ms']:.0f} ms "
            f"({100 * row['r3hf_ops_fraction']:.1f}%)",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(runs_by_method: dict, path, title: str) -> None:
    """Ground-truth and RM score of the rollouts vs PPO step: mean over seeds, band = min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = {"sparse": "tab:blue", "r3hf": "tab:orange"}
    for ax, key, name in ((axes[0], "gt_score", "ground-truth score"), (axes[1], "rm_score", "reward-model score")):
        for method, runs in runs_by_method.items():
            steps = min(len(r["history"]) for r in runs)
            xs = list(range(1, steps + 1))
            per_step = [[r["history"][i][key] for r in runs] for i in range(steps)]
            mean = [statistics.fmean(v) for v in per_step]
            ax.plot(xs, mean, color=colours.get(method), label=f"{method} (mean of {len(runs)} seeds)")
            ax.fill_between(xs, [min(v) for v in per_step], [max(v) for v in per_step], color=colours.get(method),
                            alpha=0.2, linewidth=0)
        ax.set_xlabel("PPO step")
        ax.set_ylabel(f"{name} of the rollout batch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
