"""`r3hf` command line: `r3hf demo` (the main job) and `r3hf backends`."""

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="r3hf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="score a batch with a tiny reward model and turn it into token rewards and GAE")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    sub.add_parser("backends", help="print which backend each op uses and why").set_defaults(func=_backends)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
