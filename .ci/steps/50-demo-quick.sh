#!/usr/bin/env bash
# The demo's console script, as a user runs it (`r3hf demo --quick`), and its files parse.
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
assert {"rloo/full/sparse", "rloo/full/r3hf", "ppo/prefix/auto"} <= arms, arms
for png in ("scores.png", "heatmap.png", "diagnostics.png"):
    assert mpimg.imread(out / png).ndim == 3, png
assert (out / "heatmap.html").read_text().startswith("<!DOCTYPE html>")
print("demo --quick outputs OK:", *result["summary"]["verdicts"], sep="\n")
PY
