#!/usr/bin/env bash
# R3HFGRPOTrainer overrides GRPOTrainer internals, so it is tested on every TRL release it claims
# (SUPPORTED_TRL in r3hf/integrations/trl/grpo.py): the venv's TRL (the newest, 1.16) runs the
# whole suite; here each older 1.13+ release is installed on its own (pip --target, no deps, the
# venv untouched) and put first on PYTHONPATH for the trainer's parity tests with TRL's own
# GRPOTrainer (advantages, tool_mask and truncation, unscorable rows). TRL 1.13 imports
# `requests`, which later releases (and the venv) do not need.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for version in 1.13.0 1.14.2 1.15.0; do
  start=$(date +%s)
  "$VENV/bin/python" -m pip install -q --no-deps --target "$work/$version" "trl==$version" \
    requests urllib3 certifi idna charset_normalizer
  PYTHONPATH="$work/$version" R3HF_EXPECT_TRL="$version" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_trl_grpo.py tests/test_trl_grpo_docs.py \
    -k "(trap and group) or (tool_mask and True) or (unscorable and group) or installed_trl"
  echo "TRL $version: R3HFGRPOTrainer tests passed in $(( $(date +%s) - start ))s"
done
