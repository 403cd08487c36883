"""The benchmark harness: one parametrized pytest-benchmark grid per op.

Every (case, dtype, provider, pass) is its own pytest-benchmark benchmark, so
``pytest benchmarks/ --benchmark-json=F`` records each provider's timing distribution and
``--benchmark-compare`` / ``--benchmark-histogram`` see all of them. Providers of one case, dtype
and pass share a pytest-benchmark *group* (``"<op> <case> <dtype> <pass>"``), so the terminal
table puts them side by side with pytest-benchmark's ratio-to-best in parentheses; the JSON
gains ``extra_info["speedup_vs"][other] = t_other / t_this`` for every other provider of the
group (written by ``benchmarks/conftest.py`` at the end of the session), and
``python -m benchmarks.summarize F`` renders the README table and a PNG chart from it.

A per-op benchmark file supplies only cases, providers and the work counts::

    import torch
    import torch.nn.functional as F
    from benchmarks.common import OpBench, compiled
    from shallowkern.flops import conv2d_flops
    from shallowkern.ops.wide_conv2d import wide_conv2d

    def inputs(case, dev, dtype):                 # seeded: every provider gets the same tensors
        x = torch.randn(case["n"], case["c"], 14, 14, device=dev, dtype=dtype, requires_grad=True)
        w = torch.randn(case["k"], case["c"], 5, 5, device=dev, dtype=dtype, requires_grad=True)
        return x, w

    def fused(x, w):
        return wide_conv2d(x, w, activation="relu")

    def eager(x, w):
        return torch.relu(F.conv2d(x, w))

    def flops(case, pass_):                       # 2 FLOPs per multiply-add; fwd+bwd: 3x
        f = conv2d_flops((case["n"], case["c"], 14, 14), (case["k"], case["c"], 5, 5),
                         (1, 1), (0, 0), (1, 1))
        return f if pass_ == "fwd" else 3 * f

    def nbytes(case, dtype, pass_):               # least bytes any implementation moves
        e = torch.empty((), dtype=dtype).element_size()
        return e * (case["n"] * case["c"] * 196 + case["k"] * case["c"] * 25
                    + case["n"] * case["k"] * 100) * (1 if pass_ == "fwd" else 3)

    BENCH = OpBench(
        op="wide_conv2d",                         # the name its dispatch records (routed)
        cases=[dict(name="conv2_n32_d64", n=32, c=64, k=179)],  # or {"cuda": [...], "cpu": [...]}
        providers={"shallowkern": lambda case, dev, dtype: (fused, inputs(case, dev, dtype)),
                   "eager": lambda case, dev, dtype: (eager, inputs(case, dev, dtype)),
                   "compiled": lambda case, dev, dtype: (compiled(eager, dev),
                                                         inputs(case, dev, dtype))},
        flops=flops, nbytes=nbytes,
    )
    test_my_conv = BENCH.test()                   # the parametrized grid, collected by pytest

The provider contract: ``build(case, dev, dtype) -> (fn, inputs)``; ``fn(*inputs)`` runs the op
and returns a tensor (or a tuple whose first element is the output). Builders are called after
``torch.manual_seed(0)``, so seeded inputs are identical across providers. A builder that cannot
run here (no vendor op on CPU, Triton without a GPU) calls ``pytest.skip("why")``. Benchmarks
run case by case, providers in dict order: put slow-to-warm ones (``compiled``) last, so a
time-boxed run (the GPU check) measures the cheap rows first, and name the cases the GPU check
should run in ``slice_cases``.

Passes (``OpBench(passes=...)``):
  fwd     ``fn(*inputs)`` under ``torch.no_grad()``.
  fwdbwd  forward + ``torch.autograd.grad`` of the output w.r.t. every input that requires grad,
          with a fixed random grad-output (parameters closed over by ``fn`` get no gradient:
          pass them as inputs).
  step    ``fn(*inputs)`` as is: a whole training step that does its own backward/update.

Work counts: ``flops(case, pass_)`` (dense FLOPs, 2 per multiply-add, as FlopCounterMode),
``nbytes(case, dtype, pass_)`` and optionally ``min_flops(case, pass_)`` (the least work any
implementation needs, e.g. after a max-pool only a quarter of the backward GEMM carries
gradient; default = flops). ``extra_info`` records flops, bytes, TFLOP/s, GB/s, the roofline
peaks (``shallowkern.profile.roofline``: the device table or a measurement), the time floor
``max(min_flops / peak, bytes / bandwidth)``, its bound and ``pct_of_roofline = 100 * floor / t``,
plus the device, torch/triton versions, the case's shape, the provider/pass, and ``routed``: the
backend shallowkern's dispatch ran in this row (``last_backend(op)``; None for other providers).

Timing. CPU: pytest-benchmark's own timer (``time.perf_counter``) in pedantic mode, one call per
round, after ``warmup`` rounds; the number of rounds is sized from the warm-up calls to about
``SHALLOWKERN_BENCH_SECONDS`` (default 1 s) per benchmark, 3..200 rounds. CUDA: the same
pedantic mode with a *synchronizing timer* (``cuda_timer``: ``torch.cuda.synchronize()`` then
``perf_counter``) and ``iterations`` calls per round (sized to >= ~2 ms per round), so a round is
sync, k back-to-back launches, sync, and pytest-benchmark divides by k. This keeps every
provider's full distribution inside pytest-benchmark (``--benchmark-compare`` compares like with
like, histograms work), measures what ``triton.testing.do_bench`` measures (device time of
back-to-back calls, host launch cost included when the host is the bottleneck) and amortizes
the ~10 us sync over k calls. Inputs that fit in L2 are rotated: the harness clones the tensors
of ``inputs`` until the set exceeds twice the L2 size (at most 16 copies) and cycles through
them, so a fast kernel is not timed on L2-hot data. A value recorded from a separate do_bench
call would be invisible to ``--benchmark-compare`` -- hence this design.

Smoke run (``--benchmark-disable``, the CI): each benchmark file runs only its first case and
first dtype, every provider and pass once, with the batch (``n``/``batch`` keys) capped at 4.

Environment:
  SHALLOWKERN_BENCH_ROWS=path.jsonl  append one JSON row per finished benchmark at once (the GPU
                                     check's results survive a timeout; pytest-benchmark's own
                                     JSON is written only at the end of the session).
  SHALLOWKERN_BENCH_SECONDS          target measuring time per benchmark (default 1.0).
  SHALLOWKERN_BENCH_COMPILE_MODE     torch.compile mode of ``compiled`` (default:
                                     max-autotune-no-cudagraphs on CUDA, default on CPU).
  SHALLOWKERN_BENCH_ROOFLINE=f.json  peaks measured by scripts/gpu_check/roofline.py, used
                                     instead of the device table for % of roofline.
  SHALLOWKERN_BENCH_SLICE=k          keep each grid's ``slice_cases`` (else its first k cases).
  SHALLOWKERN_BENCH_DTYPES=bf16,fp32 keep only these dtypes.
  SHALLOWKERN_BENCH_DUMP_CONFIGS=f   at the end, write the Triton configs autotuning chose
                                     (shallowkern.triton._utils.dump_config_table).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import pytest
import torch

PASSES = ("fwd", "fwdbwd", "step")
ROWS_ENV = "SHALLOWKERN_BENCH_ROWS"
ROOFLINE_ENV = "SHALLOWKERN_BENCH_ROOFLINE"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cuda_timer() -> float:
    """``perf_counter`` after ``torch.cuda.synchronize()``: pytest-benchmark's timer on CUDA."""
    torch.cuda.synchronize()
    return time.perf_counter()


