"""Markdown tables from a pytest-benchmark JSON (``pytest benchmarks/ --benchmark-json=F``).

    python -m benchmarks.summarize benchmarks/results/<device>-<date>.json

Prints the wide_conv2d provider table, the LeNet training throughput and the law benchmark, with
the machine and commit the JSON names: what goes into the README's results table.
"""

from __future__ import annotations

import json
import sys


def _ms(s: float | None) -> str:
    return "–" if s is None else f"{s * 1e3:.2f}"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def summarize(data: dict) -> str:
    benches = data["benchmarks"]
    first = next((b["extra_info"] for b in benches if "device" in b["extra_info"]), {})
    commit = data.get("commit_info", {}).get("id", "?")[:10]
    out = [f"Machine: {first.get('device', '?')}, {first.get('threads', '?')} threads, torch "
           f"{first.get('torch', '?')}; commit {commit}; {data.get('datetime', '')[:10]}.", ""]
    conv = [b["extra_info"] for b in benches if b["name"].startswith("test_wide_conv2d")]
    if conv:
        out += ["| case | dtype | pass | shallowkern ms | eager ms | compiled ms | conv alone ms | "
                "vs eager | vs compiled | % roofline |", "|---|---|---|---|---|---|---|---|---|---|"]
        for e in conv:
            for p in ("fwd", "fwdbwd"):
                out.append(f"| {e['case']} | {e['dtype']} | {p} | {_ms(e[f'shallowkern_{p}_s'])} | "
                           f"{_ms(e[f'eager_{p}_s'])} | {_ms(e[f'compiled_{p}_s'])} | "
                           f"{_ms(e[f'vendor_{p}_s'])} | {_x(e[f'{p}_speedup_vs_eager'])} | "
                           f"{_x(e[f'{p}_speedup_vs_compiled'])} | {e[f'{p}_pct_of_roofline']:.1f} |")
        out.append("")
    train = [b["extra_info"] for b in benches if b["name"].startswith("test_lenet_training")]
    if train:
        out += ["| GeneralizedLeNet training step | batch | shallowkern img/s | eager img/s | "
                "compiled img/s | vs eager | vs compiled |", "|---|---|---|---|---|---|---|"]
        for e in train:
            out.append(f"| d1={e['d1']}, d2={e['d2']} | {e['batch']} | {e['shallowkern_images_per_s']:.0f} | "
                       f"{e['eager_images_per_s']:.0f} | {e['compiled_images_per_s']:.0f} | "
                       f"{_x(e['speedup_vs_eager'])} | {_x(e['speedup_vs_compiled'])} |")
        out.append("")
    for b in benches:
        if b["name"].startswith("test_lenet_width_law"):
            e = b["extra_info"]
            lo, hi = e["rho_ci"]
            widths = sorted({r["config"]["d1"] for r in e["records"]})
            out.append(f"Law benchmark ({e['dataset']}, d1 ∈ {widths}, {len(e['records'])} trials, "
                       f"sweep {b['stats']['median']:.0f} s): ρ = {e['rho']:.3f} "
                       f"[{lo:.3f}, {hi:.3f}] ({e['ci_level']:.0%} bootstrap CI), R² = {e['r2']:.3f}.")
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(summarize(json.load(f)))
