"""The bandwidth floor of a token-level group estimator (issue 21, "Speed").

`ops.group_advantages` must read rewards and mask twice (statistics, then the finish scan) and
write the advantages once: 2·(4 + 1) + 4 = 14 bytes per token for fp32 rewards and a bool mask.
At the bandwidth of a read+write probe (`torch.mul(x, 2, out=y)` on a same-size fp32 tensor: 8
bytes per element) that takes floor = 14·B·L / probe_bandwidth seconds, and an estimator reaches

    fraction = floor / its time   (target >= 0.70 on CPU at B = 1024, L = 4096, G = 8).

`fractions()` times each estimator × baseline and the probe alternately in one run (the probe is
re-timed next to every case, so a load change hits both), and reports the best round and the
median of each. `cases()` gives the same comparison as `r3hf bench --groups floor` cases.
"""

from __future__ import annotations

import statistics
import time

import torch

import r3hf.ops as ops

from .case import Case

BYTES_PER_TOKEN = 14  # rewards fp32 + mask bool, read twice; advantages fp32, written once
PROBE_BYTES_PER_TOKEN = 8  # the probe reads and writes one fp32 each
TARGET = 0.70
SETTINGS = [(e, "row") for e in ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_process")] + [
    (e, "position") for e in ("grpo", "rloo", "reinforce_pp_baseline")
]


def inputs(B: int, T: int, G: int, device, seed: int = 0):
    """Dense fp32 rewards, trailing-padding bool mask (lengths uniform in [T/2, T]), int G."""
    gen = torch.Generator().manual_seed(seed + B * 7 + T)
    r = torch.randn(B, T, generator=gen).to(device)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=gen)
    m = (torch.arange(T)[None] < lengths[:, None]).to(device)
    return r, m


