"""`r3hf diagnose`: do a reward model's prefix scores carry signal? (see r3hf.models.prefix_diagnostics)

Input: a folder with a causal sequence-classification reward model (and its tokenizer) and a JSONL
file of sampled responses, one object per line: {"prompt": text, "response": text} (tokenised with
the model's tokenizer; special tokens added to the prompt only) or {"prompt_ids": [...],
"response_ids": [...]}. Sample the responses from the policy you will train, several per prompt if
you like; no ground truth is needed.

With --potential DIR (a head written by `r3hf fit-potential` / PotentialHead.save_pretrained):
the RM's own prefix scores and the potential side by side (Var(R − Φ_t)/Var(R) by position
bucket, quarters by default) with a verdict; without --data it prints the held-out diagnostics
stored with the head, and without --model it uses the RM the head sits next to (or was fit on).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def load_samples(path, tokenizer=None, max_rows: int | None = None):
    """JSONL -> (input_ids [B, S] left-padded prompts ⊕ right-padded responses, attention bool [B, S],
    prompt_len P, response_mask [B, L], prompt group ids [B] (equal prompt ids, equal group))."""
    from .models.potential_data import pad, read_jsonl, to_samples

    rows = read_jsonl(path, max_rows)
    bad = [r["_where"] for r in rows if not (("prompt_ids" in r and "response_ids" in r)
                                             or ("prompt" in r and "response" in r))]
    if bad:
        raise ValueError(f"{bad[0]}: each line needs prompt/response (text) or prompt_ids/response_ids")
    prompts, responses = to_samples(rows, tokenizer)
    if len(prompts) < 3:
        raise ValueError(f"{path}: need at least 3 samples, got {len(prompts)}")
    ids, attention, P, rmask = pad(prompts, responses)
    groups = {k: i for i, k in enumerate(dict.fromkeys(tuple(p) for p in prompts))}
    index = torch.tensor([groups[tuple(p)] for p in prompts])
    return ids, attention, P, rmask, index


def table(result: dict) -> str:
    rows = [("positions", "Var(R-Φ)/Var(R)", "95% CI", "corr(Φ,R)", "β*", "effect")]
    for b in result["buckets"]:
        span = f"{b['start']}" if b["end"] - b["start"] == 1 else f"{b['start']}-{b['end'] - 1}"
        ci = b.get("var_ratio_ci")
        rows.append((span, f"{b['var_ratio']:.3f}", f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-",
                     f"{b['corr']:+.3f}", f"{b['beta_opt']:+.2f}", b["effect"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(args) -> int:
    from ._extras import require

    require("hf", "r3hf diagnose")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .models import prefix_diagnostics, save_diagnostics

    if args.potential is not None:
        return potential_main(args)
    if args.model is None or args.data is None:
        raise SystemExit("r3hf diagnose: --model and --data are required (or --potential DIR)")
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval().to(args.device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    except (OSError, ValueError):
        tokenizer = None
    ids, attention, P, rmask, index = load_samples(args.data, tokenizer, args.max_rows)
    result = prefix_diagnostics(model, ids.to(args.device), attention.to(args.device), P,
                                response_mask=rmask.to(args.device), buckets=args.buckets,
                                bootstrap=args.bootstrap, batch_size=args.batch_size,
                                index=index.to(args.device) if args.group_by_prompt else None)
    result["model"] = str(args.model)
    result["data"] = str(args.data)
    paths = save_diagnostics(result, Path(args.out), title=f"prefix diagnostics of {args.model}")
    print(f"{result['rows']} samples, {result['response_positions']} response positions; "
          f"final score mean {result['final_score']['mean']:+.3f}, var {result['final_score']['var']:.4f}")
    print(table(result))
    print(result["verdict"])
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


def _potential_model_path(args, pot) -> str:
    if args.model:
        return args.model
    if (Path(args.potential) / "config.json").is_file():
        return str(args.potential)  # stored next to the RM, in its folder
    recorded = (pot.reward_model or {}).get("name_or_path")
    if recorded and Path(recorded).is_dir():
        return recorded
    raise SystemExit(f"r3hf diagnose: the reward model of {args.potential} is not found (recorded: {recorded!r}); "
                     "pass --model")


def potential_main(args) -> int:
    """--potential: the RM's own prefix scores and the potential side by side."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .models import PotentialHead, potential_diagnostics
    from .potential_cli import bucket_table

    pot = PotentialHead.from_pretrained(args.potential)
    fit = pot.fit or {}
    print(f"potential head {args.potential}: D = {pot.hidden_size}, mode {fit.get('mode')!r}, fit on "
          f"{(pot.reward_model or {}).get('name_or_path')!r} ({fit.get('rows_train')} rows)")
    if args.data is None:
        if not pot.diagnostics:
            raise SystemExit("r3hf diagnose: the head has no stored held-out diagnostics (fit with --heldout > 0); "
                             "pass --data samples.jsonl")
        compare = pot.diagnostics
        print(f"stored held-out diagnostics ({compare['rows']} responses at fit time):")
        result = {"potential": str(args.potential), "compare": compare}
    else:
        path = _potential_model_path(args, pot)
        model = AutoModelForSequenceClassification.from_pretrained(path).eval().to(args.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or path)
        except (OSError, ValueError):
            tokenizer = None
        ids, attention, P, rmask, _ = load_samples(args.data, tokenizer, args.max_rows)
        res = potential_diagnostics(model, pot.to(args.device), ids.to(args.device), attention.to(args.device), P,
                                    response_mask=rmask.to(args.device), buckets=args.buckets or 4,
                                    bootstrap=args.bootstrap, batch_size=args.batch_size)
        compare = res["compare"]
        print(f"{compare['rows']} samples from {args.data}, reward model {path}:")
        result = {"potential": str(args.potential), "model": path, "data": str(args.data), "compare": compare,
                  "rm": res["rm"], "potential_diagnostics": res["potential"]}
    print(bucket_table(compare))
    print("RM's own prefix scores: " + compare["rm_verdict"])
    print("potential: " + compare["potential_verdict"])
    print(compare["verdict"])
    out = Path(args.out)
    if out.suffix in (".json", ".png"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    _plot_side_by_side(compare, out.with_suffix(".png"), f"RM's own prefix scores vs potential {args.potential}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def _plot_side_by_side(compare: dict, path, title: str) -> None:
    from ._extras import require

    require("demo", "r3hf diagnose --potential (its plot)", packages=("matplotlib",))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for key, name in (("rm_var_ratio", "RM's own Φ_t"), ("potential_var_ratio", "potential Φ'_t")):
        ys = compare[key]
        ax.plot(range(len(ys)), ys, marker="o", ms=3, label=name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("response position t")
    ax.set_ylabel("Var(R − Φ_t) / Var(R)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("diagnose", help="do a reward model's prefix scores carry signal? (variance left per position)")
    p.add_argument("--model", default=None, help="folder of a causal sequence-classification reward model "
                                                  "(with --potential: default, the RM the head sits next to)")
    p.add_argument("--data", default=None, help="JSONL of sampled responses: prompt/response or prompt_ids/response_ids "
                                                "(with --potential: default, the head's stored held-out diagnostics)")
    p.add_argument("--potential", default=None, help="folder of a potential head (r3hf fit-potential): show the "
                                                     "RM's own prefix scores and the potential side by side")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    p.add_argument("--out", default="prefix-diagnostics", help="output path without suffix (.json and .png written)")
    p.add_argument("--buckets", type=int, default=None, help="position buckets (default: one per position up to 32)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals (0: none)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    p.add_argument("--max-rows", type=int, default=None, help="read at most this many samples")
    p.add_argument("--group-by-prompt", action="store_true",
                   help="statistics within groups of samples with the same prompt (what RLOO/GRPO see)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=main)
