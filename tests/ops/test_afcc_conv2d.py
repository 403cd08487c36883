"""afcc_conv2d: every backend against the fp64 dense conv with the masked weight.

Masks: random and clustered (block-diagonal after ordering) at densities 1.0, 0.5, 0.1 and 0.0
(all-zero rows and columns included). Forward, all gradients, gradcheck, bad input.
"""

import pytest
import torch
import torch.nn.functional as F

import importlib

import shallowkern
from shallowkern.testing import assert_close, has_ext

A = importlib.import_module("shallowkern.ops.afcc_conv2d")

requires_ext = pytest.mark.skipif(
    not (has_ext() and hasattr(torch.ops.shallowkern, "_afcc_conv2d_native")),
    reason="shallowkern._C is not built with the afcc_conv2d kernel")


def clustered_mask(k, c, labels, g, per_filter=1):
    """AFCC-like mask: random label sets, keep pairs whose sets intersect (rows shuffled)."""
    lo = torch.zeros(k, labels, dtype=torch.bool)
    li = torch.zeros(c, labels, dtype=torch.bool)
    for m in (lo, li):
        for _ in range(per_filter):
            m[torch.arange(m.shape[0]), torch.randint(0, labels, (m.shape[0],), generator=g)] = True
    return (lo.double() @ li.double().t()) > 0


def random_mask(k, c, density, g):
    m = torch.rand(k, c, generator=g) < density
    if 0 < density < 1 and k > 2 and c > 2:
        m[0] = False      # an all-zero row
        m[:, 1] = False   # an all-zero column
    return m


MASKS = [("random", 1.0), ("random", 0.5), ("random", 0.1), ("random", 0.0),
         ("clustered", 4), ("clustered", 10)]


def make(kind, arg, k, c, g):
    return random_mask(k, c, arg, g) if kind == "random" else clustered_mask(k, c, arg, g)


def reference(x, w, m, b, stride, padding, dilation):
    return F.conv2d(x.double(), (w * m[:, :, None, None]).double(),
                    None if b is None else b.double(), stride, padding, dilation)


def _run(backend, x, w, m, b, stride=1, padding=1, dilation=1, block=None):
    """``backend``: a backend name, or "native:gemm" / "native:subconv" (the CPU path forced)."""
    backend, _, path = backend.partition(":")
    with shallowkern.use_backend(backend), shallowkern._knobs.override(
            {"afcc_conv2d.block": block, "afcc_conv2d.max_executed": 1.0,
             "afcc_conv2d.cpu_path": path or None}):
        return A.afcc_conv2d(x, w, m, b, stride, padding, dilation)


