"""The device check's build: ``setup.py build_ext --inplace`` against this machine's torch,
with ninja if it can be found (torch's BuildExtension compiles one source after the other
without it: several minutes instead of about one).

    python3 scripts/gpu_check/build_ext.py WORKDIR

Ninja is looked up on PATH, then in the ``ninja`` pip package, then as ``.venv/bin/ninja`` of
the copied working tree (a static-enough ELF that a device run can carry); a found binary is
copied to WORKDIR/bin and put first on PATH for the build. Prints the toolchain it used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def find_ninja() -> str | None:
    found = shutil.which("ninja")
    if found:
        return found
    try:
        import ninja  # the pip package ships the binary

        cand = Path(ninja.BIN_DIR) / "ninja"
        if cand.exists():
            return str(cand)
    except (ImportError, AttributeError):
        pass
    cand = ROOT / ".venv" / "bin" / "ninja"
    if cand.exists() and cand.read_bytes()[:4] == b"\x7fELF":
        return str(cand)
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    work = Path(argv[0] if argv else ".")
    env = dict(os.environ)
    ninja = find_ninja()
    if ninja and not shutil.which("ninja"):
        (work / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(ninja, work / "bin" / "ninja")
        env["PATH"] = f"{work / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    try:
        import setuptools
        import torch

        print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), setuptools "
              f"{setuptools.__version__}, ninja {ninja or 'not found: serial build'}, "
              f"MAX_JOBS={env.get('MAX_JOBS')}", flush=True)
    except ImportError as exc:
        print(f"build_ext: {exc}", flush=True)
    return subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT,
                          env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
