#!/usr/bin/env bash
# The declared floors are true, in two fresh venvs (docs/contract.md, "Dependency floors"):
#
# A. veRL 0.9.1's [fsdp] stack, read from veRL's own metadata (.ci/verl_pins.py): torch 2.11.0 (the
#    PyPI CUDA build, which runs on CPU), triton 3.6.0, trl 0.27.0, transformers <5.11 and the rest
#    of veRL's extras, less what cannot install on a CPU-only machine (SKIP below). These are the
#    core's floors (torch, triton). r3hf is built there with --no-build-isolation against that torch
#    and installed with [hf]; `pip freeze` before and after may differ by r3hf alone. Then, away from
#    the source tree: the ops tests (C++ on this build, Triton 3.6 under its interpreter, compile,
#    autograd), the veRL adapter tests against veRL itself, and the wheel built against CI's torch
#    (30-wheel.sh) imported under torch 2.11: one warning, every op on the other backends.
# B. The extras' floors (pyproject's [hf] and [demo] `>=` versions, plus accelerate 1.4.0, TRL 1.0's
#    floor) with CI's torch and 30-wheel.sh's wheel: models, adapters, the demo end to end.
#    TRL 1.13, the [trl] floor, is tested by 45-trl-versions.sh.
# A keeps its wheels (CUDA torch: ~3 GB) in $HOME/.cache/r3hf-ci/wheels for later runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
root=$PWD
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
PY=${PY:-.venv/bin/python}
VERL_EXTRA=${VERL_EXTRA:-fsdp}
# flash-attn: a source build against CUDA (nvcc + a GPU toolchain, ~1 h), no wheel on the index.
SKIP=(flash-attn)
tick() { echo "-- $1 ($(( $(date +%s) - start ))s)"; }

wheel213=$(ls "$root"/.ci-work/r3hf-*.whl 2>/dev/null | head -1 || true)
[ -n "$wheel213" ] || { echo "no wheel from 30-wheel.sh in .ci-work/"; exit 1; }
mkdir "$work/src"
git ls-files -z | tar --null -cf - -T - | tar -xf - -C "$work/src"  # build from a clean copy of the tree

# ---------------------------------------------------------------- A: veRL 0.9.1's pinned stack
"$PY" -m pip download -q --no-deps -d "$work/verl" "verl==0.9.1"
"$PY" .ci/verl_pins.py "$work"/verl/verl-*.whl "$VERL_EXTRA" --skip "${SKIP[@]}" > "$work/pins.txt"
echo "veRL 0.9.1 [$VERL_EXTRA] pins:" $(cat "$work/pins.txt")
python3 -m venv "$work/a"
A="$work/a/bin"
"$A/pip" install -q --upgrade pip setuptools wheel
# pip's HTTP cache stays empty behind this index (its responses are not cacheable), so the wheels
# (~3 GB with torch's nvidia-* libraries) are kept in a wheelhouse that later runs on this machine
# reuse: `pip download` fetches only what is not there yet, and pip prefers find-links files.
WH=${R3HF_CI_WHEELHOUSE:-$HOME/.cache/r3hf-ci/wheels}
mkdir -p "$WH"
"$A/pip" download -q -d "$WH" "$work"/verl/verl-*.whl -r "$work/pins.txt" ninja
tick "wheels in $WH ($(du -sh "$WH" | cut -f1))"
PIP_FIND_LINKS="$WH ${PIP_FIND_LINKS:-}" "$A/pip" install -q "$work"/verl/verl-*.whl -r "$work/pins.txt" ninja  # ninja: a parallel build
tick "veRL stack installed"
"$A/python" -c "
import torch, triton, trl, transformers
print('stack: torch', torch.__version__, 'triton', triton.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__)
assert torch.__version__.split('+')[0] == '2.11.0' and triton.__version__ == '3.6.0' and trl.__version__ == '0.27.0'"

"$A/pip" list --format=freeze > "$work/before.txt"
# CPU only: torch 2.11 is a CUDA build, but this machine's CUDA toolkit compiles without a libcudart to
# link (a CUDA build failed at `-lcudart`); 20-nvcc-compile.sh compiles the CUDA sources.
(cd "$work/src" && R3HF_NO_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} \
  "$A/pip" install -q --no-build-isolation ".[hf]") > "$work/build.log" 2>&1 || { tail -50 "$work/build.log"; exit 1; }
"$A/pip" list --format=freeze > "$work/after.txt"
freeze_unchanged "$work/before.txt" "$work/after.txt" "r3hf[hf]" "veRL's stack"
tick "r3hf built and installed into veRL's stack; nothing else moved"

