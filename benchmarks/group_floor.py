"""Issue 21 "Speed": every `ops.group_advantages` estimator x baseline as a fraction of its bandwidth
floor (14 bytes per token at the bandwidth of a read+write probe timed in the same run; see
r3hf/bench/floor.py). Target: >= 0.70 on CPU at B = 1024, L = 4096, fp32 rewards, bool mask, G = 8.

    python benchmarks/group_floor.py [--rounds 15] [--threads 2] [--json out.json]

Prints best-round and median fractions per setting; exits 1 if a median fraction is below the
target (pass --no-check to only report). Not part of the test suite: run it by hand on a quiet
machine (benchmarks/test_bench_group_floor.py runs the same measurement under pytest).
"""

import argparse
import json
import sys

import torch

from r3hf.bench import floor
from r3hf.bench.runner import machine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=1024)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--json", help="write the rows and the machine here")
    ap.add_argument("--no-check", action="store_true", help="report only; do not fail below the target")
    ap.add_argument("--profile", action="store_true", help="also time each step of the C++ backend")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"threads={torch.get_num_threads()} load average {' '.join(load)}")
    rows = floor.fractions(args.B, args.T, args.G, "cpu", args.backend, args.rounds)
    print(floor.table(rows))
    prof = floor.profile(args.B, args.T, args.G) if args.profile else None
    for p in prof or []:
        print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "load_average": load, "target": floor.TARGET, "rows": rows,
                       "profile": prof}, f, indent=2)
    below = [r for r in rows if r["fraction_median"] < floor.TARGET]
    for r in below:
        print(f"below target: {r['estimator']}/{r['baseline']} median {r['fraction_median']:.2f} < {floor.TARGET}")
    return 1 if below and not args.no_check else 0


if __name__ == "__main__":
    sys.exit(main())
