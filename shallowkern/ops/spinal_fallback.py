"""Registrations of the spinal_linear ops that do not come from the C++ extension.

* Without _C (or with one built before the op existed): the schemas, reference CPU kernels, fake
  kernels and a Python autograd (the backward recomputes H), so the op keeps working.
* CUDA: the Triton kernels (shallowkern/triton/spinal_linear.py) or the CUDA C++ forward
  (shallowkern::_spinal_linear_cuda), registered as the ops' CUDA kernels.
"""

from __future__ import annotations

import torch

from .spinal_reference import (check_args, spinal_linear_backward_reference,
                               spinal_linear_forward_reference)

SCHEMAS = {
    "spinal_linear": (
        "spinal_linear(Tensor input, Tensor[] weight_x, Tensor[] weight_h, Tensor[] bias, "
        "Tensor out_weight, Tensor? out_bias, int splits, str activation, str backend) -> Tensor"),
    "spinal_linear_forward": (
        "spinal_linear_forward(Tensor input, Tensor[] weight_x, Tensor[] weight_h, Tensor[] bias, "
        "Tensor out_weight, Tensor? out_bias, int splits, str activation, str backend) "
        "-> (Tensor out, Tensor hidden)"),
    "spinal_linear_backward": (
        "spinal_linear_backward(Tensor grad_out, Tensor input, Tensor[] weight_x, Tensor[] weight_h, "
        "Tensor hidden, Tensor out_weight, int splits, str activation, str backend) "
        "-> (Tensor grad_input, Tensor[] grad_weight_x, Tensor[] grad_weight_h, Tensor[] grad_bias, "
        "Tensor grad_out_weight, Tensor grad_out_bias)"),
}


def _has_kernel(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"shallowkern::{name}", key)


def _define_python_ops() -> None:
    """Whatever _C did not provide (schemas, CPU kernels, Meta, autograd), from Python.

    Without the extension (or with one built before this op existed) the op keeps working: the
    CPU kernels are the references, the backward recomputes H (no saved buffer).
    """
    lib = torch.library.Library("shallowkern", "FRAGMENT")  # noqa: TOR901
    _LIBS.append(lib)
    if not hasattr(torch.ops.shallowkern, "spinal_linear_backward"):
        for schema in SCHEMAS.values():
            lib.define(schema)
    if not _has_kernel("spinal_linear", "CPU"):
        def checked_forward(*a):
            check_args(*a[:8])  # the raw op is public API: the same clear errors as the functional
            return spinal_linear_forward_reference(*a[:8])

        lib.impl("spinal_linear", lambda *a: checked_forward(*a)[0], "CPU")
        lib.impl("spinal_linear_forward", checked_forward, "CPU")
        lib.impl("spinal_linear_backward", lambda *a: spinal_linear_backward_reference(*a[:8]), "CPU")
    if _has_kernel("spinal_linear", "Autograd"):
        return  # C++ Meta and autograd kernels are there

    def fake_fwd(input, weight_x, weight_h, bias, out_weight, out_bias, splits, activation, backend):
        check_args(input, weight_x, weight_h, bias, out_weight, out_bias, splits, activation)
        B, LW = input.shape[0], len(weight_x) * weight_x[0].shape[0]
        return input.new_empty(B, out_weight.shape[0]), input.new_empty(B, LW)

    def fake_bwd(grad_out, input, weight_x, weight_h, hidden, out_weight, splits, activation, backend):
        return (torch.empty_like(input), [torch.empty_like(w) for w in weight_x],
                [torch.empty_like(w) for w in weight_h],
                [input.new_empty(w.shape[0]) for w in weight_x], torch.empty_like(out_weight),
                input.new_empty(out_weight.shape[0]))

    torch.library.register_fake("shallowkern::spinal_linear", lambda *a: fake_fwd(*a)[0], lib=lib)
    torch.library.register_fake("shallowkern::spinal_linear_forward", fake_fwd, lib=lib)
    torch.library.register_fake("shallowkern::spinal_linear_backward", fake_bwd, lib=lib)

    def setup_context(ctx, inputs, output):
        ctx.args = inputs
        ctx.save_for_backward(inputs[0], *inputs[1], *inputs[2], *inputs[3], inputs[4],
                              *(() if inputs[5] is None else (inputs[5],)))
        ctx.counts = (len(inputs[1]), len(inputs[3]), inputs[5] is not None)

    def backward(ctx, grad):
        L, nb, has_bo = ctx.counts
        t = list(ctx.saved_tensors)
        x, wx, wh, b = t[0], t[1:1 + L], t[1 + L:2 * L], t[2 * L:2 * L + nb]
        wo = t[2 * L + nb]
        bo = t[2 * L + nb + 1] if has_bo else None
        splits, act, backend = ctx.args[6:9]
        # the fallback saves no hidden buffer: recompute it (one forward) in the backward
        _, H = torch.ops.shallowkern.spinal_linear_forward(x, wx, wh, b, wo, bo, splits, act, backend)
        gx, gwx, gwh, gb, gwo, gbo = torch.ops.shallowkern.spinal_linear_backward(
            grad, x, wx, wh, H, wo, splits, act, backend)
        return gx, list(gwx), list(gwh), list(gb) if nb else [], gwo, gbo if has_bo else None, \
            None, None, None

    torch.library.register_autograd("shallowkern::spinal_linear", backward,
                                    setup_context=setup_context, lib=lib)


