"""Plain-text rendering of a ProfileResult: an aligned per-module table, totals and notes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import ProfileResult

_SI = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def si(x: float | None, unit: str = "") -> str:
    """3 significant digits with an SI prefix: 1234567 -> "1.23M"."""
    if x is None:
        return "-"
    for scale, prefix in _SI:
        if abs(x) >= scale:
            return f"{x / scale:.3g}{prefix}{unit}"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:.3g}{unit}"
    return f"{int(x)}{unit}"


def seconds(t: float | None) -> str:
    if t is None:
        return "-"
    for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "us")):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} x{n}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _align(rows: list[list[str]], left: int) -> list[str]:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned (the table
    renderer the CLI's reports use too)."""
    from ..reports.tables import render_table

    return render_table(None, rows, left=left).split("\n")


def render(result: "ProfileResult", depth: int | None = None) -> str:
    pass_name = "forward + backward" if result.backward else "forward"
    shapes = ", ".join("x".join(map(str, s)) for s in result.input_shapes)
    out = [f"shallowkern.profile: {result.model} | {pass_name} | input {shapes} | {result.dtype} | "
           f"{result.device} | torch {result.torch_version}",
           "FLOPs: 2 FLOPs per multiply-add (MACs = FLOPs / 2); only matmul/conv ops are counted "
           "(bias, activations, pooling are not: see 'uncounted').",
           "Eff.: without zero (out,in) kernel pairs and masked weights. Exec.: what the kernels "
           "run (= dense unless a structured-sparse kernel reports less). Bytes: per op, inputs "
           "read once + outputs written once. FLOP/B = Exec. FLOPs / Bytes.",
           ""]
    header = ["Module", "Type", "Params", "FLOPs", "MACs", "Eff. FLOPs", "Exec. FLOPs", "Bytes",
              "FLOP/B", "Uncounted ops"]
    table = [header]
    parents = {r.name.rpartition(".")[0] for r in result.rows if r.name}
    leaves = {r.name for r in result.rows} - parents
    for r in result.rows:
        if depth is not None and r.depth > depth:
            continue
        name = r.name if r.name else result.model
        ai = r.arithmetic_intensity
        flag = " (!)" if r.flagged else ""
        table.append(["  " * r.depth + name + flag, r.type, si(r.params), si(r.flops), si(r.macs),
                      si(r.effective_flops), si(r.executed_flops), si(r.bytes, "B"),
                      "-" if ai is None else f"{ai:.3g}",
                      _ops(r.uncounted) if r.name in leaves else ""])
    t = result.totals
    ai = t.arithmetic_intensity
    table.append(["Total", "", si(t.params), si(t.flops), si(t.macs), si(t.effective_flops),
                  si(t.executed_flops), si(t.bytes, "B"), "-" if ai is None else f"{ai:.3g}", ""])
    out += _align(table, left=2)
    out.append("")
    if result.backward:
        out.append(f"FLOPs forward {si(t.flops_forward)}, backward {si(t.flops_backward)}")
    if result.latency is not None:
        lat = result.latency
        out.append(f"Latency ({pass_name}): median {seconds(lat.median_s)} (min "
                   f"{seconds(lat.min_s)}, max {seconds(lat.max_s)}; {lat.samples} samples, "
                   f"{lat.calls} calls, {lat.warmup} warm-up; {lat.method})")
        if lat.median_s > 0:
            out.append(f"Throughput: {si(t.executed_flops / lat.median_s, 'FLOP/s')}, "
                       f"{si(t.bytes / lat.median_s, 'B/s')}")
    if result.roofline is not None:
        rf = result.roofline
        line = (f"Roofline ({rf.name}, {rf.dtype}: {si(rf.flops_per_s, 'FLOP/s')}, "
                f"{si(rf.bytes_per_s, 'B/s')}; {rf.source}): floor {seconds(result.time_floor_s)} "
                f"({result.bound}-bound)")
        if result.roofline_pct is not None:
            line += f", achieved {result.roofline_pct:.3g}% of the roofline"
        out.append(line)
    out.append("Uncounted ops (no FLOP formula): " + (_ops(result.uncounted) or "none"))
    out += [f"WARNING: {w}" for w in result.warnings]
    out += [f"note: {n}" for n in result.notes]
    return "\n".join(out)