def compile_mode(dev: torch.device) -> str:
    default = "max-autotune-no-cudagraphs" if dev.type == "cuda" else "default"
    return os.environ.get("SHALLOWKERN_BENCH_COMPILE_MODE", default)


def compiled(fn: Callable, dev: torch.device) -> Callable:
    """``torch.compile(fn)`` in the benchmark's compile mode (SHALLOWKERN_BENCH_COMPILE_MODE)."""
    return torch.compile(fn, mode=compile_mode(dev))


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except ImportError:
        return None


def device_info(dev: torch.device) -> dict:
    """Device, host and library versions: recorded with every benchmark."""
    import shallowkern
    from shallowkern.profile import roofline

    return dict(device=roofline.device_name(dev), host=platform.node(),
                threads=torch.get_num_threads(), torch=torch.__version__,
                triton=_version("triton"), shallowkern=shallowkern.__version__,
                native_ext=shallowkern._ext.available())


def roofline_for(dev: torch.device, dtype: torch.dtype, tf32: bool):
    """Peaks for the roofline floor. fp32 with TF32 runs on tensor cores at half the bf16 dense
    rate on Hopper (the datasheet ratio, applied to the bf16 rate of the table/measurement)."""
    from shallowkern.profile import roofline

    measured = os.environ.get(ROOFLINE_ENV)
    if measured and os.path.exists(measured):
        with open(measured) as f:
            m = json.load(f)
        key = "tf32" if (tf32 and dtype == torch.float32) else str(dtype).removeprefix("torch.")
        if key in m.get("flops_per_s", {}):
            return roofline.Roofline(m["flops_per_s"][key], m["bytes_per_s"], m.get("device", "?"),
                                     key, m.get("source", measured))
    roof, note = roofline.for_device(dev, dtype)
    if roof is None:
        raise RuntimeError(note)
    if tf32 and dev.type == "cuda":
        bf16, _ = roofline.for_device(dev, torch.bfloat16)
        return roofline.Roofline(bf16.flops_per_s / 2, roof.bytes_per_s, roof.name, "tf32",
                                 "bf16 rate / 2 (TF32 dense rate, datasheet ratio)")
    return roof


