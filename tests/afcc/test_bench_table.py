"""scripts/afcc_bench_table.py: pieces merge, a rerun replaces a row, paths are named."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench(case, pass_, provider, median, routed=None, reason=""):
    return {"name": f"{case}-{provider}-{pass_}", "stats": {"median": median},
            "extra_info": {"case": case, "pass_": pass_, "provider": provider, "routed": routed,
                           "route_reason": reason, "pct_of_roofline": 50.0}}


def test_merge_rerun_and_paths(tmp_path):
    cpp = ("block-sparse: C++ kernel (im2col + GEMM per run of kept blocks) (sub-convs model "
           "slower than the C++ GEMM kernel)")
    first = [_bench("a", "fwd", "shallowkern", 2e-3, "native", cpp),
             _bench("a", "fwd", "dense", 1e-3),
             _bench("b", "fwd", "shallowkern", 1e-3, "native", "block-sparse: one oneDNN conv"),
             _bench("b", "fwd", "dense", 2e-3)]
    rerun = [_bench("a", "fwd", "shallowkern", 1e-3, "native", cpp),
             _bench("a", "fwd", "dense", 1e-3)]
    pieces = []
    for name, rows in (("p1.json", first), ("p2.json", rerun)):
        (tmp_path / name).write_text(json.dumps({"benchmarks": rows}))
        (tmp_path / (name + ".load")).write_text(f"load before: 1.0 ({name})\n")
        pieces.append(str(tmp_path / name))
    out = tmp_path / "merged.json"
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "afcc_bench_table.py"),
                            str(out), *pieces], capture_output=True, text=True, check=True).stdout
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "| C++ GEMM | 1.00 | 1.00 |" in rows["a"] and "1.00×" in rows["a"]  # the rerun
    assert "| sub-convs | 1.00 | 2.00 |" in rows["b"] and "2.00×" in rows["b"]
    merged = json.loads(out.read_text())
    assert len(merged["benchmarks"]) == 6  # both runs kept
    assert [b["extra_info"]["piece"] for b in merged["benchmarks"]][-1] == "p2.json"
    assert merged["shallowkern"]["threads"] == 1 and len(merged["shallowkern"]["load"]) == 2