def probe(B: int, T: int, device):
    """The read+write probe over a [B, T] fp32 tensor -> zero-argument callable."""
    x = torch.randn(B, T, device=device)
    y = torch.empty_like(x)
    return lambda: torch.mul(x, 2, out=y)


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def fractions(B: int = 1024, T: int = 4096, G: int = 8, device="cpu", backend: str = "auto", rounds: int = 15,
              settings=SETTINGS, progress=None) -> list[dict]:
    """Per (estimator, baseline): best and median op time, the probe's next to it, and the floor
    fraction from each (best: fastest op round over fastest probe round; median likewise)."""
    dev = torch.device(device)
    r, m = inputs(B, T, G, dev)
    pr = probe(B, T, dev)
    floor_bytes = BYTES_PER_TOKEN * B * T
    probe_bytes = PROBE_BYTES_PER_TOKEN * B * T
    out = []
    for est, baseline in settings:
        op = lambda est=est, baseline=baseline: ops.group_advantages(r, m, G, est, baseline=baseline, backend=backend)
        op(), pr()  # warm-up
        t_op, t_pr, faults = [], [], []
        for _ in range(rounds):
            t_pr.append(_time(pr, dev))
            f0 = _minor_faults()
            t_op.append(_time(op, dev))
            faults.append(_minor_faults() - f0)
        row = {"estimator": est, "baseline": baseline, "B": B, "T": T, "G": G, "backend": backend,
               "op_best_ms": min(t_op) * 1e3, "op_median_ms": statistics.median(t_op) * 1e3,
               "probe_best_ms": min(t_pr) * 1e3, "probe_median_ms": statistics.median(t_pr) * 1e3,
               # The op returns a new [B, T] tensor; when the allocator hands back fresh pages (glibc
               # mmaps large blocks at times) the first write faults every 4 KiB page in, which the
               # probe, writing into a kept tensor, never pays: counted so slow rounds can be told apart.
               "op_rounds_with_page_faults": sum(f >= B * T * 4 // 8192 for f in faults),
               "op_median_ms_without_page_faults": _median_or_nan(
                   [t * 1e3 for t, f in zip(t_op, faults) if f < B * T * 4 // 8192])}
        for k in ("best", "median"):
            bw = probe_bytes / (row[f"probe_{k}_ms"] / 1e3)
            row[f"probe_{k}_GBps"] = bw / 1e9
            row[f"floor_{k}_ms"] = floor_bytes / bw * 1e3
            row[f"fraction_{k}"] = row[f"floor_{k}_ms"] / row[f"op_{k}_ms"]
        out.append(row)
        if progress:
            progress(row)
    return out


def _median_or_nan(xs):
    return statistics.median(xs) if xs else float("nan")


def table(rows: list[dict]) -> str:
    lines = [f"{'estimator':22} {'baseline':8} {'op best':>9} {'op med':>9} {'floor':>7} {'frac best':>9}"
             f" {'frac med':>9} {'probe GB/s':>10} {'faulted rounds':>14}"]
    for r in rows:
        lines.append(f"{r['estimator']:22} {r['baseline']:8} {r['op_best_ms']:8.2f}m {r['op_median_ms']:8.2f}m"
                     f" {r['floor_best_ms']:6.2f}m {r['fraction_best']:9.2f} {r['fraction_median']:9.2f}"
                     f" {r['probe_best_GBps']:10.1f} {r['op_rounds_with_page_faults']:>14}")
    return "\n".join(lines)


def cases(B: int, T: int, G: int, device) -> list[Case]:
    """`r3hf bench --groups floor`: per estimator × baseline, the op and the read+write probe; the
    runner turns them into the floor fraction (notes floor_bytes / rw_probe_bytes)."""
    from r3hf._dispatch import _why_not

    r, m = inputs(B, T, G, device)
    pr = probe(B, T, device)
    out = []
    for est, baseline in SETTINGS:
        options = ("baseline",) if baseline == "position" else ()
        backends = [b for b in ("triton", "cpp", "torch")
                    if _why_not(b, "group_advantages", device, options) is None
                    and (b != "torch" or B * T <= 65536)]  # the reference loops over groups in Python
        providers = {
            f"r3hf-{b}": (lambda b=b, est=est, baseline=baseline: ops.group_advantages(
                r, m, G, est, baseline=baseline, backend=b))
            for b in backends
        }
        providers["rw-probe"] = pr
        out.append(Case("floor", f"floor {est}/{baseline} B={B} G={G} T={T}",
                        dict(B=B, T=T, G=G, estimator=est, baseline=baseline), providers, baseline="rw-probe",
                        notes={"floor_bytes": BYTES_PER_TOKEN * B * T, "rw_probe_bytes": PROBE_BYTES_PER_TOKEN * B * T}))
    return out


def profile(B: int = 1024, T: int = 4096, G: int = 8, rounds: int = 9, settings=SETTINGS) -> list[dict]:
    """Where the C++ backend's time goes, per setting: best-of-rounds ms of each step as the backend
    runs it (validation + layout, row pass, group statistics, finish; or the one-pass-per-group op),
    and the whole public op. CPU only."""
    from r3hf import _group_stats as gs
    from r3hf._validate import group_advantages_args
    from r3hf.backends import cpp

    dev = torch.device("cpu")
    r, m = inputs(B, T, G, dev)

    def best(fn):
        fn()
        return min(_time(fn, dev) for _ in range(rounds)) * 1e3

    out = []
    for est, baseline in settings:
        a = group_advantages_args(r, m, G, est, 1.0, 1e-6, "group", None)
        index = a["index"]
        row = {"estimator": est, "baseline": baseline,
               "validate_ms": best(lambda: group_advantages_args(r, m, G, est, 1.0, 1e-6, "group", None)),
               "op_ms": best(lambda: ops.group_advantages(r, m, G, est, baseline=baseline, backend="cpp"))}
        if baseline == "row":
            rp = lambda: cpp._row_pass(r, m, 1.0, estimator=est)
            _, stats = rp()
            sh, sc, on_rewards = gs.affine(stats, index, est, 1e-6, "group")
            row.update(row_pass_ms=best(rp), stats_ms=best(lambda: gs.affine(stats, index, est, 1e-6, "group")),
                       finish_ms=best(lambda: cpp._finish(r, None, m, sh, sc, 1.0, on_rewards)))
        else:
            pos = gs.position_layout(index, m, est, "group")
            row["layout_ms"] = best(lambda: gs.position_layout(index, m, est, "group"))
            if est in ("rloo", "grpo"):
                row["one_pass_ms"] = best(lambda: torch.ops.r3hf.group_position_advantages(
                    r, m, pos.ids, pos.n_groups, pos.width, 1.0, est, 1e-6, "group"))
            rp = lambda: cpp._row_pass(r, m, 1.0, positions=pos)
            _, stats, sums, last = rp()
            aff = lambda: cpp._affine_position(stats, sums, last, pos, est, 1e-6, "group")
            sh, sc = aff()
            row.update(row_pass_ms=best(rp), stats_ms=best(aff),
                       finish_ms=best(lambda: cpp._finish(r, None, m, sh, sc, 1.0, False, ids=pos.ids)))
        out.append(row)
    return out
