"""Check a fixed-seed demo run against a committed reference: the reward models' held-out
accuracies and each arm's first-step advantages (CI runs `r3hf demo --quick` and compares).

The demo is deterministic for given package versions and CPU; the tolerances allow for other
CPUs' float rounding (one flipped label or sampled token), not for a changed model or task:
- accuracies: within ACC_TOL (absolute; 0.02 = 4 of the 200 --quick test pairs);
- first-step mean |advantage| over response tokens: within ADV_RTOL (relative);
- first-step mean response length: within LEN_TOL tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

ACC_TOL = 0.02
ADV_RTOL = 0.05
LEN_TOL = 1.0


def fingerprint(result: dict) -> dict:
    """The numbers the reference pins, from a results.json dict."""
    rms = {k: {m: v["held_out"][m] for m in ("label_accuracy", "ground_truth_accuracy")}
           for k, v in result["reward_models"].items()}
    arms = {}
    for arm, runs in result["runs"].items():
        first = runs[0].get("first_step")
        if not first:  # the TRL arm (--full only) keeps no first-step fingerprint
            continue
        arms[arm] = {"seed": runs[0]["seed"], "mean_abs_advantage": first["mean_abs_advantage"],
                     "mean_length": sum(first["lengths"]) / len(first["lengths"])}
    return {"settings": {k: result["settings"][k] for k in ("seeds", "steps", "batch_size", "train_pairs")},
            "versions": result.get("versions", {}), "reward_models": rms, "arms": arms}


def compare(result: dict, reference: dict) -> list[str]:
    """Differences beyond the tolerances, one line each (empty: the run matches the reference)."""
    got = fingerprint(result)
    bad = []
    if got["settings"] != reference["settings"]:
        return [f"settings differ: {got['settings']} vs reference {reference['settings']}"]
    for k, ref in reference["reward_models"].items():
        for m, v in ref.items():
            x = got["reward_models"].get(k, {}).get(m, math.nan)
            if not abs(x - v) <= ACC_TOL:
                bad.append(f"reward model {k} {m}: {x:.4f} vs reference {v:.4f} (tolerance {ACC_TOL})")
    if set(got["arms"]) != set(reference["arms"]):
        bad.append(f"arms differ: {sorted(got['arms'])} vs reference {sorted(reference['arms'])}")
    for arm, ref in reference["arms"].items():
        g = got["arms"].get(arm)
        if g is None:
            continue
        if not abs(g["mean_abs_advantage"] - ref["mean_abs_advantage"]) <= ADV_RTOL * abs(ref["mean_abs_advantage"]):
            bad.append(f"{arm}: first-step mean |advantage| {g['mean_abs_advantage']:.5f} vs reference "
                       f"{ref['mean_abs_advantage']:.5f} (relative tolerance {ADV_RTOL})")
        if not abs(g["mean_length"] - ref["mean_length"]) <= LEN_TOL:
            bad.append(f"{arm}: first-step mean length {g['mean_length']:.2f} vs reference {ref['mean_length']:.2f}")
    return bad


def main(argv=None) -> int:
    """python -m r3hf.demo.reference RESULTS_JSON REFERENCE_JSON [--write]"""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("reference")
    ap.add_argument("--write", action="store_true", help="write the run's fingerprint as the new reference")
    args = ap.parse_args(argv)
    result = json.loads(Path(args.results).read_text())
    if args.write:
        Path(args.reference).write_text(json.dumps(fingerprint(result), indent=1) + "\n")
        print(f"wrote {args.reference}")
        return 0
    bad = compare(result, json.loads(Path(args.reference).read_text()))
    for line in bad:
        print("MISMATCH:", line)
    if not bad:
        print("demo --quick matches the committed reference (RM accuracies, first-step advantages and lengths)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
