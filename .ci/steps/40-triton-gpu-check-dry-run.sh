#!/usr/bin/env bash
# The GPU check script's plumbing on CPU: tiny shapes under Triton's interpreter (~20 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python benchmarks/gpu_check.py --dry-run --out .ci-work/gpu_check_dry_run.json
