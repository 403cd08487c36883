"""The README results table and a speedup chart from a benchmark run.

    python -m benchmarks.summarize RESULTS [--png CHART] [--subject shallowkern]

RESULTS is pytest-benchmark's JSON (``pytest benchmarks/ --benchmark-json=RESULTS``) or the
rows file the harness appends to as it goes (``SHALLOWKERN_BENCH_ROWS=rows.jsonl``, one JSON
object per line; what the GPU check brings back even when it is cut short). Prints Markdown:
per op, one row per (case, dtype, pass) with each provider's median time, the subject's speedup
over every other provider (t_other / t_subject; > 1 means the subject is faster), the subject's
TFLOP/s (or items/s) and % of the roofline floor; then the law benchmark's line. Writes a PNG
chart (default: RESULTS with the suffix .png): per op, the subject's speedup per case and
provider on a log axis, with the 1x line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def load(path: str | Path) -> dict:
    """A pytest-benchmark JSON, or a rows JSONL turned into the same shape."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
        if isinstance(data, dict) and "benchmarks" in data:
            return data
    except json.JSONDecodeError:
        pass
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a row cut short by a timeout
                continue
    return {"benchmarks": rows}


def _ms(s: float | None) -> str:
    return "–" if s is None else (f"{s * 1e3:.3f}" if s < 1e-2 else f"{s * 1e3:.2f}")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _legacy_rows(b: dict) -> list[dict]:
    """Rows of the one-benchmark-per-case JSON written before the harness (2026-11-21 results):
    provider times as ``<provider>_<pass>_s`` keys of a single benchmark's extra_info."""
    e = b.get("extra_info", {})
    name = b.get("name", "")
    if name.startswith("test_wide_conv2d"):
        op, passes = "wide_conv2d", ("fwd", "fwdbwd")
    elif name.startswith("test_lenet_training_step"):
        op, passes = "lenet_training", ("step",)
        e = {**e, "case": f"lenet_d{e.get('d1')}_b{e.get('batch')}", "dtype": "fp32"}
    else:
        return []
    rows = []
    for p in passes:
        for prov in ("shallowkern", "eager", "compiled", "vendor"):
            t = e.get(f"{prov}_{p}_s")
            if t is None:
                continue
            info = dict(op=op, case=e["case"], dtype=e["dtype"], pass_=p, provider=prov,
                        device=e.get("device"), threads=e.get("threads"), torch=e.get("torch"),
                        triton=e.get("triton"))
            if prov == "shallowkern":
                info.update(tflops_per_s=e.get(f"{p}_tflops_per_s"),
                            pct_of_roofline=e.get(f"{p}_pct_of_roofline"),
                            items_per_s=e.get("shallowkern_images_per_s"))
            rows.append(dict(name=name, stats=dict(median=t), extra_info=info))
    return rows


def table(data: dict, subject: str = "shallowkern") -> dict[str, list[dict]]:
    """op -> rows {case, dtype, pass, times: {provider: median s}, info: subject's extra_info}."""
    groups: dict[tuple, dict] = {}
    benches = []
    for b in data.get("benchmarks", []):
        benches += [b] if "provider" in b.get("extra_info", {}) else _legacy_rows(b)
    for b in benches:
        e = b.get("extra_info", {})
        if "provider" not in e or "dtype" not in e or not b.get("stats"):
            continue  # not a timing row (e.g. a peak-memory record)
        key = (e["op"], e["case"], e["dtype"], e["pass_"])
        g = groups.setdefault(key, dict(op=e["op"], case=e["case"], dtype=e["dtype"],
                                        pass_=e["pass_"], times={}, info={}))
        g["times"][e["provider"]] = b["stats"]["median"]
        if e["provider"] == subject or not g["info"]:
            g["info"] = e
    out: dict[str, list[dict]] = defaultdict(list)
    for g in groups.values():
        out[g["op"]].append(g)
    return dict(out)