"$A/pip" install -q hypothesis pytest-benchmark  # test tools, after the comparison
mkdir "$work/t"
cp tests/*.py "$work/t/"
printf "[pytest]\nmarkers =\n    gpu: needs a CUDA device\n    slow: long-running\n" > "$work/t/pytest.ini"
cd "$work/t"
export TQDM_DISABLE=1
"$A/python" -c "
import r3hf, r3hf.ops as ops
assert 'site-packages' in r3hf.__file__, r3hf.__file__
info = ops.backends()['cpp']
assert info['available'], info
print('extension:', info['detail'])"
# A slice of the suite, for CI's time (the main run covers the rest on the newest stack): the C++
# backend built here, gradients, compile, the veRL adapter against veRL itself, Triton 3.6's interpreter.
R3HF_REQUIRE_VERL=1 "$A/python" -m pytest -q -p no:cacheprovider -m "not slow" \
  test_cpp_backend.py test_cpp_foreign_torch.py test_autograd.py test_compile.py \
  test_integrations_verl.py test_verl_group.py
tick "ops and veRL adapter tests"
# Every KL / GAE / fused test at T = 1 and 47 (each option's code path), and at T = 300 (R3HF_TRITON_CHUNK=16:
# 19 chunks, past BLOCK_C = 16 chunk summaries per carry step) the two GAE scan paths and two fused
# option sets; the main suite runs every T = 300 case on its Triton.
"$A/python" -m pytest -q -p no:cacheprovider -m "not slow" test_triton_backend.py \
  -k "(kl or gae) and not 300 or test_fused_reward_gae[1-300] or test_fused_reward_gae[2-300]"
tick "Triton 3.6 interpreter tests"
# A real foreign torch: the wheel built against CI's torch, imported under torch 2.11.
"$A/pip" install -q --no-deps --target "$work/foreign" "$wheel213"
PYTHONPATH="$work/foreign" "$A/python" - <<'PY'
import warnings
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import r3hf, r3hf.ops as ops
    from r3hf.backends.cpp import built_against_torch
    import importlib.util
    so = importlib.util.find_spec("r3hf._C").origin
    assert "/foreign/" in r3hf.__file__ and "/foreign/" in so, (r3hf.__file__, so)
    x = torch.randn(3, 9); m = torch.rand(3, 9) > 0.3
    for op in (lambda b: ops.gae(x, x, m, backend=b), lambda b: ops.masked_whiten(x, m, backend=b)):
        torch.testing.assert_close(op("auto"), op("torch"), rtol=0, atol=0)
ours = [str(w.message) for w in caught if "r3hf" in str(w.message)]
built = built_against_torch(so)
assert len(ours) == 1 and f"built against torch {built}" in ours[0], ours
assert not ops.backends()["cpp"]["available"]
print(f"foreign torch: r3hf._C built against {built}, torch {torch.__version__} running -> {ours[0][:90]}...")
PY
cd "$root"
tick "A done"

# ---------------------------------------------------------------- B: the extras' floors
python3 - > "$work/floors.txt" <<'PY'
import re, tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
pins = {}
for r in extras["hf"] + extras["demo"]:
    m = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", r)
    if m:
        pins[m.group(1)] = m.group(2)
pins["accelerate"] = "1.4.0"  # TRL 1.0's floor (transformers' Trainer needs accelerate)
print("\n".join(f"{k}=={v}" for k, v in pins.items()))
PY
echo "extras floors:" $(cat "$work/floors.txt")
main_torch=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
python3 -m venv "$work/b"
B="$work/b/bin"
"$B/pip" install -q --upgrade pip setuptools wheel
"$B/pip" install -q "torch==$main_torch"
"$B/pip" install -q -c "$work/floors.txt" "$wheel213[test,demo,hf]"
"$B/python" - "$work/floors.txt" <<'PY'
import sys
from importlib.metadata import version
from packaging.version import Version
bad = []
for line in open(sys.argv[1]):
    name, want = line.strip().split("==")
    if Version(version(name)) != Version(want):
        bad.append(f"{name}: want {want}, got {version(name)}")
assert not bad, bad
print("installed floors:", ", ".join(l.strip() for l in open(sys.argv[1])))
PY
tick "extras floors venv ready"
mkdir "$work/tb"
cp tests/*.py "$work/tb/"
cp -r docs "$work/docs"  # test_integrations_docs reads ../docs
printf "[pytest]\nmarkers =\n    gpu: needs a CUDA device\n    slow: long-running\n" > "$work/tb/pytest.ini"
cd "$work/tb"
PATH="$B:$PATH" "$B/python" -m pytest -q -p no:cacheprovider -m "not slow" \
  test_models.py test_integrations_trl.py test_integrations_openrlhf.py test_integrations_docs.py test_demo.py
cd "$root"
echo "floors step done in $(( $(date +%s) - start ))s"
