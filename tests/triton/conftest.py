"""Run the Triton kernels in Triton's CPU interpreter when there is no GPU.

TRITON_INTERPRET must be set before any @triton.jit kernel is defined (triton.jit reads it at
decoration time), i.e. before shallowkern.triton.* is first imported. tests/conftest.py does it
for the whole session; this repeats it so that running this folder alone is safe. The
numerical tests here skip with a reason if the kernels still came out uninterpreted on a
machine without CUDA.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
