"""Shared pieces of every Triton kernel module: launch, interpreter, autotuning, program order,
input precision. Kernel files (``shallowkern/triton/<op>.py``) hold @triton.jit kernels and
their launchers only; how a kernel is launched is decided here, once.

Launch modes of a ``TunedKernel`` (in this order):

1. an explicit ``config`` (a test hook) runs as given;
2. under ``TRITON_INTERPRET=1`` the kernel's single interpreter config runs (autotuning needs a
   GPU timer; the interpreter's cost grows with the number of programs, so it is a large tile);
3. ``SHALLOWKERN_TRITON_FIXED_CONFIGS=table.json`` (knob ``triton.fixed_configs``): the config
   recorded for this kernel and autotune key in the table; a key not in the table runs the
   heuristic config (4.) -- never a timing, so two runs launch the same configs and give the same
   bits. ``dump_config_table(path)`` writes the configs an autotuned run chose, in that format;
4. ``SHALLOWKERN_TRITON_AUTOTUNE=0`` (knob ``triton.autotune``): the heuristic config, the first
   config the kernel's prune function keeps for these arguments;
5. otherwise ``triton.autotune`` over the kernel's configs, once per autotune key.

Autotune keys name what the best tile depends on and exclude the batch size (CONVENTIONS: one
tuning per layer, not per batch): e.g. channels, kernel size, spatial size and layout for a conv.
Triton appends the dtype of every tensor argument to the key itself.

JSON table format: ``{"<kernel name>": {"<key repr>": {"kwargs": {...}, "num_warps": 8,
"num_stages": 3}}}``, key repr as ``config_key`` writes it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import _knobs as knobs

__all__ = ["TunedKernel", "autotune_enabled", "config_key", "device_guard", "dump_config_table",
           "fixed_config_table", "grouped_pid", "input_precision", "interpreting", "launch",
           "KERNELS"]


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return bool(triton.knobs.runtime.interpret)


def autotune_enabled() -> bool:
    """Autotune on a GPU unless ``SHALLOWKERN_TRITON_AUTOTUNE=0`` (never in the interpreter)."""
    return bool(knobs.get("triton.autotune")) and not interpreting()


def input_precision(dtype: torch.dtype, kind: str = "conv") -> str:
    """``tl.dot``'s input_precision for this dtype, following PyTorch's own TF32 switch.

    fp32 runs on TF32 tensor cores where PyTorch would for the same op: convolutions follow
    ``torch.backends.cudnn.allow_tf32`` (default True), matmul-like ops (linear, bilinear)
    ``torch.backends.cuda.matmul.allow_tf32`` (default False); otherwise "ieee" fp32 FMA.
    fp16/bf16 are always "ieee" (the flag only matters for fp32 operands).
    """
    if kind not in ("conv", "matmul"):
        raise ValueError(f"input_precision: kind must be 'conv' or 'matmul', got {kind!r}")
    if dtype != torch.float32:
        return "ieee"
    allowed = (torch.backends.cudnn.allow_tf32 if kind == "conv"
               else torch.backends.cuda.matmul.allow_tf32)
    return "tf32" if allowed else "ieee"


def device_guard(t: Tensor):
    """Launch on t's GPU (Triton launches on the current device); no-op on CPU."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@triton.jit
