"""Tiny calls of every shallowkern CUDA and Triton kernel, and the sanitizer / ncu runs over them.

    python3 scripts/gpu_check/sanitize_calls.py --calls [--cuda-only]
        forward + backward of every spec'd op with each kernel backend forced ("native" = the
        CUDA kernels, "triton"), fp32 and bf16, on the spec's tiny samples (plus channels_last)
    python3 scripts/gpu_check/sanitize_calls.py --sanitize memcheck --log F [--cuda-only]
        the calls under ``compute-sanitizer --tool memcheck`` with PYTORCH_NO_CUDA_MEMORY_CACHING=1
        (the caching allocator hides out-of-bounds accesses inside its blocks) and a kernel-name
        filter (``--kernel-name regex=...``: only our kernels are instrumented, so torch's own
        stay fast); racecheck the same way
    python3 scripts/gpu_check/sanitize_calls.py --ncu DIR
        one ncu profile (--set basic) per shallowkern kernel over the same calls
    python3 scripts/gpu_check/sanitize_calls.py --names
        the kernel names the filter is built from (parsed from the sources, no GPU needed)

Kernel names: every ``@triton.jit`` function in shallowkern/triton/ and every ``__global__``
function in csrc/cuda/, so a new family's kernels are covered without editing this file.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def kernel_names(root: Path = ROOT) -> list[str]:
    names = []
    for f in sorted((root / "shallowkern" / "triton").glob("*.py")):
        names += re.findall(r"@triton\.jit[^\n]*\n(?:@[^\n]*\n)*def\s+(\w+)", f.read_text())
    for f in sorted((root / "csrc" / "cuda").glob("*.cu*")):
        names += re.findall(r"__global__\s+void\s+(?:__launch_bounds__\s*\((?:[^()]|\([^()]*\))*"
                            r"\)\s*)?(\w+)\s*\(", f.read_text())
    # helpers that are never launched on their own (inlined device functions) match nothing
    return sorted(set(names))


def kernel_regex(names: list[str]) -> str:
    return "(" + "|".join(re.escape(n) for n in names) + ")"


def plan_calls(cuda_only: bool) -> list[tuple]:
    """(spec, dtype, backend, sample, layout) of every call, breadth first: each op, backend and
    dtype gets its first sample before any gets its last (a deadline cuts the tail evenly)."""
    import torch

    from shallowkern.testing import all_specs

    backends = ("native",) if cuda_only else ("native", "triton")
    todo = []
    for spec in all_specs():
        for dtype in (torch.float32, torch.bfloat16):
            tiny = list(spec.triton_samples(dtype)) if spec.triton_samples else []
            tiny += list(spec.samples(dtype))[:3]
            for backend in backends:
                for i, s in enumerate(tiny):
                    x = s.args[0] if s.args else None
                    four_d = isinstance(x, torch.Tensor) and x.dim() == 4
                    for layout in ("nchw", "cl") if four_d else ("nchw",):
                        todo.append((i, layout == "cl", spec, dtype, backend, s, layout))
    todo.sort(key=lambda t: t[:2])
    return [t[2:] for t in todo]


def one_call(spec, dtype, backend, s, layout, device: str) -> str:
    import torch

    from shallowkern.ops import last_backend, use_backend

    args = []
    for i, a in enumerate(s.args):
        if isinstance(a, torch.Tensor):
            a = a.to(device)
            if i == 0 and layout == "cl":
                a = a.contiguous(memory_format=torch.channels_last)
            if i in spec.grad_argnums and a.is_floating_point():
                a = a.detach().requires_grad_()
        args.append(a)
    with use_backend(backend):
        out = spec.op(*args, **s.kwargs)
        out = out if isinstance(out, torch.Tensor) else out[0]
        wrt = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        if wrt and out.requires_grad and out.numel():
            torch.autograd.grad(out, wrt, torch.ones_like(out))
    if device == "cuda":
        torch.cuda.synchronize()
    return getattr(last_backend(spec.name), "backend", "?")


def calls(cuda_only: bool, deadline: float = float("inf"), device: str = "cuda") -> int:
    import shallowkern  # noqa: F401  (registers the ops)

    todo = plan_calls(cuda_only)
    failures = 0
    for n, (spec, dtype, backend, s, layout) in enumerate(todo):
        if time.time() > deadline:
            print(f"sanitize_calls: deadline: {len(todo) - n} of {len(todo)} calls not made")
            break
        what = f"{spec.name} {backend} {str(dtype).removeprefix('torch.')} {s.name} {layout}"
        try:
            routed = one_call(spec, dtype, backend, s, layout, device)
            print(f"call {what}: ok (ran {routed})", flush=True)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the next call
            failures += 1
            print(f"call {what}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    print(f"sanitize_calls: {failures} failed calls")
    return 1 if failures else 0


def sanitizer_argv(tool: str, names: list[str], cuda_only: bool, help_text: str,
                   deadline: float = 0.0) -> list[str]:
    argv = ["compute-sanitizer", "--tool", tool, "--error-exitcode", "9", "--print-limit", "30"]
    if names and "--kernel-name" in help_text:
        argv += ["--kernel-name", f"regex={kernel_regex(names)}"]
    # the calls stop early enough for the tool to print its ERROR SUMMARY before the stage cap
    inner = ["--deadline", f"{deadline - 10:.0f}"] if deadline else []
    return (argv + [sys.executable, __file__, "--calls", *inner]
            + (["--cuda-only"] if cuda_only else []))


def sanitize(tool: str, log: Path, cuda_only: bool, deadline: float = 0.0) -> int:
    if not shutil.which("compute-sanitizer"):
        log.write_text("compute-sanitizer: not found\n")
        print("compute-sanitizer: not found")
        return 3
    help_text = subprocess.run(["compute-sanitizer", "--help"], capture_output=True,
                               text=True).stdout
    names = kernel_names()
    argv = sanitizer_argv(tool, names, cuda_only, help_text, deadline)
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    with open(log, "w") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    text = log.read_text(errors="replace")
    print("\n".join(text.splitlines()[-15:]))
    return rc


def ncu(outdir: Path) -> int:
    if not shutil.which("ncu"):
        print("ncu: not found")
        return 3
    outdir.mkdir(parents=True, exist_ok=True)
    names = kernel_names()
    argv = ["ncu", "--set", "basic", "--target-processes", "all", "-f",
            "--kernel-name", f"regex:{kernel_regex(names)}", "--launch-count", "12",
            "-o", str(outdir / "kernels"), sys.executable, __file__, "--calls"]
    rc = subprocess.run(argv).returncode
    rep = outdir / "kernels.ncu-rep"
    if rep.exists():
        with open(outdir / "kernels.txt", "w") as f:
            subprocess.run(["ncu", "--import", str(rep), "--print-summary", "per-kernel"],
                           stdout=f, stderr=subprocess.STDOUT)
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--calls", action="store_true")
    g.add_argument("--sanitize", choices=("memcheck", "racecheck", "initcheck", "synccheck"))
    g.add_argument("--ncu", type=Path)
    g.add_argument("--names", action="store_true")
    ap.add_argument("--log", type=Path, default=Path("sanitizer.log"))
    ap.add_argument("--cuda-only", action="store_true")
    ap.add_argument("--deadline", type=float, default=0.0, help="wall clock (epoch s)")
    ap.add_argument("--device", default="cuda", help="--calls on cpu: the check's own test")
    a = ap.parse_args(argv)
    if a.names:
        names = kernel_names()
        print("\n".join(names))
        print(kernel_regex(names))
        return 0 if names else 1
    if a.calls:
        return calls(a.cuda_only, a.deadline or float("inf"), a.device)
    if a.sanitize:
        return sanitize(a.sanitize, a.log, a.cuda_only, a.deadline)
    return ncu(a.ncu)


if __name__ == "__main__":
    sys.exit(main())
