"""Triton wide_conv2d kernels vs the float64 reference, plus an sm_90 compile check.

Without a GPU the kernels run in Triton's CPU interpreter (fp32/fp16; bf16 is skipped there),
where tl.dot is exact fp32, so fp32 tolerances are tight; fp32 tests turn TF32 off so the same
tolerances hold on a GPU. Forward cases use small-integer data: every conv value is then exact
in fp32 and fp16, so outputs must equal the reference bit for bit and pooling indices (ties
included) must match exactly. Outputs are allocated poisoned (NaN / 0xFF) to catch any element
a kernel forgets to write.

The compile check (test_compile_sm90) compiles every @triton.jit kernel for
GPUTarget("cuda", 90, 32) with the GPU autotune configs in a subprocess without TRITON_INTERPRET
(under the interpreter triton.jit yields InterpretedFunction, which ASTSource cannot take), and
reports shared memory / registers / spills from the compiled metadata and the cubin.
Run it alone with ``python tests/triton/test_wide_conv2d.py --compile-check [--full]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import zlib

import pytest
import torch

from shallowkern import _knobs as knobs
from shallowkern import testing as T
from shallowkern.ops import _geometry
from shallowkern.ops._geometry import conv_out_hw, out_memory_format
from shallowkern.ops.wide_conv2d import wide_conv2d_backward_reference, wide_conv2d_reference
from shallowkern.triton import wide_conv2d as tk
from shallowkern.triton import wide_conv2d_bwd as tb

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
SMEM_LIMIT = 232448  # sm_90 opt-in shared memory per block (227 KB)

needs_kernels = pytest.mark.skipif(
    DEVICE == "cpu" and not tk.interpreting(),
    reason="no CUDA and the Triton kernels were defined without TRITON_INTERPRET=1 "
           "(shallowkern.triton was imported before tests/conftest.py set it)")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    n: int = 2
    c: int = 3
    hw: tuple = (12, 12)
    k: int = 10
    rs: tuple = (5, 5)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    relu: bool = True
    pool: int = 2
    bias: bool = True
    layout: str = "nchw"  # nchw | cl (channels_last) | strided (non-contiguous view)
    flat: bool | None = None  # force the reduction mode (None: the launcher's choice)

    @property
    def crs(self) -> int:
        return self.c * self.rs[0] * self.rs[1]


CASES = [
    Case("conv1_c3"),  # C_in = 3: flat (c, r, s) reduction, pool 2, relu
    Case("c20_k37_odd11_cl", c=20, hw=(11, 11), k=37, rs=(3, 3), padding=(1, 1), layout="cl"),
    Case("s2_p2_d2_n1_nobias", n=1, c=20, hw=(13, 13), k=20, rs=(3, 3), stride=(2, 2),
         padding=(2, 2), dilation=(2, 2), relu=False, pool=1, bias=False),
    Case("strided_c5_d2_pool2_norelu", c=5, hw=(11, 12), k=17, rs=(3, 3), dilation=(2, 2),
         relu=False, layout="strided"),
    Case("pool1_relu_rect", c=7, hw=(9, 10), k=19, rs=(3, 2), padding=(1, 0), pool=1),
    Case("c20_forced_flat", c=20, hw=(8, 8), k=33, rs=(3, 3), flat=True),
    Case("c3_forced_channel", c=3, hw=(10, 10), k=16, rs=(3, 3), padding=(1, 1), flat=False,
         layout="cl"),
]
IDS = [c.name for c in CASES]


def make_input(case: Case, dtype, integer: bool, n: int | None = None):
    n = case.n if n is None else n
    g = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
    h, w = case.hw

    def draw(*shape):
        if integer:  # |conv| <= 4*C*R*S (bf16: C*R*S <= 256): exact in the I/O dtype
            lim = 1 if dtype == torch.bfloat16 else 2
            return torch.randint(-lim, lim + 1, shape, generator=g).to(dtype)
        return torch.randn(shape, generator=g).to(dtype)

    if case.layout == "strided":
        x = draw(n, 2 * case.c, h, w + 3)[:, ::2, :, 1:w + 1]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    else:
        x = draw(n, case.c, h, w)
        if case.layout == "cl":
            x = x.contiguous(memory_format=torch.channels_last)
    wt = draw(case.k, case.c, *case.rs)
    if not integer:
        wt = (wt.float() / math.sqrt(case.crs)).to(dtype)
    b = draw(case.k) if case.bias else None
    return x.to(DEVICE), wt.to(DEVICE), None if b is None else b.to(DEVICE)


def _up(t):
    return None if t is None else t.double()


def conv_args(case: Case):
    return list(case.stride), list(case.padding), list(case.dilation)


@pytest.fixture
def poisoned(monkeypatch):
    """torch.empty returns NaN / max-int filled memory: unwritten output elements show up."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype != torch.bool:
            t.fill_(torch.iinfo(t.dtype).max)
        return t

    monkeypatch.setattr(torch, "empty", empty)


