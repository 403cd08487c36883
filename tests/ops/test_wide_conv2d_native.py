"""The C++ CPU kernels shallowkern::_wide_conv2d_native{,_backward} against the references.

Oracles: wide_conv2d_reference / wide_conv2d_backward_reference (shallowkern/ops/wide_conv2d.py),
evaluated in float64 on the same inputs. The public op (routing, autograd, fake) is tested in
tests/ops/test_wide_conv2d.py; here the native ops are called directly.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from shallowkern.ops.wide_conv2d import (
    NO_GRAD,
    conv_out_hw,
    wide_conv2d_backward_reference,
    wide_conv2d_reference,
)
from shallowkern import _knobs as knobs
from shallowkern.testing import EMPTY_BATCH, FIRST_LAYER_CIN, ODD_HW, assert_close, has_ext

pytestmark = pytest.mark.skipif(
    not has_ext(), reason="shallowkern._C (the C++ kernels) is not built"
)

DTYPES = [torch.float64, torch.float32]


def fwd(*args):
    return torch.ops.shallowkern._wide_conv2d_native(*args)


def bwd(*args):
    return torch.ops.shallowkern._wide_conv2d_native_backward(*args)


# name -> (n, c, h, w, k, r, s, stride, padding, dilation, groups, bias)
CASES = {
    "first_layer": (2, FIRST_LAYER_CIN, 12, 12, 6, 5, 5, 1, 0, 1, 1, True),
    "width_1": (2, FIRST_LAYER_CIN, 9, 9, 1, 3, 3, 1, 0, 1, 1, True),
    "width_127": (1, 4, 8, 8, 127, 3, 3, 1, 1, 1, 1, True),
    "odd_31": (1, FIRST_LAYER_CIN, ODD_HW, ODD_HW, 6, 5, 5, 1, 0, 1, 1, True),
    "stride_2_pad": (2, 4, 13, 11, 6, 3, 3, 2, 2, 1, 1, True),
    "dilation_2": (2, 4, 14, 12, 5, 3, 3, 1, 1, 2, 1, False),
    "groups_2": (3, 8, 9, 10, 6, 3, 3, 1, 1, 1, 2, True),
    "groups_wide": (2, 4, 9, 9, 64, 3, 3, 1, 1, 1, 2, True),  # grad_weight as (CRS x Kg) form
    "mixed": (2, 6, 15, 13, 4, 3, 2, (2, 1), (1, 2), (2, 1), 2, False),
    "many_chunks": (13, 8, 10, 10, 12, 3, 3, 1, 0, 1, 1, True),  # > 1 chunk per thread
    # > 1 chunk per thread with zero padding: the padded buffers are reused across chunks
    "many_chunks_padded": (13, 4, 16, 15, 8, 3, 3, 1, (1, 2), 1, 1, True),
    "batch_1": (1, 5, 7, 7, 3, 2, 2, 1, 0, 1, 1, True),
    "long_rows": (3, 16, 9, 9, 20, 3, 3, 1, 1, 1, 1, True),  # CRS 144: 64-wide SIMD blocks + tail
    # The backward's direct AVX-512 tiles (5 rows x <= 80 columns, 3 rows x <= 128): one full
    # 5 x 5 tile (LeNet conv2 at d1 = 16), a 1-lane tail, two tiles along the run, a 3-row tile
    # with an 8-lane tail, and 4 packed trials (groups) of LeNet conv2 at d1 = 4.
    "lenet_conv2": (3, 16, 14, 14, 11, 5, 5, 1, 0, 1, 1, True),
    "run_65": (2, 13, 12, 12, 7, 5, 5, 1, 2, 1, 1, True),
    "two_tiles": (2, 23, 11, 11, 9, 5, 5, 1, 1, 1, 1, True),
    "rows3_run120": (2, 40, 8, 8, 6, 3, 3, 1, 1, 1, 1, True),
    "packed_conv2": (3, 16, 14, 14, 44, 5, 5, 1, 0, 1, 4, True),
}


def cpp_knobs(**values):
    """The C++ kernels' knobs (wide_conv2d.<name>) for a `with` block: read once from the
    environment, so tests set them through the knob registry, which pushes them to _C."""
    return knobs.override({f"wide_conv2d.{k}": v for k, v in values.items()})


def pair(v):
    return list(v) if isinstance(v, tuple) else [v, v]


def make(case, dtype, layout="contiguous", seed=0):
    """case: a name in CASES or such a tuple. Returns (x, weight, bias, [stride, padding, ...])."""
    n, c, h, w, k, r, s, stride, padding, dilation, groups, bias = (
        CASES[case] if isinstance(case, str) else case
    )
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    wt = (
        torch.randn(k, c // groups, r, s, generator=g, dtype=torch.float64)
        / (c * r * s / groups) ** 0.5
    )
    b = torch.randn(k, generator=g, dtype=torch.float64) if bias else None
    x, wt = x.to(dtype), wt.to(dtype)
    b = b.to(dtype) if b is not None else None
    x = relayout(x, layout)
    params = [pair(stride), pair(padding), pair(dilation), groups]
    return x, wt, b, params


def relayout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous":  # a strided view: every other column of a wider tensor
        wide = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x.contiguous()


def fmt_of(x):
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


def up(t):
    return t.double() if t is not None and t.is_floating_point() else t


def clear_windows(x, w, b, params, relu, out_ref, margin=1e-3):
    """Pooled outputs whose top two window values differ by more than `margin` (no near-tie)."""
    y = torch.nn.functional.conv2d(up(x), up(w), up(b), *params)
    if relu:
        y = torch.relu(y)
    ph, pw = out_ref.shape[2], out_ref.shape[3]
    win = y[:, :, : 2 * ph, : 2 * pw].unfold(2, 2, 2).unfold(3, 2, 2).reshape(*out_ref.shape, 4)
    top = win.topk(2, dim=-1).values
    clear = (top[..., 0] - top[..., 1]) > margin
    return clear | (out_ref <= 0) if relu else clear


def check_forward(x, w, b, params, relu, pool, return_indices, dtype):
    out, idx = fwd(x, w, b, *params, relu, pool, return_indices)
    ref, ref_idx = wide_conv2d_reference(up(x), up(w), up(b), *params, relu, pool, return_indices)
    red = w.shape[1] * w.shape[2] * w.shape[3]
    assert out.dtype == dtype
    assert_close(out, ref, dtype, red, msg="out")
    assert out.is_contiguous(memory_format=fmt_of(x))
    if pool == 2 and return_indices:
        assert idx.dtype == torch.uint8 and idx.shape == out.shape
        assert idx.is_contiguous(memory_format=fmt_of(x))
        if out.numel():
            clear = clear_windows(x, w, b, params, relu, ref)
            assert torch.equal(idx[clear], ref_idx[clear]), "indices differ from the reference"
            assert int(idx.max()) <= NO_GRAD
    else:
        assert idx.dtype == torch.uint8 and idx.shape == (0,)
    return out, idx


def saved_for(x, out, idx, relu, pool):
    return idx if pool == 2 else (out if relu else x.new_empty(0))


def check_backward(x, w, b, params, relu, pool, out, idx, mask, dtype, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = g.to(dtype).contiguous(memory_format=fmt_of(x))
    saved = saved_for(x, out, idx, relu, pool)
    got = bwd(g, x, w, saved, *params, relu, pool, mask)
    want = wide_conv2d_backward_reference(up(g), up(x), up(w), up(saved), *params, relu, pool, mask)
    oh, ow = conv_out_hw(x.shape[2], x.shape[3], w.shape[2:], *params[:3])
    reductions = (
        w.shape[0] // params[3] * w.shape[2] * w.shape[3],
        max(x.shape[0] * oh * ow, 1),
        max(x.shape[0] * oh * ow, 1),
    )
    for name, m, a, r, red in zip(
        ("grad_input", "grad_weight", "grad_bias"), mask, got, want, reductions
    ):
        if not m:
            assert a.shape == (0,) and a.dtype == dtype, f"{name} should be empty"
            continue
        assert a.dtype == dtype
        assert_close(a, r, dtype, red, msg=name)
    if mask[0]:
        assert got[0].is_contiguous(memory_format=fmt_of(x))
    if mask[1]:
        assert got[1].is_contiguous() and got[1].shape == w.shape
    return got


# ------------------------------------------------------------------------------------------------
# forward + backward over shapes x dtypes x layouts x (relu, pool)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("relu,pool", [(True, 2), (False, 2), (True, 1), (False, 1)])
@pytest.mark.parametrize("case", list(CASES))
def test_against_reference(case, relu, pool, dtype):
    x, w, b, params = make(case, dtype)
    out, idx = check_forward(x, w, b, params, relu, pool, True, dtype)
    check_backward(x, w, b, params, relu, pool, out, idx, [True, True, True], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "noncontiguous"])
@pytest.mark.parametrize("relu,pool", [(True, 2), (False, 1), (True, 1)])
@pytest.mark.parametrize("case", ["first_layer", "groups_2", "mixed", "odd_31"])
def test_layouts(case, relu, pool, layout, dtype):
    x, w, b, params = make(case, dtype, layout)
    out, idx = check_forward(x, w, b, params, relu, pool, True, dtype)
    check_backward(x, w, b, params, relu, pool, out, idx, [True, True, True], dtype)


def test_noncontiguous_weight_bias_and_grad_out():
    x, w, b, params = make("groups_2", torch.float32)
    w_nc = w.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # same values, other strides
    b_nc = torch.stack([b, b], 1)[:, 0]
    assert not w_nc.is_contiguous() and not b_nc.is_contiguous()
    out, idx = check_forward(x, w_nc, b_nc, params, True, 2, True, torch.float32)
    g = torch.randn(*out.shape[:3], 2 * out.shape[3])[..., ::2]  # non-contiguous grad_out
    got = bwd(g, x, w_nc, idx, *params, True, 2, [True, True, True])
    want = wide_conv2d_backward_reference(
        g.double(), x.double(), w.double(), idx, *params, True, 2, [True, True, True]
    )
    for a, r in zip(got, want):
        assert_close(a, r, torch.float32, 500)


AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
# Cases the direct (AVX-512) forward takes: stride 1, dilation 1, groups 1, pool 2.
DIRECT_CASES = {
    "first_layer": CASES["first_layer"],
    "odd_31": CASES["odd_31"],
    "k17_padded": (3, FIRST_LAYER_CIN, 11, 13, 17, 5, 5, 1, 2, 1, 1, True),  # 2 channel blocks
    "k40_3x3_nobias": (2, 4, 10, 9, 40, 3, 3, 1, 1, 1, 1, False),  # K not a multiple of 16
    "pw3": (2, 2, 10, 6, 16, 3, 2, 1, 0, 1, 1, True),  # exactly one 3-window block per row
    "pw1": (2, 3, 7, 3, 5, 3, 2, 1, 0, 1, 1, True),  # one window per row
    "pw5": (2, 3, 12, 14, 33, 3, 5, 1, 1, 1, 1, True),  # blocks of 3 + 2 windows, 3 chan blocks
    "many_chunks": CASES["many_chunks"],
    # groups 2/4/8/16 (packed trials): interleaved groups, lane L = channel L // G of group L % G
    "g2_k5": (3, 6, 12, 12, 10, 5, 5, 1, 0, 1, 2, True),  # 10 of 16 lanes
    "g4_lenet": (2, 12, 12, 11, 16, 5, 5, 1, 1, 1, 4, True),  # conv1 of 4 trials: 16 lanes
    "g8_two_blocks": (2, 16, 9, 10, 24, 3, 3, 1, 1, 1, 8, False),  # 24 lanes: 2 blocks
    "g16_cin1": (2, 16, 8, 8, 32, 3, 3, 1, 0, 1, 16, True),
    # groups whose channels fill their own lanes run one group at a time (direct_groups_one_by_one)
    "g4_one_by_one": (2, 12, 12, 11, 64, 5, 5, 1, 1, 1, 4, True),  # 16 lanes per group
    "g2_k33_one_by_one": (2, 6, 10, 9, 66, 3, 3, 1, 1, 1, 2, False),  # 3 blocks per group
    # other group counts up to 16: the next of 2/4/8/16 lane slots, the extra ones empty
    "g3_slots4": (2, 9, 12, 11, 12, 5, 5, 1, 1, 1, 3, True),  # 3 packed LeNet conv1s, d1 = 4
    "g5_slots8": (2, 5, 9, 10, 10, 3, 3, 1, 1, 1, 5, False),
    "g12_slots16": (1, 12, 8, 8, 24, 3, 3, 1, 1, 1, 12, True),
}
GROUPED_DIRECT = ("g2_k5", "g4_lenet", "g8_two_blocks", "g16_cin1", "g4_one_by_one",
                  "g2_k33_one_by_one", "g3_slots4", "g5_slots8", "g12_slots16")


@pytest.mark.parametrize("path", ["fused", "vendor", "direct"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("relu,pool", [(True, 2), (False, 2), (True, 1)])
@pytest.mark.parametrize("case", list(CASES) + [c for c in DIRECT_CASES if c not in CASES])
def test_forward_paths(case, relu, pool, layout, path):
    """The forward's three ways to the pooled output (fused im2col + GEMM, oneDNN's conv + the
    fused epilogue, the direct AVX-512 kernel where it applies; by default chosen by shape)
    agree with the reference."""
    with cpp_knobs(cpu_forward=path):
        for dtype in DTYPES:
            x, w, b, params = make(DIRECT_CASES.get(case, case), dtype, layout)
            check_forward(x, w, b, params, relu, pool, True, dtype)


@pytest.mark.skipif(not AVX512, reason="the direct forward needs an AVX-512 CPU")
@pytest.mark.parametrize("case", GROUPED_DIRECT)
def test_grouped_direct_is_default_and_each_group_is_its_own_conv(case):
    """Groups of 2/4/8/16 take the direct kernel by default (not the fused GEMM path), and group
    p's output is the ungrouped direct conv of group p's input and weights, bit for bit (same
    summation order per lane: packed trials equal their one-at-a-time twins exactly)."""
    x, w, b, params = make(DIRECT_CASES[case], torch.float32)
    got = forward_by_path(("direct", "fused", None), x, w, b, params)
    assert torch.equal(got[None][0], got["direct"][0]) and torch.equal(got[None][1],
                                                                       got["direct"][1])
    assert not torch.equal(got["direct"][0], got["fused"][0]), "the paths must differ"
    G = params[-1]
    one = list(params[:-1]) + [1]
    for xg, wg, bg, og, ig in zip(x.chunk(G, 1), w.chunk(G, 0),
                                  b.chunk(G) if b is not None else [None] * G,
                                  got["direct"][0].chunk(G, 1), got["direct"][1].chunk(G, 1)):
        o1, i1 = fwd(xg.contiguous(), wg.contiguous(), bg, *one, True, 2, True)
        assert torch.equal(og, o1) and torch.equal(ig, i1)


def forward_by_path(paths, x, w, b, params):
    """{path: (out, idx)} of the native forward with the knob wide_conv2d.cpu_forward = path
    (None: the default choice by shape)."""
    got = {}
    for path in paths:
        with cpp_knobs(cpu_forward=path):
            got[path] = fwd(x, w, b, *params, True, 2, True)
    return got


@pytest.mark.skipif(not AVX512, reason="the direct forward needs an AVX-512 CPU")
def test_forward_default_path_is_direct_for_the_first_layer():
    """LeNet's conv1 (C*R*S = 75, pool 2) takes the direct kernel by default on AVX-512 CPUs,
    with poisoned-free, NaN-correct outputs in every lane of a partial channel block."""
    x, w, b, params = make((4, 3, 16, 16, 20, 5, 5, 1, 0, 1, 1, True), torch.float32)
    x[1, 0, 3, 4] = float("nan")  # a NaN window must win the max, as in max_pool2d
    got = forward_by_path(("direct", "fused", None), x, w, b, params)
    same = {k: (v[0].nan_to_num(nan=-7.0), v[1]) for k, v in got.items()}  # NaN != NaN
    assert not torch.equal(same["direct"][0], same["fused"][0]), "the paths must differ"
    assert torch.equal(same[None][0], same["direct"][0])
    assert torch.equal(same[None][1], same["direct"][1])
    ref, ref_idx = wide_conv2d_reference(x.double(), w.double(), b.double(), *params, True, 2,
                                         True)
    nan = ref.isnan()
    assert nan.any() and torch.equal(got["direct"][0].isnan(), nan)
    assert torch.equal(got["direct"][1][nan], ref_idx[nan])


@pytest.mark.parametrize("c", [24, 96])
def test_forward_default_path_is_vendor_for_long_reductions(c):
    """CRS = c*25 >= 512 (kVendorConvMinCRS; above the direct kernel's 512) takes the vendor
    conv by default: same result as forcing it."""
    x, w, b, params = make((3, c, 9, 9, 10, 5, 5, 1, 0, 1, 1, True), torch.float32)
    got = forward_by_path(("vendor", "fused", None), x, w, b, params)
    ref, _ = wide_conv2d_reference(x.double(), w.double(), b.double(), *params, True, 2, False)
    assert_close(got["vendor"][0], ref, torch.float32, c * 25, msg="vendor")
    assert not torch.equal(got["fused"][0], got["vendor"][0]), "the paths must differ"
    assert torch.equal(got[None][0], got["vendor"][0]) and torch.equal(got[None][1],
                                                                       got["vendor"][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pool,relu", [(2, True), (1, False), (2, False)])
@pytest.mark.parametrize("case,layout", [((3, 24, 9, 9, 10, 5, 5, 1, 0, 1, 1, True), "contiguous"),
                                         ((2, 40, 8, 7, 6, 3, 5, 1, (1, 2), 1, 2, False),
                                          "channels_last"),
                                         ((2, 64, 9, 9, 33, 3, 3, 2, 1, 1, 1, True),
                                          "noncontiguous")])
def test_vendor_conv_layouts(case, layout, pool, relu, dtype):
    """The vendor forward's two oneDNN layouts (wide_conv2d.cpu_conv_layout) both match the
    reference; an inference call by default (timed once per shape) returns exactly one of the
    two, and a training call (indices), or any call in deterministic mode, the channels_last one."""
    x, w, b, params = make(case, dtype, layout)
    red = w.shape[1] * w.shape[2] * w.shape[3]
    ref, _ = wide_conv2d_reference(up(x), up(w), up(b), *params, relu, pool, False)
    got = {}
    with cpp_knobs(cpu_forward="vendor"):
        for lay in ("channels_last", "planar"):
            with cpp_knobs(cpu_conv_layout=lay):
                got[lay] = fwd(x, w, b, *params, relu, pool, False)[0]
                assert_close(got[lay], ref, dtype, red, msg=lay)
        auto = fwd(x, w, b, *params, relu, pool, False)[0]
        assert any(torch.equal(auto, g) for g in got.values())
        assert torch.equal(fwd(x, w, b, *params, relu, pool, False)[0], auto)  # the cached choice
        if pool == 2:
            assert torch.equal(fwd(x, w, b, *params, relu, pool, True)[0], got["channels_last"])
        torch.use_deterministic_algorithms(True)
        try:
            x2 = x[:1].clone()  # a new shape: not yet timed
            with cpp_knobs(cpu_conv_layout="channels_last"):
                want = fwd(x2, w, b, *params, relu, pool, False)[0]
            assert torch.equal(fwd(x2, w, b, *params, relu, pool, False)[0], want)
        finally:
            torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pool,relu", [(2, True), (2, False), (1, True), (1, False)])
@pytest.mark.parametrize("case,layout", [("first_layer", "contiguous"), ("mixed", "contiguous"),
                                         ("groups_wide", "channels_last"),
                                         ("odd_31", "noncontiguous"), ("batch_1", "contiguous")])
def test_vendor_backward(case, layout, pool, relu, dtype):
    """The backward's vendor path (ATen's convolution_backward after unpooling, chosen from a
    256 MiB weight; wide_conv2d.cpu_backward=vendor forces it) against the reference, with
    every output mask and a non-finite gradient that must stay in its own window position."""
    with cpp_knobs(cpu_backward="vendor"):
        x, w, b, params = make(case, dtype, layout)
        out, idx = check_forward(x, w, b, params, relu, pool, pool == 2, dtype)
        for mask in ([True, True, True], [False, True, False], [True, False, True]):
            check_backward(x, w, b, params, relu, pool, out, idx, mask, dtype)
        if pool == 2:
            g = torch.zeros(out.shape, dtype=dtype).contiguous(memory_format=fmt_of(x))
            g[0, 0, 0, 0] = float("inf")
            saved = saved_for(x, out, idx, relu, pool)
            gx = bwd(g, x, w, saved, *params, relu, pool, [True, False, False])[0]
            ref = wide_conv2d_backward_reference(g, x, w, saved, *params, relu, pool,
                                                 [True, False, False])[0]
            assert torch.equal(gx.isnan(), ref.isnan()) and torch.equal(gx.isinf(), ref.isinf())


def test_conv_layout_knob_rejects_unknown_values():
    from shallowkern import _C
    with pytest.raises(ValueError, match="channels_last or planar"):
        _C.set_knob("SHALLOWKERN_CPU_CONV_LAYOUT", "nhwc")
    assert _C.get_knob("SHALLOWKERN_CPU_CONV_LAYOUT") == ""
    with pytest.raises(ValueError, match="fused or vendor"):
        _C.set_knob("SHALLOWKERN_CPU_BACKWARD", "aten")
    assert _C.get_knob("SHALLOWKERN_CPU_BACKWARD") == ""


@pytest.mark.parametrize("path", ["sparse", "sparse_avx2", "dense"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize(
    "case,layout",
    [
        ("first_layer", "contiguous"),
        ("width_127", "contiguous"),
        ("mixed", "contiguous"),
        ("groups_wide", "channels_last"),
        ("many_chunks_padded", "contiguous"),
        ("odd_31", "noncontiguous"),
        ("long_rows", "contiguous"),
        ("stride_2_pad", "contiguous"),
        ("lenet_conv2", "contiguous"),
        ("run_65", "noncontiguous"),
        ("two_tiles", "channels_last"),
        ("rows3_run120", "contiguous"),
        ("packed_conv2", "contiguous"),
    ],
)
def test_float32_pool2_backward_paths(case, layout, relu, path):
    """float32 with pool 2 takes the sparse backward (AVX2 CPUs; its AVX-512 kernels where the CPU
    has them, which SHALLOWKERN_CPU_AVX512=0 turns off); "0" forces the dense GEMMs."""
    with cpp_knobs(cpu_sparse_backward=path != "dense", cpu_avx512=path != "sparse_avx2"):
        x, w, b, params = make(case, torch.float32, layout)
        out, idx = check_forward(x, w, b, params, relu, 2, True, torch.float32)
        for mask in ([True, True, True], [False, True, False], [True, False, True]):
            check_backward(x, w, b, params, relu, 2, out, idx, mask, torch.float32)


@pytest.mark.parametrize("return_indices", [False, True])
@pytest.mark.parametrize("pool", [1, 2])
def test_return_indices(pool, return_indices):
    x, w, b, params = make("first_layer", torch.float32)
    check_forward(x, w, b, params, True, pool, return_indices, torch.float32)


@pytest.mark.parametrize(
    "mask",
    list(itertools.product([False, True], repeat=3)),
    ids=lambda m: "".join("1" if v else "0" for v in m),
)
@pytest.mark.parametrize("relu,pool", [(True, 2), (True, 1), (False, 1)])
def test_output_masks(mask, relu, pool):
    x, w, b, params = make("groups_2", torch.float64)
    out, idx = check_forward(x, w, b, params, relu, pool, True, torch.float64)
    got = check_backward(x, w, b, params, relu, pool, out, idx, list(mask), torch.float64)
    # Outputs of an op must not alias one another (torch.library checks this for custom ops).
    storages = {t.untyped_storage()._cdata for t in got}
    assert len(storages) == 3, "two outputs share a storage"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("relu,pool", [(True, 2), (False, 1)])
def test_empty_batch(relu, pool, dtype):
    x, w, b, params = make((EMPTY_BATCH, *CASES["first_layer"][1:]), dtype)
    out, idx = check_forward(x, w, b, params, relu, pool, True, dtype)
    assert out.shape[0] == 0
    got = check_backward(x, w, b, params, relu, pool, out, idx, [True, True, True], dtype)
    assert got[0].shape == x.shape
    assert not got[1].any() and not got[2].any()


def test_weight_grad_partials_capped():
    """With a partials budget below one (K x CRS) buffer, one thread does the weight gradient:
    same values as with a partial per thread (up to summation order), and still deterministic."""
    x, w, b, params = make("many_chunks", torch.float32)
    out, idx = fwd(x, w, b, *params, True, 2, True)
    g = torch.randn_like(out)
    want = bwd(g, x, w, idx, *params, True, 2, [True, True, True])
    with cpp_knobs(cpu_partials_mb=0):
        got = bwd(g, x, w, idx, *params, True, 2, [True, True, True])
        again = bwd(g, x, w, idx, *params, True, 2, [True, True, True])
    for a, r, c in zip(got, want, again):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
        assert torch.equal(a, c)


def test_deterministic():
    x, w, b, params = make("many_chunks", torch.float32)
    out, idx = fwd(x, w, b, *params, True, 2, True)
    g = torch.randn_like(out)
    first = bwd(g, x, w, idx, *params, True, 2, [True, True, True])
    for _ in range(3):
        again = bwd(g, x, w, idx, *params, True, 2, [True, True, True])
        assert all(torch.equal(a, c) for a, c in zip(first, again))


# ------------------------------------------------------------------------------------------------
# indices: first max, NaN, NO_GRAD, exact ties
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_indices_all_ties(relu, dtype):
    """All-zero weights: every conv output equals its bias, so every window is a 4-way tie."""
    x = torch.randn(2, 3, 9, 8, dtype=dtype)
    w = torch.zeros(4, 3, 3, 3, dtype=dtype)
    b = torch.tensor([1.5, -2.0, 0.0, 3.0], dtype=dtype)
    params = [[1, 1], [0, 0], [1, 1], 1]
    out, idx = fwd(x, w, b, *params, relu, 2, True)
    ref, ref_idx = wide_conv2d_reference(x, w, b, *params, relu, 2, True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    expect = torch.tensor([0, NO_GRAD, NO_GRAD, 0] if relu else [0, 0, 0, 0], dtype=torch.uint8)
    assert torch.equal(idx[0, :, 0, 0], expect)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_indices_exact_integer_ties(layout, relu, dtype):
    """Small-integer data: exact sums, many ties; indices must equal the reference everywhere."""
    g = torch.Generator().manual_seed(3)
    x = relayout(torch.randint(-1, 2, (3, 4, 11, 10), generator=g).to(dtype), layout)
    w = torch.randint(-1, 2, (7, 4, 3, 3), generator=g).to(dtype)
    b = torch.randint(-2, 3, (7,), generator=g).to(dtype)
    params = [[1, 1], [1, 1], [1, 1], 1]
    out, idx = fwd(x, w, b, *params, relu, 2, True)
    ref, ref_idx = wide_conv2d_reference(x, w, b, *params, relu, 2, True)
    assert torch.equal(out, ref)
    assert torch.equal(idx, ref_idx)
    gout = torch.randn_like(out)
    got = bwd(gout, x, w, idx, *params, relu, 2, [True, True, True])
    want = wide_conv2d_backward_reference(
        gout.double(), x.double(), w.double(), idx, *params, relu, 2, [True, True, True]
    )
    for a, r in zip(got, want):
        assert_close(a, r, dtype, 1000)


@pytest.mark.parametrize("relu", [False, True])
def test_indices_nan_and_inf(relu):
    """NaN wins its window (the last NaN, as max_pool2d's `v > best || isnan(v)`); -inf loses."""
    x = torch.zeros(1, 1, 4, 6)
    x[0, 0, 0, 0] = float("nan")
    x[0, 0, 1, 1] = float("nan")  # window (0, 0): NaN at positions 0 and 3
    x[0, 0, 1, 2] = float("nan")  # window (0, 1): NaN at position 2
    x[0, 0, 2:4, 4:6] = float("-inf")  # window (1, 2): all -inf
    w = torch.ones(1, 1, 1, 1)
    params = [[1, 1], [0, 0], [1, 1], 1]
    out, idx = fwd(x, w, None, *params, relu, 2, True)
    ref, ref_idx = wide_conv2d_reference(x, w, None, *params, relu, 2, True)
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(idx, ref_idx)


# ------------------------------------------------------------------------------------------------
# bad input: RuntimeError naming the argument
# ------------------------------------------------------------------------------------------------
def _args(**over):
    a = {
        "input": torch.randn(2, 4, 8, 8),
        "weight": torch.randn(6, 4, 3, 3),
        "bias": torch.randn(6),
        "stride": [1, 1],
        "padding": [0, 0],
        "dilation": [1, 1],
        "groups": 1,
        "relu": True,
        "pool": 2,
        "return_indices": True,
    }
    a.update(over)
    return list(a.values())


@pytest.mark.parametrize(
    "over,match",
    [
        (
            {
                "input": torch.randn(2, 4, 8, 8).half(),
                "weight": torch.randn(6, 4, 3, 3).half(),
                "bias": None,
            },
            "input must be float32 or float64",
        ),
        ({"input": torch.randint(0, 3, (2, 4, 8, 8))}, "input"),
        ({"weight": torch.randn(6, 4, 3, 3, dtype=torch.float64)}, "weight dtype"),
        ({"input": torch.randn(4, 8, 8)}, "input must be a 4-D"),
        ({"weight": torch.randn(6, 4, 3)}, "weight must be a 4-D"),
        ({"groups": 3}, "groups"),
        ({"groups": 0}, "groups"),
        ({"weight": torch.randn(6, 3, 3, 3)}, "weight has 3 input channels"),
        ({"bias": torch.randn(5)}, "bias must have shape"),
        ({"bias": torch.randn(6, dtype=torch.float64)}, "bias dtype"),
        ({"stride": [0, 1]}, "stride"),
        ({"stride": [1, 1, 1]}, "stride"),
        ({"padding": [-1, 0]}, "padding"),
        ({"dilation": [1, 0]}, "dilation"),
        ({"pool": 3}, "pool"),
        ({"weight": torch.randn(6, 4, 9, 3)}, "weight"),  # kernel larger than input
        ({"weight": torch.randn(6, 4, 8, 3)}, "pool=2 needs a conv output of at least 2x2"),
    ],
)
def test_bad_forward_input(over, match):
    with pytest.raises(RuntimeError, match=match):
        fwd(*_args(**over))


def _bwd_args(**over):
    x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3)
    a = {
        "grad_out": torch.randn(2, 6, 3, 3),
        "input": x,
        "weight": w,
        "saved": torch.zeros(2, 6, 3, 3, dtype=torch.uint8),
        "stride": [1, 1],
        "padding": [0, 0],
        "dilation": [1, 1],
        "groups": 1,
        "relu": True,
        "pool": 2,
        "output_mask": [True, True, True],
    }
    a.update(over)
    return list(a.values())


