"""Which backends can run on this machine's CPU (the torch reference always can)."""

import torch

import r3hf.ops as ops


def runnable(device: str = "cpu") -> list:
    report = ops.backends()
    names = ["torch"]
    for name in ("cpp", "triton"):
        if report[name]["available"] and name not in report["why_not"].get(device, {}):
            names.append(name)
    return names


def supports(backend: str, op: str, device: str = "cpu") -> bool:
    from r3hf._dispatch import _why_not

    return _why_not(backend, op, torch.device(device)) is None
