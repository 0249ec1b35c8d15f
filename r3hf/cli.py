"""`r3hf` command line: `r3hf demo` (the main job), `r3hf bench` and `r3hf backends`."""

from __future__ import annotations

import argparse
import json
import sys


def _backends(_args) -> int:
    from . import ops

    print(json.dumps(ops.backends(), indent=2))
    return 0


def _demo(args) -> int:
    from .worked_example import run

    run(seed=args.seed)
    return 0


def _bench(args) -> int:
    import torch

    from .bench import runner

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = "quick" if args.quick else (args.size or ("gpu" if device == "cuda" else "cpu"))
    groups = tuple(args.groups.split(","))
    print(f"r3hf bench: size={size} device={device} groups={','.join(groups)}")
    report = runner.run(size, device, groups, min_time=0.05 if args.quick else args.min_time, out_dir=args.out)
    print(runner.table(report))
    for f in report.get("files", []):
        print(f"wrote {f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="r3hf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="score a batch with a tiny reward model and turn it into token rewards and GAE")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="time r3hf against the loops and torch paths users run today")
    bench.add_argument("--quick", action="store_true", help="tiny shapes, seconds (CI)")
    bench.add_argument("--size", choices=["quick", "cpu", "gpu"], help="shape set (default: by device)")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--groups", default="gae,rewards,fused,memory", help="comma-separated: gae,rewards,fused,memory")
    bench.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per provider and case")
    bench.add_argument("--out", default="bench-out", help="folder for the JSON and PNG")
    bench.set_defaults(func=_bench)
    sub.add_parser("backends", help="print which backend each op uses and why").set_defaults(func=_backends)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
