"""Environment of the device check: GPU, driver, toolchain and Python package versions -> JSON.

    python3 scripts/gpu_check/env_info.py OUT.json

Never fails on a missing tool: each probe records its error instead (a bare machine may lack
ncu or compute-sanitizer, or have an older setuptools -- the build needs to know).
"""

from __future__ import annotations

import importlib
import json
import platform
import shutil
import subprocess
import sys


def _run(*cmd: str) -> str:
    if not shutil.which(cmd[0]):
        return f"{cmd[0]}: not found"
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{cmd[0]}: {exc}"


def _version(mod: str) -> str | None:
    try:
        return getattr(importlib.import_module(mod), "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - record any import failure
        return f"not importable: {type(exc).__name__}: {exc}"[:200]


def collect() -> dict:
    info = dict(python=sys.version.split()[0], executable=sys.executable,
                platform=platform.platform(), cpus=__import__("os").cpu_count(),
                packages={m: _version(m) for m in ("torch", "triton", "pytest", "xdist",
                                                   "pytest_benchmark", "hypothesis",
                                                   "setuptools", "numpy", "ninja", "scipy")},
                nvidia_smi=_run("nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                                "clocks.max.sm,clocks.max.mem,power.limit", "--format=csv"),
                nvcc=_run("nvcc", "--version").splitlines()[-1:],
                ncu=_run("ncu", "--version").splitlines()[-1:],
                compute_sanitizer=_run("compute-sanitizer", "--version").splitlines()[-1:])
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() \
            else None
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["device"] = dict(name=p.name, capability=list(torch.cuda.get_device_capability(0)),
                                  sms=p.multi_processor_count,
                                  memory_gib=round(p.total_memory / 2**30, 1),
                                  l2_bytes=getattr(p, "L2_cache_size", None))
        else:
            info["device"] = None
    except Exception as exc:  # noqa: BLE001
        info["torch_error"] = repr(exc)[:300]
    return info


if __name__ == "__main__":
    data = collect()
    text = json.dumps(data, indent=1, default=str)
    print(text)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(text)