# ---------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------
# name -> (dtype, TF32 allowed). "fp32" means TF32 off (cuDNN and cuBLAS in IEEE fp32).
DTYPES: dict[str, tuple[torch.dtype, bool]] = {
    "bf16": (torch.bfloat16, False), "fp16": (torch.float16, False),
    "fp32_tf32": (torch.float32, True), "fp32": (torch.float32, False)}
GPU_DTYPES = ("bf16", "fp16", "fp32_tf32", "fp32")
CPU_DTYPES = ("fp32",)


def _per_device(v, dev: torch.device):
    if isinstance(v, Mapping) and set(v) <= {"cuda", "cpu"} and v:
        return v.get(dev.type, ())
    return v


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"benchmark provider returned {type(out).__name__}; expected a tensor or a "
                    "tuple whose first element is the output tensor")


def _shrink(case: dict, cap: int = 4) -> dict:
    return {k: (min(v, cap) if k in ("n", "batch") and isinstance(v, int) else v)
            for k, v in case.items()}


def _clone_inputs(inputs: tuple) -> tuple:
    return tuple(t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor)
                 else t for t in inputs)


def _rotations(inputs: tuple, dev: torch.device) -> list[tuple]:
    """Copies of ``inputs`` so that cycling through them does not find them in L2 (CUDA)."""
    if dev.type != "cuda":
        return [inputs]
    nbytes = sum(t.nbytes for t in inputs if isinstance(t, torch.Tensor))
    l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 50 * 2**20)
    if nbytes == 0 or nbytes >= 2 * l2:
        return [inputs]
    copies = min(16, math.ceil(2 * l2 / nbytes))
    return [inputs] + [_clone_inputs(inputs) for _ in range(copies - 1)]


def make_pass(fn: Callable, inputs: tuple, pass_: str) -> Callable[[tuple], object]:
    """A callable ``run(inputs)`` doing one ``pass_`` of ``fn`` on ``inputs``."""
    if pass_ == "fwd":
        def run(inp):
            with torch.no_grad():
                return fn(*inp)
        return run
    if pass_ == "step":
        return lambda inp: fn(*inp)
    if pass_ == "fwdbwd":
        out = _first_tensor(fn(*inputs))
        if not out.requires_grad:
            pytest.skip("fwdbwd: no input of this case requires grad")
        g = torch.randn_like(out)

        def run(inp):
            wrt = [t for t in inp if isinstance(t, torch.Tensor) and t.requires_grad]
            return torch.autograd.grad(_first_tensor(fn(*inp)), wrt, g)
        return run
    raise ValueError(f"make_pass: pass_ must be one of {PASSES}, got {pass_!r}")


def _write_row(row: dict) -> None:
    path = os.environ.get(ROWS_ENV)
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _forget_route(op: str) -> None:
    """Clear ``last_backend(op)`` so that a row records only a route its own provider took."""
    from shallowkern.ops import _backend

    _backend._last.pop(op, None)


def _route(op: str) -> dict:
    """The backend shallowkern's dispatch chose in this row (None for non-shallowkern providers)."""
    from shallowkern.ops import last_backend

    choice = last_backend(op)
    return dict(routed=choice.backend if choice else None,
                route_reason=choice.reason if choice else None)


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------
Builder = Callable[[dict, torch.device, torch.dtype], tuple[Callable, tuple]]


