"""Ratios of a pytest-benchmark JSON from benchmarks/test_bench_contract.py, as markdown:

    python benchmarks/contract_ratios.py out.json "OMP_NUM_THREADS=1" > benchmarks/results/contract-threads-1.md

Each group's ratio is baseline median / provider median (> 1: faster than the baseline).
"""

import json
import sys
from collections import defaultdict


def main(path, label="torch threads: default"):
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["param"]] = b
    cpu = data["machine_info"].get("cpu", {})
    print(f"machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} cpus; {label}; {data['datetime']}\n")
    for group, runs in groups.items():
        base_name = next(iter(runs.values()))["extra_info"]["baseline"]
        base = runs[base_name]["stats"]["median"]
        print(f"## {group}\n\n| provider | median µs | ratio (baseline / provider) |\n|---|---|---|")
        for name, b in runs.items():
            med = b["stats"]["median"]
            print(f"| {name} | {med * 1e6:.1f} | {base / med:.2f} |")
        print()


if __name__ == "__main__":
    main(*sys.argv[1:3])