@pytest.mark.parametrize(
    "over,match",
    [
        ({"grad_out": torch.randn(2, 6, 3, 4)}, "grad_out must have shape"),
        ({"grad_out": torch.randn(2, 6, 3, 3, dtype=torch.float64)}, "grad_out dtype"),
        ({"grad_out": torch.randn(2, 6, 9)}, "grad_out must be a 4-D"),
        ({"saved": torch.zeros(2, 6, 3, 3)}, "saved must be the uint8 pool indices"),
        ({"saved": torch.zeros(2, 6, 3, 2, dtype=torch.uint8)}, "saved"),
        (
            {
                "pool": 1,
                "grad_out": torch.randn(2, 6, 6, 6),
                "saved": torch.zeros(2, 6, 6, 6, dtype=torch.uint8),
            },
            "saved must be the forward output",
        ),
        (
            {"pool": 1, "grad_out": torch.randn(2, 6, 6, 6), "saved": torch.zeros(2, 6, 6, 5)},
            "saved",
        ),
        ({"input": torch.randn(2, 4, 8, 8, dtype=torch.float64)}, "weight dtype"),
        ({"groups": 2}, "groups"),
    ],
)
def test_bad_backward_input(over, match):
    with pytest.raises(RuntimeError, match=match):
        bwd(*_bwd_args(**over))


