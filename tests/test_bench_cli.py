"""`r3hf bench --quick` runs and writes a JSON and a PNG that parse (no timing is asserted)."""

import json

from r3hf.cli import main


def test_bench_quick_writes_json_and_chart(tmp_path, capsys):
    assert main(["bench", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "verl-loop" in printed and "unfused" in printed
    (report_file,) = tmp_path.glob("*.json")
    report = json.loads(report_file.read_text())
    groups = {c["group"] for c in report["cases"]}
    from r3hf.bench import verl_baselines

    # the group-advantage cases time veRL's own estimators, so they need veRL installed
    verl_groups = {"group", "rtg"} if verl_baselines.unavailable_reason() is None else set()
    assert groups == {"gae", "rewards", "fused", "fused_group", "floor"} | verl_groups
    for case in report["cases"]:
        assert case["results"][case["baseline"]]["speedup_vs_baseline"] == 1.0
        assert any(p.startswith("r3hf-") for p in case["results"])
    # issue 21: every estimator x baseline reported as a fraction of its bandwidth floor
    floor = {(c["params"]["estimator"], c["params"]["baseline"]) for c in report["cases"] if c["group"] == "floor"}
    from r3hf.bench.floor import SETTINGS

    assert floor == set(SETTINGS)
    for case in report["cases"]:
        if case["group"] == "floor":
            fracs = [r["floor_fraction"] for p, r in case["results"].items() if p.startswith("r3hf-")]
            assert fracs and all(f > 0 for f in fracs)
    assert "of the 14 B/token floor" in printed
    assert report["memory"] and "unfused" in report["memory"][0]["results"]
    (png,) = tmp_path.glob("*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