_LIBS: list = []
# True when _C carries the C++ CPU kernel, Meta and autograd (csrc/cpu/spinal_linear.cpp)
# (checked on the dispatcher itself: a _C built before this op existed has neither)
NATIVE_CPU = hasattr(torch.ops.shallowkern, "spinal_linear_backward") and \
    _has_kernel("spinal_linear", "CPU") and _has_kernel("spinal_linear", "Autograd")
if not NATIVE_CPU:  # pragma: no cover - exercised by the no-extension CI job
    _define_python_ops()


# ---------------------------------------------------------------------------------------------
# CUDA kernels (Triton; the CUDA C++ forward through shallowkern::_spinal_linear_cuda)
# ---------------------------------------------------------------------------------------------
def _cuda_forward(input, weight_x, weight_h, bias, out_weight, out_bias, splits, activation, backend,
                  need_hidden: bool):
    if backend == "native" and not need_hidden:
        return torch.ops.shallowkern._spinal_linear_cuda(
            input, list(weight_x), list(weight_h), list(bias), out_weight, out_bias, splits,
            activation), None
    if backend in ("triton", "native"):
        from ..triton import spinal_linear as tk
        return tk.spinal_forward(input, weight_x, weight_h, bias, out_weight, out_bias, splits,
                                 activation, need_hidden=need_hidden)
    y, H = spinal_linear_forward_reference(input, weight_x, weight_h, bias, out_weight, out_bias,
                                           splits, activation)
    return y, H


def _cuda_backward(grad_out, input, weight_x, weight_h, hidden, out_weight, splits, activation,
                   backend):
    if backend in ("triton", "native"):
        from ..triton import spinal_linear as tk
        return tk.spinal_backward(grad_out, input, weight_x, weight_h, hidden, out_weight, splits,
                                  activation)
    return spinal_linear_backward_reference(grad_out, input, weight_x, weight_h, hidden, out_weight,
                                            splits, activation)


for _name, _fn in (
    ("spinal_linear", lambda *a: _cuda_forward(*a, need_hidden=False)[0]),
    ("spinal_linear_forward", lambda *a: _cuda_forward(*a, need_hidden=True)),
    ("spinal_linear_backward", _cuda_backward),
):
    torch.library.register_kernel(f"shallowkern::{_name}", "cuda", _fn,
                                  lib=_LIBS[0] if _LIBS else None)

