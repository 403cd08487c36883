"""The Python extension built with AddressSanitizer + UndefinedBehaviorSanitizer (issue 9, item 2).

``load()`` compiles the CPU sources of shallowkern._C (csrc/*.cpp, csrc/cpu/*.cpp; no CUDA) plus
the test-only canary ops (csrc/tests/sanitizer_canary_op.cpp) at -O1 with
``-fsanitize=address,undefined -fno-sanitize-recover=all`` into build/asan (torch's JIT ninja
build: only changed sources are rebuilt), loads it and installs it as ``shallowkern._C`` before
shallowkern is imported. The interpreter itself is not instrumented, so the sanitizer runtimes
must be preloaded: ``python -m tests.sanitize`` sets LD_PRELOAD, ASAN_OPTIONS and UBSAN_OPTIONS
and runs pytest with this module as a plugin.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = ROOT / "build" / "asan"
SANITIZERS = os.environ.get("SHALLOWKERN_SANITIZE", "address,undefined")
FLAGS = [f"-fsanitize={SANITIZERS}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
         "-g1", "-O1", "-fopenmp"]  # -g1: line tables for the reports' stack traces, half -g's compile time


def sources() -> list[str]:
    src = sorted(glob.glob(str(ROOT / "csrc" / "*.cpp"))) + sorted(
        glob.glob(str(ROOT / "csrc" / "cpu" / "*.cpp")))
    return src + [str(ROOT / "csrc" / "tests" / "sanitizer_canary_op.cpp")]


def runtime_loaded() -> bool:
    """Whether the ASan runtime is in the process (it must come first: LD_PRELOAD)."""
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


def load(verbose: bool = False):
    """Build (if needed) and load the sanitized extension as shallowkern._C; returns the module."""
    if "shallowkern" in sys.modules or "shallowkern._C" in sys.modules:
        raise RuntimeError("the sanitized extension must be loaded before shallowkern is imported")
    if not runtime_loaded():
        raise RuntimeError("the ASan runtime is not loaded: run through `python -m tests.sanitize` "
                           "(it sets LD_PRELOAD)")
    from torch.utils import cpp_extension

    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    mod = cpp_extension.load(
        name="_C",
        sources=sources(),
        extra_cflags=FLAGS,
        extra_ldflags=[f"-fsanitize={SANITIZERS}", "-fopenmp"],
        extra_include_paths=[str(ROOT / "csrc" / "include")],
        build_directory=str(BUILD_DIR),
        verbose=verbose,
    )
    mod.sanitized = SANITIZERS
    sys.modules["shallowkern._C"] = mod
    return mod
