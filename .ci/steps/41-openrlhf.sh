#!/usr/bin/env bash
# OpenRLHF 0.11's source in CI's venv (the main suite tests the adapter against it), then the
# adapter's tests against the newest 0.11.x.
#
# 40-verl.sh already installs the same source (for tests/test_group_verl.py). OpenRLHF pins
# CUDA-only packages (deepspeed, flash-attn, vllm) and exact
# torch/transformers versions, so it is installed without dependency resolution: only its source.
# What its modules import and the tests use (ray, peft, datasets, aiohttp) comes from the veRL
# step, which runs first; its unused heavy imports are stubbed by tests/openrlhf_real.py. The
# step fails if installing it changed any package already in the venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PIP=("$VENV/bin/python" -m pip)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"${PIP[@]}" list --format=freeze --exclude-editable > "$work/before.txt"
"${PIP[@]}" install -q --no-deps "openrlhf==0.11.0"
# pip then prints "ERROR: ... dependency conflicts" for OpenRLHF's pins; that is expected here.
"${PIP[@]}" list --format=freeze --exclude-editable > "$work/after.txt"
changed=$(comm -23 <(sort "$work/before.txt") <(sort "$work/after.txt"))
if [ -n "$changed" ]; then
  echo "installing OpenRLHF changed packages that were already installed:"; echo "$changed"; exit 1
fi
# The adapter tests against this 0.11.0 (tests/test_openrlhf_group.py, test_integrations_openrlhf.py,
# test_openrlhf_packed.py, test_openrlhf_versions.py, the OpenRLHF examples of
# test_integrations_docs_peers.py) run in the main suite, in this venv, with R3HF_REQUIRE_OPENRLHF=1
# (.ci/run): no fallback to the transcription there. Here only what needs another version.

# The newest OpenRLHF 0.11.x (0.11.2 casts bf16 rewards to fp32 before its length penalties; the
# adapter follows the installed version): its source in a separate target dir, first on
# PYTHONPATH, so the venv keeps 0.11.0. The same adapter tests run against it, and
# tests/test_group_verl.py's comparison with its get_cumulative_returns (the rest of that file is
# veRL against r3hf, which OpenRLHF's version does not touch: the main suite runs it).
new="$work/openrlhf-0.11.2"
"${PIP[@]}" install -q --no-deps --target "$new" "openrlhf==0.11.2"
PYTHONPATH="$new${PYTHONPATH:+:$PYTHONPATH}" R3HF_REQUIRE_OPENRLHF=1 R3HF_REQUIRE_VERL=1 "$VENV/bin/python" -m pytest -q \
  -p no:cacheprovider \
  tests/test_openrlhf_group.py tests/test_integrations_openrlhf.py tests/test_openrlhf_packed.py \
  tests/test_openrlhf_versions.py tests/test_group_verl.py::test_reward_to_go_discount_equals_openrlhf