@pytest.fixture(autouse=True)
def untuned():
    """On a GPU, run the default config instead of autotuning every test shape (slow);
    test_autotune_path covers the autotuner."""
    with knobs.override({"triton.autotune": False}):
        yield


@pytest.fixture
def no_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def check_dtype(dtype):
    if dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("bf16 is broken in the Triton interpreter")


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
def run_forward(case, x, w, b, return_indices=True, **hooks):
    s, p, d = conv_args(case)
    return tk._forward(x, w, b, s, p, d, case.relu, case.pool, return_indices,
                       flat=case.flat if "flat" not in hooks else hooks.pop("flat"), **hooks)


def reference_forward(case, x, w, b, return_indices=True):
    s, p, d = conv_args(case)
    return wide_conv2d_reference(_up(x), _up(w), _up(b), s, p, d, 1, case.relu, case.pool,
                                 return_indices)


def assert_forward_exact(case, x, out, idx, ref_out, ref_idx, return_indices=True):
    assert out.dtype == x.dtype and out.shape == ref_out.shape
    assert out.is_contiguous(memory_format=out_memory_format(x)), out.stride()
    torch.testing.assert_close(out.double(), ref_out.to(out.dtype).double(), rtol=0, atol=0,
                               equal_nan=True)
    if case.pool == 2 and return_indices:
        assert idx.dtype == torch.uint8 and idx.shape == ref_idx.shape
        assert idx.is_contiguous(memory_format=out_memory_format(x))
        mismatch = (idx != ref_idx).sum().item()
        assert mismatch == 0, f"{mismatch} pooling indices differ from the reference"
    else:
        assert idx.dtype == torch.uint8 and idx.numel() == 0


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_exact(case, dtype, poisoned, no_tf32):
    check_dtype(dtype)
    x, w, b = make_input(case, dtype, integer=True)
    out, idx = run_forward(case, x, w, b)
    ref_out, ref_idx = reference_forward(case, x, w, b)
    assert_forward_exact(case, x, out, idx, ref_out, ref_idx)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_random_tolerance(dtype, no_tf32):
    """Non-exact data: fp32 to the table's tolerance, fp16/bf16 also <= 2x PyTorch's own error."""
    check_dtype(dtype)
    case = Case("random_c20", c=20, hw=(11, 11), k=37, rs=(3, 3), padding=(1, 1))
    x, w, b = make_input(case, dtype, integer=False)
    out, _ = run_forward(case, x, w, b, return_indices=False)
    ref, _ = reference_forward(case, x, w, b, return_indices=False)
    torch_result = None
    if dtype != torch.float32:
        s, p, d = conv_args(case)
        try:
            torch_result, _ = wide_conv2d_reference(x, w, b, s, p, d, 1, case.relu, case.pool,
                                                    False)
        except RuntimeError:  # no low-precision conv for this device
            torch_result = None
    T.assert_close(out, ref, dtype, reduction=case.crs, torch_result=torch_result)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
def test_forward_nan_indices(dtype, relu, poisoned, no_tf32):
    """NaN wins the pool window (aten's 'v > best or isnan(v)' scan) and survives ReLU."""
    check_dtype(dtype)
    case = Case("nan", c=4, hw=(10, 10), k=16, rs=(3, 3), relu=relu)
    x, w, b = make_input(case, dtype, integer=True)
    x[0, 1, 4, 5] = float("nan")
    x[1, 0, 0, 0] = float("nan")
    out, idx = run_forward(case, x, w, b)
    ref_out, ref_idx = reference_forward(case, x, w, b)
    assert torch.isnan(ref_out).any()
    assert_forward_exact(case, x, out, idx, ref_out, ref_idx)


@needs_kernels
@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
def test_forward_without_indices(pool, relu, poisoned, no_tf32):
    case = Case("noidx", c=6, hw=(9, 9), k=18, rs=(3, 3), relu=relu, pool=pool, bias=False)
    x, w, b = make_input(case, torch.float32, integer=True)
    out, idx = run_forward(case, x, w, b, return_indices=False)
    ref_out, ref_idx = reference_forward(case, x, w, b, return_indices=False)
    assert_forward_exact(case, x, out, idx, ref_out, ref_idx, return_indices=False)


