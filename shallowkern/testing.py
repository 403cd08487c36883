"""Shared test and benchmark helpers: tolerances, an upcast-reference assert, awkward shapes, skips.

Tolerances are per dtype, compared against a float64 reference; atol grows with the square root
of the reduction length (C/groups * R * S for a conv), the usual random-walk growth of rounding
error in a sum. For fp16/bf16 the stricter rule also applies where a PyTorch result exists: our
error must be at most twice PyTorch's own low-precision error against the same reference.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import torch


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float  # for a reduction of length 1; scaled by sqrt(reduction length)


TOLERANCES: dict[torch.dtype | str, Tol] = {
    torch.float64: Tol(1e-10, 1e-12),
    torch.float32: Tol(1e-5, 2e-6),
    "tf32": Tol(2e-3, 5e-4),  # fp32 through tensor cores (10-bit mantissa products)
    torch.float16: Tol(2e-3, 1e-3),
    torch.bfloat16: Tol(1.6e-2, 8e-3),
}


def tolerance(dtype: torch.dtype | str, reduction: int = 1) -> tuple[float, float]:
    """(rtol, atol) for results of ``dtype`` summing ``reduction`` products."""
    tol = TOLERANCES[dtype]
    return tol.rtol, tol.atol * math.sqrt(max(reduction, 1))


def assert_close(actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype | str | None = None,
                 reduction: int = 1, torch_result: torch.Tensor | None = None, msg: str = "") -> None:
    """Compare ``actual`` with a (float64) ``reference`` using the tolerance table.

    ``torch_result``: PyTorch's own result in the same low precision; when given, the error of
    ``actual`` must also be <= 2x its error (plus a tiny floor), the rule for fp16/bf16 kernels.
    """
    dtype = dtype or actual.dtype
    assert actual.shape == reference.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    a, r = actual.detach().double().cpu(), reference.detach().double().cpu()
    assert not torch.isnan(a).any() or torch.isnan(r).any(), f"{msg} NaN in result"
    rtol, atol = tolerance(dtype, reduction)
    torch.testing.assert_close(a, r, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{msg} {m}")
    if torch_result is not None and a.numel():
        ours = (a - r).abs().max().item()
        theirs = (torch_result.detach().double().cpu() - r).abs().max().item()
        assert ours <= 2 * theirs + atol * 1e-3, f"{msg} error {ours:.3g} > 2x PyTorch's {theirs:.3g}"


def poison(shape, dtype: torch.dtype, device="cpu") -> torch.Tensor:
    """A tensor full of NaN (or the max value for ints): catches elements a kernel never wrote."""
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.full(shape, torch.iinfo(dtype).max, dtype=dtype, device=device)


# Awkward shapes, named (CONVENTIONS.md §5).
FIRST_LAYER_CIN = 3
WIDTHS = (1, 6, 127, 1000)
PRIMES = (2, 3, 5, 7, 11, 13, 31)
ODD_HW = 31
TINY = (1, 1, 5, 5)
EMPTY_BATCH = 0


def has_cuda() -> bool:
    return torch.cuda.is_available()


def has_ext() -> bool:
    from . import _ext

    return _ext.available()


def has_cuda_ext() -> bool:
    from . import _ext

    return has_cuda() and _ext.has_cuda_kernels()


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


requires_cuda = pytest.mark.skipif(not has_cuda(), reason="needs a CUDA device")
requires_ext = pytest.mark.skipif(not has_ext(), reason="shallowkern._C is not built")
requires_cuda_ext = pytest.mark.skipif(not has_cuda_ext(),
                                       reason="needs a CUDA device and shallowkern._C built with CUDA")
