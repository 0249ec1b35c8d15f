"""Backend selection: which implementation runs each op for a given device, and why.

A backend is a module exposing the ops it implements (same names and normalised arguments as
`r3hf.reference`), an `OPS` tuple naming them and `unavailable_reason(device) -> str | None`.
"auto" prefers Triton for CUDA tensors, then the C++ extension, then the torch reference.
Peer-convention options (`r3hf._validate.OP_OPTIONS`, e.g. gae's carry_masked, or cu_seqlens for a
packed batch) reach a backend only when set, and only a backend listing them in an optional
`OPTIONS` dict (op -> names), on a device its optional `OPTION_DEVICES` (option -> device types)
allows, is chosen for such a call; "auto" otherwise falls back to torch, which implements them all.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

import torch

OP_NAMES = (
    "prefix_scores",
    "redistribute",
    "kl_penalty",
    "token_rewards",
    "gae",
    "masked_whiten",
    "fused_reward_gae",
    "reward_to_go",
    "group_advantages",
    "fused_reward_group_advantages",
)

_MODULES = {
    "torch": "r3hf.reference",
    "cpp": "r3hf.backends.cpp",
    "triton": "r3hf.backends.triton",
}

_AUTO_ORDER = {"cuda": ("triton", "cpp", "torch"), "cpu": ("cpp", "torch")}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this op on these tensors."""


@lru_cache(maxsize=None)
def load(name: str):
    """-> (module or None, reason it is unavailable or a short description)."""
    if name == "torch":
        return importlib.import_module(_MODULES["torch"]), "plain torch reference (always available)"
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError as e:
        return None, f"{name} backend not importable: {e}"
    describe = getattr(module, "describe", None)
    return module, describe() if describe else name


def _why_not(name: str, op: str, device: torch.device, options=()) -> str | None:
    module, reason = load(name)
    if module is None:
        return reason
    if name != "torch":
        if op not in module.OPS:
            return f"{name} backend does not implement {op}"
        missing = [o for o in options if o not in getattr(module, "OPTIONS", {}).get(op, ())]
        if missing:
            return f"{name} backend does not implement {op}'s option {', '.join(missing)}"
        # Options a backend implements on some devices only (e.g. C++ packed kernels on CPU only).
        for o in options:
            on = getattr(module, "OPTION_DEVICES", {}).get(o)
            if on is not None and device.type not in on:
                return f"{name} backend implements {op}'s option {o} on {', '.join(on)} only"
        why = module.unavailable_reason(device)
        if why:
            return why
        devices = getattr(module, "OP_DEVICES", {}).get(op)  # ops a backend implements on some devices only
        if devices is not None and device.type not in devices:
            return f"{name} backend has no {device.type} kernel for {op}"
    return None


def choose(op: str, backend: str, device: torch.device, options=()) -> str:
    """Name of the backend that runs `op` on `device` with these non-default options ("auto" resolved)."""
    if backend != "auto":
        why = _why_not(backend, op, device, options)
        if why:
            raise BackendUnavailableError(f"backend={backend!r} cannot run {op} on {device.type}: {why}")
        return backend
    for name in _AUTO_ORDER.get(device.type, ("torch",)):
        if _why_not(name, op, device, options) is None:
            return name
    return "torch"


def implementation(op: str, backend: str, device: torch.device, options=()):
    return getattr(load(choose(op, backend, device, options))[0], op)


def backends() -> dict:
    """Which backends exist, why the others do not, and which one each op uses per device, padded
    ("ops") and packed ("packed", with cu_seqlens)."""
    report = {}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for name in _MODULES:
        module, reason = load(name)
        # Available = runs at least one op on a device this machine has.
        runs = module is not None and any(_why_not(name, op, d) is None for d in devices for op in OP_NAMES)
        entry = {"available": runs, "detail": reason}
        build = getattr(module, "build_info", None)
        if build is not None:
            entry["build"] = build()
        report[name] = entry
    report["ops"] = {op: {d.type: choose(op, "auto", d) for d in devices} for op in OP_NAMES}
    # Packed batches (cu_seqlens, docs/packed.md): a backend may run an op padded but not packed.
    report["packed"] = {op: {d.type: choose(op, "auto", d, ("cu_seqlens",)) for d in devices} for op in OP_NAMES}
    report["why_not"] = {
        d.type: {
            name: why
            for name in _MODULES
            if name != "torch" and (why := _why_not(name, "gae", d)) is not None
        }
        for d in devices
    }
    return report


@torch.compiler.assume_constant_result
def choose_once(op: str, backend: str, device_type: str, options: tuple) -> str:
    """`choose`, run once at trace time and a constant to torch.compile: dispatch is decided outside
    the traced graph (in eager mode a dict lookup per call after the first; `load` is memoised)."""
    if load is not _LOAD:  # load replaced (tests' fake backends): nothing cached is valid
        return choose(op, backend, torch.device(device_type), options)
    key = (op, backend, device_type, options)
    name = _CHOSEN.get(key)
    if name is None:  # a backend's availability is fixed once imported, so one choice per key
        name = _CHOSEN[key] = choose(op, backend, torch.device(device_type), options)
    return name


_LOAD = load
_CHOSEN: dict = {}
