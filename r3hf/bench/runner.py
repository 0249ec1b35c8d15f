"""Times benchmark cases, computes ratios against each case's baseline, writes JSON and a chart."""

from __future__ import annotations

import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from .cases import Case, build


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device: torch.device, min_time: float = 0.3, max_runs: int = 30, min_runs: int = 3) -> dict:
    """Median wall time of fn() after one warm-up call, repeated until min_time has passed."""
    fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_time and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def run_case(case: Case, device: torch.device, min_time: float, min_runs: int = 3) -> dict:
    results = {name: measure(fn, device, min_time, min_runs=min_runs) for name, fn in case.providers.items()}
    base = results[case.baseline]["median_s"]
    for name, r in results.items():
        r["speedup_vs_baseline"] = base / r["median_s"]
    if case.bytes_read:
        probe = "copy-probe" if "copy-probe" in results else "read-probe"
        # The probe may read more than the op must (packed cases: all of hidden [T, D]).
        moved = case.notes.get("probe_bytes", case.bytes_read) * (2 if probe == "copy-probe" else 1)
        probe_bw = moved / results[probe]["median_s"]
        for name, r in results.items():
            if name.endswith("-probe"):
                continue
            r["hidden_read_GBps"] = case.bytes_read / r["median_s"] / 1e9
            r["fraction_of_probe_bandwidth"] = case.bytes_read / r["median_s"] / probe_bw
        results[probe]["probe_GBps"] = probe_bw / 1e9
    if "floor_bytes" in case.notes:  # issue 21: the time the floor's bytes take at the probe's bandwidth
        probe_bw = case.notes["rw_probe_bytes"] / results[case.baseline]["median_s"]
        floor_s = case.notes["floor_bytes"] / probe_bw
        results[case.baseline]["probe_GBps"] = probe_bw / 1e9
        for name, r in results.items():
            if not name.endswith("-probe"):
                r["floor_ms"] = floor_s * 1e3
                r["floor_fraction"] = floor_s / r["median_s"]
    return {"group": case.group, "case": case.name, "params": case.params, "baseline": case.baseline,
            "results": results}


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
        info["cpu"] = model
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run(size: str = "quick", device: str = "cpu", groups=("gae", "rewards", "fused"), min_time: float = 0.3,
        out_dir: str | None = None, progress=print, min_runs: int = 3) -> dict:
    """Every case of `groups` at `size`; each provider timed after a warm-up call for at least
    `min_runs` calls and `min_time` seconds (at most 30 calls)."""
    dev = torch.device(device)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "size": size, "device": device,
              "machine": machine(), "cases": []}
    from r3hf import ops

    report["backends"] = {k: v for k, v in ops.backends().items() if k in ("ops", "why_not")}
    for case in build(size, dev, groups):
        progress(f"  {case.name} ...")
        report["cases"].append(run_case(case, dev, min_time, min_runs))
        del case
    if "memory" in groups:
        from . import memory
        from .cases import SIZES

        for B, S, D in SIZES[size]["fused"]:
            progress(f"  memory B={B} S={S} D={D} ...")
            report.setdefault("memory", []).append({"params": dict(B=B, S=S, D=D),
                                                    "results": memory.run(B, S, D, device)})
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d")
        name = f"bench-{device}-{size}-{stamp}"
        (out / f"{name}.json").write_text(json.dumps(report, indent=2))
        report["files"] = [str(out / f"{name}.json")]
        png = chart(report, out / f"{name}.png")
        if png:
            report["files"].append(str(png))
    return report


def table(report: dict) -> str:
    lines = [f"{'case':34} {'provider':14} {'median ms':>10} {'vs baseline':>12} {'GB/s':>7} {'of probe':>9}"]
    for c in report["cases"]:
        for name, r in sorted(c["results"].items(), key=lambda kv: kv[1]["median_s"]):
            bw = r.get("hidden_read_GBps", r.get("probe_GBps"))
            frac = r.get("fraction_of_probe_bandwidth")
            floor = r.get("floor_fraction")
            lines.append(
                f"{c['case']:34} {name:14} {r['median_s'] * 1e3:10.3f} {r['speedup_vs_baseline']:11.1f}x"
                f" {'' if bw is None else f'{bw:7.1f}'}{'' if frac is None else f' {frac:8.0%}'}"
                f"{'' if floor is None else f'  {floor:.2f} of the 14 B/token floor'}"
            )
    for m in report.get("memory", []):
        p = m["params"]
        for name, r in m["results"].items():
            lines.append(f"{'peak memory B=%d S=%d D=%d' % (p['B'], p['S'], p['D']):34} {name:14}"
                         f" {r['peak_bytes'] / 2**20:9.1f} MiB  ({r['peak_bytes'] / r['hidden_bytes']:.2f}x hidden)")
    return "\n".join(lines)


def chart(report: dict, path: Path):
    """Speed-up of each GAE provider vs T over the baseline, and fused bandwidth fraction."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    gae = [c for c in report["cases"] if c["group"] == "gae"]
    fused = [c for c in report["cases"] if c["group"] == "fused"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    providers = sorted({p for c in gae for p in c["results"]})
    for p in providers:
        pts = [(f"B={c['params']['B']}\nT={c['params']['T']}", c["results"][p]["speedup_vs_baseline"])
               for c in gae if p in c["results"]]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up vs veRL-style loop")
    ax.set_title(f"GAE ({report['device']})")
    ax.legend(fontsize=8)
    ax = axes[1]
    labels, fracs = [], []
    for c in fused:
        for p, r in c["results"].items():
            if "fraction_of_probe_bandwidth" in r:
                labels.append(f"{p}\nD={c['params']['D']}")
                fracs.append(100 * r["fraction_of_probe_bandwidth"])
    ax.bar(range(len(fracs)), fracs)
    ax.set_xticks(range(len(fracs)), labels, fontsize=7)
    ax.set_ylabel("% of measured bandwidth")
    ax.set_title("fused_reward_gae: hidden-state bytes read / s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
