"""`r3hf` command line: `r3hf demo` (the main job), `r3hf explain`, `r3hf diagnose`, `r3hf fit-potential`,
`r3hf bench` and `r3hf backends`."""

from __future__ import annotations

import argparse
import json
import sys


def _backends(_args) -> int:
    from . import ops

    print(json.dumps(ops.backends(), indent=2))
    return 0


def _demo(args) -> int:
    from .demo import run

    run(seeds=args.seeds, steps=args.steps, out=args.out, device=args.device, quick=args.quick, full=args.full,
        threads=args.threads, critic_init=args.critic_init, workers=args.workers, trl=args.trl)
    return 0


def _explain(args) -> int:
    from ._extras import require

    require("hf", "r3hf explain")
    if args.out:  # the PNG beside the HTML
        require("demo", "r3hf explain --out", packages=("matplotlib", "numpy"))
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .viz import explain

    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    res = explain(model, tokenizer, args.prompt, args.response, out=args.out, first=args.first)
    print(f"score {res['prompt_score']:+.4f} (prompt only) -> {res['final_score']:+.4f} (full response)")
    for tok, r in zip(res["response_tokens"], res["rewards"]):
        print(f"  {r:+.4f}  {tok}")
    if args.out:
        print(f"wrote {args.out} and {args.out.rsplit('.', 1)[0]}.png")
    return 0


def _bench(args) -> int:
    import torch

    from .bench import runner

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = "quick" if args.quick else (args.size or ("gpu" if device == "cuda" else "cpu"))
    groups = tuple(args.groups.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"r3hf bench: size={size} device={device} groups={','.join(groups)} threads={torch.get_num_threads()}")
    # --quick: a provider slower than min_time (the Triton interpreter on CPU) is timed once after its
    # warm-up instead of three times; fast ones still repeat until min_time has passed.
    report = runner.run(size, device, groups, min_time=0.05 if args.quick else args.min_time, out_dir=args.out,
                        min_runs=1 if args.quick else 3)
    print(runner.table(report))
    for f in report.get("files", []):
        print(f"wrote {f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="r3hf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="when does R3HF help? reward models -> RLOO and PPO, sparse vs R3HF vs beta_c=auto, on a "
                     "synthetic task (offline, CPU)",
    )
    demo.add_argument("--quick", action="store_true", help="a small run (under a minute) for CI and a first look")
    demo.add_argument("--full", action="store_true",
                      help="the wider grid: 40 steps of 64, more data, three reward models and all rewards "
                           "(sparse, r3hf, auto) as arms, 12 seeds")
    demo.add_argument("--trl", action="store_true",
                      help="also run the critic-free arm in TRL's GRPOTrainer loop (R3HFGRPOTrainer; rewards sparse, "
                           "position, recommended), as --full does; about 2 more minutes on 2 cores at the default size")
    demo.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 12; 1 with --quick)")
    demo.add_argument("--steps", type=int, default=None, help="steps per run (default 24; 5 with --quick, 40 with --full)")
    demo.add_argument("--workers", type=int, default=None, help="processes running arms in parallel (default 2)")
    demo.add_argument("--out", default="r3hf-demo", help="folder for the plot, JSON and heatmap (default r3hf-demo)")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    demo.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 = torch's default)")
    demo.add_argument("--critic-init", default=None, choices=["reward-model", "policy"],
                      help="PPO's value model start: the policy's backbone with a zero head (default) or a copy of "
                           "the reward model (TRL's convention; R3HF then counts the prefix score twice)")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="time r3hf against the loops and torch paths users run today")
    bench.add_argument("--quick", action="store_true", help="tiny shapes, seconds (CI)")
    bench.add_argument("--size", choices=["quick", "cpu", "gpu"], help="shape set (default: by device)")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--groups", default="gae,rewards,fused,memory,group,floor,rtg,fused_group",
                       help="comma-separated: gae,rewards,fused,memory,group,floor (every group estimator x "
                            "baseline as a fraction of its 14 B/token bandwidth floor),rtg,fused_group; packed "
                            "(opt-in: packed vs padded, issue 16)")
    bench.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per provider and case")
    bench.add_argument("--out", default="bench-out", help="folder for the JSON and PNG")
    bench.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads for every provider (default 0 = torch's default)")
    bench.set_defaults(func=_bench)
    explain = sub.add_parser(
        "explain", help="colour each response token by its R3HF reward under a local reward model",
    )
    explain.add_argument("--model", required=True, help="folder of a causal sequence-classification reward model")
    explain.add_argument("--prompt", required=True)
    explain.add_argument("--response", required=True)
    explain.add_argument("--out", default=None, help="write the heatmap here (HTML) and a PNG beside it")
    explain.add_argument("--first", default="prompt", choices=["prompt", "zero"])
    explain.set_defaults(func=_explain)
    sub.add_parser("backends", help="print which backend each op uses and why").set_defaults(func=_backends)
    from .diagnose_cli import add_parser as _add_diagnose

    _add_diagnose(sub)
    from .potential_cli import add_parser as _add_fit_potential

    _add_fit_potential(sub)
    args = parser.parse_args(argv)
    from ._extras import MissingExtraError

    try:
        return args.func(args)
    except MissingExtraError as e:  # raised before any work: the message is the whole story
        print(f"r3hf {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
