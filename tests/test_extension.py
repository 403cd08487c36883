"""shallowkern._C: loaded when built; when missing, import still works, warns once, and ops fall
back to the reference."""

import subprocess
import sys
import textwrap

import torch

import shallowkern
from shallowkern.testing import requires_ext


@requires_ext
def test_extension_loaded_with_its_ops():
    from shallowkern import _C

    assert isinstance(_C.with_openmp, bool) and _C.omp_max_threads() >= 1
    assert _C.get_knob("SHALLOWKERN_CPU_PARTIALS_MB").isdigit()  # the C++ knobs (_knobs.py)
    assert hasattr(torch.ops.shallowkern, "_wide_conv2d_native")
    assert shallowkern._ext.load_error is None


def test_import_without_extension_is_quiet_and_falls_back():
    """A pure-Python install (the extension never built) is a supported choice: import does not
    warn (issue 8, item 7; the reason is logged at debug level), ops run the reference."""
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["shallowkern._C"] = None          # as if the build had failed
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import shallowkern, torch
            import shallowkern.ops                    # a second import must not warn again
        msgs = [str(w.message) for w in caught if "shallowkern._C" in str(w.message)]
        assert msgs == [], msgs
        assert not shallowkern._ext.available() and shallowkern._ext.load_error
        conv = shallowkern.WideConv2d(3, 4, 3, activation="relu", pool=2)
        y = conv(torch.randn(2, 3, 8, 8))
        assert y.shape == (2, 4, 3, 3)
        choice = shallowkern.last_backend("wide_conv2d")
        assert choice.backend == "reference", choice
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
