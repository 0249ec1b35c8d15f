#!/usr/bin/env bash
# The GPU check script's plumbing on CPU: tiny shapes under Triton's interpreter (~40 s of CPU).
# The time limits are the GPU run's (8 minutes on an H200); a dry run checks the script, not speed,
# and runs beside CI's background steps on a shared machine, so its limits are 10x wider.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python benchmarks/gpu_check.py --dry-run --out .ci-work/gpu_check_dry_run.json \
  --budget 4500 --gpu-tests-timeout 1500 --bench-timeout 2000 --packed-bench-timeout 1500 --other-tests-timeout 3000
