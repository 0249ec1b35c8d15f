"""r3hf's core in a venv holding torch (and triton) alone: every op on every backend that runs here,
against the torch reference; the optional parts fail at first use naming their extra.

Run by .ci/steps/30-wheel.sh with plain python (no pytest: the venv holds nothing else), from a copy
of tests/ away from the source tree, with TRITON_INTERPRET=1 so the Triton kernels run on CPU:

    TRITON_INTERPRET=1 python torch_only_check.py

Prints `N passed, 0 failed` and exits non-zero on any failure.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch

import r3hf.ops as ops
from batches import TOLERANCES
from op_cases import CASES, batch
from r3hf._dispatch import BackendUnavailableError
from r3hf._extras import MissingExtraError
from r3hf._library import OPS

results: list[tuple[str, str | None]] = []


def check(name):
    def run(fn):
        try:
            fn()
            results.append((name, None))
        except Exception:  # noqa: BLE001  (reported below, counted as a failure)
            results.append((name, traceback.format_exc()))
        return fn
    return run


def _close(got, want, rtol, atol):
    if isinstance(want, tuple):
        for g, w in zip(got, want):
            _close(g, w, rtol, atol)
    else:
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@check("only torch and triton are installed besides r3hf")
def _():
    for mod in ("transformers", "trl", "datasets", "accelerate", "matplotlib", "pytest", "numpy"):
        assert importlib.util.find_spec(mod) is None, f"{mod} is importable: this is not a torch-only venv"


@check("every registered op has a case")
def _():
    assert set(OPS) == set(CASES), set(OPS) ^ set(CASES)


def _op_on_backends(op):
    def run():
        ran = []
        for prompt_tensor in (False, True):
            b = batch(prompt_tensor)
            want = CASES[op](b, backend="torch")
            for backend in ("cpp", "triton"):
                try:
                    got = CASES[op](b, backend=backend)
                except BackendUnavailableError:
                    continue  # reported by ops.backends(); the availability check below covers it
                _close(got, want, *TOLERANCES[torch.float32])
                ran.append(backend)
        assert ran, f"{op}: no backend besides torch ran (ops.backends(): {ops.backends()['why_not']})"
    return run


for _op in sorted(CASES):
    check(f"{_op}: cpp and triton == torch")(_op_on_backends(_op))


@check("the C++ extension and the Triton interpreter are both in use")
def _():
    info = ops.backends()
    assert info["cpp"]["available"], info["cpp"]
    assert info["triton"]["available"], info["triton"]


def _raises_extra(fn, extra):
    try:
        fn()
    except MissingExtraError as e:
        assert f"pip install 'r3hf[{extra}]'" in str(e), str(e)
        return str(e)
    raise AssertionError(f"no MissingExtraError for [{extra}]")


@check("import r3hf.models -> MissingExtraError naming r3hf[hf]")
def _():
    _raises_extra(lambda: __import__("r3hf.models"), "hf")


@check("R3HFGRPOTrainer -> MissingExtraError naming r3hf[trl]")
def _():
    from r3hf.integrations import trl as r3hf_trl

    r3hf_trl.padding_masks(torch.tensor([1, 3]), 4)  # the TRL <= 1.12 PPO adapter needs no trl
    _raises_extra(lambda: r3hf_trl.R3HFGRPOTrainer, "trl")


@check("`r3hf demo` fails at once naming r3hf[demo], before writing anything")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        res = subprocess.run([sys.executable, "-m", "r3hf", "demo", "--quick", "--out", str(out)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode != 0, res.stdout
        assert "pip install 'r3hf[demo]'" in res.stderr, res.stderr[-2000:]
        assert not out.exists(), "the demo started working before failing"


failed = [(n, tb) for n, tb in results if tb]
for name, tb in results:
    print(("FAILED " if tb else "ok     ") + name)
for name, tb in failed:
    print(f"\n== {name}\n{tb}")
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
