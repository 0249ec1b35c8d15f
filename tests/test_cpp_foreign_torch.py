"""r3hf._C built against one torch and imported under another: one warning, the extension is never
loaded, and every op runs on the other backends (issue 23).

The loader (r3hf/backends/cpp.py) compares the torch version embedded in the .so with
`torch.__version__` before loading it, so a subprocess that sets `torch.__version__` to another
release sees exactly what a user with a foreign torch sees. .ci/steps/35-floors.sh also imports a
wheel built against the main CI torch under veRL's pinned torch (a real mismatch).
"""

import importlib.util
import json
import subprocess
import sys

import pytest

from r3hf.backends.cpp import built_against_torch

_SPEC = importlib.util.find_spec("r3hf._C")
BUILT = built_against_torch(_SPEC.origin) if _SPEC is not None and _SPEC.origin else None
pytestmark = pytest.mark.skipif(BUILT in (None, "unknown"), reason="r3hf._C not built (or built before the torch marker)")

CHILD = r"""
import json, sys, warnings
import torch
torch.__version__ = sys.argv[1]  # the running torch, as the loader reads it
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import r3hf.ops as ops
    from r3hf._dispatch import BackendUnavailableError
    torch.manual_seed(0)
    B, S, L = 3, 9, 6
    scores, values = torch.randn(B, S), torch.randn(B, L)
    mask = torch.rand(B, L) > 0.3
    mask[1] = False  # an all-masked row
    lp, ref = torch.randn(B, L), torch.randn(B, L)
    prompt_len = torch.tensor([3, 2, 1])
    out = {}
    for backend in ("auto", "torch"):
        a, r = ops.fused_reward_gae(scores, values, mask, prompt_len, logprobs=lp, ref_logprobs=ref, kl_coef=0.1,
                                    backend=backend)
        w = ops.masked_whiten(values, mask, backend=backend)
        out[backend] = (a, r, w)
    for got, want in zip(out["auto"], out["torch"]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    try:
        ops.gae(values, values, mask, backend="cpp")
        explicit = "ran"
    except BackendUnavailableError as e:
        explicit = str(e)
    info = ops.backends()
ours = [str(w.message) for w in caught if "r3hf" in str(w.message)]
print(json.dumps({
    "warnings": ours, "loaded": "r3hf._C" in sys.modules, "cpp": info["cpp"],
    "cpu_gae": info["ops"]["gae"]["cpu"], "explicit": explicit,
}))
"""


def _run(version: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, version], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_foreign_torch_warns_once_and_falls_back():
    foreign = "1.0.0+fake"
    got = _run(foreign)
    assert not got["loaded"], "the extension must not be loaded under a foreign torch"
    assert len(got["warnings"]) == 1, got["warnings"]
    msg = got["warnings"][0]
    assert f"built against torch {BUILT}" in msg and f"torch {foreign} is running" in msg, msg
    assert "--no-build-isolation" in msg, msg
    assert not got["cpp"]["available"] and "built against torch" in got["cpp"]["detail"], got["cpp"]
    assert got["cpu_gae"] == "torch", got
    assert "built against torch" in got["explicit"], got["explicit"]


def test_same_release_other_build_loads():
    """A CPU build and a CUDA build of one torch release (local tags +cpu, +cu130) share the ABI."""
    release = BUILT.split("+")[0]
    got = _run(release + "+cu999")
    assert got["loaded"] and got["cpp"]["available"], got
    assert got["warnings"] == [], got["warnings"]
    assert got["cpu_gae"] == "cpp", got
