"""Merge the spinal_linear benchmark chunks (scripts/bench_spinal_grid.sh) into one JSON and print
the Markdown table of docs/spinal.md.

    python scripts/spinal_bench_table.py OUT.json CHUNK.json... [--override RERUN.json...]

Rows of --override files (re-measured cases) replace the same (case, provider, pass) rows.
Columns: per provider median µs, shallowkern's speedup over eager and compiled, and its % of the
CPU roofline floor (benchmarks/common.py: max(FLOPs / peak, bytes / DRAM bandwidth); cases whose
data sit in cache can exceed 100 %).
"""

from __future__ import annotations

import json
import sys


def key(b):
    e = b["extra_info"]
    return e["op"], e["case"], e["provider"], e["pass_"]


def main(argv: list[str]) -> int:
    out, rest = argv[0], argv[1:]
    over = rest.index("--override") if "--override" in rest else len(rest)
    base, extra = rest[:over], rest[over + 1:]
    rows, meta = {}, None
    for f in base + extra:
        d = json.load(open(f))
        meta = meta or {k: v for k, v in d.items() if k != "benchmarks"}
        for b in d["benchmarks"]:
            rows[key(b)] = b
    json.dump({**meta, "benchmarks": list(rows.values())}, open(out, "w"), indent=1)
    table: dict = {}
    for (op, case, prov, pass_), b in rows.items():
        table.setdefault((op, case, pass_), {})[prov] = b
    def order(k):
        op, case, pass_ = k
        b, f, w = case.split("_")
        return op, pass_, int(b[1:]), int(f[1:]), int(w[1:])
    print("| op | case (B, in_features, layer_width) | pass | shallowkern µs | eager µs | "
          "compiled µs | vs eager | vs compiled | % roofline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in sorted(table, key=order):
        r = table[k]
        if "shallowkern" not in r:
            continue
        t = {p: r[p]["stats"]["median"] for p in r}
        s = t["shallowkern"]
        ve, vc = t.get("eager", float("nan")) / s, t.get("compiled", float("nan")) / s
        mark = lambda v: f"**{v:.2f}x**" if v < 1 else f"{v:.2f}x"
        pct = r["shallowkern"]["extra_info"].get("pct_of_roofline") or 0
        print(f"| {k[0]} | {k[1]} | {k[2]} | {s * 1e6:,.0f} | {t.get('eager', 0) * 1e6:,.0f} | "
              f"{t.get('compiled', 0) * 1e6:,.0f} | {mark(ve)} | {mark(vc)} | {pct:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
