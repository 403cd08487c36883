"""Packaging (issue 8 item 7): version ranges, extras, LICENSE, --version, lazy imports, and a
pure-Python install that does not warn at every import."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import shallowkern

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_metadata_accepts_a_torch_range_and_declares_the_extras():
    deps = PYPROJECT["project"]["dependencies"]
    torch = next(d for d in deps if d.startswith("torch"))
    assert "==" not in torch and ">=2.11" in torch and "<2.14" in torch
    assert not any(d.startswith("torch") and "==" in d
                   for d in PYPROJECT["build-system"]["requires"])
    triton = next(d for d in deps if d.startswith("triton"))
    assert ">=3.6" in triton and "==" not in triton.split(";")[0]
    assert {"test", "ray", "submitit"} <= set(PYPROJECT["project"]["optional-dependencies"])
    # setup.sh still installs the exact torch this machine builds against
    assert '"torch==2.13.0"' in (ROOT / "scripts" / "setup.sh").read_text()


def test_license_file_matches_the_declared_license():
    lic = PYPROJECT["project"]["license"]
    # the table form: setuptools < 77 rejects an SPDX string here
    assert lic == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_version_is_one_value():
    assert shallowkern.__version__ == PYPROJECT["project"]["version"]
    out = subprocess.run([sys.executable, "-m", "shallowkern", "--version"], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == f"shallowkern {shallowkern.__version__}"


def test_import_does_not_load_scipy_matplotlib_or_the_subpackages():
    r = _python("import sys, shallowkern\n"
                "heavy = ['scipy', 'matplotlib', 'shallowkern.laws', 'shallowkern.profile',\n"
                "         'shallowkern.sweep', 'shallowkern.cli', 'torch.utils.benchmark']\n"
                "print([m for m in heavy if m in sys.modules])\n"
                "shallowkern.laws.fit_power_law  # lazily imported on first use\n"
                "print('scipy' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "True"]


def test_profile_is_the_package_and_stays_callable():
    import torch

    import shallowkern.profile as p
    from shallowkern.models import GeneralizedLeNet

    assert p.__name__ == "shallowkern.profile" and shallowkern.profile is p
    assert hasattr(p, "ProfileResult") and callable(p)
    res = shallowkern.profile(GeneralizedLeNet(2), torch.randn(1, 3, 32, 32), latency=False)
    assert res.totals.flops == p.profile(GeneralizedLeNet(2), torch.randn(1, 3, 32, 32),
                                         latency=False).totals.flops


def test_a_pure_python_install_does_not_warn_at_import():
    """An extension that was never built (SHALLOWKERN_NO_EXT=1) is a supported install: no
    RuntimeWarning (``-W error`` would turn it into an exception), only a debug log."""
    r = _python(
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'shallowkern._C':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import importlib.util\n"
        "importlib.util.find_spec = (lambda f: lambda n, *a: None if n == 'shallowkern._C'"
        " else f(n, *a))(importlib.util.find_spec)\n"
        "import shallowkern\n"
        "print(shallowkern._ext.available(), 'not built' in shallowkern._ext.load_error)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False True" and "Warning" not in r.stderr


def test_ops_and_modules_do_not_load_triton_until_a_kernel_or_flop_count_needs_it():
    """torch.utils.flop_counter imports Triton (~0.5 s): the ops register their FLOP formulas
    when it is first imported, so importing the ops and modules loads neither."""
    r = _python("import sys, torch, shallowkern, shallowkern.ops, shallowkern.nn, shallowkern.models\n"
                "print('triton' in sys.modules, 'scipy' in sys.modules)\n"
                "from torch.utils.flop_counter import FlopCounterMode\n"
                "x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)\n"
                "with FlopCounterMode(display=False) as c:\n"
                "    shallowkern.ops.wide_conv2d(x, w)\n"
                "print(c.get_total_flops())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["False False", str(2 * 2 * 6 * 6 * 4 * 27)]
