#!/usr/bin/env bash
# veRL 0.9.1 in CI's venv, for the veRL adapter's tests (the main suite runs them against it; they
# skip where veRL is absent, and fail there under R3HF_REQUIRE_VERL=1, which .ci/run sets).
#
# veRL 0.9.1 declares transformers<5.11 (the venv has a newer one, for trl) and needs three
# packages it does not declare (cachetools, fastapi, uvicorn). So: veRL itself without dependency
# resolution, then its dependencies with every package already in the venv pinned, so that torch,
# transformers, trl, numpy... stay exactly as `make setup` installed them. The step fails if any
# of them changed. veRL's trainer code that needs the older transformers is not used here.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PIP=("$VENV/bin/python" -m pip)
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"${PIP[@]}" list --format=freeze --exclude-editable > "$work/before.txt"
"${PIP[@]}" install -q --no-deps "verl==0.9.1"
# pip then prints "ERROR: ... dependency conflicts" for veRL's own pins; that is expected here.
"${PIP[@]}" install -q -c "$work/before.txt" \
  accelerate codetiming datasets dill hydra-core "numpy>=2.0.0" pandas peft "pyarrow>=19.0.0" pybind11 \
  pylatexenc "ray>=2.41.0" torchdata "tensordict>=0.8.0,<=0.10.0,!=0.9.0" packaging \
  cachetools fastapi uvicorn aiohttp
"${PIP[@]}" list --format=freeze --exclude-editable > "$work/after.txt"
changed=$(comm -23 <(sort "$work/before.txt") <(sort "$work/after.txt"))
if [ -n "$changed" ]; then
  echo "installing veRL changed packages that were already installed:"; echo "$changed"; exit 1
fi
echo "veRL installed in $(( $(date +%s) - start ))s"
# OpenRLHF 0.11's source only (it pins flash-attn, deepspeed, vLLM), so that tests/test_group_verl.py
# compares holes="discount" with its own get_cumulative_returns rather than a transcription.
"${PIP[@]}" install -q --no-deps "openrlhf==0.11.0"
# Its adapter tests run in the main suite (.ci/run), in this venv, with R3HF_REQUIRE_VERL=1 and
# R3HF_REQUIRE_OPENRLHF=1 (fail, not skip): tests/test_integrations_verl.py, test_group_verl.py,
# test_verl_packed.py, test_verl_group.py, test_integrations_docs_peers.py::test_verl_example and
# test_ray_launchers.py (a local Ray, num_cpus=1: the launchers register / patch in the actors).
# test_group_verl.py's comparison with the newest OpenRLHF 0.11.x's get_cumulative_returns runs in
# 41-openrlhf.sh, with the other tests against 0.11.2 (one install, one pytest run).
