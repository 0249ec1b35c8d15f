#!/usr/bin/env bash
# Packaging check: `python -m build` makes an sdist (carrying csrc/) and a wheel with the compiled
# CPU extension, both from the tree. After `make setup` (CI), the wheel's build_ext links the objects
# `make setup` compiled against the same torch with the same flags (setup.py keeps them in
# build/temp.*; ninja finds nothing to recompile), so CI compiles the CPU extension once for its
# torch; 35-floors.sh and 36-vllm-stack.sh compile it from scratch for theirs. The wheel is
# installed (with its dependencies) into a fresh venv holding torch alone, which may gain triton
# and nothing else, and tested there, away from the source tree: an import
# smoke test, every op on every backend (tests/torch_only_check.py: torch alone, no pytest), then
# the C++ backend tests and the foreign-torch fallback against the wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PY" -m pip install -q build
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m build --no-isolation --sdist --wheel --outdir "$work/dist" . > "$work/build.log" 2>&1 \
  || { tail -50 "$work/build.log"; exit 1; }
grep -q "ninja: no work to do" "$work/build.log" && echo "wheel: the extension linked from make setup's objects (nothing recompiled)"
sdist=$(ls "$work"/dist/r3hf-*.tar.gz)
wheel=$(ls "$work"/dist/r3hf-*.whl)
echo "built $(basename "$sdist") and $(basename "$wheel")"
mkdir -p .ci-work && rm -f .ci-work/r3hf-*.whl && cp "$wheel" .ci-work/  # reused by 35-floors.sh
tar tzf "$sdist" > "$work/sdist.txt"  # (a list file: grep -q on a pipe would SIGPIPE tar under pipefail)
for f in csrc/library.cpp csrc/r3hf_math.h csrc/cpu/dot.h csrc/cpu/ops_cpu.cpp csrc/cpu/whiten_cpu.cpp csrc/cuda/kernels.cuh csrc/cuda/ops_cuda.cu; do
  grep -q "/$f\$" "$work/sdist.txt" || { echo "sdist lacks $f"; exit 1; }
done
"$PY" -m zipfile -l "$wheel" > "$work/wheel.txt"
for f in 'r3hf/_C\..*\.so' 'r3hf/kernels/__init__.py' 'r3hf/backends/cpp.py'; do
  grep -Eq "$f" "$work/wheel.txt" || { echo "wheel lacks $f"; exit 1; }
done

# A venv holding torch alone; `pip install r3hf` may add triton (Linux) and nothing else.
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q torch==2.13.0
"$work/venv/bin/pip" list --format=freeze > "$work/before.txt"
"$work/venv/bin/pip" install -q "$wheel"
"$work/venv/bin/pip" list --format=freeze > "$work/after.txt"
added=$(comm -13 <(sort "$work/before.txt") <(sort "$work/after.txt") | cut -d= -f1 | sort | tr '\n' ' ')
removed=$(comm -23 <(sort "$work/before.txt") <(sort "$work/after.txt"))
[ -z "$removed" ] || { echo "pip install r3hf changed packages of a torch-only venv:"; echo "$removed"; exit 1; }
[ "$added" = "r3hf triton " ] || { echo "pip install r3hf into a torch-only venv added: $added (want r3hf triton)"; exit 1; }
echo "torch-only venv: pip install r3hf added only r3hf and triton"

mkdir "$work/t"
cp tests/batches.py tests/op_cases.py tests/torch_only_check.py tests/conftest.py tests/test_cpp_backend.py tests/test_cpp_foreign_torch.py "$work/t/"
printf "[pytest]\nmarkers =\n    gpu: needs a CUDA device\n" > "$work/t/pytest.ini"
cd "$work/t"
"$work/venv/bin/python" - <<'PY'
import warnings
import torch  # first: torch's own warning that numpy is absent (a torch-only venv) is not r3hf's
warnings.simplefilter("error")  # a failing extension load must fail the check, not just warn
import r3hf, r3hf.ops as ops, r3hf.kernels, r3hf._C
assert "site-packages" in r3hf.__file__, r3hf.__file__
info = ops.backends()
assert info["cpp"]["available"], info["cpp"]
assert info["ops"]["fused_reward_gae"]["cpu"] == "cpp", info["ops"]
print("wheel smoke test ok:", info["cpp"]["detail"])
PY
# Every op on the C++ backend against torch, with torch alone; missing extras name themselves. Then
# the Triton kernels too, under Triton's CPU interpreter, which needs numpy (Triton's, not r3hf's).
"$work/venv/bin/python" torch_only_check.py
"$work/venv/bin/pip" install -q numpy
TRITON_INTERPRET=1 "$work/venv/bin/python" torch_only_check.py
"$work/venv/bin/pip" install -q pytest hypothesis
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider test_cpp_backend.py test_cpp_foreign_torch.py
cd "$root"
