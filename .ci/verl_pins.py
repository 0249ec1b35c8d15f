"""Print the requirements of a package (veRL, vllm) and one of its extras, read from the package's
own wheel metadata, one per line, with their environment markers evaluated for this machine.

    python .ci/verl_pins.py WHEEL EXTRA [--skip NAME ...]     (EXTRA "": the base requirements)

Nested extras (`verl[verl-core]`) are expanded; `--skip` drops packages by name (those that cannot
install on a CPU-only machine), and each skipped one is reported on stderr. Needs `packaging`.
"""

import argparse
import sys
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def metadata_requires(wheel: str) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode()
    return [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines() if line.startswith("Requires-Dist:")]


def extra_requires(reqs: list[Requirement], extra: str, seen: set[str]) -> list[Requirement]:
    if extra in seen:
        return []
    seen.add(extra)
    out = []
    for r in reqs:
        if r.marker is None or not r.marker.evaluate({"extra": extra}):
            continue
        if canonicalize_name(r.name) == "verl":  # verl[verl-core]: the nested extra's own list
            for sub in sorted(r.extras):
                out += extra_requires(reqs, sub, seen)
        else:
            out.append(r)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("wheel")
    ap.add_argument("extra")
    ap.add_argument("--skip", nargs="*", default=[])
    args = ap.parse_args()
    reqs = metadata_requires(args.wheel)
    # Base requirements: no marker, or one that holds here (vllm: `platform_machine == "x86_64"`).
    base = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    skip = {canonicalize_name(s) for s in args.skip}
    merged: dict[str, Requirement] = {}
    for r in base + (extra_requires(reqs, args.extra, set()) if args.extra else []):
        if canonicalize_name(r.name) in skip:
            print(f"skipped (cannot install on a CPU-only machine): {r}", file=sys.stderr)
            continue
        r.marker = None
        key = canonicalize_name(r.name)
        if key in merged:  # listed twice (base list and an extra): both constraints hold
            merged[key].specifier &= r.specifier
            merged[key].extras |= r.extras
        else:
            merged[key] = r
    for r in merged.values():
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
