"""Run pytest against the ASan + UBSan build of the extension:

    python -m tests.sanitize [pytest args...]     (default: the native op tests and the fuzzer)

Preloads the sanitizer runtimes (the interpreter is not instrumented), sets ASAN_OPTIONS
(detect_leaks=0: CPython and torch keep allocations until exit by design) and UBSAN_OPTIONS
(halt_on_error=1), builds build/asan if needed and runs pytest with tests.sanitize.plugin. Any
sanitizer report aborts the run with a non-zero exit status, so CI fails.
"""

from __future__ import annotations

import os
import subprocess
import sys

DEFAULT_TARGETS = ["tests/ops/test_wide_conv2d_native.py", "tests/fuzz", "tests/sanitize"]


def runtime_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = []
    for lib in ("libasan.so", "libubsan.so"):
        path = subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True, text=True,
                              check=True).stdout.strip()
        if not os.path.isabs(path):
            raise SystemExit(f"tests.sanitize: gcc does not know {lib} (got {path!r})")
        libs.append(path)
    env["LD_PRELOAD"] = " ".join(libs + [p for p in env.get("LD_PRELOAD", "").split() if p])
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "detect_leaks=0")
    env["UBSAN_OPTIONS"] = env.get("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    env["SHALLOWKERN_SANITIZED_RUN"] = "1"
    return env


def main(argv: list[str]) -> int:
    args = argv or ["-q", "-x", *DEFAULT_TARGETS]
    cmd = [sys.executable, "-m", "pytest", "-p", "tests.sanitize.plugin", "-p", "no:cacheprovider",
           *args]
    return subprocess.call(cmd, env=runtime_env())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