def summarize(data: dict, subject: str = "shallowkern") -> str:
    benches = data.get("benchmarks", [])
    first = next((b["extra_info"] for b in benches if "device" in b.get("extra_info", {})), {})
    commit = (data.get("commit_info") or {}).get("id", "?")[:10]
    out = [f"Machine: {first.get('device', '?')}, {first.get('threads', '?')} threads, torch "
           f"{first.get('torch', '?')}, triton {first.get('triton', '?')}; commit {commit}; "
           f"{data.get('datetime', '')[:10]}. Median times; speedup = t_provider / t_{subject}.",
           ""]
    for op, rows in table(data, subject).items():
        providers = []
        for r in rows:
            providers += [p for p in r["times"] if p not in providers]
        others = [p for p in providers if p != subject]
        items = any(r["info"].get("items_per_s") for r in rows)
        head = (["case", "dtype", "pass"] + [f"{p} ms" for p in providers]
                + [f"vs {p}" for p in others]
                + ["items/s" if items else "TFLOP/s", "% roofline", "route"])
        out += [f"**{op}**", "", _row(head), _row(["---"] * len(head))]
        for r in rows:
            t = r["times"]
            mine = t.get(subject)
            sp = [(t[p] / mine if mine and p in t else None) for p in others]
            e = r["info"] if r["info"].get("provider") == subject else {}
            rate = (f"{e['items_per_s']:.0f}" if items and e.get("items_per_s") else
                    f"{e['tflops_per_s']:.3g}" if e.get("tflops_per_s") else "–")
            pct = f"{e['pct_of_roofline']:.1f}" if e.get("pct_of_roofline") is not None else "–"
            out.append(_row([r["case"], r["dtype"], r["pass_"]]
                            + [_ms(t.get(p)) for p in providers] + [_x(v) for v in sp]
                            + [rate, pct, e.get("routed") or "–"]))
        out.append("")
    out += route_notes(data)
    for b in benches:
        if b.get("name", "").startswith("test_lenet_width_law"):
            e = b["extra_info"]
            lo, hi = e["rho_ci"]
            widths = sorted({r["config"]["d1"] for r in e["records"]})
            out.append(f"Law benchmark ({e['dataset']}, d1 ∈ {widths}, "
                       f"{len(e['records'])} trials, "
                       f"sweep {b['stats']['median']:.0f} s): ρ = {e['rho']:.3f} "
                       f"[{lo:.3f}, {hi:.3f}] ({e['ci_level']:.0%} bootstrap CI), "
                       f"R² = {e['r2']:.3f}.")
    return "\n".join(out)


def route_notes(data: dict) -> list[str]:
    """The fp32 (TF32 off) route data (benchmarks/NOTES.md): per case and pass, the Triton kernels
    forced (``sk_triton``) against cuDNN (the automatic route's ``vendor`` or ``eager``), and
    which is faster by more than 5 %."""
    lines = []
    for op, rows in table(data).items():
        for r in rows:
            t = r["times"]
            if r["dtype"] != "fp32" or "sk_triton" not in t:
                continue
            cudnn = t.get("shallowkern") if r["info"].get("routed") == "vendor" else t.get("eager")
            if not cudnn:
                continue
            ratio = cudnn / t["sk_triton"]
            verdict = ("Triton" if ratio > 1.05 else "cuDNN" if ratio < 1 / 1.05 else
                       "either (within 5 %)")
            lines.append(f"| {op} | {r['case']} | {r['pass_']} | {_ms(t['sk_triton'])} | "
                         f"{_ms(cudnn)} | {ratio:.2f}× | {verdict} |")
    if not lines:
        return []
    return ["fp32 with TF32 off, Triton forced vs cuDNN (the route decision):", "",
            _row(["op", "case", "pass", "Triton ms", "cuDNN ms", "Triton speedup", "faster"]),
            _row(["---"] * 7), *lines, ""]


def chart(data: dict, path: str | Path, subject: str = "shallowkern") -> Path | None:
    """A PNG: per op, the subject's speedup over each provider per case (log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ops = table(data, subject)
    ops = {op: rows for op, rows in ops.items() if any(subject in r["times"] for r in rows)}
    if not ops:
        return None
    fig, axes = plt.subplots(len(ops), 1, figsize=(max(6, 0.5 * max(map(len, ops.values())) + 3),
                                                   3.2 * len(ops)), squeeze=False)
    for ax, (op, rows) in zip(axes[:, 0], ops.items()):
        others = []
        for r in rows:
            others += [p for p in r["times"] if p != subject and p not in others]
        width = 0.8 / max(1, len(others))
        for i, p in enumerate(others):
            xs, ys = [], []
            for j, r in enumerate(rows):
                mine, theirs = r["times"].get(subject), r["times"].get(p)
                if mine and theirs:
                    xs.append(j + (i - (len(others) - 1) / 2) * width)
                    ys.append(theirs / mine)
            ax.bar(xs, ys, width, label=f"vs {p}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{r['case']}\n{r['dtype']} {r['pass_']}" for r in rows],
                           rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"{subject} speedup (×)")
        ax.set_title(op)
        if others:
            ax.legend(fontsize=7)
    first = next((b["extra_info"] for b in data.get("benchmarks", [])
                  if "device" in b.get("extra_info", {})), {})
    fig.suptitle(f"{subject} speedup, {first.get('device', '?')}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.summarize", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="pytest-benchmark JSON or the harness's rows JSONL")
    ap.add_argument("--png", help="chart path (default: RESULTS with suffix .png); '' for none")
    ap.add_argument("--subject", default="shallowkern", help="the provider speedups are of")
    a = ap.parse_args(argv)
    data = load(a.results)
    print(summarize(data, a.subject))
    png = Path(a.results).with_suffix(".png") if a.png is None else (a.png or None)
    if png:
        written = chart(data, png, a.subject)
        print(f"\nchart: {written}" if written else "\nchart: nothing to plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