def grouped_pid(num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(row tile, column tile) of this program in grouped order: GROUP_M row tiles share each
    column tile while it is in L2 (the ordering of Triton's matmul tutorial)."""
    pid = tl.program_id(0)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    size_m = min(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % group) % size_m, (pid % group) // size_m


# ---------------------------------------------------------------------------------------------
# fixed config tables
# ---------------------------------------------------------------------------------------------
def config_key(keys: Sequence[str], named: dict) -> str:
    """The autotune key of a call as a string: the ``keys`` values, then every tensor's dtype
    (what ``triton.autotune`` keys its cache on), e.g. ``"(3, 64, 5, 5, 'torch.float32')"``."""
    key = [named[k] for k in keys if k in named]
    key += [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
    return repr(tuple(key))


def _config_dict(cfg: triton.Config | dict) -> dict:
    if isinstance(cfg, triton.Config):
        return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    return dict(cfg)


_TABLE: dict[str, tuple[str, dict]] = {}  # path -> (path, parsed table), loaded once


def fixed_config_table() -> dict | None:
    """The table named by ``SHALLOWKERN_TRITON_FIXED_CONFIGS`` (None when unset), loaded once."""
    path = knobs.get("triton.fixed_configs")
    if not path:
        return None
    if path not in _TABLE:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"SHALLOWKERN_TRITON_FIXED_CONFIGS={path!r}: cannot read a JSON "
                             f"config table: {exc}") from None
        if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
            raise ValueError(f"SHALLOWKERN_TRITON_FIXED_CONFIGS={path!r}: expected "
                             "{kernel: {key: config}}")
        _TABLE[path] = (path, raw)
    return _TABLE[path][1]


KERNELS: dict[str, "TunedKernel"] = {}


def dump_config_table(path: str | os.PathLike | None = None) -> dict:
    """The configs autotuning chose in this process, per kernel and key (the fixed-table
    format); written to ``path`` as JSON when given (merged into an existing table there)."""
    table: dict[str, dict] = {}
    if path is not None and Path(path).exists():
        table = json.loads(Path(path).read_text())
    for name, tk in KERNELS.items():
        for key, cfg in getattr(tk.autotuned, "cache", {}).items():
            c = _config_dict(cfg)
            table.setdefault(name, {})[repr(tuple(key))] = dict(
                kwargs={k: v for k, v in c.items() if k not in ("num_warps", "num_stages")},
                num_warps=c.get("num_warps", 4), num_stages=c.get("num_stages", 3))
    if path is not None:
        Path(path).write_text(json.dumps(table, indent=1, sort_keys=True))
    return table


# ---------------------------------------------------------------------------------------------
# launch
# ---------------------------------------------------------------------------------------------
def launch(kernel, autotuned, prune, grid, args: tuple, meta: dict,
           config: triton.Config | dict | None, interpret_config: dict,
           name: str | None = None, keys: Sequence[str] = ()) -> dict | None:
    """Run ``kernel`` in the mode the module docstring lists; returns the config it launched
    with (None when the autotuner chose)."""
    if config is None and interpreting():
        config = interpret_config
    table = fixed_config_table() if config is None else None
    if config is None and table is None and autotune_enabled():
        autotuned[grid](*args, **meta)
        return None
    if config is None:
        named = dict(zip(kernel.arg_names, args))
        entry = None if table is None else \
            table.get(name or "", {}).get(config_key(keys, {**named, **meta}))
        if entry is not None:  # the recorded config for this kernel and key
            config = {**entry["kwargs"], "num_warps": entry["num_warps"],
                      "num_stages": entry["num_stages"]}
        else:  # the heuristic config; with a table, also for keys it lacks (never a timing)
            config = prune(autotuned.configs, named, **meta)[0]
    config = _config_dict(config)
    if interpreting():  # launch options mean nothing to the interpreter
        config = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}
    kernel[grid](*args, **meta, **config)
    return config


@dataclass
class TunedKernel:
    """A @triton.jit kernel with its GPU configs, autotune key, prune rule and interpreter config.

    Args:
        name: unique name (fixed-config tables, reports), e.g. "wide_conv2d_fwd".
        kernel: the @triton.jit function.
        configs: GPU autotune space; ``prune(configs, named_args, **meta)`` keeps those that fit
            a call, best guess first (that first one is the heuristic config).
        keys: kernel argument names the autotuner keys on -- never the batch size.
        interpret_config: the one tile run under TRITON_INTERPRET=1.
    """

    name: str
    kernel: Callable
    configs: list
    keys: Sequence[str]
    prune: Callable
    interpret_config: dict
    autotuned: Callable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        missing = [k for k in self.keys if k not in self.kernel.arg_names]
        if missing:
            raise ValueError(f"TunedKernel({self.name!r}): keys {missing} are not arguments of "
                             f"{self.kernel.__name__}")
        if self.name in KERNELS:
            raise ValueError(f"TunedKernel: name {self.name!r} is registered twice")
        self.autotuned = triton.autotune(configs=self.configs, key=list(self.keys),
                                         prune_configs_by={"early_config_prune": self.prune}
                                         )(self.kernel)
        KERNELS[self.name] = self

    def __call__(self, grid, args: tuple, meta: dict,
                 config: triton.Config | dict | None = None) -> dict | None:
        return launch(self.kernel, self.autotuned, self.prune, grid, args, meta, config,
                      self.interpret_config, self.name, self.keys)
