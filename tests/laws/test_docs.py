"""docs/laws_example.md is a doctest: every printed number in it is a real output."""

from __future__ import annotations

import doctest
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "laws_example.md"


def test_laws_example_doc_runs():
    assert DOC.is_file(), DOC
    result = doctest.testfile(
        str(DOC), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.attempted > 20
    assert result.failed == 0, (
        f"{result.failed} doctest example(s) in {DOC.name} failed (see output)"
    )
