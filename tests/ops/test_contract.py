"""The op contract: every op in tests/specs/ is held to the same checks.

For each OpSpec (shallowkern.testing): every listed backend against the fp64 reference (forward
and gradients), torch.library.opcheck on the registered op, fp64 gradcheck and gradgradcheck,
torch.compile(fullgraph=True), torch.export, the FlopCounterMode count, torch.func grad/jvp,
CPU autocast, fx tracing of a module using the op, and bad input -> a clear exception. A new op
adds a spec, not a copied test file.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import shallowkern
from shallowkern.ops import explain, use_backend
from shallowkern.testing import OpSpec, Sample, all_specs, assert_close, tolerance

SPECS = all_specs()


def _ids(spec: OpSpec) -> str:
    return spec.name


def _leaves(sample: Sample, spec: OpSpec, dtype: torch.dtype | None = None,
            grad: bool = True) -> tuple[Sample, list[torch.Tensor]]:
    """The sample in ``dtype`` with fresh leaves; grad arguments require grad."""
    args = list(sample.args)
    leaves = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            t = a.detach().clone(memory_format=torch.preserve_format)
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            if grad and i in spec.grad_argnums and t.is_floating_point():
                t.requires_grad_(True)
                leaves.append(t)
            args[i] = t
    return Sample(tuple(args), dict(sample.kwargs), sample.name), leaves


def _grad_leaves_of(sample: Sample, spec: OpSpec) -> list[torch.Tensor]:
    return [a for i, a in enumerate(sample.args) if i in spec.grad_argnums
            and isinstance(a, torch.Tensor) and a.requires_grad]


def _call(fn, sample: Sample):
    return fn(*sample.args, **sample.kwargs)


def _backend_cases():
    for spec in SPECS:
        for backend in spec.backends:
            if backend == "triton":
                if spec.triton_samples is None:
                    continue
                dtypes = (torch.float32, torch.float16)  # bf16 is broken in the interpreter
                make = spec.triton_samples
            else:
                dtypes, make = spec.dtypes, spec.samples
            for dtype in dtypes:
                for sample in make(dtype):
                    yield pytest.param(spec, backend, dtype, sample,
                                       id=f"{spec.name}-{backend}-{str(dtype)[6:]}-{sample.name}")


@pytest.mark.parametrize("spec,backend,dtype,sample", list(_backend_cases()))
def test_backend_matches_reference(spec: OpSpec, backend: str, dtype, sample: Sample):
    ours, leaves = _leaves(sample, spec)
    op, reg_args = spec.to_registered(ours)
    with use_backend(backend):
        planned = explain(spec.name, *reg_args)
    if planned.backend != backend:
        pytest.skip(f"{backend} not eligible for this sample: {planned.reason}")
    with use_backend(backend):
        out = _call(spec.op, ours)
    assert shallowkern.last_backend(spec.name).backend == backend
    ref_sample, ref_leaves = _leaves(sample, spec, torch.float64)
    ref = _call(spec.reference, ref_sample)
    red = spec.reduction(sample)
    assert out.dtype == dtype
    assert_close(out, ref, dtype, red, msg=f"{spec.name}/{backend} forward")
    if out.numel() == 0 or not leaves:
        return
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with use_backend(backend):
        out.backward(g.to(dtype))
    ref.backward(g)
    grad_red = max(red, out.numel())
    for i, (got, want) in enumerate(zip(leaves, ref_leaves)):
        assert got.grad is not None, f"{spec.name}/{backend}: no gradient for leaf {i}"
        assert_close(got.grad, want.grad, dtype, grad_red, msg=f"{spec.name}/{backend} grad {i}")


def _first(spec: OpSpec, n: int = 1, dtype=torch.float32, nonempty: bool = True) -> list[Sample]:
    out = [s for s in spec.samples(dtype)
           if not nonempty or all(t.numel() for t in s.tensors())]
    return out[:n]


def _smallest(spec: OpSpec, n: int, dtype=torch.float64) -> list[Sample]:
    """The n non-empty samples with the fewest elements (numerical Jacobians cost 2 calls each)."""
    out = [s for s in spec.samples(dtype) if all(t.numel() for t in s.tensors())]
    return sorted(out, key=lambda s: sum(t.numel() for t in s.tensors()))[:n]


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_opcheck(spec: OpSpec):
    samples = _first(spec, 3)
    samples += [s for s in spec.samples(torch.float32) if s.name == "channels_last"]
    for sample in samples:
        ours, _ = _leaves(sample, spec)
        op, args = spec.to_registered(ours)
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_gradcheck_and_gradgradcheck(spec: OpSpec):
    for k, sample in enumerate(_smallest(spec, 2)):
        ours, leaves = _leaves(sample, spec)

        def fn(*ts, _s=ours):
            args = list(_s.args)
            it = iter(ts)
            for i in spec.grad_argnums:
                if i < len(args) and isinstance(args[i], torch.Tensor):
                    args[i] = next(it)
            return spec.op(*args, **_s.kwargs)

        assert torch.autograd.gradcheck(fn, tuple(leaves))
        if k == 0 and "gradgradcheck" not in spec.skips:
            # double backward on the smallest sample (its numerical Jacobian is costly)
            assert torch.autograd.gradgradcheck(fn, tuple(leaves))
    if "gradgradcheck" in spec.skips:
        pytest.skip(f"gradcheck passed; gradgradcheck skipped: {spec.skips['gradgradcheck']}")


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_compile_fullgraph(spec: OpSpec):
    torch._dynamo.reset()
    sample = _first(spec)[0]
    ours, leaves = _leaves(sample, spec)
    compiled = torch.compile(spec.op, fullgraph=True, backend="aot_eager")
    out = _call(compiled, ours)
    eager, eager_leaves = _leaves(sample, spec)
    want = _call(spec.op, eager)
    torch.testing.assert_close(out, want)
    out.sum().backward()
    want.sum().backward()
    for a, b in zip(leaves, eager_leaves):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_export(spec: OpSpec):
    sample = _first(spec)[0]
    tensors = [i for i, a in enumerate(sample.args) if isinstance(a, torch.Tensor)]

    class Wrapper(torch.nn.Module):
        def forward(self, *ts):
            args = list(sample.args)
            for i, t in zip(tensors, ts):
                args[i] = t
            return spec.op(*args, **sample.kwargs)

    inputs = tuple(sample.args[i] for i in tensors)
    exported = torch.export.export(Wrapper(), inputs)
    names = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any(f"shallowkern.{spec.name}" in n for n in names), names
    torch.testing.assert_close(exported.module()(*inputs), Wrapper()(*inputs))


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_flop_formula(spec: OpSpec):
    for sample in spec.samples(torch.float32):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            _call(spec.op, sample)
        assert counter.get_total_flops() == spec.flops(sample), sample.name


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_bad_input_raises_clearly(spec: OpSpec):
    for bad in spec.bad_inputs():
        with pytest.raises(bad.exc, match=bad.match):
            _call(spec.op, bad.sample)


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_function_transforms(spec: OpSpec):
    """torch.func.grad and jvp give the reference's derivatives (never a silent zero tangent)."""
    sample = _first(spec, dtype=torch.float64)[0]
    argnum = spec.grad_argnums[0]

    def f(fn, x):
        args = list(sample.args)
        args[argnum] = x
        return fn(*args, **sample.kwargs)

    x = sample.args[argnum]
    tangent = torch.randn_like(x)
    for fn_name, fn in (("op", spec.op), ("reference", spec.reference)):
        _, jvp_out = torch.func.jvp(lambda t: f(fn, t), (x,), (tangent,))
        grad = torch.func.grad(lambda t: f(fn, t).square().sum())(x)
        if fn_name == "op":
            ours = (jvp_out, grad)
        else:
            torch.testing.assert_close(ours[0], jvp_out)
            torch.testing.assert_close(ours[1], grad)
    assert ours[0].abs().sum() > 0


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_autocast_cpu_bf16(spec: OpSpec):
    """Under CPU autocast the op computes in bf16, as the aten composition it replaces does."""
    sample = _first(spec)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _call(spec.op, sample)
        want = _call(spec.reference, sample)
    assert out.dtype == want.dtype, (out.dtype, want.dtype)
    ref = _call(spec.reference, sample.map_tensors(lambda t: t.double() if t.is_floating_point() else t))
    assert_close(out, ref, torch.bfloat16, spec.reduction(sample))
    # a bf16 activation with fp32 parameters works under autocast, as for nn layers
    bf = sample.map_tensors(lambda t: t)
    args = list(bf.args)
    args[0] = args[0].bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert spec.op(*args, **bf.kwargs).dtype == torch.bfloat16


@pytest.mark.parametrize("spec", [s for s in SPECS if s.module is not None], ids=_ids)
def test_module_fx_trace_and_compile(spec: OpSpec):
    mod, x = spec.module()
    want = mod(x)
    if "fx_trace" not in spec.skips:
        traced = torch.fx.symbolic_trace(mod)
        torch.testing.assert_close(traced(x), want)
    torch._dynamo.reset()
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), want)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mod(x).dtype == torch.bfloat16
    if "fx_trace" in spec.skips:
        pytest.skip(f"compile and autocast passed; fx trace skipped: {spec.skips['fx_trace']}")


def test_every_backend_of_every_op_is_known():
    for spec in SPECS:
        for backend in spec.backends:
            assert backend in ("native", "triton", "vendor", "reference"), (spec.name, backend)
    assert tolerance(torch.float32, 4)[1] > tolerance(torch.float32, 1)[1]
