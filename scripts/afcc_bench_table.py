"""Merge pieces of the afcc_conv2d CPU benchmark grid and print the docs/afcc.md table.

    python scripts/afcc_bench_table.py OUT.json PIECE.json [PIECE.json ...] [--note TEXT]

Each PIECE.json is a pytest-benchmark JSON written by scripts/afcc_bench_piece.sh (beside it,
PIECE.json.load: the load average before and after). OUT.json gets every piece's benchmarks
(``extra_info["piece"]`` names the file) and a "shallowkern" block naming the machine, threads
and loads; the table (one row per case and pass: the op's path, each provider's median,
speedups vs dense / lab / compiled, % of the roofline) goes to stdout. A case measured again in
a later piece (a rerun) shows the later numbers; both stay in OUT.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROVIDERS = ("shallowkern", "dense", "lab", "compiled", "bsr", "grouped")
VS = ("dense", "lab", "compiled")


def _path(info: dict) -> str:
    if info.get("routed") != "native":
        return {"vendor": "dense"}.get(info.get("routed"), str(info.get("routed")))
    return "C++ GEMM" if (info.get("route_reason") or "").startswith(
        "block-sparse: C++") else "sub-convs"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("pieces", nargs="+")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    merged, loads = None, []
    for p in a.pieces:
        d = json.loads(Path(p).read_text())
        loads += Path(p + ".load").read_text().splitlines() if Path(p + ".load").exists() else []
        for b in d["benchmarks"]:
            b["extra_info"]["piece"] = Path(p).name  # a later piece's row replaces an earlier
        if merged is None:
            merged = d
        else:
            merged["benchmarks"] += d["benchmarks"]
    merged["shallowkern"] = {
        "machine": "2-core AMD EPYC Zen 4 VM (this project's CPU machine)", "threads": 1,
        "run_under": "/tmp/quiet.sh (other jobs paused)", "load": loads, "note": a.note}
    Path(a.out).write_text(json.dumps(merged, separators=(",", ":")))
    rows: dict[tuple, dict] = {}
    for b in merged["benchmarks"]:
        e = b["extra_info"]
        r = rows.setdefault((e["case"], e["pass_"]), {})
        r[e["provider"]] = b["stats"]["median"]
        if e["provider"] == "shallowkern":
            r["path"], r["pct"] = _path(e), e.get("pct_of_roofline")
    print("| case | pass | path | " + " | ".join(f"{p} ms" for p in PROVIDERS)
          + " | " + " | ".join(f"vs {v}" for v in VS) + " | % roofline |")
    print("|" + "---|" * (3 + len(PROVIDERS) + len(VS) + 1))
    for (case, pass_), r in rows.items():
        t = r.get("shallowkern")
        ms = [f"{r[p] * 1e3:.2f}" if p in r else "–" for p in PROVIDERS]
        vs = [f"{r[v] / t:.2f}×" if v in r and t else "–" for v in VS]
        pct = f"{r['pct']:.0f}" if r.get("pct") is not None else "–"
        print(f"| {case} | {pass_} | {r.get('path', '–')} | " + " | ".join(ms) + " | "
              + " | ".join(vs) + f" | {pct} |")


if __name__ == "__main__":
    main()
