"""Ratios of a pytest-benchmark JSON from benchmarks/test_bench_cpp.py or test_bench_cpp_group.py
(providers named by extra_info["provider"] when set, else by the test parameter), as markdown:

    python benchmarks/cpp_ratios.py out.json > benchmarks/results/cpp.md
"""

import json
import sys
from collections import defaultdict


def main(path):
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"].get("provider", b["param"])] = b
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"{data['machine_info'].get('cpu', {}).get('count', '?')} cpus; {data['datetime']}\n")
    for group, runs in groups.items():
        print(f"## {group}\n\n| provider | median ms | speed-up vs baseline | hidden GB/s | vs read-probe | vs sum-probe |")
        print("|---|---|---|---|---|---|")
        any_run = next(iter(runs.values()))
        base = runs[any_run["extra_info"]["baseline"]]["stats"]["median"]
        nbytes = any_run["extra_info"].get("bytes_read")
        for name, b in runs.items():
            med = b["stats"]["median"]
            gbps = f"{nbytes / med / 1e9:.2f}" if nbytes else ""
            vs = {p: f"{runs[p]['stats']['median'] / med:.2f}" if nbytes and p in runs else "" for p in ("read-probe", "sum-probe")}
            print(f"| {name} | {med * 1e3:.3f} | {base / med:.1f}x | {gbps} | {vs['read-probe']} | {vs['sum-probe']} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1])
