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


# ---------------------------------------------------------------------------------------------
# op specs: what the one contract suite (tests/ops/test_contract.py) and the fuzzer
# (tests/fuzz/) need to know about an op. One spec per op in tests/specs/<op>.py as ``SPEC``.
# ---------------------------------------------------------------------------------------------
from dataclasses import field  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402


@dataclass(frozen=True)
class Sample:
    """One call: ``fn(*args, **kwargs)``. ``name`` appears in test ids and messages."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    name: str = ""

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Sample":
        """The same call with every tensor argument (also inside lists) replaced by fn(t)."""
        def conv(v):
            if isinstance(v, torch.Tensor):
                return fn(v)
            if isinstance(v, (list, tuple)) and any(isinstance(e, torch.Tensor) for e in v):
                return type(v)(conv(e) for e in v)
            return v
        return Sample(tuple(conv(a) for a in self.args),
                      {k: conv(v) for k, v in self.kwargs.items()}, self.name)

    def tensors(self) -> list[torch.Tensor]:
        out = []
        for v in list(self.args) + list(self.kwargs.values()):
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif isinstance(v, (list, tuple)):
                out.extend(e for e in v if isinstance(e, torch.Tensor))
        return out


@dataclass(frozen=True)
class BadInput:
    """A call that must raise ``exc`` with a message matching ``match`` (naming the argument)."""

    sample: Sample
    exc: type[BaseException] | tuple[type[BaseException], ...]
    match: str


@dataclass(frozen=True)
class OpSpec:
    """A test-only description of one op, enough for the contract suite and the fuzzer.

    Args:
        name: the op's name as its dispatch records it (``last_backend(name)``).
        op: the public functional, ``op(*sample.args, **sample.kwargs) -> Tensor``.
        reference: the pure-PyTorch reference with the same signature (run in fp64 as oracle;
            differentiable, so it also gives reference gradients).
        samples: ``(dtype) -> list[Sample]`` of CPU inputs in that dtype, awkward shapes
            included (tensors that should get gradients have requires_grad=False here; the
            suite decides). Keep them small: every backend runs every sample.
        backends: backends to check on CPU (``"triton"`` runs in the interpreter: give it
            ``triton_samples``).
        dtypes: dtypes of the backend-vs-reference check.
        reduction: ``(sample) -> int``, the reduction length for the tolerance table.
        to_registered: ``(sample) -> (OpOverload, args)``: the registered op's call for a sample,
            for ``torch.library.opcheck``.
        bad_inputs: ``() -> list[BadInput]`` for the functional (the registered op sees them
            too, through the functional).
        flops: ``(sample) -> int``, the forward's expected ``FlopCounterMode`` count.
        grad_argnums: positions of differentiable tensor arguments.
        triton_samples: ``(dtype) -> list[Sample]``, tiny inputs for the interpreter.
        module: ``() -> (nn.Module, Tensor)``: a module using the op and an input, for the
            module-level checks (fx tracing, autocast, compile).
        fuzz / fuzz_reference: ``(random.Random) -> Sample`` of raw registered-op calls
            (impossible ones included) and the pure-torch function with the registered op's
            signature to compare valid ones with (tests/fuzz/).
        skips: ``{check: reason}`` for contract checks that cannot apply to this op (``"gradgradcheck"``,
            ``"fx_trace"`` of the module); the suite reports each as a skip with the reason, never silently.
    """

    name: str
    op: Callable[..., Any]
    reference: Callable[..., Any]
    samples: Callable[[torch.dtype], Sequence[Sample]]
    to_registered: Callable[[Sample], tuple[Any, tuple]]
    bad_inputs: Callable[[], Sequence[BadInput]]
    flops: Callable[[Sample], int]
    grad_argnums: tuple[int, ...]
    backends: tuple[str, ...] = ("reference", "native")
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    reduction: Callable[[Sample], int] = lambda sample: 1
    triton_samples: Callable[[torch.dtype], Sequence[Sample]] | None = None
    module: Callable[[], tuple[torch.nn.Module, torch.Tensor]] | None = None
    fuzz: Callable[[Any], Sample] | None = None
    fuzz_reference: Callable[..., Any] | None = None
    skips: dict[str, str] = field(default_factory=dict)


def all_specs() -> list[OpSpec]:
    """Every ``SPEC`` in tests/specs/ (imported by module name; the tests tree must be importable)."""
    import importlib
    import pkgutil

    pkg = importlib.import_module("tests.specs")
    specs = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"tests.specs.{info.name}")
        spec = getattr(mod, "SPEC", None)
        if spec is not None:
            specs.append(spec)
    return specs
