"""Triton afcc_conv2d kernels in the interpreter (tiny shapes) and the sm_90 compile check."""

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import shallowkern
from shallowkern.testing import assert_close

A = importlib.import_module("shallowkern.ops.afcc_conv2d")
tk = pytest.importorskip("shallowkern.triton.afcc_conv2d")

interpreted = pytest.mark.skipif(not tk.interpreting() and not torch.cuda.is_available(),
                                 reason="needs TRITON_INTERPRET=1 or a GPU")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _mask(k, c, labels, density, g):
    if labels:
        lo = torch.randint(0, labels, (k,), generator=g)
        li = torch.randint(0, labels, (c,), generator=g)
        return lo[:, None] == li[None, :]
    return torch.rand(k, c, generator=g) < density


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", [
    dict(labels=3, density=None, stride=1, padding=1, dilation=1),
    dict(labels=0, density=0.5, stride=2, padding=0, dilation=1),
    dict(labels=0, density=0.0, stride=1, padding=(1, 0), dilation=(1, 2)),
    dict(labels=0, density=1.0, stride=1, padding=1, dilation=1),
])
def test_triton_vs_reference(dtype, case):
    g = torch.Generator().manual_seed(0)
    k, c = 20, 18  # two 16-blocks each way, with tails
    m = _mask(k, c, case["labels"], case["density"], g)
    x = torch.randn(2, c, 6, 5, generator=g).to(DEV, dtype).requires_grad_()
    w = torch.randn(k, c, 3, 3, generator=g).to(DEV, dtype).requires_grad_()
    b = torch.randn(k, generator=g).to(DEV, dtype).requires_grad_()
    m = m.to(DEV)
    st, pd, dl = case["stride"], case["padding"], case["dilation"]
    with shallowkern.use_backend("triton"), shallowkern._knobs.override(
            {"afcc_conv2d.block": 16, "afcc_conv2d.max_executed": 1.0}):
        y = A.afcc_conv2d(x, w, m, b, st, pd, dl)
        assert shallowkern.last_backend("afcc_conv2d").backend == "triton"
        gy = torch.randn_like(y)
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
        assert shallowkern.last_backend("afcc_conv2d_backward").backend == "triton"
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xd, wd * m[:, :, None, None], bd, st, pd, dl)
    rx, rw, rb = torch.autograd.grad(ref, (xd, wd, bd), gy.double())
    torch_lp = F.conv2d(x.detach(), w.detach() * m[:, :, None, None], b.detach(), st, pd, dl)
    assert_close(y, ref, dtype, reduction=c * 9,
                 torch_result=torch_lp if dtype != torch.float32 else None)
    assert_close(gx, rx, dtype, reduction=k * 9)
    assert_close(gw, rw * m[:, :, None, None], dtype, reduction=2 * 30)
    assert_close(gb, rb, dtype, reduction=2 * 30)
    assert (gw[~m] == 0).all()


def test_pack_unpack_roundtrip():
    from shallowkern.triton.afcc_conv2d_bwd import _unpack

    g = torch.Generator().manual_seed(1)
    m = _mask(37, 21, 4, None, g)
    w = torch.randn(37, 21, 3, 2, generator=g)
    plan = A.block_plan(m, "cuda", block=16)
    pack = tk.pack_weight(w, m, plan)
    assert pack.shape == (plan.nnzb, 6, 16, 16)
    assert torch.equal(_unpack(pack, plan, w.shape), w * m[:, :, None, None])


def _compile_main():
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from shallowkern.triton import afcc_conv2d as fwd, afcc_conv2d_bwd as bwd

    geo = ("N", "C", "H", "W", "K", "OH", "OW", "SH", "SW", "PH", "PW", "DH", "DW")
    rows = []
    for dt in ("bf16", "fp32"):  # fp16 compiles to the same resources as bf16
        for b in (16, 32, 64):
            for name, fn, ptrs in (
                    ("fwd", fwd._afcc_fwd_kernel, ("x_ptr", "w_ptr", "b_ptr", "out_ptr")),
                    ("bwd_input", bwd._afcc_bwd_input_kernel, ("go_ptr", "w_ptr", "gx_ptr")),
                    ("bwd_weight", bwd._afcc_bwd_weight_kernel, ("go_ptr", "x_ptr", "gw_ptr"))):
                const = dict(R=3, S=3, B=b, BLOCK_P=64, INPUT_PRECISION="tf32")
                if name == "fwd":
                    const["HAS_BIAS"] = True
                sig = {}
                for a in fn.arg_names:
                    if a in const:
                        sig[a] = "constexpr"
                    elif a in ptrs:
                        sig[a] = "*fp32" if a == "gw_ptr" else f"*{dt}"
                    elif a.endswith("_ptr"):
                        sig[a] = "*i64"
                    else:
                        assert a in geo, a
                        sig[a] = "i32"
                k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                                   target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
                rows.append(dict(kernel=name, dtype=dt, B=b, shared=k.metadata.shared,
                                 wgmma="warp_group_dot" in k.asm["ttgir"]))
    return rows


def _nvidia_backend():
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _nvidia_backend(), reason="triton has no NVIDIA backend here")
def test_compile_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__, "--compile-check"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 18, proc.stdout[-2000:]
    for row in rows:
        assert row["shared"] <= 227 * 1024, row


if __name__ == "__main__" and "--compile-check" in sys.argv:
    for row in _compile_main():
        print(json.dumps(row), flush=True)
