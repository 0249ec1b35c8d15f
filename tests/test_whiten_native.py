"""Native masked_whiten (C++ on CPU, Triton) against the torch reference, with every adapter option.

Options: shift_mean, unbiased, eps_mode ("add" | "max"), transform_masked, and `group` (the
statistics all-reduced across ranks between the phases; a one-process gloo group here, whose
all-reduce is the identity, so that the Python all-reduce path runs).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

import r3hf.ops as ops
from backends_here import runnable
from batches import TOLERANCES, make_mask

NATIVE = [b for b in runnable() if b != "torch"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
OPTIONS = list(itertools.product([True, False], [True, False], ["add", "max"], [False, True]))

pytestmark = pytest.mark.skipif(not NATIVE, reason="no native backend runs here")


def _x(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 3 + 1).to(dtype)


def close(got, want, dtype):
    rtol, atol = TOLERANCES[dtype]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


# The group-advantage ops (issue 12) get their C++ kernels on the branches working on them; until
# those land they run on torch. Every other op has a native CPU backend.


def test_native_backend_chosen_on_cpu():
    if "cpp" not in NATIVE:
        pytest.skip("C++ backend not built")
    report = ops.backends()
    assert report["ops"]["masked_whiten"]["cpu"] == "cpp"
    on_torch = {op for op, choice in report["ops"].items() if choice["cpu"] == "torch"}
    assert not on_torch, on_torch


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("shift_mean,unbiased,eps_mode,transform_masked", OPTIONS)
@pytest.mark.parametrize("L", [1, 47, 1000])
def test_options_against_reference(backend, shift_mean, unbiased, eps_mode, transform_masked, L):
    gen = torch.Generator().manual_seed(L)
    x = _x((4, L), torch.float32, L)
    mask = make_mask(4, L, gen=gen)
    mask[0, 0] = True
    if unbiased and int(mask.sum()) < 2:
        mask[1, 0] = True if L == 1 else mask[1, 0]
        mask[0, L - 1] = True
        if int(mask.sum()) < 2:
            mask[2, 0] = True
    kw = dict(shift_mean=shift_mean, unbiased=unbiased, eps=1e-6, transform_masked=transform_masked,
              eps_mode=eps_mode)
    got = ops.masked_whiten(x, mask, **kw, backend=backend)
    want = ops.masked_whiten(x, mask, **kw, backend="torch")
    close(got, want, torch.float32)


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_shapes_and_mask_kinds(backend, dtype):
    x = _x((3, 5, 7), dtype, 1)  # any shape, as the reference
    m = (torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(2)) > 0.4).to(torch.int64)
    close(ops.masked_whiten(x, m, backend=backend), ops.masked_whiten(x, m, backend="torch"), dtype)
    xt = _x((40, 9), dtype, 3).t()  # non-contiguous
    mt = torch.ones(9, 40, dtype=torch.bool)
    close(ops.masked_whiten(xt, mt, backend=backend), ops.masked_whiten(xt, mt, backend="torch"), dtype)


@pytest.mark.parametrize("backend", NATIVE)
def test_eps_max_floors_a_constant_input(backend):
    x = torch.full((2, 6), 3.0)
    m = torch.ones(2, 6, dtype=torch.bool)
    got = ops.masked_whiten(x, m, eps=1e-8, eps_mode="max", shift_mean=False, backend=backend)
    torch.testing.assert_close(got, torch.full((2, 6), 3.0))


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("unbiased,selected", [(True, 1), (True, 0), (False, 0)])
def test_too_few_positions_raise(backend, unbiased, selected):
    x = torch.randn(2, 5)
    m = torch.zeros(2, 5, dtype=torch.bool)
    m.view(-1)[:selected] = True
    with pytest.raises(ValueError, match="mask selects"):
        ops.masked_whiten(x, m, unbiased=unbiased, backend=backend)


@pytest.mark.parametrize("backend", NATIVE)
def test_inputs_not_modified(backend):
    x = _x((3, 20), torch.float32, 4)
    m = torch.rand(3, 20) > 0.5
    x0, m0 = x.clone(), m.clone()
    ops.masked_whiten(x, m, transform_masked=True, backend=backend)
    assert torch.equal(x, x0) and torch.equal(m, m0)


@pytest.mark.parametrize("backend", NATIVE)
def test_group_all_reduce_between_phases(backend):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        x = _x((3, 30), torch.float32, 5)
        m = torch.rand(3, 30, generator=torch.Generator().manual_seed(6)) > 0.3
        group = dist.group.WORLD
        got = ops.masked_whiten(x, m, unbiased=False, eps_mode="max", group=group, backend=backend)
        close(got, ops.masked_whiten(x, m, unbiased=False, eps_mode="max", backend="torch"), torch.float32)
    finally:
        if owned:
            dist.destroy_process_group()


def test_cpp_deterministic_for_any_thread_count():
    if "cpp" not in NATIVE:
        pytest.skip("C++ backend not built")
    # A size spanning many reduction blocks; run in subprocesses with 1, 2 and 3 threads.
    code = (
        "import torch, r3hf.ops as ops;"
        "g = torch.Generator().manual_seed(0);"
        "x = torch.randn(64, 4099, generator=g) * 5 + 2; m = torch.rand(64, 4099, generator=g) > 0.2;"
        "y = ops.masked_whiten(x, m, transform_masked=True, backend='cpp');"
        "import hashlib; print(hashlib.sha256(y.numpy().tobytes()).hexdigest())"
    )
    digests = set()
    for n in (1, 2, 3):
        env = dict(os.environ, OMP_NUM_THREADS=str(n))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests
