"""The structured result of ``shallowkern.profile``: per-module rows, totals, latency, roofline.

Conventions (also printed with the table):

* FLOPs: 2 FLOPs per multiply-add, as ``torch.utils.flop_counter``; only matmul/conv-like ops
  have formulas, so every counted FLOP belongs to a multiply-add and MACs = FLOPs / 2. Bias adds,
  activations, pooling and norms are not counted: see ``uncounted``.
* dense FLOPs: as if every weight is used. effective: without zero (out, in) kernel pairs and
  masked weights (see ``effective``). executed: what the kernels run; equal to dense unless an
  op registers an executed-FLOP formula (``register_executed_flop_formula``, for structured-sparse
  kernels; none does yet).
* bytes: per op, inputs read once + outputs written once (the roofline minimum of each op),
  summed; arithmetic intensity = executed FLOPs / bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .latency import LatencyStats
from .roofline import Roofline


class _Figures:
    """Derived figures shared by a module row and the totals (2 FLOPs per multiply-add)."""

    flops: int
    executed_flops: int
    bytes: int

    @property
    def macs(self) -> int:
        return self.flops // 2

    @property
    def arithmetic_intensity(self) -> float | None:
        return self.executed_flops / self.bytes if self.bytes else None


@dataclass
class ModuleRow(_Figures):
    """One module (``name`` is its path in ``named_modules``, "" for the model); numbers cover the
    whole profiled pass and include the module's children."""

    name: str
    type: str
    depth: int
    params: int
    flops: int  # dense
    flops_forward: int
    flops_backward: int
    effective_flops: int
    executed_flops: int
    bytes: int
    flops_by_op: dict[str, int] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)  # op name -> calls
    kept_fraction: float = 1.0  # of this module's own weights (1.0 if it has none)
    flagged: bool = False  # has parameters and does work, but no FLOP was counted


@dataclass
class Totals(_Figures):
    """The whole pass (every op in the run, inside the model or not)."""

    params: int
    flops: int
    flops_forward: int
    flops_backward: int
    effective_flops: int
    executed_flops: int
    bytes: int


@dataclass
class ProfileResult:
    """What ``profile`` measured. ``time_floor_s`` = max(executed FLOPs / peak, bytes / bandwidth)
    of ``roofline``; ``roofline_pct`` = 100 * floor / measured median latency."""

    model: str
    device: str
    dtype: str
    torch_version: str
    input_shapes: list[list[int]]
    backward: bool
    batch_size: int | None
    totals: Totals
    rows: list[ModuleRow]
    uncounted: dict[str, int]
    latency: LatencyStats | None = None
    roofline: Roofline | None = None
    time_floor_s: float | None = None
    bound: str | None = None
    roofline_pct: float | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> ModuleRow:
        """The row of module ``name`` ("" for the model)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"ProfileResult: no module {name!r}; have {[r.name for r in self.rows]}")

    def to_dict(self) -> dict:
        """Plain JSON-able data; derived numbers (MACs, intensity) are included for readers."""
        d = asdict(self)
        d["totals"]["macs"] = self.totals.macs
        d["totals"]["arithmetic_intensity"] = self.totals.arithmetic_intensity
        for out, row in zip(d["rows"], self.rows):
            out["macs"] = row.macs
            out["arithmetic_intensity"] = row.arithmetic_intensity
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileResult":
        """Inverse of ``to_dict`` (derived keys are dropped)."""
        d = dict(d)
        d["totals"] = _build(Totals, d["totals"])
        d["rows"] = [_build(ModuleRow, r) for r in d["rows"]]
        d["latency"] = _build(LatencyStats, d["latency"]) if d.get("latency") else None
        d["roofline"] = _build(Roofline, d["roofline"]) if d.get("roofline") else None
        return _build(cls, d)

    @classmethod
    def from_json(cls, s: str) -> "ProfileResult":
        return cls.from_dict(json.loads(s))

    def table(self, depth: int | None = None) -> str:
        """An aligned text table (modules deeper than ``depth`` dots are left out)."""
        from .table import render

        return render(self, depth)

    def print(self, depth: int | None = None) -> None:
        print(self.table(depth))

    def __str__(self) -> str:
        return self.table()


def _build(cls, d: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
