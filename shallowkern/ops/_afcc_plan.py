"""Block plans of the AFCC convolution: channel orders and the kept blocks of a (K, C) mask.

``block_plan(mask)`` reorders the mask's rows and columns (groups of identical rows / columns,
then alternating barycentre sorts: ``channel_order``) so that AFCC masks, which keep pairs whose
label sets intersect, become near-block-diagonal, then tiles the permuted mask into blocks and
lists the blocks that hold a kept pair (CSR and CSC). The kernels of ``ops/afcc_conv2d.py``
(C++ CPU, Triton) run only those blocks. Plans are cached per mask tensor (and its version).

Stale caches. Every cache of the AFCC op is keyed by ``(id(mask), mask._version, ...)`` and holds
the mask (so its id is not reused). In-place edits bump the version; a write through
``mask.data`` (what the lab's code does to weights) does not. ``refresh(mask)``, run at the op's
entry points, compares a CPU mask with a snapshot of the values its caches were built from (one
``memcmp`` of K * C bytes) and drops every cache entry of that mask when they differ. CUDA
masks are not compared (that would synchronise each call): there only version bumps invalidate.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _knobs


for _k in (
    _knobs.Knob("afcc_conv2d.max_executed", "SHALLOWKERN_AFCC_MAX_EXECUTED", 0.4, float,
                "CUDA (Triton): dense fallback when kept blocks cover more than this share of "
                "the dense work (CPU: the measured cost model decides)", values="0..1"),
    _knobs.Knob("afcc_conv2d.cpu_path", "SHALLOWKERN_AFCC_CPU_PATH", None,
                _knobs._choice("gemm", "subconv"),
                "force the CPU block-sparse path (default: the cheaper by the cost model, or "
                "the dense conv)", values="`gemm`, `subconv`"),
    _knobs.Knob("afcc_conv2d.block", "SHALLOWKERN_AFCC_BLOCK", None, int,
                "block size (out and in channels) of the block-sparse kernels (default: by cost)",
                values="`16`, `32`, `64`"),
):
    if _k.name not in _knobs.KNOBS:
        _knobs.register(_k)

# Relative cost per executed FLOP of a block size (GEMM efficiency of small tiles, call count).
# CPU: MKL's single-thread GEMM rate at M = 64 / 32 / 16 on the 2-core Zen 4 VM (90 / 70 / 45
# GFLOP/s, scripts/afcc_calibrate.py), damped because the sub-conv path (one oneDNN conv per
# group of kept blocks, whose cost depends on the group, not the tile) runs the same plans.
_BLOCK_COST = {"cpu": {64: 1.0, 32: 1.1, 16: 1.3}, "cuda": {64: 1.0, 32: 1.2, 16: 1.8}}


# ---------------------------------------------------------------------------------------------
# block plan: channel orderings and kept blocks of a mask
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockPlan:
    """How the block-sparse kernels run a mask (all index tensors int64 on the mask's device).

    out_perm (K,) / in_perm (C,): channel orders; row i of the permuted problem is channel
    out_perm[i]. Out-block ob covers permuted rows [row_bounds[ob], row_bounds[ob + 1]) and
    in-block cb permuted columns [col_bounds[cb], col_bounds[cb + 1]). ``block_out`` /
    ``block_in`` is the largest block (the tile of the Triton kernels, whose plans have fixed
    sizes); CPU plans may follow the mask's groups of identical rows and columns (``variable``).
    Kept blocks in CSR: row_ptr (nOB + 1,), col_idx (nnzb,); in CSC (for the input gradient):
    col_ptr (nCB + 1,), row_idx (nnzb,), csc_to_csr (nnzb,).
    """

    block_out: int
    block_in: int
    variable: bool
    out_perm: Tensor
    in_perm: Tensor
    row_bounds: Tensor
    col_bounds: Tensor
    row_ptr: Tensor
    col_idx: Tensor
    col_ptr: Tensor
    row_idx: Tensor
    csc_to_csr: Tensor
    kept_pairs: int
    executed_pairs: int  # pairs inside kept blocks
    total_pairs: int

    @property
    def nnzb(self) -> int:
        return int(self.col_idx.numel())

    @property
    def executed_fraction(self) -> float:
        return self.executed_pairs / max(self.total_pairs, 1)

    @property
    def fill(self) -> float:
        """Kept pairs / pairs inside kept blocks (1.0 = no block padding)."""
        return self.kept_pairs / max(self.executed_pairs, 1)

    def describe(self) -> str:
        size = ("variable blocks <= %d" % self.block_out if self.variable
                else f"{self.block_out}x{self.block_in} blocks")
        return (f"{self.nnzb} kept {size}, executed {self.executed_fraction:.0%} of dense, "
                f"fill {self.fill:.0%}")


def channel_order(mask: Tensor, iterations: int = 3) -> tuple[Tensor, Tensor]:
    """(out_perm, in_perm) making a (K, C) bool mask near-block-diagonal.

    Identical rows are grouped (lexicographic order of unique rows), then rows and columns are
    alternately sorted by the barycentre of their kept entries (stable, so groups stay whole).
    """
    m = mask.detach().to("cpu", torch.bool)
    k, c = m.shape
    if k == 0 or c == 0:
        return torch.arange(k), torch.arange(c)
    _, group = torch.unique(m, dim=0, return_inverse=True)
    _, cgroup = torch.unique(m, dim=1, return_inverse=True)
    md = m.double()
    col_perm = torch.arange(c)
    row_perm = torch.argsort(group, stable=True)
    for _ in range(iterations):
        pos = torch.empty(k, dtype=torch.float64)
        pos[row_perm] = torch.arange(k, dtype=torch.float64)
        cnt = md.sum(0)
        col_key = torch.where(cnt > 0, (md * pos[:, None]).sum(0) / cnt.clamp_min(1), float(k))
        # identical columns stay together: the key of a column is its group's barycentre
        col_perm = torch.argsort(col_key + cgroup.double() * 1e-9, stable=True)
        cpos = torch.empty(c, dtype=torch.float64)
        cpos[col_perm] = torch.arange(c, dtype=torch.float64)
        rcnt = md.sum(1)
        bary = torch.where(rcnt > 0, (md * cpos[None, :]).sum(1) / rcnt.clamp_min(1), float(c))
        row_perm = torch.argsort(bary + group.double() * 1e-9, stable=True)
    return row_perm, col_perm


def _fixed_bounds(n: int, b: int) -> Tensor:
    return torch.clamp(torch.arange(0, -(-n // b) + 1) * b, max=n)


def _group_bounds(pm: Tensor, min_b: int, max_b: int) -> Tensor:
    """Block bounds along dim 0 of a permuted mask that follow runs of identical rows: a run of
    g >= min_b rows becomes ceil(g / max_b) near-equal blocks; short runs are merged with their
    neighbours up to min_b rows."""
    n = pm.shape[0]
    if n == 0:
        return torch.zeros(1, dtype=torch.int64)
    change = torch.ones(n, dtype=torch.bool)
    change[1:] = (pm[1:] != pm[:-1]).any(1)
    starts = change.nonzero().flatten().tolist() + [n]
    bounds, open_start = [0], None
    for a, b in zip(starts[:-1], starts[1:]):
        if b - a >= min_b:
            if open_start is not None and a - open_start > 0:
                bounds.append(a)
            open_start = None
            parts = -(-(b - a) // max_b)
            bounds += [a + ((b - a) * i) // parts for i in range(1, parts)] + [b]
        else:
            if open_start is None:
                open_start = bounds[-1]
            if b - open_start >= min_b:
                bounds.append(b)
                open_start = None
    if bounds[-1] != n:
        bounds.append(n)
    return torch.tensor(bounds, dtype=torch.int64)


def _plan_from(mask: Tensor, out_perm: Tensor, in_perm: Tensor, rb: Tensor, cb: Tensor,
               block: int, variable: bool) -> BlockPlan:
    k, c = mask.shape
    pm = mask.detach().cpu()[out_perm][:, in_perm]
    nob, ncb = rb.numel() - 1, cb.numel() - 1
    ob_of = torch.repeat_interleave(torch.arange(nob), rb.diff())
    cb_of = torch.repeat_interleave(torch.arange(ncb), cb.diff())
    blk = torch.zeros(nob, ncb, dtype=torch.bool)
    r, q = pm.nonzero(as_tuple=True)
    blk[ob_of[r], cb_of[q]] = True
    rows, cols = blk.nonzero(as_tuple=True)  # row-major: CSR order
    row_ptr = torch.zeros(nob + 1, dtype=torch.int64)
    row_ptr[1:] = torch.cumsum(blk.sum(1), 0)
    csc = torch.argsort(cols * nob + rows, stable=True)
    col_ptr = torch.zeros(ncb + 1, dtype=torch.int64)
    col_ptr[1:] = torch.cumsum(blk.sum(0), 0)
    executed = int((rb.diff()[rows] * cb.diff()[cols]).sum())
    big = int(max(rb.diff().max().item() if nob else 0, cb.diff().max().item() if ncb else 0))
    dev = mask.device
    t = lambda v: v.to(dev)  # noqa: E731
    return BlockPlan(block if not variable else max(big, 1), block if not variable else max(big, 1),
                     variable, t(out_perm), t(in_perm), t(rb), t(cb), t(row_ptr), t(cols),
                     t(col_ptr), t(rows[csc]), t(csc), int(r.numel()), executed, k * c)


def _cost(plan: BlockPlan, dev: str) -> float:
    """Modelled time: executed fraction x per-FLOP cost of the (mean) block size."""
    table = _BLOCK_COST.get(dev, _BLOCK_COST["cpu"])
    if plan.variable and plan.nnzb:
        sizes = (plan.row_bounds.diff()[plan.row_idx].double().mean().item(),
                 plan.col_bounds.diff()[plan.col_idx].double().mean().item())
        size = min(sizes)
    else:
        size = plan.block_out
    pts = sorted(table)
    size = min(max(size, pts[0]), pts[-1])
    for lo, hi in zip(pts[:-1], pts[1:]):
        if lo <= size <= hi:
            f = (size - lo) / (hi - lo)
            return plan.executed_fraction * (table[lo] * (1 - f) + table[hi] * f)
    return plan.executed_fraction * table[pts[-1]]


def block_plan(mask: Tensor, device_type: str | None = None, block: int | None = None) -> BlockPlan:
    """The block plan of a (K, C) bool mask, cached per mask tensor (and its version).

    ``block``: a fixed block size (16, 32 or 64; default: the ``afcc_conv2d.block`` knob).
    Otherwise the plan with the lowest modelled cost among fixed 64/32/16 blocks and, on the
    CPU, blocks that follow the mask's groups of identical rows/columns (16 to 64 channels).
    """
    dev = device_type or mask.device.type
    block = block or _knobs.get("afcc_conv2d.block")
    key = (id(mask), mask._version, tuple(mask.shape), str(mask.device), dev, block)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] is mask:
            _cache.move_to_end(key)
            return hit[1]
    if block is not None and block not in (16, 32, 64):
        raise ValueError(f"afcc_conv2d: block size must be 16, 32 or 64, got {block}")
    out_perm, in_perm = channel_order(mask)
    k, c = mask.shape
    cands = [_plan_from(mask, out_perm, in_perm, _fixed_bounds(k, b), _fixed_bounds(c, b), b,
                        False) for b in ((block,) if block else (64, 32, 16))]
    if dev == "cpu" and not block:
        pm = mask.detach().cpu()[out_perm][:, in_perm]
        cands.append(_plan_from(mask, out_perm, in_perm, _group_bounds(pm, 16, 64),
                                _group_bounds(pm.t(), 16, 64), 64, True))
    best = min(cands, key=lambda p: _cost(p, dev))
    with _cache_lock:
        _cache[key] = (mask, best)  # holding the mask keeps id(mask) from being reused
        while len(_cache) > 64:
            _cache.popitem(last=False)
    return best


_cache: "collections.OrderedDict[tuple, tuple[Tensor, BlockPlan]]" = collections.OrderedDict()
_cache_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# stale-cache guard: writes to a mask that bypass its version counter
# ---------------------------------------------------------------------------------------------
_keyed_caches: list[tuple[dict, threading.Lock]] = []


def register_mask_cache(cache: dict, lock: threading.Lock) -> None:
    """Register a cache keyed by ``(id(mask), ...)`` tuples, purged by ``refresh``."""
    _keyed_caches.append((cache, lock))


register_mask_cache(_cache, _cache_lock)
_snapshots: "collections.OrderedDict[int, tuple]" = collections.OrderedDict()
_snap_lock = threading.Lock()


def _load_memcmp():
    try:
        import ctypes

        fn = ctypes.CDLL(None).memcmp
        fn.restype, fn.argtypes = ctypes.c_int, (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
        return fn
    except (OSError, AttributeError, TypeError):  # no C library symbols here: torch.equal
        return None


# libc's memcmp: the check runs on every call of the dense fallback, where any host work costs
# several times its own time in the conv that follows (measured on one Zen 4 core, 64 x 64 x
# 3 x 3 layer, batch 128: torch.equal +37 us, memcmp through ctypes +22 us, standalone 1-2 us)
_memcmp = _load_memcmp()


def refresh(mask: Tensor) -> None:
    """Drop the cached plans, paths and decisions of ``mask`` if its values differ from those
    they were built from without a version bump (a write through ``mask.data``, or ``mask.data``
    replaced). Also on the first sight of a mask (or after its snapshot was evicted): caches
    filled before, e.g. by a direct ``block_plan`` call, are dropped. CPU masks only (see the
    module docstring)."""
    if type(mask) is not Tensor or not mask.is_cpu:
        return
    key, version, ptr = id(mask), mask._version, mask.data_ptr()
    nbytes = mask.numel() * mask.element_size() if mask.is_contiguous() else -1
    with _snap_lock:
        snap = _snapshots.get(key)  # (mask, version, data_ptr, nbytes, copy, copy's data_ptr)
        if (snap is not None and snap[0] is mask and snap[1] == version and snap[2] == ptr
                and snap[3] == nbytes
                and ((_memcmp(ptr, snap[5], nbytes) == 0) if nbytes > 0 and _memcmp is not None
                     else torch.equal(mask, snap[4]))):
            return
        # new values, a new version or a mask seen for the first time: entries filled without
        # a matching snapshot are not trusted (a version bump makes its old entries unreachable,
        # but one filled at the new version before this call may predate a .data write)
        copy = mask.detach().clone()
        _snapshots[key] = (mask, version, ptr, nbytes, copy, copy.data_ptr())
        _snapshots.move_to_end(key)
        while len(_snapshots) > 128:
            _snapshots.popitem(last=False)
    for cache, lock in _keyed_caches:
        with lock:
            for k in [k for k in cache if k[0] == key]:
                del cache[k]