@needs_kernels
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("pool", [1, 2])
def test_forward_empty_batch(layout, pool):
    case = Case("empty", c=5, hw=(8, 8), k=7, rs=(3, 3), pool=pool, layout=layout)
    x, w, b = make_input(case, torch.float32, integer=True, n=0)
    out, idx = run_forward(case, x, w, b)
    ref_out, ref_idx = reference_forward(case, x, w, b)
    assert out.shape == ref_out.shape == (0, 7, 6 // pool, 6 // pool)
    assert idx.shape == ref_idx.shape and idx.dtype == torch.uint8


@needs_kernels
@pytest.mark.parametrize("cfg", range(len(tk.FWD_CONFIGS)))
@pytest.mark.parametrize("flat", [True, False])
def test_forward_gpu_configs(cfg, flat, no_tf32):
    """Every GPU autotune tile runs correctly (in the interpreter here)."""
    case = Case("cfg", n=1, c=3 if flat else 20, hw=(11, 11), k=37, rs=(3, 3), padding=(1, 1))
    x, w, b = make_input(case, torch.float32, integer=True)
    out, idx = run_forward(case, x, w, b, flat=flat, config=tk.FWD_CONFIGS[cfg])
    assert_forward_exact(case, x, out, idx, *reference_forward(case, x, w, b))


@T.requires_cuda
@needs_kernels
def test_autotune_path(no_tf32):
    with knobs.override({"triton.autotune": True}):
        _autotune_path()


def _autotune_path():
    case = CASES[1]
    x, w, b = make_input(case, torch.float32, integer=True)
    assert_forward_exact(case, x, *run_forward(case, x, w, b), *reference_forward(case, x, w, b))
    x, w, got, ref = run_backward(case, torch.float32)
    assert_backward(case, x, w, got, ref, (True, True, True), torch.float32)


def test_untuned_default_configs():
    """The no-autotune GPU path picks a BLOCK_K = 16 tile for conv1's flat reduction."""
    args = dict(C=3, R=5, S=5, FLAT=True)
    assert tk._prune_fwd(tk.FWD_CONFIGS, args)[0].kwargs["BLOCK_K"] == 16
    args = dict(C=256, R=5, S=5, FLAT=False)
    assert tk._prune_fwd(tk.FWD_CONFIGS, args)[0] is tk.FWD_CONFIGS[0]
    assert tb._prune_input(tb.BWD_INPUT_CONFIGS, dict(C=3, K=256))[0].kwargs["BLOCK_N"] == 16


def test_flat_heuristic_and_precision(monkeypatch):
    assert tk.use_flat(3) and not tk.use_flat(64)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert tk.input_precision(torch.float32) == "tf32"
    assert tk.input_precision(torch.float16) == "ieee"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert tk.input_precision(torch.float32) == "ieee"


def test_helpers_are_the_op_layers():
    """One geometry for ops, Triton and models (issue 8): the launcher uses the shared module."""
    assert tk.conv_out_hw is _geometry.conv_out_hw
    assert tk.out_memory_format is _geometry.out_memory_format
    assert tk.NO_GRAD == _geometry.NO_GRAD


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------
def run_backward(case, dtype, mask=(True, True, True), split=None, n=None, grad_layout="same",
                 **hooks):
    x, w, b = make_input(case, dtype, integer=False, n=n)
    s, p, d = conv_args(case)
    out, idx = tk.forward(x, w, b, s, p, d, case.relu, case.pool, True)
    saved = idx if case.pool == 2 else (out if case.relu else x.new_empty(0))
    g = torch.Generator().manual_seed(7)
    go = torch.randn(out.shape, generator=g).to(dtype).to(DEVICE)
    if grad_layout == "same":
        go = go.contiguous(memory_format=out_memory_format(x))
    elif grad_layout == "strided":
        go = torch.cat([go, go], dim=3)[..., ::2]
    got = tb._backward(go, x, w, saved, s, p, d, case.relu, case.pool, list(mask), split=split,
                       **hooks)
    ref = wide_conv2d_backward_reference(
        go.double(), _up(x), _up(w), saved.double() if saved.is_floating_point() else saved,
        s, p, d, 1, case.relu, case.pool, [True, True, True])
    return x, w, got, ref


def assert_backward(case, x, w, got, ref, mask, dtype):
    oh, ow = conv_out_hw(x.shape[2], x.shape[3], case.rs, case.stride, case.padding, case.dilation)
    reductions = (case.k * case.rs[0] * case.rs[1], x.shape[0] * oh * ow, x.shape[0] * oh * ow)
    names = ("grad_input", "grad_weight", "grad_bias")
    for want, ours, theirs, red, name in zip(mask, got, ref, reductions, names):
        if not want:
            assert ours.numel() == 0, f"{name} was masked off but returned {tuple(ours.shape)}"
            continue
        assert ours.dtype == dtype, name
        T.assert_close(ours, theirs, dtype, reduction=red, msg=name)
    if mask[0]:
        assert got[0].is_contiguous(memory_format=out_memory_format(x)), got[0].stride()
    if mask[1]:
        assert got[1].is_contiguous()


BWD_CASES = [
    (CASES[0], 3, "same"),  # conv1-like, pool 2 + relu, split-K 3
    (CASES[1], None, "same"),  # channels_last, odd 11x11 floor pooling
    (CASES[2], None, "strided"),  # stride 2, padding 2, dilation 2, pool 1, no relu/bias
    (CASES[3], 2, "strided"),  # non-contiguous input and grad, pool 2 without relu
    (CASES[4], 1, "same"),  # pool 1 + relu: saved = forward output
]


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case,split,grad_layout", BWD_CASES, ids=[c[0].name for c in BWD_CASES])
def test_backward(case, split, grad_layout, dtype, poisoned, no_tf32):
    check_dtype(dtype)
    mask = (True, True, case.bias)
    x, w, got, ref = run_backward(case, dtype, mask, split=split, grad_layout=grad_layout)
    assert_backward(case, x, w, got, ref, mask, dtype)


MASKS = [(True, False, False), (False, True, False), (False, False, True), (False, True, True),
         (True, False, True), (False, False, False)]


@needs_kernels
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("1" if v else "0" for v in m))
def test_backward_output_mask(mask, poisoned, no_tf32):
    case = Case("mask", c=4, hw=(9, 9), k=20, rs=(3, 3))
    x, w, got, ref = run_backward(case, torch.float32, mask, split=2)
    assert_backward(case, x, w, got, ref, mask, torch.float32)