BACKENDS = [pytest.param("native:gemm", marks=requires_ext), "native:subconv", "vendor",
            "reference"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,arg", MASKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_backward(backend, kind, arg, dtype):
    g = torch.Generator().manual_seed(hash((kind, arg)) % 1000)
    k, c = 37, 45  # tails in every block size
    m = make(kind, arg, k, c, g)
    x = torch.randn(3, c, 7, 6, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = torch.randn(k, c, 3, 3, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(k, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    for block in (16, 32):
        y = _run(backend, x, w, m, b, block=block)
        assert shallowkern.last_backend("afcc_conv2d").backend == backend.partition(":")[0]
        ref = reference(x, w, m, b, 1, 1, 1)
        assert_close(y, ref, dtype, reduction=c * 9)
        gy = torch.randn_like(y)
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
        assert shallowkern.last_backend("afcc_conv2d_backward").backend == backend.partition(
            ":")[0]
        rx, rw, rb = torch.autograd.grad(ref, (x, w, b), gy.double())
        assert_close(gx, rx, dtype, reduction=k * 9)
        assert_close(gw, rw * m[:, :, None, None], dtype, reduction=3 * 42)
        assert_close(gb, rb, dtype, reduction=3 * 42)
        assert (gw[~m] == 0).all()  # pruned weights get exactly zero gradient


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geom", [dict(stride=2, padding=0, dilation=1),
                                  dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
                                  dict(stride=1, padding=0, dilation=1)])
def test_geometry(backend, geom):
    g = torch.Generator().manual_seed(5)
    m = clustered_mask(20, 18, 3, g)
    x = torch.randn(2, 18, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(20, 18, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = _run(backend, x, w, m, None, **geom)
    ref = reference(x, w, m, None, geom["stride"], geom["padding"], geom["dilation"])
    assert_close(y, ref, torch.float64, reduction=18 * 6)
    gx, gw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
    rx, rw = torch.autograd.grad(ref, (x, w), torch.ones_like(ref))
    assert_close(gx, rx, torch.float64, reduction=20 * 6)
    assert_close(gw, rw * m[:, :, None, None], torch.float64, reduction=2 * 99)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    g = torch.Generator().manual_seed(7)
    m = clustered_mask(6, 5, 2, g)
    x = torch.randn(2, 5, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    backend, _, path = backend.partition(":")
    with shallowkern.use_backend(backend), shallowkern._knobs.override(
            {"afcc_conv2d.block": 16, "afcc_conv2d.max_executed": 1.0,
             "afcc_conv2d.cpu_path": path or None}):
        torch.autograd.gradcheck(lambda x, w, b: A.afcc_conv2d(x, w, m, b, 1, 1), (x, w, b))
        torch.autograd.gradgradcheck(lambda x, w, b: A.afcc_conv2d(x, w, m, b, 1, 1), (x, w, b))


def test_grouped_sub_convs_match_the_reference():
    """A block-diagonal mask with equal groups runs as one grouped conv (forward, all grads)."""
    g = torch.Generator().manual_seed(9)
    lab_o, lab_i = torch.randperm(48, generator=g) % 3, torch.randperm(48, generator=g) % 3
    m = lab_o[:, None] == lab_i[None, :]  # groups of 16 (the smallest block the plan forms)
    assert A._subconv.sub_convs(A.block_plan(m), m).groups == (3,)
    x = torch.randn(2, 48, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(48, 48, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(48, generator=g, dtype=torch.float64, requires_grad=True)
    w.data[~m] = float("nan")  # never read
    y = _run("native:subconv", x, w, m, b)
    ref = reference(x, torch.where(m[:, :, None, None], w, 0.0), m, b, 1, 1, 1)
    assert_close(y, ref, torch.float64, reduction=48 * 9)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), gy)
    want = torch.autograd.grad(ref, (x, w, b), gy)
    for a, e in zip(got, want):
        assert_close(a, torch.nan_to_num(e) if a.shape == w.shape else e, torch.float64,
                     reduction=48 * 9)


def test_empty_batch_and_nan_in_pruned_weight():
    m = torch.tensor([[True, False], [False, True]])
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    w[0, 1] = float("nan")  # a pruned weight is never read
    x = torch.randn(0, 2, 5, 5, dtype=torch.float64)
    for backend in ("vendor", "reference"):
        assert _run(backend, x, w, m, None).shape == (0, 2, 5, 5)
        y = _run(backend, torch.randn(1, 2, 5, 5, dtype=torch.float64), w, m, None)
        assert torch.isfinite(y).all()


@requires_ext
def test_native_nan_in_pruned_weight_and_empty_batch():
    m = torch.tensor([[True, False], [False, True]])
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    w[0, 1] = float("nan")
    empty = torch.randn(0, 2, 5, 5, dtype=torch.float64)
    one = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    for backend in ("native:gemm", "native:subconv"):
        assert _run(backend, empty, w, m, None).shape == (0, 2, 5, 5)
        assert torch.isfinite(_run(backend, one, w, m, None)).all()


def test_dense_fallback_is_visible():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(64, 64, generator=g) < 0.5  # random 50%: every block kept
    x, w = torch.randn(2, 64, 4, 4), torch.randn(64, 64, 3, 3)
    A.afcc_conv2d(x, w, m, None, 1, 1)
    choice = shallowkern.last_backend("afcc_conv2d")
    assert choice.backend == "vendor" and "masked weight is faster" in choice.reason
    assert "executed 100% of dense" in choice.reason  # the plan and the modelled times, named
    bd = clustered_mask(64, 64, 8, g)
    p = A.block_plan(bd)
    assert p.kept_pairs == int(bd.sum()) and p.executed_pairs >= p.kept_pairs


def test_cpu_path_follows_the_cost_model():
    """Few large kept-block groups run as oneDNN sub-convs, many small blocks in the C++ GEMM
    kernel, a mask without blocks densely; explain names the path; forward and backward of
    each path agree with the dense reference (the paths themselves: test_forward_backward)."""
    g = torch.Generator().manual_seed(2)
    lab_o, lab_i = torch.randperm(512, generator=g) % 2, torch.randperm(512, generator=g) % 2
    half = lab_o[:, None] == lab_i[None, :]  # 2 clusters of 256: density 0.5
    x, w = torch.empty(32, 512, 4, 4), torch.empty(512, 512, 3, 3)
    assert A.cpu_path(x, w, half, (1, 1), (1, 1), (1, 1))[0] == "subconv"
    # two equal diagonal blocks: one grouped conv (groups=2), not two convs
    assert A._subconv.sub_convs(A.block_plan(half), half).groups == (2,)
    why = shallowkern.ops.explain("afcc_conv2d", x, w, half, None, [1, 1], [1, 1], [1, 1])
    assert why.backend == "native" and "sub-convs" in why.reason
    twenty = (torch.randperm(512, generator=g) % 20)[:, None] == (
        torch.randperm(512, generator=g) % 20)[None, :]  # 20 clusters of ~26: density 0.05
    assert A.cpu_path(x, w, twenty, (1, 1), (1, 1), (1, 1))[0] == "gemm"
    scattered = torch.rand(64, 64, generator=g) < 0.3  # unstructured: no block to skip
    assert A.cpu_path(torch.empty(128, 64, 4, 4), torch.empty(64, 64, 3, 3), scattered,
                      (1, 1), (1, 1), (1, 1))[0] == "dense"


def test_block_plan_orders_block_diagonal():
    g = torch.Generator().manual_seed(1)
    lab = torch.randint(0, 4, (64,), generator=g)
    m = lab[:, None] == lab[None, :]
    p = A.block_plan(m, block=16)
    pm = m[p.out_perm][:, p.in_perm]
    # rows (and columns) with the same label are contiguous after ordering
    lo = lab[p.out_perm]
    assert (lo[1:] != lo[:-1]).sum() == 3
    assert torch.equal(pm, lo[:, None] == lab[p.in_perm][None, :])
    assert p.executed_fraction < 0.65  # 4 groups of ~16 on a 16-grid: 10 of 16 blocks


@pytest.mark.parametrize("bad,exc,msg", [
    (dict(mask=torch.ones(4, 3, dtype=torch.bool)), ValueError, "mask shape"),
    (dict(mask=torch.ones(4, 5)), TypeError, "mask must be a bool"),
    (dict(weight=torch.randn(4, 5, 3, 3, dtype=torch.float64)), TypeError, "weight dtype"),
    (dict(input=torch.randn(2, 5, 6)), ValueError, "input must be a 4-D"),
    (dict(bias=torch.randn(3)), ValueError, "bias must have shape"),
    (dict(input=torch.ones(1, 5, 6, 6, dtype=torch.long)), TypeError, "floating-point"),
])
def test_bad_input(bad, exc, msg):
    args = dict(input=torch.randn(1, 5, 6, 6), weight=torch.randn(4, 5, 3, 3),
                mask=torch.ones(4, 5, dtype=torch.bool), bias=None)
    args.update(bad)
    with pytest.raises(exc, match=msg):
        A.afcc_conv2d(args["input"], args["weight"], args["mask"], args["bias"])
    with pytest.raises(ValueError, match="stride"):
        A.afcc_conv2d(torch.randn(1, 5, 6, 6), torch.randn(4, 5, 3, 3),
                      torch.ones(4, 5, dtype=torch.bool), None, stride=0)


def test_opcheck_and_flops():
    g = torch.Generator().manual_seed(3)
    m = clustered_mask(8, 6, 2, g)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.shallowkern.afcc_conv2d, (x, w, m, b, [1, 1], [1, 1], [1, 1]))
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        A.afcc_conv2d(x, w, m, b, 1, 1).sum().backward()
    dense = 2 * 2 * 25 * 8 * 6 * 9
    assert fc.get_total_flops() == 3 * dense


def test_compile_fullgraph():
    g = torch.Generator().manual_seed(4)
    m = clustered_mask(8, 6, 2, g)
    x = torch.randn(2, 6, 5, 5)
    w = torch.randn(8, 6, 3, 3, requires_grad=True)
    fn = torch.compile(lambda x, w: A.afcc_conv2d(x, w, m, None, 1, 1), fullgraph=True)
    y = fn(x, w)
    assert_close(y, reference(x, w, m, None, 1, 1, 1), torch.float32, reduction=54)
    y.sum().backward()
    assert (w.grad[~m] == 0).all()


# ---------------------------------------------------------------------------------------------
# cached plans, paths and decisions never go stale (ops/_afcc_plan.py: refresh)
# ---------------------------------------------------------------------------------------------
_EDITS = {
    "inplace": lambda m, new: m.copy_(new),                 # bumps the version
    "data_write": lambda m, new: m.data.copy_(new),         # same version, same storage
    "data_assign": lambda m, new: setattr(m, "data", new.clone()),  # same version, new storage
}


def _clustered(k, c, labels, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randperm(k, generator=g) % labels)[:, None] == (
        torch.randperm(c, generator=g) % labels)[None, :]


@pytest.mark.parametrize("edit", sorted(_EDITS))
@pytest.mark.parametrize("backend", ["auto", "native:subconv",
                                     pytest.param("native:gemm", marks=requires_ext)])
def test_mask_edits_between_calls_are_seen(edit, backend):
    """A mask edited between calls (in place, through .data, or .data replaced) gives the new
    result on the next call, forward and gradients, on the cached dense fallback and on the
    block-sparse paths (whose plans are cached per mask)."""
    g = torch.Generator().manual_seed(11)
    k, c = 37, 45
    m = clustered_mask(k, c, 4, g)
    x = torch.randn(2, c, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(k, c, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    run = (lambda: A.afcc_conv2d(x, w, m, None, 1, 1)) if backend == "auto" else (
        lambda: _run(backend, x, w, m, None, block=16))
    for new in (clustered_mask(k, c, 3, g), random_mask(k, c, 0.5, g), torch.zeros(k, c).bool(),
                clustered_mask(k, c, 4, g)):
        run()  # fills the caches for the current values
        _EDITS[edit](m, new)
        assert torch.equal(m, new)
        y = run()
        ref = reference(x, w, new, None, 1, 1, 1)
        assert_close(y, ref, torch.float64, reduction=c * 9)
        gy = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, (x, w), gy)
        rx, rw = torch.autograd.grad(ref, (x, w), gy)
        assert_close(gx, rx, torch.float64, reduction=k * 9)
        assert_close(gw, rw * new[:, :, None, None], torch.float64, reduction=50)
        assert (gw[~new] == 0).all()


@pytest.mark.parametrize("edit", sorted(_EDITS))
def test_edited_mask_changes_the_path_choice(edit):
    """The cached plan / path and the functional's cached dense decision follow a mask edit:
    an unstructured mask runs dense; edited into two label clusters it runs sub-convs; back to
    unstructured, dense again."""
    g = torch.Generator().manual_seed(12)
    x, w = torch.empty(32, 512, 4, 4), torch.empty(512, 512, 3, 3)
    scattered = torch.rand(512, 512, generator=g) < 0.5
    two = _clustered(512, 512, 2, 1)
    m = scattered.clone()
    p = [1, 1]
    explain = lambda: shallowkern.ops.explain("afcc_conv2d", x, w, m, None, p, p, p)  # noqa
    choice = explain()
    assert choice.backend == "vendor"
    A._subconv.remember_dense(x, w, m, None, 1, 1, 1, choice)  # as the functional does
    assert A._subconv.dense_call(x, w, m, None, 1, 1, 1) is not None
    _EDITS[edit](m, two)
    assert A._subconv.dense_call(x, w, m, None, 1, 1, 1) is None
    assert explain().backend == "native" and "sub-convs" in explain().reason
    _EDITS[edit](m, scattered)
    assert explain().backend == "vendor"


def test_weight_updates_between_calls_are_seen():
    """Nothing derived from the weight is cached: in-place updates (optimizer steps, writes
    through .data) show in the next call."""
    g = torch.Generator().manual_seed(13)
    m = torch.rand(64, 64, generator=g) < 0.5  # the dense fallback
    x = torch.randn(2, 64, 4, 4, generator=g, dtype=torch.float64)
    w = torch.randn(64, 64, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.5, momentum=0.9)
    for step in range(3):
        y = A.afcc_conv2d(x, w, m, None, 1, 1)
        assert shallowkern.last_backend("afcc_conv2d").backend == "vendor"
        assert_close(y, reference(x, w.detach(), m, None, 1, 1, 1), torch.float64, reduction=576)
        y.square().sum().backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            if step == 1:
                w.data.mul_(-2.0)  # no version bump
            assert_close(A.afcc_conv2d(x, w, m, None, 1, 1), reference(x, w, m, None, 1, 1, 1),
                         torch.float64, reduction=576)


def test_repeat_calls_do_no_planning(monkeypatch):
    """A repeat call with the same mask neither orders channels nor chooses again (dense
    fallback), and the fallback's graph is eager's: one mask node and the conv, no custom op."""
    g = torch.Generator().manual_seed(14)
    m = torch.rand(64, 64, generator=g) < 0.5
    x = torch.randn(2, 64, 4, 4, generator=g, requires_grad=True)
    w = torch.randn(64, 64, 3, 3, generator=g, requires_grad=True)
    A.afcc_conv2d(x, w, m, None, 1, 1)
    calls = []
    monkeypatch.setattr(A.DISPATCH, "choose", lambda *a, **k: calls.append("choose"))
    monkeypatch.setattr(A._plan, "channel_order", lambda *a, **k: calls.append("order"))
    y = A.afcc_conv2d(x, w, m, None, 1, 1)
    assert calls == [] and shallowkern.last_backend("afcc_conv2d").backend == "vendor"
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0"
    nodes = [type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None]
    assert nodes == ["AccumulateGrad", "WhereBackward0"]  # as eager's AccumulateGrad, MulBackward0
    inner = y.grad_fn.next_functions[1][0].next_functions
    assert [type(f).__name__ for f, _ in inner if f is not None] == ["AccumulateGrad"]
    # a large weight: the bitwise select node (torch.where would cost 2x the multiply)
    w = torch.randn(128, 64, 3, 3, generator=g, requires_grad=True)
    assert w.numel() > A._subconv.SELECT_MAX_ELEMENTS
    m = torch.rand(128, 64, generator=g) < 0.5
    monkeypatch.undo()
    y = A.afcc_conv2d(x, w, m, None, 1, 1)
    assert shallowkern.last_backend("afcc_conv2d").backend == "vendor"
    nodes = [type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None]
    assert nodes == ["AccumulateGrad", "ZeroPrunedBackward"]


def test_cached_dense_call_still_validates():
    """A cached call's shortcut is taken only for the same metadata: other masks, dtypes,
    shapes, geometries or bad arguments still get the checks and their clear errors."""
    g = torch.Generator().manual_seed(15)
    m = torch.rand(64, 64, generator=g) < 0.5
    x, w = torch.randn(2, 64, 4, 4, generator=g), torch.randn(64, 64, 3, 3, generator=g)
    A.afcc_conv2d(x, w, m, None, 1, 1)
    assert A._subconv.dense_call(x, w, m, None, 1, 1, 1) is not None
    with pytest.raises(TypeError, match="weight dtype"):
        A.afcc_conv2d(x, w.double(), m, None, 1, 1)
    with pytest.raises(ValueError, match="mask shape"):
        A.afcc_conv2d(x, w, m[:, :63], None, 1, 1)
    with pytest.raises(ValueError, match="stride"):
        A.afcc_conv2d(x, w, m, None, True, 1)  # a bool is not an int stride, even if 1 == True
    with pytest.raises(ValueError, match="bias must have shape"):
        A.afcc_conv2d(x, w, m, torch.randn(3), 1, 1)
    with pytest.raises(ValueError, match="input must be a 4-D"):
        A.afcc_conv2d(x[0], w, m, None, 1, 1)
    with shallowkern.use_backend("reference"):
        A.afcc_conv2d(x, w, m, None, 1, 1)
        assert shallowkern.last_backend("afcc_conv2d").backend == "reference"


def test_nan_in_pruned_weight_under_grad():
    """The fallback's mask node selects (no NaN * 0): a NaN in a pruned weight reaches neither
    the output nor any gradient."""
    m = torch.tensor([[True, False], [False, True]])
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    w[0, 1] = float("nan")
    w.requires_grad_()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    y = A.afcc_conv2d(x, w, m, None, 1, 1)
    gx, gw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
    assert torch.isfinite(y).all() and torch.isfinite(gx).all()
    assert (gw[~m] == 0).all() and torch.isfinite(gw).all()


@pytest.mark.parametrize("select_max", [None, 0])  # torch.where node / the bitwise ZeroPruned
def test_gradcheck_cached_dense_fallback(monkeypatch, select_max):
    """The automatic dense fallback (its repeat calls take the cached path) is twice
    differentiable with either mask node."""
    if select_max is not None:
        monkeypatch.setattr(A._subconv, "SELECT_MAX_ELEMENTS", select_max)
    g = torch.Generator().manual_seed(16)
    m = clustered_mask(6, 5, 2, g)
    x = torch.randn(2, 5, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: A.afcc_conv2d(x, w, m, b, 1, 1)  # noqa: E731
    fn(x, w, b)
    assert shallowkern.last_backend("afcc_conv2d").backend == "vendor"
    assert A._subconv.dense_call(x, w, m, b, 1, 1, 1) is not None
    node = "WhereBackward0" if select_max is None else "ZeroPrunedBackward"
    assert type(fn(x, w, b).grad_fn.next_functions[1][0]).__name__ == node
    torch.autograd.gradcheck(fn, (x, w, b))
    torch.autograd.gradgradcheck(fn, (x, w, b))
