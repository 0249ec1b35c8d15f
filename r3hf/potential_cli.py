"""`r3hf fit-potential`: fit a potential head on a saved reward model (offline), stored next to it.

    r3hf fit-potential --model path/to/rm --data data.jsonl [--out DIR] [--mode regression|bt]

data.jsonl, one JSON object per line (token ids are the reward model's; text is tokenised with its
tokenizer, special tokens added to the prompt only):
- samples, for the label-free regression (the default mode; best: responses of the policy you
  will train, at its start): {"prompt_ids": [...], "response_ids": [...]} or
  {"prompt": "...", "response": "..."};
- preference pairs, for --mode bt (the regression also takes them: both responses are samples):
  {"chosen_ids": [...], "rejected_ids": [...]} (prompt ⊕ response; optional "prompt_len" or
  "prompt_ids", else the longest common prefix is the prompt) or
  {"prompt": "...", "chosen": "...", "rejected": "..."}.
Writes potential_head.safetensors and potential_head.json into --out (default: the reward model's
own folder; no RM file is touched) and prints the held-out diagnostics.
"""

from __future__ import annotations

from pathlib import Path


def bucket_table(compare: dict) -> str:
    """Side-by-side Var(R − Φ_t)/Var(R) of the RM's own prefix scores and the potential, per bucket."""
    rows = [("positions", "RM's own Φ", "effect", "potential Φ'", "effect")]
    for b in compare["buckets"]:
        span = f"{b['start']}" if b["end"] - b["start"] == 1 else f"{b['start']}-{b['end'] - 1}"
        rows.append((span, f"{b['rm_var_ratio']:.3f}", b["rm_effect"], f"{b['potential_var_ratio']:.3f}",
                     b["potential_effect"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "Var(R − Φ_t)/Var(R) (< 1: the baseline reduces the return's variance)\n" + "\n".join(lines)


def _ridge(text: str):
    if text == "cv":
        return "cv"
    try:
        return float(text)
    except ValueError:
        raise SystemExit(f'--ridge must be "cv" or a number >= 0, got {text!r}') from None


def main(args) -> int:
    from ._extras import require

    require("hf", "r3hf fit-potential")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .models import fit_potential

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval().to(args.device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    except (OSError, ValueError):
        tokenizer = None
    pot = fit_potential(model, args.data, mode=args.mode, tokenizer=tokenizer, prompt_len=args.prompt_len,
                        heldout=args.heldout, ridge=_ridge(args.ridge), folds=args.folds, epochs=args.epochs, lr=args.lr,
                        batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
                        bootstrap=args.bootstrap, max_rows=args.max_rows, name_or_path=str(args.model))
    out = Path(args.out or args.model)
    paths = pot.save_pretrained(out)
    fit = pot.fit
    extra = (f"ridge {fit['ridge']:g} (relative, {'cross-validated' if 'cv' in fit else 'given'})" if args.mode == "regression"
             else f"BT loss train {fit['bt_loss_train']['start']:.4f} -> {fit['bt_loss_train']['end']:.4f}, best epoch "
                  f"{fit['best_epoch']}")
    print(f"fit a {args.mode} potential head (D = {pot.hidden_size}) on {fit['rows_train']} rows in "
          f"{fit['seconds']:.1f} s; {extra}")
    if pot.diagnostics:
        print(f"held-out diagnostics on {pot.diagnostics['rows']} responses:")
        print(bucket_table(pot.diagnostics))
        print(pot.diagnostics["verdict"])
    else:
        print("no held-out diagnostics (--heldout 0)")
    print(f"wrote {paths['weights']} and {paths['config']}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("fit-potential", help="fit a potential head (Φ' for R3HF shaping) on a saved reward model",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="folder of a causal sequence-classification reward model")
    p.add_argument("--data", required=True, help="JSONL of samples (prompt_ids/response_ids, prompt/response) or pairs")
    p.add_argument("--out", default=None, help="folder for potential_head.* (default: the reward model's folder)")
    p.add_argument("--mode", default="regression", choices=["regression", "bt"],
                   help="regression (default, label-free: ridge regression on the RM's final score) or bt "
                        "(Bradley-Terry on every common cut of each pair)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for text rows (default: the model's)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens of chosen_ids/rejected_ids pairs")
    p.add_argument("--heldout", type=float, default=0.1, help="fraction of rows kept for the diagnostics (default 0.1)")
    p.add_argument("--ridge", default="cv", help='regression: "cv" (default) or a relative ridge >= 0')
    p.add_argument("--folds", type=int, default=5, help="regression: cross-validation folds (default 5)")
    p.add_argument("--epochs", type=int, default=10, help="bt: epochs over the cut pairs (default 10)")
    p.add_argument("--lr", type=float, default=3e-2, help="bt: Adam learning rate (default 3e-2)")
    p.add_argument("--batch-size", type=int, default=32, help="rows (pairs) per backbone forward (default 32)")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the diagnostics (0: none)")
    p.add_argument("--max-rows", type=int, default=None, help="read at most this many rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)
