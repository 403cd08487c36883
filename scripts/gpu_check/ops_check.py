"""Op-level checks on CUDA for every op that has a spec in tests/specs/ (issue 13 item 1).

    python3 scripts/gpu_check/ops_check.py OUT.json [--rows rows.jsonl] [--deadline EPOCH]
                                           [--ops a,b]

For each op (``shallowkern.testing.all_specs()``) and each of its CUDA backends (automatic
choice first, then each kernel backend forced with ``use_backend``), in fp32 (TF32 off), fp32
with TF32, fp16 and bf16, over the spec's samples moved to CUDA plus a channels_last copy of each
4-D input:

* routing: the backend that ran (``last_backend``) and why, beside the one asked for;
* forward and every gradient against the fp64 CPU reference. Pass: within the tolerance table
  (``shallowkern.testing.tolerance``; "tf32" for fp32 with TF32), or at most 2x the error of
  PyTorch's own composition in the same dtype on the same GPU (the rule for low precision);
  both errors are recorded;
* ``torch.compile(fullgraph=True)`` of the functional on one sample per dtype (fp32, bf16),
  forward and backward, against eager;
* bitwise repeat: forward and backward twice on the largest sample per kernel backend and
  dtype must give identical bits (no atomics-order nondeterminism).

Checks run most important first, sample by sample across the dtypes: the automatic route on
every sample and layout; each kernel backend forced; bitwise; compile; the remaining forced
combinations. Every check is one JSON row, appended to ``--rows`` as soon as it is done (the check's
rows.jsonl survives a kill); ``OUT.json`` gets all rows and a one-line summary at the end. The
checks stop themselves at ``--deadline`` (wall clock) and count what they did not reach. Exit
status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DEVICE = "cuda"
DTYPES = (("fp32", torch.float32, False), ("tf32", torch.float32, True),
          ("fp16", torch.float16, False), ("bf16", torch.bfloat16, False))


class Rows:
    def __init__(self, path: str | None):
        self.path, self.rows = path, []

    def add(self, **row) -> dict:
        row = {"kind": "op_check", **row}
        self.rows.append(row)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
        status = "ok" if row.get("ok") else "FAIL"
        print(f"{status:4} {row.get('check'):8} {row.get('op')} {row.get('backend')}->"
              f"{row.get('routed')} {row.get('dtype')} {row.get('sample')} "
              f"{row.get('error') or ''}", flush=True)
        return row


def set_tf32(on: bool) -> None:
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def first_tensor(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def with_grads(sample, argnums, convert):
    """The sample with tensors converted and those at ``argnums`` requiring grad."""
    from shallowkern.testing import Sample

    args = list(sample.args)
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            t = convert(a).detach()
            if i in argnums and t.is_floating_point():
                t.requires_grad_()
            args[i] = t
    kwargs = {k: convert(v) if isinstance(v, torch.Tensor) else v
              for k, v in sample.kwargs.items()}
    return Sample(tuple(args), kwargs, sample.name)


def grad_inputs(sample):
    return [a for a in sample.args if isinstance(a, torch.Tensor) and a.requires_grad]


def run(fn, sample, g=None):
    out = first_tensor(fn(*sample.args, **sample.kwargs))
    wrt = grad_inputs(sample)
    grads = []
    if wrt and out.requires_grad and out.numel():
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out) \
            if g is None else g.to(out)
        grads = list(torch.autograd.grad(out, wrt, g, allow_unused=True))
    return out, grads


def max_err(a, ref) -> float:
    if a is None or ref is None or a.numel() == 0:
        return 0.0
    return (a.detach().double().cpu() - ref.detach().double().cpu()).abs().max().item()


def judge(ours: float, theirs: float, ref, key, reduction: int) -> tuple[bool, str]:
    from shallowkern.testing import tolerance

    rtol, atol = tolerance(key, reduction)
    scale = ref.detach().abs().max().item() if ref is not None and ref.numel() else 0.0
    if ours <= atol + rtol * scale:
        return True, "table"
    if ours <= 2 * theirs + 1e-7 * max(scale, 1.0):
        return True, "2x torch"
    return False, f"error {ours:.3g} > table {atol + rtol * scale:.3g} and > 2x torch {theirs:.3g}"


def check_numerics(rows: Rows, spec, backend: str | None, dname, dtype, tf32, sample, layout):
    from shallowkern.ops import last_backend, use_backend

    set_tf32(tf32)
    key = "tf32" if tf32 else dtype
    red = int(spec.reduction(sample))
    cuda = with_grads(sample, spec.grad_argnums, lambda t: t.to(DEVICE))
    ref = with_grads(sample, spec.grad_argnums,
                     lambda t: t.double() if t.is_floating_point() else t)
    torch_s = with_grads(sample, spec.grad_argnums, lambda t: t.to(DEVICE))
    base = dict(check="numerics", op=spec.name, backend=backend or "auto", dtype=dname,
                sample=sample.name, layout=layout)
    try:
        with use_backend(backend):
            out, grads = run(spec.op, cuda)
        choice = last_backend(spec.name)
        routed = choice.backend if choice else "?"
        reason = choice.reason if choice else ""
        ref_out, ref_grads = run(spec.reference, ref)
        t_out, t_grads = run(spec.reference, torch_s)
        fe, tfe = max_err(out, ref_out), max_err(t_out, ref_out)
        ok, how = judge(fe, tfe, ref_out, key, red)
        ge, tge, why = [], [], []
        for i, (a, r, t) in enumerate(zip(grads, ref_grads, t_grads)):
            e, te = max_err(a, r), max_err(t, r)
            ge.append(e)
            tge.append(te)
            g_ok, g_how = judge(e, te, r, key, red * 4)
            if not g_ok:
                why.append(f"grad {i}: {g_how}")
            ok = ok and g_ok
        if not fe <= float("inf"):
            ok = False
        if out.shape != ref_out.shape:
            ok, how = False, f"shape {tuple(out.shape)} != {tuple(ref_out.shape)}"
        error = None if ok else "; ".join(([how] if how not in ("table", "2x torch") else [])
                                          + why)
        return rows.add(**base, routed=routed, reason=reason, ok=ok, fwd_err=fe,
                        torch_fwd_err=tfe, fwd_rule=how, grad_errs=ge, torch_grad_errs=tge,
                        out_layout_cl=bool(out.dim() == 4 and out.is_contiguous(
                            memory_format=torch.channels_last) and not out.is_contiguous()),
                        error=error)
    except Exception as exc:  # noqa: BLE001 - every failure is a row
        return rows.add(**base, routed=None, ok=False, error=f"{type(exc).__name__}: {exc}"[:400],
                        trace=traceback.format_exc()[-1500:])
    finally:
        set_tf32(False)


def check_compile(rows: Rows, spec, dname, dtype, sample):
    base = dict(check="compile", op=spec.name, backend="auto", dtype=dname, sample=sample.name)
    try:
        torch._dynamo.reset()
        kw = dict(sample.kwargs)

        def fn(*args):
            return spec.op(*args, **kw)

        compiled = torch.compile(fn, fullgraph=True)
        a = with_grads(sample, spec.grad_argnums, lambda t: t.to(DEVICE))
        b = with_grads(sample, spec.grad_argnums, lambda t: t.to(DEVICE))
        from shallowkern.testing import Sample

        out_c, g_c = run(lambda *x, **_: compiled(*x), a)
        out_e, g_e = run(fn, Sample(b.args, {}, b.name))
        errs = [max_err(out_c, out_e)] + [max_err(x, y) for x, y in zip(g_c, g_e)]
        scale = max(out_e.abs().max().item() if out_e.numel() else 0.0, 1.0)
        ok = all(e <= 1e-2 * scale for e in errs) and len(g_c) == len(g_e)
        return rows.add(**base, routed=None, ok=ok, errs=errs,
                        error=None if ok else f"compiled vs eager differ: {errs}")
    except Exception as exc:  # noqa: BLE001
        return rows.add(**base, routed=None, ok=False, error=f"{type(exc).__name__}: {exc}"[:400],
                        trace=traceback.format_exc()[-1500:])


def check_bitwise(rows: Rows, spec, backend, dname, dtype, tf32, sample):
    from shallowkern.ops import last_backend, use_backend

    base = dict(check="bitwise", op=spec.name, backend=backend, dtype=dname, sample=sample.name)
    set_tf32(tf32)
    try:
        results = []
        for _ in range(2):
            s = with_grads(sample, spec.grad_argnums, lambda t: t.to(DEVICE))
            with use_backend(backend):
                out, grads = run(spec.op, s)
            results.append([out] + grads)
        routed = getattr(last_backend(spec.name), "backend", "?")
        same = [bool(torch.equal(x, y)) for x, y in zip(*results)]
        return rows.add(**base, routed=routed, ok=all(same), same=same,
                        error=None if all(same) else "outputs differ between two identical runs")
    except Exception as exc:  # noqa: BLE001
        return rows.add(**base, routed=None, ok=False, error=f"{type(exc).__name__}: {exc}"[:400])
    finally:
        set_tf32(False)


def layouts(sample):
    """The sample, plus a channels_last copy when its first argument is a contiguous 4-D tensor."""
    yield sample, "as given"
    x = sample.args[0] if sample.args else None
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_contiguous() and x.shape[1] > 1:
        from shallowkern.testing import Sample

        yield Sample((x.contiguous(memory_format=torch.channels_last), *sample.args[1:]),
                     sample.kwargs, sample.name), "channels_last"


def cuda_backends(spec) -> list[str | None]:
    from shallowkern.ops._backend import DISPATCHES

    disp = DISPATCHES.get(spec.name)
    if disp is None:
        return [None]
    names = [b.name for b in disp.backends
             if (b.devices is None or DEVICE in b.devices) and b.name != "reference"]
    return [None] + list(dict.fromkeys(names))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--rows")
    ap.add_argument("--deadline", type=float, default=time.time() + 60)
    ap.add_argument("--ops", help="comma-separated op names (default: every spec)")
    ap.add_argument("--checks", default="numerics,compile,bitwise",
                    help="comma-separated kinds of check to run")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: the same checks on the CPU backends (the check's own test)")
    a = ap.parse_args(argv)
    global DEVICE
    DEVICE = a.device
    if DEVICE == "cpu":  # Triton backends on CPU run in the interpreter (set before kernels load)
        import os

        os.environ.setdefault("TRITON_INTERPRET", "1")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("ops_check: no CUDA device", file=sys.stderr)
        Path(a.out).write_text(json.dumps(dict(summary="no CUDA device", rows=[])))
        return 1
    import shallowkern  # noqa: F401  (registers the ops)
    from shallowkern.testing import all_specs

    specs = [s for s in all_specs() if not a.ops or s.name in a.ops.split(",")]
    rows = Rows(a.rows)
    skipped = 0
    for i, spec in enumerate(specs):
        # each op gets an equal share of the time left
        op_deadline = time.time() + (a.deadline - time.time()) / (len(specs) - i)
        plan = []  # (tier, sample index, dtype index, check...): most important first
        kernels = [b for b in cuda_backends(spec)[1:] if b != "vendor"]
        for di, (dname, dtype, tf32) in enumerate(DTYPES):
            try:
                samples = list(spec.samples(dtype))
            except Exception as exc:  # noqa: BLE001
                rows.add(check="samples", op=spec.name, dtype=dname, ok=False,
                         error=f"{type(exc).__name__}: {exc}"[:300])
                continue
            for si, s in enumerate(samples):
                for s2, layout in layouts(s):
                    # tier 0: the automatic route, as users run it, every layout
                    plan.append((0, si, di, "numerics", None, dname, dtype, tf32, s2, layout))
                    for backend in cuda_backends(spec)[1:]:
                        # tier 1: each kernel forced, inputs as given; 4: the rest
                        tier = 1 if layout == "as given" and backend in kernels else 4
                        plan.append((tier, si, di, "numerics", backend, dname, dtype, tf32, s2,
                                     layout))
            big = max(samples, key=lambda s: sum(t.numel() for t in s.tensors()), default=None)
            if big is not None:
                if dname in ("tf32", "bf16"):  # tier 2: bitwise repeat per kernel backend
                    for backend in kernels:
                        plan.append((2, 0, di, "bitwise", backend, dname, dtype, tf32, big, ""))
                if dname in ("fp32", "bf16"):  # tier 3: compile (slow: one per dtype)
                    plan.append((3, 0, di, "compile", None, dname, dtype, tf32, big, ""))
        plan = [p[3:] for p in sorted(plan, key=lambda p: p[:3])
                if p[3] in a.checks.split(",")
                # bf16 is broken in Triton's CPU interpreter (CONVENTIONS.md section 4)
                and not (DEVICE == "cpu" and p[4] == "triton" and p[5] == "bf16")]
        for n, (kind, backend, dname, dtype, tf32, s, layout) in enumerate(plan):
            if time.time() > min(op_deadline, a.deadline - 2):
                skipped += len(plan) - n
                rows.add(check="deadline", op=spec.name, ok=True,
                         error=f"{len(plan) - n} of {len(plan)} checks not reached")
                break
            if kind == "numerics":
                check_numerics(rows, spec, backend, dname, dtype, tf32, s, layout)
            elif kind == "compile":
                check_compile(rows, spec, dname, dtype, s)
            else:
                check_bitwise(rows, spec, backend, dname, dtype, tf32, s)
    done = [r for r in rows.rows if r["check"] not in ("deadline",)]
    failed = [r for r in done if not r.get("ok")]
    routes = sorted({f"{r['op']}:{r['backend']}->{r['routed']}" for r in done
                     if r.get("routed") and r["backend"] != r["routed"]})
    summary = (f"{len(done)} checks over {len(specs)} ops, {len(failed)} failed, "
               f"{skipped} not reached"
               + (f"; rerouted: {', '.join(routes[:8])}" if routes else ""))
    print(summary)
    Path(a.out).write_text(json.dumps(dict(summary=summary, rows=rows.rows), default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
