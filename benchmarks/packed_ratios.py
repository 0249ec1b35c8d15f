"""Markdown of a pytest-benchmark JSON from benchmarks/test_packed.py: per op and length
distribution, packed vs padded (and pad-unpad) medians, and for the fused ops the bandwidth of the
bytes the packed op must read against the read probe over the packed hidden states.

    python benchmarks/packed_ratios.py out.json > benchmarks/results/packed-cpu-<date>.md
"""

import json
import sys
from collections import defaultdict


def rows(path):
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"]["provider"]] = b
    return data, groups


def main(path):
    data, groups = rows(path)
    cpu = data["machine_info"].get("cpu", {})
    loads = [b["extra_info"][k] for g in groups.values() for b in g.values()
             for k in ("loadavg_before", "loadavg_after") if k in b["extra_info"]]
    print(f"machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} cpus; {data['datetime']}; "
          f"1-min load average during the run {min(loads):.2f}-{max(loads):.2f}\n")
    print("| op | lengths | N | T | padded/packed positions | packed ms | padded ms | packed speed-up vs padded "
          "| pad-unpad ms | vs pad-unpad | packed GB/s | read-probe GB/s | packed / probe |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for runs in groups.values():
        info = next(iter(runs.values()))["extra_info"]
        med = {p: b["stats"]["median"] for p, b in runs.items()}
        gbps = probe = frac = ""
        if info.get("bytes_read") and "read-probe" in med:
            bw = info["bytes_read"] / med["packed"]
            pbw = info["probe_bytes"] / med["read-probe"]
            gbps, probe, frac = f"{bw / 1e9:.1f}", f"{pbw / 1e9:.1f}", f"{bw / pbw:.0%}"
        op = info["op"] + (f" D={info['D']}" if "D" in info else "")
        print(f"| {op} | {info['dist']} | {info['N']} | {info['T']} | {info['padded_over_packed']} "
              f"| {med['packed'] * 1e3:.3f} | {med['padded'] * 1e3:.3f} | **{med['padded'] / med['packed']:.2f}x** "
              f"| {med['pad-unpad'] * 1e3:.3f} | {med['pad-unpad'] / med['packed']:.2f}x | {gbps} | {probe} | {frac} |")
    print("\nThe same with each provider's fastest round (min), the time least disturbed by other processes "
          "on a shared machine:\n")
    print("| op | lengths | packed min ms | padded min ms | packed speed-up vs padded (min) | packed / probe (min) |")
    print("|---|---|---|---|---|---|")
    for runs in groups.values():
        info = next(iter(runs.values()))["extra_info"]
        mn = {p: b["stats"]["min"] for p, b in runs.items()}
        frac = ""
        if info.get("bytes_read") and "read-probe" in mn:
            frac = f"{(info['bytes_read'] / mn['packed']) / (info['probe_bytes'] / mn['read-probe']):.0%}"
        op = info["op"] + (f" D={info['D']}" if "D" in info else "")
        print(f"| {op} | {info['dist']} | {mn['packed'] * 1e3:.3f} | {mn['padded'] * 1e3:.3f} "
              f"| {mn['padded'] / mn['packed']:.2f}x | {frac} |")
    print("\nSpread (IQR / median) per provider, to judge noise:\n")
    print("| group | " + " | ".join(["packed", "padded", "pad-unpad", "read-probe"]) + " |")
    print("|---|---|---|---|---|")
    for g, runs in groups.items():
        cells = []
        for p in ("packed", "padded", "pad-unpad", "read-probe"):
            s = runs[p]["stats"] if p in runs else None
            cells.append(f"{s['iqr'] / s['median']:.0%}" if s else "")
        print(f"| {g.split(' (')[0]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
