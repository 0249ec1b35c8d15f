"""Build script: the Python packages (with `kernels/` mapped to `r3hf.kernels`) and, when torch is
importable at build time, the C++/CUDA extension `r3hf._C` from `csrc/`.

Environment variables are documented in docs/ENV.md.
"""

import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def packages():
    pkgs = find_packages(include=["r3hf", "r3hf.*"])
    package_dir = {}
    # Triton code lives in the top-level kernels/ folder but installs as r3hf.kernels (a top-level
    # `kernels` module would clash with an existing PyPI package).
    for init in sorted((ROOT / "kernels").rglob("__init__.py")):
        rel = init.parent.relative_to(ROOT)
        name = "r3hf." + ".".join(rel.parts)
        pkgs.append(name)
        package_dir[name] = rel.as_posix()
    return pkgs, package_dir


def extensions():
    """[] when there is nothing to build or no torch to build against; r3hf then runs on torch."""
    if os.environ.get("R3HF_NO_EXT", "0") == "1":
        return [], {}
    sources = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*.cpp")) if (ROOT / "csrc").exists() else []
    if not sources:
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("r3hf: torch not importable at build time; building without the C++ extension")
        return [], {}
    ext = CppExtension("r3hf._C", sources, extra_compile_args={"cxx": ["-O3", "-std=c++17"]})
    return [ext], {"build_ext": BuildExtension}


pkgs, package_dir = packages()
ext_modules, cmdclass = extensions()

setup(
    packages=pkgs,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
