"""pytest plugin (``-p tests.sanitize.plugin``): load the sanitized extension (tests/sanitize/build.py)
as shallowkern._C before any test module imports shallowkern."""

from . import build

build.load(verbose=False)