@dataclass
class OpBench:
    """One op's benchmark grid: cases x dtypes x providers x passes.

    Args:
        op: the op's name (group names, rows, summary).
        cases: shape dicts, each with a unique ``"name"``; a list, or ``{"cuda": [...], "cpu":
            [...]}``.
        providers: name -> ``build(case, dev, dtype) -> (fn, inputs)``; the first is the one the
            others are compared to in the summary (put ``"shallowkern"`` first).
        flops, nbytes, min_flops: work counts (see the module docstring).
        dtypes: names from ``DTYPES``; a tuple or ``{"cuda": (...), "cpu": (...)}``.
        passes: from ``PASSES``.
        baseline: the provider speedups are reported against in the summary's first column.
        seconds: measuring time per benchmark (default: SHALLOWKERN_BENCH_SECONDS or 1.0).
        smoke: case -> the case for the smoke run (default: batch capped at 4).
        items: case -> items per call (e.g. images of a training step), for ``items_per_s``.
        slice_cases: names of the cases the GPU check's short slice runs (default: the first
            SHALLOWKERN_BENCH_SLICE cases).
    """

    op: str
    cases: Sequence[dict] | Mapping[str, Sequence[dict]]
    providers: Mapping[str, Builder]
    flops: Callable[[dict, str], float]
    nbytes: Callable[[dict, torch.dtype, str], float]
    min_flops: Callable[[dict, str], float] | None = None
    dtypes: Sequence[str] | Mapping[str, Sequence[str]] = field(
        default_factory=lambda: {"cuda": GPU_DTYPES, "cpu": CPU_DTYPES})
    passes: Sequence[str] = ("fwd", "fwdbwd")
    baseline: str = "eager"
    seconds: float | None = None
    smoke: Callable[[dict], dict] = _shrink
    items: Callable[[dict], float] | None = None
    slice_cases: Sequence[str] = ()

    def __post_init__(self) -> None:
        for p in self.passes:
            if p not in PASSES:
                raise ValueError(f"OpBench({self.op!r}): passes must be from {PASSES}, got {p!r}")
        if not self.providers:
            raise ValueError(f"OpBench({self.op!r}): providers is empty")

    def grid(self, dev: torch.device | None = None) -> list:
        """The pytest params: (case, dtype name, provider, pass), id "case-dtype-provider-pass"."""
        dev = dev or device()
        cases, dtypes = list(_per_device(self.cases, dev)), list(_per_device(self.dtypes, dev))
        k = int(os.environ.get("SHALLOWKERN_BENCH_SLICE", "0") or 0)
        if k > 0:
            chosen = [c for c in cases if c["name"] in self.slice_cases]
            cases = chosen or cases[:k]
        only = [d for d in os.environ.get("SHALLOWKERN_BENCH_DTYPES", "").split(",") if d]
        if only:
            dtypes = [d for d in dtypes if d in only]
        names = [c["name"] for c in cases]
        if len(set(names)) != len(names):
            raise ValueError(f"OpBench({self.op!r}): case names must be unique, got {names}")
        for d in dtypes:
            if d not in DTYPES:
                raise ValueError(f"OpBench({self.op!r}): unknown dtype {d!r}; "
                                 f"one of {list(DTYPES)}")
        first = (cases[0]["name"], dtypes[0]) if cases and dtypes else None
        params = []
        for case, d, prov, p in itertools.product(cases, dtypes, self.providers, self.passes):
            params.append(pytest.param(case, d, prov, p, (case["name"], d) == first,
                                       id=f"{case['name']}-{d}-{prov}-{p}"))
        return params

    def test(self) -> Callable:
        """The parametrized test function; assign it to a ``test_*`` name in the bench file."""
        marks = [pytest.mark.parametrize("case,dtype_name,provider,pass_,first", self.grid())]
        if device().type == "cuda":
            marks.append(pytest.mark.benchmark(timer=cuda_timer))

        def test(benchmark, case, dtype_name, provider, pass_, first):
            self.run(benchmark, case, dtype_name, provider, pass_, first)

        test.__name__ = f"test_{self.op}"
        for m in reversed(marks):
            test = m(test)
        return test

    # -----------------------------------------------------------------------------------------
    def run(self, benchmark, case: dict, dtype_name: str, provider: str, pass_: str,
            first: bool = True) -> None:
        smoke = bool(benchmark.disabled)
        if smoke and not first:
            pytest.skip("smoke run (--benchmark-disable): first case and dtype only")
        dev = device()
        dtype, tf32 = DTYPES[dtype_name]
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        if smoke:
            case = self.smoke(case)
        torch.manual_seed(0)
        _forget_route(self.op)
        fn, inputs = self.providers[provider](case, dev, dtype)
        inputs = tuple(inputs)
        run = make_pass(fn, inputs, pass_)
        group = f"{self.op} {case['name']} {dtype_name} {pass_}"
        benchmark.group = group
        info = dict(op=self.op, case=case["name"], shape={k: v for k, v in case.items()
                                                            if k != "name"},
                    dtype=dtype_name, provider=provider, pass_=pass_, group=group,
                    baseline=self.baseline, smoke=smoke)
        if smoke:
            benchmark.extra_info.update(info)
            benchmark.pedantic(run, args=(inputs,), rounds=1, iterations=1)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return

        rot = _rotations(inputs, dev)
        cycle = itertools.cycle(rot)

        def timed():
            return run(next(cycle))

        # Warm-up (compilation, autotuning, cuDNN's algorithm search) and a per-call estimate.
        per_call = float("inf")
        for _ in range(3):
            t0 = cuda_timer() if dev.type == "cuda" else time.perf_counter()
            timed()
            t1 = cuda_timer() if dev.type == "cuda" else time.perf_counter()
            per_call = min(per_call, t1 - t0)
        seconds = self.seconds or float(os.environ.get("SHALLOWKERN_BENCH_SECONDS", "1.0"))
        if dev.type == "cuda":
            iterations = max(1, min(1000, math.ceil(2e-3 / max(per_call, 1e-7))))
            rounds = int(min(100, max(5, seconds / max(per_call * iterations, 1e-9))))
        else:
            iterations = 1
            rounds = int(min(200, max(3, seconds / max(per_call, 1e-9))))
        benchmark.pedantic(timed, rounds=rounds, iterations=iterations, warmup_rounds=1)
        t = benchmark.stats.stats.median

        info.update(self._work(case, dev, dtype, tf32, pass_, t), **_route(self.op))
        info.update(device_info(dev), rounds=rounds, iterations=iterations,
                    input_copies=len(rot), median_s=t, min_s=benchmark.stats.stats.min,
                    compile_mode=compile_mode(dev) if provider == "compiled" else None)
        benchmark.extra_info.update(info)
        _write_row(dict(name=benchmark.name, group=group, stats=dict(
            median=t, min=benchmark.stats.stats.min, mean=benchmark.stats.stats.mean,
            stddev=benchmark.stats.stats.stddev, rounds=rounds), extra_info=info))

    def _work(self, case, dev, dtype, tf32, pass_, t: float) -> dict:
        flops = float(self.flops(case, pass_))
        least = float(self.min_flops(case, pass_)) if self.min_flops else flops
        nbytes = float(self.nbytes(case, dtype, pass_))
        roof = roofline_for(dev, dtype, tf32)
        floor, bound = roof.floor(least, nbytes)
        items = float(self.items(case)) if self.items else None
        return dict(flops=flops, min_flops=least, bytes=nbytes, items=items,
                    items_per_s=items / t if items and t else None,
                    tflops_per_s=flops / t / 1e12 if t else None,
                    gb_per_s=nbytes / t / 1e9 if t else None,
                    peak_flops_per_s=roof.flops_per_s, peak_bytes_per_s=roof.bytes_per_s,
                    roofline_source=roof.source, roofline_floor_s=floor, bound=bound,
                    pct_of_roofline=100 * floor / t if t else None)


# ---------------------------------------------------------------------------------------------
# used by conftest.py at the end of the session
# ---------------------------------------------------------------------------------------------
def add_speedups(benchmarks: Iterable[dict]) -> None:
    """``extra_info["speedup_vs"][other] = median_other / median_this`` within each group."""
    groups: dict[str, dict[str, float]] = {}
    rows = [b for b in benchmarks if b.get("extra_info", {}).get("provider")
            and b.get("extra_info", {}).get("group") and b.get("stats")]
    for b in rows:
        groups.setdefault(b["extra_info"]["group"], {})[b["extra_info"]["provider"]] = \
            b["stats"]["median"]
    for b in rows:
        e = b["extra_info"]
        mine = b["stats"]["median"]
        e["speedup_vs"] = {p: (t / mine if mine else None)
                           for p, t in groups[e["group"]].items() if p != e["provider"]}