@needs_kernels
@pytest.mark.parametrize("pool,relu", [(2, True), (1, True), (1, False)])
def test_backward_empty_batch(pool, relu, poisoned):
    case = Case("empty", c=5, hw=(8, 8), k=7, rs=(3, 3), pool=pool, relu=relu)
    x, w, (gi, gw, gb), ref = run_backward(case, torch.float32, n=0)
    assert gi.shape == x.shape == (0, 5, 8, 8)
    assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros(7, device=DEVICE))
    torch.testing.assert_close(gw.double(), ref[1]), torch.testing.assert_close(gb.double(), ref[2])


@needs_kernels
@pytest.mark.parametrize("which", ["input", "weight"])
@pytest.mark.parametrize("cfg", range(4))
def test_backward_gpu_configs(which, cfg, no_tf32):
    configs = tb.BWD_INPUT_CONFIGS if which == "input" else tb.BWD_WEIGHT_CONFIGS
    if cfg >= len(configs):
        pytest.skip("no such config")
    case = Case("cfg", c=20, hw=(9, 9), k=37, rs=(3, 3), padding=(1, 1), layout="cl")
    mask = (which == "input", which == "weight", which == "weight")
    hook = {f"{which}_config": configs[cfg]}
    x, w, got, ref = run_backward(case, torch.float32, mask, split=2, **hook)
    assert_backward(case, x, w, got, ref, mask, torch.float32)


