"""One registry of every tuning knob and switch: per-op names, one environment variable each.

Each knob is read from its environment variable once (on first use) and cached; tests and users
change it at run time with ``override``, never by editing ``os.environ`` mid-process. Knobs read
by the C++ extension (``where="C++"``) are listed here too, so that the README's table
(``markdown_table()``, compared with the README by a test) is complete; their values are pushed
to the extension by ``override`` when it exposes ``set_knob``.

    >>> from shallowkern import _knobs as knobs
    >>> knobs.get("triton.autotune")
    True
    >>> with knobs.override({"wide_conv2d.cpu_forward": "vendor"}): ...
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping


def _bool(text: str) -> bool:
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 0/1, true/false, yes/no or on/off, got {text!r}")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"expected one of {options}, got {text!r}")
        return text
    parse.options = options  # type: ignore[attr-defined]
    return parse


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise ValueError(f"expected a non-negative integer, got {text!r}")
    return v


@dataclass(frozen=True)
class Knob:
    name: str                      # "<op or area>.<knob>", e.g. "wide_conv2d.cpu_forward"
    env: str                       # the environment variable it is read from
    default: Any                   # value when the variable is unset (None: decided per call)
    parse: Callable[[str], Any]    # text -> value; raises ValueError on a bad value
    doc: str                       # one line for the README table
    where: str = "Python"          # "Python" or "C++" (read by the extension)
    values: str = field(default="")  # the accepted values, for the table


KNOBS: dict[str, Knob] = {}


def register(knob: Knob) -> Knob:
    if knob.name in KNOBS:
        raise ValueError(f"knob {knob.name!r} is registered twice")
    KNOBS[knob.name] = knob
    return knob


for _k in (
    Knob("ops.backend", "SHALLOWKERN_BACKEND", None,
         _choice("native", "triton", "vendor", "reference"),
         "force a backend for every op where eligible (as `use_backend`)",
         values="`native`, `triton`, `vendor`, `reference`"),
    Knob("ops.log", "SHALLOWKERN_LOG", "", _choice("", "debug", "info", "warning"),
         "`debug` logs every backend choice", values="`debug`"),
    Knob("cli.debug", "SHALLOWKERN_DEBUG", False, _bool,
         "CLI errors with their traceback", values="`1`"),
    Knob("triton.autotune", "SHALLOWKERN_TRITON_AUTOTUNE", True, _bool,
         "`0`: Triton kernels run their first config, no autotuning", values="`0`, `1`"),
    Knob("triton.fixed_configs", "SHALLOWKERN_TRITON_FIXED_CONFIGS", "", str,
         "JSON table of Triton configs per kernel and shape (from "
         "`shallowkern.triton._utils.dump_config_table`): no autotuning, reproducible runs",
         values="path"),
    Knob("wide_conv2d.cpu_forward", "SHALLOWKERN_CPU_FORWARD", None,
         _choice("direct", "fused", "vendor"),
         "C++ CPU forward path (default: by reduction length C·R·S)", where="C++",
         values="`direct`, `fused`, `vendor`"),
    Knob("wide_conv2d.cpu_conv_layout", "SHALLOWKERN_CPU_CONV_LAYOUT", None,
         _choice("channels_last", "planar"),
         "C++ CPU vendor forward's oneDNN conv layout (default: inference calls time both once "
         "per shape and keep the faster; training and deterministic mode: channels_last)",
         where="C++", values="`channels_last`, `planar`"),
    Knob("wide_conv2d.cpu_backward", "SHALLOWKERN_CPU_BACKWARD", None, _choice("fused", "vendor"),
         "C++ CPU backward: our pool/ReLU-fused kernels or ATen's convolution_backward "
         "(default: vendor from a 256 MiB weight)", where="C++", values="`fused`, `vendor`"),
    Knob("wide_conv2d.cpu_sparse_backward", "SHALLOWKERN_CPU_SPARSE_BACKWARD", True, _bool,
         "`0`: C++ CPU backward with dense MKL GEMMs instead of the pooled-sparse kernels",
         where="C++", values="`0`, `1`"),
    Knob("wide_conv2d.cpu_avx512", "SHALLOWKERN_CPU_AVX512", True, _bool,
         "`0`: C++ CPU kernels as on a CPU without AVX-512", where="C++", values="`0`, `1`"),
    Knob("wide_conv2d.cpu_partials_mb", "SHALLOWKERN_CPU_PARTIALS_MB", 2048, _positive_int,
         "memory (MiB) for the per-thread weight-gradient partials", where="C++",
         values="MiB"),
    Knob("cpu.huge_pages", "SHALLOWKERN_CPU_HUGE_PAGES", True, _bool,
         "`0`: large C++ CPU outputs (>= 256 KiB: the spinal gradients) from `at::empty` "
         "instead of a reuse cache of freed blocks (<= 1 GiB; huge pages from 2 MiB; "
         "`shallowkern.empty_cpu_cache()` empties it)", where="C++", values="`0`, `1`"),
    Knob("wide_conv2d.cuda_kt", "SHALLOWKERN_WC2D_KT", None, _choice("4", "16"),
         "CUDA direct kernel's register blocking (default: per shape)", where="C++",
         values="`4`, `16`"),
):
    register(_k)

_lock = threading.Lock()
_values: dict[str, Any] = {}


def get(name: str) -> Any:
    """The knob's value: its override, else its environment variable (read once), else default."""
    try:
        knob = KNOBS[name]
    except KeyError:
        raise KeyError(f"unknown knob {name!r}; known: {sorted(KNOBS)}") from None
    with _lock:
        if name not in _values:
            text = os.environ.get(knob.env)
            if text is None or text == "":
                _values[name] = knob.default
            else:
                try:
                    _values[name] = knob.parse(text)
                except ValueError as exc:
                    raise ValueError(f"{knob.env}={text!r}: {exc}") from None
        return _values[name]


def _push_to_extension(knob: Knob, value: Any) -> None:
    if knob.where != "C++":
        return
    from . import _ext

    setter = getattr(_ext._C, "set_knob", None) if _ext.available() else None
    if setter is not None:
        text = "" if value is None else ("1" if value is True else "0" if value is False else str(value))
        setter(knob.env, text)


@contextlib.contextmanager
def override(values: Mapping[str, Any]) -> Iterator[None]:
    """Set knobs for the duration of a ``with`` block (process-wide), then restore them."""
    previous = {name: get(name) for name in values}
    try:
        for name, value in values.items():
            knob = KNOBS[name]
            if value is not None and isinstance(value, str) and knob.parse is not str:
                value = knob.parse(value)
            with _lock:
                _values[name] = value
            _push_to_extension(knob, value)
        yield
    finally:
        for name, value in previous.items():
            with _lock:
                _values[name] = value
            _push_to_extension(KNOBS[name], value)


def markdown_table() -> str:
    """The README's table of tuning variables (a test keeps the README in sync with this)."""
    rows = ["| variable | knob | read by | values | effect |", "|---|---|---|---|---|"]
    for k in KNOBS.values():
        rows.append(f"| `{k.env}` | `{k.name}` | {k.where} | {k.values} | {k.doc} |")
    return "\n".join(rows)
