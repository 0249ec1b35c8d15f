"""Optional extras: fail at first use, before any work, with the command that installs what is missing.

r3hf's core needs only torch (and triton on Linux). The parts that need more check their extra on
entry with `require("demo", "r3hf demo")`, which reads the extra's requirements from r3hf's own
metadata (pyproject.toml in a source checkout), so the lists live in one place.
"""

from __future__ import annotations

import functools
import re
from importlib import metadata
from pathlib import Path

# `name[extras] specifier ; marker` of a Requires-Dist line (PEP 508, without URLs).
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(?:;\s*(.*))?$")
_EXTRA = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


class MissingExtraError(ImportError):
    """An optional part of r3hf was used without the packages of its extra."""


def _source_checkout_requirements() -> list[str] | None:
    """Requires-Dist lines from pyproject.toml when r3hf runs from a source checkout (editable install)."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10: fall back to the installed metadata
        return None
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    if project.get("name") != "r3hf":
        return None
    reqs = list(project.get("dependencies", []))
    for extra, items in project.get("optional-dependencies", {}).items():
        reqs += [f'{item}; extra == "{extra}"' for item in items]
    return reqs


@functools.cache
def extra_requirements(extra: str) -> tuple[tuple[str, str], ...] | None:
    """(distribution name, version specifier) of each package that r3hf's `extra` lists; None when
    r3hf runs from a copy with neither metadata nor pyproject.toml (nothing to check against)."""
    reqs = _source_checkout_requirements()
    if reqs is None:
        try:
            reqs = metadata.requires("r3hf") or []
        except metadata.PackageNotFoundError:
            return None
    out = []
    for line in reqs:
        m = _REQ.match(line)
        if m and m.group(3) and extra in _EXTRA.findall(m.group(3)):
            out.append((m.group(1), m.group(2).replace(" ", "")))
    if not out:
        raise ValueError(f"r3hf has no extra named {extra!r} (or no metadata to read it from)")
    return tuple(out)


def _admits(version: str, spec: str) -> bool:
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:  # packaging absent: presence is all that can be checked
        return True
    return Version(version) in SpecifierSet(spec, prereleases=True)


def require(extra: str, what: str, packages: tuple[str, ...] | None = None) -> None:
    """Raise MissingExtraError unless every package of r3hf's `extra` (or only `packages` of it) is
    installed at a version the extra admits. `what` names the feature in the message."""
    listed = extra_requirements(extra)
    if listed is None:  # unknown here: the import that follows fails on its own
        return
    missing = []
    for name, spec in listed:
        if packages is not None and name not in packages:
            continue
        try:
            got = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(f"{name}{spec} (not installed)")
            continue
        if not _admits(got, spec):
            missing.append(f"{name}{spec} ({got} installed)")
    if missing:
        raise MissingExtraError(
            f"{what} needs r3hf's [{extra}] extra; missing: {', '.join(missing)}. "
            f"Install it with: pip install 'r3hf[{extra}]'"
        )