def test_choose_split():
    # conv1 of LeNet, N=128, d1=2048 on 132 SMs: 16 tiles -> split so that >= 2 waves run
    assert tb.choose_split(128 * 28 * 28, 2048, 75, 132) == 17
    # conv2 with d1=256: 6 x 50 tiles already fill the GPU
    assert tb.choose_split(128 * 10 * 10, 717, 256 * 25, 132) == 1
    assert tb.choose_split(100, 8, 8, 132) == 1  # too few rows to split


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------
@needs_kernels
def test_bad_arguments():
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    ok = ([1, 1], [0, 0], [1, 1])
    assert tk.supports(x, w, 1) is None
    assert "groups" in tk.supports(x, w, 3)
    with pytest.raises(ValueError, match="input/weight"):
        tk.forward(x.double(), w.double(), None, *ok, True, 2, True)
    with pytest.raises(ValueError, match="in_channels"):
        tk.forward(x, torch.randn(4, 2, 3, 3, device=DEVICE), None, *ok, True, 2, True)
    with pytest.raises(ValueError, match="bias"):
        tk.forward(x, w, torch.randn(5, device=DEVICE), *ok, True, 2, True)
    with pytest.raises(ValueError, match="pool"):
        tk.forward(x, w, None, *ok, True, 3, True)
    with pytest.raises(ValueError, match="stride"):
        tk.forward(x, w, None, [0, 1], [0, 0], [1, 1], True, 2, True)
    with pytest.raises(ValueError, match="too small"):
        tk.forward(x[..., :3], w, None, *ok, True, 2, True)
    out, idx = tk.forward(x, w, None, *ok, True, 2, True)
    with pytest.raises(ValueError, match="grad_out"):
        tb.backward(out[:1], x, w, idx, *ok, True, 2, [True, True, False])
    with pytest.raises(ValueError, match="saved"):
        tb.backward(out, x, w, out, *ok, True, 2, [True, True, False])
    with pytest.raises(ValueError, match="output_mask"):
        tb.backward(out, x, w, idx, *ok, True, 2, [True, True])


# ---------------------------------------------------------------------------------------------
# sm_90 compile check (subprocess without TRITON_INTERPRET)
# ---------------------------------------------------------------------------------------------
# Specializations the JIT makes at launch for the layouts that matter: strides equal to 1 become
# constants and ints divisible by 16 get a divisibility hint. They decide whether the gathers
# vectorize to 16-byte loads and get cp.async-pipelined, so the check compiles them as launched
# (stride = dilation = 1, C % 16 == 0 for channel mode; K = 2.8*d1 is not a multiple of 16).
_ONES = ("STRIDE_H", "STRIDE_W", "DIL_H", "DIL_W")
SCENARIOS = {
    # kernel: {scenario: (stride args == 1, int args divisible by 16)}
    "fwd": {
        "cl": (("sxc", "swc", "sok"), ("C", "sxn", "sxh", "sxw", "swk", "swr", "sws")),
        "nchw": (("sxw", "swc", "sow"), ("C", "swk", "swr", "sws")),
        # conv1: 3x32x32 NCHW input, contiguous (K, C, R, S) weight
        "flat": (("sxw", "sws", "sow"), ("sxn", "sxc", "sxh")),
    },
    "bwd_input": {
        "cl": (("sgk", "ssk", "swc", "sxc"), ("C", "swk", "swr", "sws", "sxn", "sxh", "sxw")),
        "nchw": (("sgw", "ssw", "swc", "sxw"), ("C", "swk", "swr", "sws")),
    },
    "bwd_weight": {
        "cl": (("sgk", "ssk", "sxc"), ("C", "sxn", "sxh", "sxw")),
        "nchw": (("sgw", "ssw", "sxw"), ()),
    },
}
_PTRS = {"fwd": ("x_ptr", "w_ptr", "b_ptr", "out_ptr", "idx_ptr"),
         "bwd_input": ("go_ptr", "sv_ptr", "w_ptr", "gx_ptr"),
         "bwd_weight": ("go_ptr", "sv_ptr", "x_ptr", "gw_ptr", "gb_ptr")}


