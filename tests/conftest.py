"""Test-session setup: Triton runs in its CPU interpreter when there is no GPU.

TRITON_INTERPRET must be set before any @triton.jit kernel is defined, so it is set here, at
conftest import, before test modules import shallowkern.triton.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests run against ../shared/datasets unless the user points elsewhere.
_shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")
if "SHALLOWKERN_DATA" not in os.environ and os.path.isdir(_shared):
    os.environ["SHALLOWKERN_DATA"] = os.path.abspath(_shared)