# ------------------------------------------------------------------------------------------------
# opcheck
# ------------------------------------------------------------------------------------------------
# The native ops have C++ Meta kernels (csrc/cpu/wide_conv2d.cpp: the same checks and geometry),
# so fake tensors work; they have no autograd (the public op shallowkern::wide_conv2d carries
# it), so test_aot_dispatch_dynamic does not apply here.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize(
    "relu,pool,layout,mask",
    [
        (True, 2, "contiguous", [True, False, True]),
        (False, 1, "channels_last", [False, True, False]),
        (True, 1, "noncontiguous", [True, True, True]),
    ],
)
def test_opcheck(relu, pool, layout, mask):
    x, w, b, params = make("groups_2", torch.float32, layout)
    torch.library.opcheck(
        torch.ops.shallowkern._wide_conv2d_native.default,
        (x, w, b, *params, relu, pool, True),
        test_utils=OPCHECK_UTILS,
    )
    out, idx = fwd(x, w, b, *params, relu, pool, True)
    saved = saved_for(x, out, idx, relu, pool)
    torch.library.opcheck(
        torch.ops.shallowkern._wide_conv2d_native_backward.default,
        (torch.randn_like(out), x, w, saved, *params, relu, pool, mask),
        test_utils=OPCHECK_UTILS,
    )


