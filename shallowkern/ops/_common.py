"""What every registered op needs besides its kernels: autocast rules and function transforms.

* ``register_autocast(qualname)``: under ``torch.autocast`` the op casts its floating-point tensor
  arguments to the region's dtype (``torch.get_autocast_dtype``), as aten's conv/linear do (they
  are on autocast's lower-precision list for CPU bf16 and CUDA fp16/bf16). ``torch.library.
  register_autocast`` takes one fixed dtype, so this registers the same kind of kernel reading
  the region's dtype instead.
* ``needs_composite(*tensors)``: True under ``torch.func`` transforms (grad, vjp, jvp, vmap...)
  or forward-mode AD, where a custom op's autograd formula does not apply (jvp would give a
  silent zero tangent). Functionals then run their reference composition, which every transform
  differentiates exactly. Double backward is handled in each op's backward (``create_graph``).
* ``plain_eager_cpu(input, dtypes)``: the condition under which a functional may call its C++
  CPU kernel straight, skipping its public op's dispatch (host cost on small layers).
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from ._backend import forced

_libs: list[torch.library.Library] = []


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The active autocast dtype for ``device_type``, or None outside autocast."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def cast_for_autocast(device_type: str, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Cast floating-point tensors to the active autocast dtype (identity outside autocast)."""
    dtype = autocast_dtype(device_type)
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t
                 for t in tensors)


def register_autocast(qualname: str, device_types: tuple[str, ...] = ("cpu", "cuda")) -> None:
    """Autocast kernels for ``qualname`` ("shallowkern::op") casting to the region's dtype."""
    namespace, name = qualname.split("::")
    lib = torch.library.Library(namespace, "IMPL")
    _libs.append(lib)
    op = getattr(getattr(torch.ops, namespace), name).default
    for device_type in device_types:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(_keyset, *args, _device_type=device_type, _excluded=keyset):
            with torch._C._ExcludeDispatchKeyGuard(_excluded):
                dtype = torch.get_autocast_dtype(_device_type)
                cast = [a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point()
                        and a.device.type == _device_type else a for a in args]
                return op(*cast)

        lib.impl(name, kernel, key, with_keyset=True)


_peek_interpreter = torch._C._functorch.peek_interpreter_stack


def plain_eager_cpu(input, dtypes: tuple[torch.dtype, ...]) -> bool:
    """True for a plain eager CPU call in ``dtypes``: no autocast, function transform, forward AD,
    dispatch mode (FlopCounterMode counts public ops), compile or forced backend. Checked in C
    calls only: it guards the functionals' fast paths."""
    return (type(input) is Tensor and input.is_cpu and input.dtype in dtypes
            and not torch._C._is_any_autocast_enabled() and _peek_interpreter() is None
            and fwAD._current_level < 0 and torch._C._len_torch_dispatch_stack() == 0
            and not torch.compiler.is_compiling() and forced() is None)


def needs_composite(*tensors: Tensor | None) -> bool:
    """True when a function transform or forward-mode AD sees these tensors."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    if fwAD._current_level >= 0:
        return any(isinstance(t, Tensor) and fwAD.unpack_dual(t).tangent is not None
                   for t in tensors)
    return False


# ---------------------------------------------------------------------------------------------
# FLOP formulas, registered when torch.utils.flop_counter is first imported: that module imports
# Triton (~0.5 s), which `import shallowkern` must not pay until someone counts FLOPs.
# ---------------------------------------------------------------------------------------------
import importlib.abc  # noqa: E402
import importlib.machinery  # noqa: E402
import sys  # noqa: E402

_FLOP_COUNTER = "torch.utils.flop_counter"
_pending_formulas: list[tuple[object, object, bool]] = []


def _register_pending() -> None:
    from torch.utils.flop_counter import register_flop_formula as register

    while _pending_formulas:
        targets, fn, get_raw = _pending_formulas.pop(0)
        register(targets, get_raw=get_raw)(fn)


class _FlopCounterHook(importlib.abc.MetaPathFinder):
    """Runs the pending registrations right after torch.utils.flop_counter executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _FLOP_COUNTER:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module, _exec=exec_module):
            _exec(module)
            _register_pending()

        spec.loader.exec_module = exec_then_register
        return spec


_hook = _FlopCounterHook()


def register_flop_formula(targets, get_raw: bool = False):
    """``torch.utils.flop_counter.register_flop_formula``, deferred until that module is imported
    (at once if it already is). Same signature; ops import it from here."""
    def decorator(fn):
        if _FLOP_COUNTER in sys.modules:
            from torch.utils.flop_counter import register_flop_formula as register

            return register(targets, get_raw=get_raw)(fn)
        _pending_formulas.append((targets, fn, get_raw))
        if _hook not in sys.meta_path:
            sys.meta_path.insert(0, _hook)
        return fn
    return decorator
