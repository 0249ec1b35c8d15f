#!/usr/bin/env bash
# Packaging check: `python -m build` makes an sdist (carrying csrc/) and a wheel with the compiled
# CPU extension; the wheel is installed into a fresh venv (torch first) and tested there, away from
# the source tree: an import/backends smoke test, then the C++ backend tests against the wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PY" -m pip install -q build
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m build --no-isolation --sdist --wheel --outdir "$work/dist" . > "$work/build.log" 2>&1 \
  || { tail -50 "$work/build.log"; exit 1; }
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

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q torch==2.13.0
"$work/venv/bin/pip" install -q pytest hypothesis numpy
"$work/venv/bin/pip" install -q --no-deps "$wheel"   # r3hf's other dependencies are not needed below

mkdir "$work/t"
cp tests/batches.py tests/conftest.py tests/test_cpp_backend.py "$work/t/"
printf "[pytest]\nmarkers =\n    gpu: needs a CUDA device\n" > "$work/t/pytest.ini"
cd "$work/t"
"$work/venv/bin/python" - <<'PY'
import warnings
warnings.simplefilter("error")  # a failing extension load must fail the check, not just warn
import torch
import r3hf, r3hf.ops as ops, r3hf.kernels, r3hf._C
assert "site-packages" in r3hf.__file__, r3hf.__file__
info = ops.backends()
assert info["cpp"]["available"], info["cpp"]
assert info["ops"]["fused_reward_gae"]["cpu"] == "cpp", info["ops"]
x = torch.randn(3, 9); m = torch.rand(3, 9) > 0.3
a, r = ops.gae(x, x, m, backend="cpp")
a0, r0 = ops.gae(x, x, m, backend="torch")
torch.testing.assert_close(a, a0)
print("wheel smoke test ok:", info["cpp"]["detail"])
PY
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider test_cpp_backend.py
cd "$root"
