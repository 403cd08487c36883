"""Proof that the sanitized build fails on a memory error or undefined behaviour (issue 9,
item 2): deliberate bugs in test-only ops (csrc/tests/sanitizer_canary_op.cpp, compiled only into
the sanitized extension) must abort a child interpreter with the sanitizer's report, while the
same ops called in bounds run clean. Skipped outside ``python -m tests.sanitize``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from . import build

pytestmark = pytest.mark.skipif(
    os.environ.get("SHALLOWKERN_SANITIZED_RUN") != "1" or not build.runtime_loaded(),
    reason="runs only under `python -m tests.sanitize` (the ASan + UBSan build)")

CHILD = """
import sys
sys.path.insert(0, {root!r})
from tests.sanitize import build
build.load()
import torch, shallowkern
assert getattr(shallowkern._ext._C, "sanitized", None), "not the sanitized extension"
print("value", int(getattr(torch.ops.shallowkern_test, {op!r})({index})), flush=True)
"""


def _child(op: str, index: int) -> subprocess.CompletedProcess:
    code = CHILD.format(root=str(build.ROOT), op=op, index=index)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ), cwd=str(build.ROOT))


def test_this_run_uses_the_sanitized_extension():
    import shallowkern

    assert shallowkern._ext.available()
    assert getattr(shallowkern._ext._C, "sanitized", "") == build.SANITIZERS


@pytest.mark.parametrize("op,report", [("oob_read", "heap-buffer-overflow"),
                                       ("signed_overflow", "signed integer overflow")])
def test_sanitizer_turns_a_bug_into_a_failed_run(op, report):
    clean = _child(op, 3)
    assert clean.returncode == 0 and "value" in clean.stdout, clean.stderr[-3000:]
    bad = _child(op, 4)
    assert bad.returncode != 0, f"{op}(4) ran to the end under the sanitizer:\n{bad.stdout}"
    assert report in bad.stderr, bad.stderr[-3000:]
    assert "value" not in bad.stdout