# ------------------------------------------------------------------------------------------------
# issue 9: argument validation in C++ (floor-division geometry), zero channels, knobs, meta
# ------------------------------------------------------------------------------------------------
ISSUE9_CALL = """
import torch, shallowkern
x = torch.randn(4, 3, 4, 4, requires_grad=True)
w = torch.randn(64, 3, 5, 5, requires_grad=True)
calls = {{
    "public": lambda: torch.ops.shallowkern.wide_conv2d(
        x, w, None, [15, 15], [0, 0], [1, 1], 1, True, 1, False),
    "native": lambda: torch.ops.shallowkern._wide_conv2d_native(
        x.detach(), w.detach(), None, [15, 15], [0, 0], [1, 1], 1, True, 1, False),
    "native_backward": lambda: torch.ops.shallowkern._wide_conv2d_native_backward(
        torch.randn(4, 64, 1, 1), x.detach(), w.detach(), torch.randn(4, 64, 1, 1), [15, 15],
        [0, 0], [1, 1], 1, True, 1, [True, True, True]),
}}
try:
    out = calls[{which!r}]()
    (out[0].sum().backward() if {which!r} == "public" else None)
    print("NO ERROR", out[0].shape)
except (RuntimeError, ValueError) as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("which", ["public", "native", "native_backward"])
def test_issue9_kernel_larger_than_input_is_refused(which):
    """Issue 9, failure 1: a 5x5 kernel on a 4x4 input with stride 15 "fitted" with C's
    truncating division (output 1x1), and forward + backward corrupted the heap. Run in a
    subprocess: before the fix the interpreter aborts (free(): invalid size), which must fail
    this test rather than kill pytest."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", ISSUE9_CALL.format(which=which)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"crashed (rc {result.returncode}): {result.stderr[-2000:]}"
    assert "refused:" in result.stdout and "does not fit" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "h,r,stride,padding,dilation",
    [
        (4, 5, 15, 0, 1),  # the issue: numerator -1, truncation gives 1, floor gives 0
        (4, 5, 2, 0, 1),
        (3, 3, 7, 0, 2),  # dilated kernel (5) larger than the input
        (1, 4, 3, 1, 1),  # padded input 3 < kernel 4
        (5, 5, 4, 0, 1),  # exactly fits: 1
        (5, 7, 4, 1, 1),  # fits with padding: 1
        (6, 3, 5, 0, 1),  # floor((6 - 3) / 5) + 1 = 1
        (9, 3, 3, 2, 2),
    ],
)
def test_geometry_agrees_with_python_floor_formula(h, r, stride, padding, dilation):
    """The C++ checks (eager and meta) use the floor division of shallowkern/ops/_geometry.py:
    the native op accepts a geometry exactly when the Python formula gives >= 1, with that
    output size."""
    x, w = torch.randn(1, 2, h, h + 1), torch.randn(3, 2, r, r)
    st, pd, dl = [stride, stride], [padding, padding], [dilation, dilation]
    oh, ow = conv_out_hw(h, h + 1, (r, r), st, pd, dl)
    for device in ("cpu", "meta"):
        args = (x.to(device), w.to(device), None, st, pd, dl, 1, False, 1, False)
        if oh >= 1 and ow >= 1:
            assert fwd(*args)[0].shape == (1, 3, oh, ow)
            ref = torch.nn.functional.conv2d(x, w, None, st, pd, dl)
            assert ref.shape == (1, 3, oh, ow)
        else:
            with pytest.raises(RuntimeError, match="does not fit"):
                fwd(*args)
            with pytest.raises(RuntimeError):  # aten refuses it too
                torch.nn.functional.conv2d(x, w, None, st, pd, dl)


