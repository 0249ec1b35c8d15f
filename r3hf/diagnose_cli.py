"""`r3hf diagnose`: do a reward model's prefix scores carry signal? (see r3hf.models.prefix_diagnostics)

Input: a folder with a causal sequence-classification reward model (and its tokenizer) and a JSONL
file of sampled responses, one object per line: {"prompt": text, "response": text} (tokenised with
the model's tokenizer; special tokens added to the prompt only) or {"prompt_ids": [...],
"response_ids": [...]}. Sample the responses from the policy you will train, several per prompt if
you like; no ground truth is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def load_samples(path, tokenizer=None, max_rows: int | None = None):
    """JSONL -> (input_ids [B, S] left-padded prompts ⊕ right-padded responses, attention bool [B, S],
    prompt_len P, response_mask [B, L], prompt group ids [B] (equal prompt ids, equal group))."""
    prompts, responses, keys = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "prompt_ids" in row and "response_ids" in row:
                p, r = list(row["prompt_ids"]), list(row["response_ids"])
            elif "prompt" in row and "response" in row:
                if tokenizer is None:
                    raise ValueError(f"{path}:{n}: text samples need the model's tokenizer (none found)")
                p = tokenizer(row["prompt"])["input_ids"]
                r = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
            else:
                raise ValueError(f"{path}:{n}: each line needs prompt/response (text) or prompt_ids/response_ids")
            if not p or not r:
                raise ValueError(f"{path}:{n}: empty prompt or response")
            prompts.append(p)
            responses.append(r)
            keys.append(tuple(p))
            if max_rows is not None and len(prompts) >= max_rows:
                break
    if len(prompts) < 3:
        raise ValueError(f"{path}: need at least 3 samples, got {len(prompts)}")
    P, L = max(map(len, prompts)), max(map(len, responses))
    ids = torch.zeros(len(prompts), P + L, dtype=torch.long)
    attention = torch.zeros(len(prompts), P + L, dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids[b, P - len(p):P] = torch.tensor(p)
        ids[b, P:P + len(r)] = torch.tensor(r)
        attention[b, P - len(p):P + len(r)] = True
    groups = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    index = torch.tensor([groups[k] for k in keys])
    return ids, attention, P, attention[:, P:].clone(), index


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


def advantage_table(adv: dict) -> str:
    """By quarter: the advantage's second moment and variance, R3HF rewards / sparse rewards."""
    rows = [("positions", "baseline", "E[A²] ratio", "95% CI", "Var(A) ratio", "95% CI", "E[A²] effect")]
    for res in [adv] + ([adv["other"]] if "other" in adv else []):
        for q in res["quarters"]:
            m2, var = q["second_moment_ratio_ci"], q["variance_ratio_ci"]
            rows.append((f"{q['start']}-{q['end'] - 1}", res["baseline"], f"{q['second_moment_ratio']:.3f}",
                         f"[{m2[0]:.2f}, {m2[1]:.2f}]" if m2 else "-", f"{q['variance_ratio']:.3f}",
                         f"[{var[0]:.2f}, {var[1]:.2f}]" if var else "-", q["second_moment_effect"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(args) -> int:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .models import prefix_diagnostics, save_diagnostics

    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval().to(args.device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    except (OSError, ValueError):
        tokenizer = None
    ids, attention, P, rmask, index = load_samples(args.data, tokenizer, args.max_rows)
    result = prefix_diagnostics(model, ids.to(args.device), attention.to(args.device), P,
                                response_mask=rmask.to(args.device), buckets=args.buckets,
                                bootstrap=args.bootstrap, batch_size=args.batch_size,
                                index=index.to(args.device) if args.group_by_prompt or args.estimator else None,
                                estimator=args.estimator, baseline=args.baseline)
    result["model"] = str(args.model)
    result["data"] = str(args.data)
    paths = save_diagnostics(result, Path(args.out), title=f"prefix diagnostics of {args.model}")
    print(f"{result['rows']} samples, {result['response_positions']} response positions; "
          f"final score mean {result['final_score']['mean']:+.3f}, var {result['final_score']['var']:.4f}")
    print(table(result))
    if "advantage" in result:
        print(f"advantages of {args.estimator!r} (groups: samples with the same prompt), R3HF rewards / sparse rewards:")
        print(advantage_table(result["advantage"]))
    print(result["verdict"])
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("diagnose", help="do a reward model's prefix scores carry signal? (variance left per position)")
    p.add_argument("--model", required=True, help="folder of a causal sequence-classification reward model")
    p.add_argument("--data", required=True, help="JSONL of sampled responses: prompt/response or prompt_ids/response_ids")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    p.add_argument("--out", default="prefix-diagnostics", help="output path without suffix (.json and .png written)")
    p.add_argument("--buckets", type=int, default=None, help="position buckets (default: one per position up to 32)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals (0: none)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    p.add_argument("--max-rows", type=int, default=None, help="read at most this many samples")
    p.add_argument("--group-by-prompt", action="store_true",
                   help="statistics within groups of samples with the same prompt (what RLOO/GRPO see)")
    p.add_argument("--estimator", default=None, choices=("rloo", "grpo", "reinforce_pp", "reinforce_pp_baseline",
                                                         "grpo_process"),
                   help="also measure this group estimator's advantages (ops.group_advantages) on R3HF vs sparse "
                        "rewards, per position, groups = samples with the same prompt (implies --group-by-prompt)")
    p.add_argument("--baseline", default="row", choices=("row", "position"),
                   help="the estimator's baseline (with --estimator; rloo, grpo and reinforce_pp_baseline are "
                        "measured with both and the verdict says which reduces the advantage's second moment)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=main)
