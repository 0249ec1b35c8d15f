#!/usr/bin/env bash
# The newest vllm-era torch (docs/contract.md, "Dependency floors"): a fresh venv with vllm 0.34.0
# and exactly its requirements, read from vllm's own wheel metadata (.ci/verl_pins.py): torch 2.14.0
# (the PyPI CUDA build, which runs on CPU), the triton torch pins (3.8), transformers <5.23, less
# what cannot install here (SKIP below). r3hf (the core, no extras) is built there with
# --no-build-isolation against that torch; `pip freeze` before and after may differ by r3hf alone.
# Then, away from the source tree: the C++ backend built there, the foreign-torch fallback,
# gradients, torch.compile on 2.14, and Triton's interpreter at torch 2.14's triton.
# The wheels (~8 GB: vllm's CUDA 13 stack) are kept in $HOME/.cache/r3hf-ci/wheels for later runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
PY=${PY:-.venv/bin/python}
VLLM=${VLLM:-0.34.0}
# flashinfer-python: vllm 0.34 pins 0.7.3, which the package index does not carry (0.7.2, 0.7.4).
SKIP=(flashinfer-python)
tick() { echo "-- $1 ($(( $(date +%s) - start ))s)"; }

mkdir "$work/src"
git ls-files -z | tar --null -cf - -T - | tar -xf - -C "$work/src"  # build from a clean copy of the tree

WH=${R3HF_CI_WHEELHOUSE:-$HOME/.cache/r3hf-ci/wheels}
mkdir -p "$WH"
"$PY" -m pip download -q --no-deps -d "$WH" "vllm==$VLLM"
vllm_whl=$(ls "$WH"/vllm-"$VLLM"-*.whl | head -1)
"$PY" .ci/verl_pins.py "$vllm_whl" "" --skip "${SKIP[@]}" > "$work/pins.txt"
echo "vllm $VLLM requirements:" $(cat "$work/pins.txt")
python3 -m venv "$work/c"
C="$work/c/bin"
"$C/pip" install -q --upgrade pip setuptools wheel
"$C/pip" download -q -d "$WH" -r "$work/pins.txt"  # (vllm itself is there already)
tick "wheels in $WH ($(du -sh "$WH" | cut -f1))"
# vllm itself without dependency resolution (its flashinfer pin cannot resolve), then its requirements.
PIP_FIND_LINKS="$WH ${PIP_FIND_LINKS:-}" "$C/pip" install -q --no-deps "$vllm_whl"
PIP_FIND_LINKS="$WH ${PIP_FIND_LINKS:-}" "$C/pip" install -q -r "$work/pins.txt"
tick "vllm $VLLM stack installed"
"$C/python" -c "
import torch, triton, transformers
print('stack: torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)
assert torch.__version__.split('+')[0] == '2.14.0', torch.__version__"

"$C/pip" list --format=freeze > "$work/before.txt"
# CPU only, as in 35-floors.sh (no libcudart to link here; 20-nvcc-compile.sh compiles the CUDA sources).
(cd "$work/src" && R3HF_NO_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} \
  "$C/pip" install -q --no-build-isolation .) > "$work/build.log" 2>&1 || { tail -50 "$work/build.log"; exit 1; }
"$C/pip" list --format=freeze > "$work/after.txt"
freeze_unchanged "$work/before.txt" "$work/after.txt" "r3hf" "vllm's stack"
tick "r3hf built and installed into vllm's stack; nothing else moved"

"$C/pip" install -q pytest hypothesis  # test tools, after the comparison
mkdir "$work/t"
cp tests/*.py "$work/t/"
printf "[pytest]\nmarkers =\n    gpu: needs a CUDA device\n    slow: long-running\n" > "$work/t/pytest.ini"
cd "$work/t"
"$C/python" -c "
import r3hf, r3hf.ops as ops
assert 'site-packages' in r3hf.__file__, r3hf.__file__
info = ops.backends()['cpp']
assert info['available'], info
print('extension:', info['detail'])"
"$C/python" -m pytest -q -p no:cacheprovider -m "not slow" \
  test_cpp_backend.py test_cpp_foreign_torch.py test_autograd.py test_compile.py
tick "C++, gradient and compile tests"
# Every KL / GAE / fused test at T = 1 and 47 (each option's code path), and at T = 300 (R3HF_TRITON_CHUNK=16:
# 19 chunks, past BLOCK_C = 16 chunk summaries per carry step) the two GAE scan paths and two fused
# option sets; the main suite runs every T = 300 case on its Triton.
"$C/python" -m pytest -q -p no:cacheprovider -m "not slow" test_triton_backend.py \
  -k "(kl or gae) and not 300 or test_fused_reward_gae[1-300] or test_fused_reward_gae[2-300]"
tick "Triton interpreter tests"
echo "vllm stack step done in $(( $(date +%s) - start ))s"