@pytest.mark.parametrize("relu,pool", [(True, 1), (False, 1), (True, 2)])
def test_zero_input_channels_as_conv2d(relu, pool):
    """C_in = 0: aten's conv2d returns an (N, 0, OH, OW) tensor whatever the weight's K (eager
    and meta alike), which max_pool2d then refuses; the native op and its meta kernel do the
    same, and the gradients are zero."""
    x, w, b = torch.randn(2, 0, 8, 8), torch.randn(4, 0, 3, 3), torch.randn(4)
    params = [[1, 1], [0, 0], [1, 1], 1]
    if pool == 2:
        with pytest.raises(RuntimeError):
            wide_conv2d_reference(x, w, b, *params, relu, pool, False)
        for device in ("cpu", "meta"):
            with pytest.raises(RuntimeError, match="pool=2 with zero input channels"):
                fwd(x.to(device), w.to(device), b.to(device), *params, relu, pool, True)
        return
    ref, _ = wide_conv2d_reference(x, w, b, *params, relu, pool, False)
    out, idx = fwd(x, w, b, *params, relu, pool, True)
    meta, _ = fwd(x.to("meta"), w.to("meta"), b.to("meta"), *params, relu, pool, True)
    assert out.shape == ref.shape == meta.shape == (2, 0, 6 // pool, 6 // pool)
    saved = idx if pool == 2 else (out if relu else x.new_empty(0))
    gx, gw, gb = bwd(torch.zeros_like(out), x, w, saved, *params, relu, pool, [True, True, True])
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (4,)
    assert not gb.any()


def test_zero_output_channels_refused_as_conv2d():
    """K = 0: aten's conv2d refuses the weight; so does the native op (eager and meta)."""
    x, w = torch.randn(2, 3, 8, 8), torch.randn(0, 3, 3, 3)
    with pytest.raises(RuntimeError, match="weight"):
        torch.nn.functional.conv2d(x, w)
    for device in ("cpu", "meta"):
        with pytest.raises(RuntimeError, match="at least one output channel"):
            fwd(x.to(device), w.to(device), None, [1, 1], [0, 0], [1, 1], 1, True, 2, True)


@pytest.mark.parametrize(
    "over,match",
    [
        ({"padding": [2**62, 0]}, "overflows int64"),
        ({"dilation": [2**62, 1]}, "overflows int64"),
        ({"stride": [2**62, 2**62]}, None),  # valid: output 1x1 (floor), but pool=2 needs 2x2
        ({"padding": [2**20, 2**20]}, "4 GiB"),  # a padded image no thread buffer should hold
        ({"weight": torch.randn(6, 4, 0, 3)}, "non-empty kernel"),
        ({"weight": torch.randn(0, 4, 3, 3), "bias": None}, "at least one output channel"),
        ({"bias": torch.randn(6).to("meta")}, "bias must be on the input's device"),
    ],
)
def test_bad_forward_input_hostile_values(over, match):
    with pytest.raises(RuntimeError, match=match or "pool=2 needs"):
        fwd(*_args(**over))


def test_native_meta_kernels_agree_with_eager():
    """Fake/meta shapes come from the same C++ checks: every output's shape, dtype and layout."""
    for case, layout, relu, pool, ri in [("mixed", "channels_last", True, 2, True),
                                         ("stride_2_pad", "contiguous", False, 1, False),
                                         ("groups_2", "noncontiguous", True, 1, True)]:
        x, w, b, params = make(case, torch.float32, layout)
        out = fwd(x, w, b, *params, relu, pool, ri)
        meta = fwd(x.to("meta"), w.to("meta"), b.to("meta") if b is not None else None, *params,
                   relu, pool, ri)
        for a, m in zip(out, meta):
            assert a.shape == m.shape and a.dtype == m.dtype and a.stride() == m.stride()
        saved = saved_for(x, out[0], out[1], relu, pool)
        g = torch.randn_like(out[0])
        for mask in ([True, True, True], [False, True, False]):
            got = bwd(g, x, w, saved, *params, relu, pool, mask)
            meta = bwd(*(t.to("meta") for t in (g, x, w, saved)), *params, relu, pool, mask)
            for a, m in zip(got, meta):
                assert a.shape == m.shape and a.dtype == m.dtype and a.stride() == m.stride()


def test_cpp_knobs_read_once_and_set_through_the_registry(monkeypatch):
    """The C++ knobs are read from the environment once: changing the variable later has no
    effect; shallowkern._knobs.override (through _C.set_knob) does, and is undone on exit."""
    from shallowkern import _C

    knobs.get("wide_conv2d.cpu_forward")  # the registry reads the variable once, too: before
    before = _C.get_knob("SHALLOWKERN_CPU_FORWARD")
    monkeypatch.setenv("SHALLOWKERN_CPU_FORWARD", "vendor" if before != "vendor" else "fused")
    x, w, b, params = make("first_layer", torch.float32)
    fwd(x, w, b, *params, True, 2, True)
    assert _C.get_knob("SHALLOWKERN_CPU_FORWARD") == before
    with cpp_knobs(cpu_forward="fused", cpu_sparse_backward=False, cpu_partials_mb=7):
        assert _C.get_knob("SHALLOWKERN_CPU_FORWARD") == "fused"
        assert _C.get_knob("SHALLOWKERN_CPU_SPARSE_BACKWARD") == "0"
        assert _C.get_knob("SHALLOWKERN_CPU_PARTIALS_MB") == "7"
    assert _C.get_knob("SHALLOWKERN_CPU_FORWARD") == before
    with pytest.raises(ValueError, match="expected direct, fused or vendor"):
        _C.set_knob("SHALLOWKERN_CPU_FORWARD", "fastest")
    with pytest.raises(ValueError, match="unknown C\\+\\+ knob"):
        _C.set_knob("SHALLOWKERN_CPU_TURBO", "1")


def test_irrelevant_huge_dilation_and_stride_are_harmless():
    """Found by the fuzzer under UBSan: dilation 2^63-1 along a 1-wide kernel dimension, or a
    huge stride along a 1-wide output dimension, is a valid call whose value cannot matter; the
    kernels multiplied it by the padded row length (signed overflow). Now canonicalised."""
    x, w = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(6, 4, 1, 3, dtype=torch.float64)
    params = [[1, 2**62], [0, 0], [2**63 - 1, 1], 1]
    out, _ = fwd(x, w, None, *params, False, 1, False)
    ref = torch.nn.functional.conv2d(x, w)[..., :1]  # the same conv: stride/dilation unused
    assert out.shape == (2, 6, 8, 1)
    torch.testing.assert_close(out, ref)
    gx, gw, _ = bwd(torch.ones_like(out), x, w, x.new_empty(0), *params, False, 1,
                    [True, True, False])
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    rx, rw = torch.autograd.grad(torch.nn.functional.conv2d(xr, wr)[..., :1].sum(), [xr, wr])
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
