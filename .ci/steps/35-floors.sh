#!/usr/bin/env bash
# The declared dependency floors are true: every `name>=X` of pyproject.toml's dependencies and demo
# extra is installed at exactly X (plus the floors of TRL's own dependencies that r3hf's code paths
# use: accelerate) into a second fresh venv, r3hf's wheel is built there against the floor torch and
# installed from it with those constraints (so pip also proves the declared ranges admit the
# floors), and a documented subset of the suite runs against the installed wheel, away from the
# source tree:
#   test_models.py, test_integrations_{trl,openrlhf,verl,docs}.py  models and adapters (veRL's tests
#                                                                   skip: it needs transformers>=5.5)
#   test_demo.py                  the demo pieces and `r3hf demo --quick` end to end (console script)
#   test_cpp_backend.py           the compiled extension of the wheel (when built here; a wheel
#                                 reused from 30-wheel.sh was tested there on the same torch)
#   test_triton_backend.py -k kl  the floor Triton under its interpreter (a small slice, for time)
#   test_autograd.py, test_compile.py  gradients and torch.compile on the floor torch
# The newest versions are covered by the main run (make setup installs the newest that resolve).
# torch: only one CPU build of torch can be fetched here (2.13.0+cpu, from the local wheel dir; the
# PyPI builds of older versions pull several GB of CUDA libraries), so the torch floor is 2.13.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - > "$work/floors.txt" <<'PY'
import re, tomllib
meta = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = meta["dependencies"] + meta["optional-dependencies"]["demo"]
pins = []
for r in reqs:
    m = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", r)
    if m:
        pins.append(f"{m.group(1)}=={m.group(2)}")
pins.append("accelerate==1.4.0")  # TRL 1.0's floor (transformers' Trainer needs accelerate)
print("\n".join(pins))
PY
echo "floors:"; sed 's/^/  /' "$work/floors.txt"

python3 -m venv "$work/venv"
V="$work/venv/bin"
"$V/pip" install -q --upgrade pip setuptools wheel
"$V/pip" install -q -c "$work/floors.txt" torch
# The wheel: 30-wheel.sh's (left in .ci-work/ by the same .ci/run) when built against this same torch version,
# else built here against the floor torch (a few minutes on 2 cores).
floor_torch=$(sed -n 's/^torch==//p' "$work/floors.txt")
main_torch=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
wheel=$(ls .ci-work/r3hf-*.whl 2>/dev/null | head -1 || true)
if [ -n "$wheel" ] && python3 -c "import sys; a, b = ('$main_torch'.split('.') + ['0'] * 3)[:3], ('$floor_torch'.split('.') + ['0'] * 3)[:3]; sys.exit(a != b)"; then
  echo "reusing $(basename "$wheel") from 30-wheel.sh (built against torch $floor_torch, the floor)"
  cpp_tests=""  # 30-wheel.sh ran test_cpp_backend.py on this very wheel and torch
else
  cpp_tests="test_cpp_backend.py"
  "$V/pip" install -q build ninja
  MAX_JOBS=${MAX_JOBS:-2} "$V/python" -m build --no-isolation --wheel --outdir "$work/dist" . > "$work/build.log" 2>&1 \
    || { tail -50 "$work/build.log"; exit 1; }
  rm -rf build/bdist* build/lib*  # the wheel build's staging dirs, not needed by the editable install
  wheel=$(ls "$work"/dist/r3hf-*.whl)
fi
"$V/pip" install -q -c "$work/floors.txt" "$wheel[test,demo]"

# Every floor really is what got installed.
"$V/python" - "$work/floors.txt" <<'PY'
import sys
from importlib.metadata import version
from packaging.version import Version
bad = []
for line in open(sys.argv[1]):
    name, want = line.strip().split("==")
    got = version(name)
    if Version(got.split("+")[0]) != Version(want):
        bad.append(f"{name}: want {want}, got {got}")
assert not bad, bad
print("installed floors:", ", ".join(l.strip() for l in open(sys.argv[1])))
PY
echo "floors venv ready in $(( $(date +%s) - start ))s"

mkdir "$work/t"
cp tests/*.py "$work/t/"
cp -r docs "$work/docs"  # test_integrations_docs reads ../docs
printf "[pytest]\nmarkers =\n    gpu: needs a CUDA device\n    slow: long-running\n" > "$work/t/pytest.ini"
cd "$work/t"
export TQDM_DISABLE=1 PATH="$V:$PATH"
"$V/python" -c "import r3hf, sys; assert 'site-packages' in r3hf.__file__, r3hf.__file__"
"$V/python" -m pytest -q -p no:cacheprovider -m "not slow" \
  test_models.py test_integrations_trl.py test_integrations_openrlhf.py test_integrations_verl.py \
  test_integrations_docs.py test_demo.py $cpp_tests test_autograd.py test_compile.py
"$V/python" -m pytest -q -p no:cacheprovider -m "not slow" test_triton_backend.py -k "kl"
cd "$root"
echo "floors step done in $(( $(date +%s) - start ))s"