def _compile_jobs(full: bool):
    """(label, kernel name, pointer types, constexprs, divisible args, config index) tuples."""
    dts = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}
    jobs = []

    def job(kind, i, dt, scenario, **const):
        ones, div = SCENARIOS[kind][scenario]
        const = {**{a: 1 for a in ones + _ONES}, "R": 5, "S": 5, "RELU": True, "POOL": 2,
                 "INPUT_PRECISION": "tf32" if dt == "fp32" else "ieee", **const}
        ptrs = {a: dts[dt] for a in _PTRS[kind]}
        if kind == "fwd":
            const = {"HAS_BIAS": True, "WRITE_IDX": const["POOL"] == 2, "FLAT": scenario == "flat",
                     **const}
            ptrs["idx_ptr"] = "*u8"
        elif kind == "bwd_weight":
            const = {"HAS_GW": True, "HAS_GB": True, "CL_ORDER": scenario == "cl", **const}
            ptrs.update(gw_ptr="*fp32", gb_ptr="*fp32")
        if const["POOL"] == 2 and "sv_ptr" in ptrs:
            ptrs["sv_ptr"] = "*u8"
        extra = "".join(f" {k}={v}" for k, v in const.items() if k in ("POOL", "RELU", "HAS_GW")
                        and v != (True if k != "POOL" else 2))
        jobs.append((f"{kind}[{i}] {dt} {scenario}{extra}", kind, ptrs, const, div, i))

    configs = {"fwd": tk.FWD_CONFIGS, "bwd_input": tb.BWD_INPUT_CONFIGS,
               "bwd_weight": tb.BWD_WEIGHT_CONFIGS}
    for dt in ("fp32", "fp16", "bf16") if full else ("bf16",):
        for kind, cfgs in configs.items():
            for i, cfg in enumerate(cfgs):
                flat = kind == "fwd" and cfg.kwargs["BLOCK_K"] == 16  # the conv1 configs
                job(kind, i, dt, "flat" if flat else "cl")
    if not full:  # fp32 (twice the shared memory) on the first configs
        for kind in configs:
            job(kind, 0, "fp32", "cl")
        job("fwd", 0, "fp16", "cl")  # fp16 and bf16 compile to the same resources
        job("fwd", 1, "fp32", "cl")  # BLOCK_K = 64: the most fp32 shared memory
        job("fwd", 5, "fp32", "flat")
    for kind in configs:  # NCHW: strided gathers, no 16-byte vectors
        job(kind, 0, "bf16", "nchw")
    job("fwd", 0, "bf16", "cl", POOL=1, RELU=False, HAS_BIAS=False)
    job("bwd_input", 0, "bf16", "cl", POOL=1)
    job("bwd_weight", 0, "bf16", "cl", HAS_GW=False)
    return jobs


def _kernel(kind):
    return {"fwd": tk._wide_conv2d_fwd_kernel, "bwd_input": tb._wide_conv2d_bwd_input_kernel,
            "bwd_weight": tb._wide_conv2d_bwd_weight_kernel}[kind]


def _config(kind, i):
    return {"fwd": tk.FWD_CONFIGS, "bwd_input": tb.BWD_INPUT_CONFIGS,
            "bwd_weight": tb.BWD_WEIGHT_CONFIGS}[kind][i]


def _compile_one(job) -> dict:
    import re
    import tempfile
    import time

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    label, kind, ptrs, const, div, i = job
    fn, cfg = _kernel(kind), _config(kind, i)
    const = {**const, **cfg.kwargs}
    sig = {a: "constexpr" if a in const else ptrs.get(a, "i32") for a in fn.arg_names}
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]]
             for a in (*ptrs, *div) if a not in const}
    t0 = time.perf_counter()
    kern = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    ttgir = kern.asm["ttgir"]
    row = dict(kernel=label, tile=cfg.kwargs, warps=cfg.num_warps, stages=cfg.num_stages,
               seconds=round(time.perf_counter() - t0, 2), shared=kern.metadata.shared,
               wgmma="warp_group_dot" in ttgir, cp_async="async_copy" in ttgir, regs=None,
               spill_bytes=None)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    if os.path.exists(cuobjdump):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kern.asm["cubin"])
            f.flush()
            res = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True,
                                 text=True).stdout
        m = re.search(r"REG:(\d+).*?LOCAL:(\d+)", res)
        if m:
            row["regs"], row["spill_bytes"] = int(m.group(1)), int(m.group(2))
    return row


def compile_check(full: bool = False, workers: int | None = None) -> list[dict]:
    """Compile the kernels for sm_90, one dict per job (needs TRITON_INTERPRET unset)."""
    from concurrent.futures import ProcessPoolExecutor

    assert not tk.interpreting(), "compile_check needs TRITON_INTERPRET unset"
    jobs = _compile_jobs(full)
    workers = workers or min(4, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_compile_one, jobs))


def _nvidia_backend_available() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _nvidia_backend_available(), reason="triton has no NVIDIA backend here")
@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["main", "full"])
def test_compile_sm90(full):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    args = [sys.executable, __file__, "--compile-check"] + (["--full"] if full else [])
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, proc.stdout[-2000:]
    for row in rows:
        print(row)
        assert row["shared"] <= SMEM_LIMIT, row
        assert not row["spill_bytes"], row  # None (no cuobjdump) or 0
        assert row["wgmma"] or "HAS_GW=False" in row["kernel"], row  # tensor-core dots


if __name__ == "__main__":
    if "--compile-check" in sys.argv:
        for r in compile_check(full="--full" in sys.argv):
            print(json.dumps(r), flush=True)
    else:
        sys.exit(pytest.main([__file__, "-q"]))
