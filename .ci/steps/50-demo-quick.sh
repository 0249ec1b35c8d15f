#!/usr/bin/env bash
# The demo's console script, as a user runs it (`r3hf demo --quick`), its files parse, and the
# fixed-seed run matches the committed reference (RM accuracies, first-step advantages and lengths,
# tolerances in r3hf/demo/reference.py; reference written by `python -m r3hf.demo.reference ... --write`).
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
TQDM_DISABLE=1 .venv/bin/r3hf demo --quick --out "$out/demo"
.venv/bin/python - "$out/demo" <<'PY'
import json, sys
from pathlib import Path
import matplotlib.image as mpimg
out = Path(sys.argv[1])
result = json.loads((out / "results.json").read_text())
arms = set(result["summary"]["arms"])
assert {"rloo/full/sparse", "rloo/full/r3hf", "rloo/full/recommended", "ppo/full/recommended"} <= arms, arms
for png in ("scores.png", "heatmap.png", "diagnostics.png", "lengths.png"):
    assert mpimg.imread(out / png).ndim == 3, png
assert (out / "heatmap.html").read_text().startswith("<!DOCTYPE html>")
print("versions:", result["versions"])
print("demo --quick outputs OK:", *result["summary"]["verdicts"], sep="\n")
PY
.venv/bin/python -m r3hf.demo.reference "$out/demo/results.json" tests/data/demo_quick_reference.json
