"""shallowkern/triton/_utils.py: launch modes (explicit, interpreter, fixed table, heuristic,
autotune), autotune keys without the batch size, the config table round trip, input precision."""

from __future__ import annotations

import json

import pytest
import torch
import triton

from shallowkern import _knobs as knobs
from shallowkern.triton import _utils as U
from shallowkern.triton import wide_conv2d as tk
from shallowkern.triton import wide_conv2d_bwd as tb


class FakeKernel:
    """Stands in for a @triton.jit function / its autotuner: records how it was launched."""

    arg_names = ["x_ptr", "C", "K", "N", "BLOCK"]

    def __init__(self, configs=()):
        self.configs = list(configs)
        self.calls = []
        self.cache = {}

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((args, kw))


CONFIGS = [triton.Config({"BLOCK": 64}, num_warps=4, num_stages=3),
           triton.Config({"BLOCK": 32}, num_warps=2, num_stages=2)]


def prune(configs, named, **meta):
    return [c for c in configs if c.kwargs["BLOCK"] <= 2 * named["C"]] or configs[-1:]


def _launch(table=None, autotune=True, config=None, interp=False, monkeypatch=None, tmp_path=None,
            c=64):
    kernel, tuned = FakeKernel(), FakeKernel(CONFIGS)
    monkeypatch.setattr(U, "interpreting", lambda: interp)
    path = ""
    if table is not None:
        path = str(tmp_path / f"table{len(json.dumps(table))}.json")
        with open(path, "w") as f:
            json.dump(table, f)
    x = torch.zeros(2)
    with knobs.override({"triton.autotune": autotune, "triton.fixed_configs": path}):
        used = U.launch(kernel, tuned, prune, (1,), (x, c, 8, 5), {}, config, {"BLOCK": 16},
                        "fake", ["C", "K"])
    return used, kernel.calls, tuned.calls


def test_launch_modes(monkeypatch, tmp_path):
    kw = dict(monkeypatch=monkeypatch, tmp_path=tmp_path)
    used, calls, tuned = _launch(**kw)  # autotune
    assert used is None and len(tuned) == 1 and not calls
    used, calls, tuned = _launch(autotune=False, **kw)  # heuristic: first pruned config
    assert used == {"BLOCK": 64, "num_warps": 4, "num_stages": 3} and not tuned
    assert calls[0][1] == used
    used, _, _ = _launch(autotune=False, c=20, **kw)  # prune drops BLOCK=64 for C=20
    assert used["BLOCK"] == 32
    used, _, tuned = _launch(config={"BLOCK": 8, "num_warps": 1}, **kw)  # explicit wins
    assert used == {"BLOCK": 8, "num_warps": 1} and not tuned
    used, calls, _ = _launch(interp=True, **kw)  # interpreter: its config, no launch options
    assert used == {"BLOCK": 16} and calls[0][1] == {"BLOCK": 16}
    # fixed table: the recorded config for this key; autotuning never runs, even when on
    key = U.config_key(["C", "K"], {"x_ptr": torch.zeros(2), "C": 64, "K": 8, "N": 5})
    assert key == "(64, 8, 'torch.float32')"
    table = {"fake": {key: {"kwargs": {"BLOCK": 128}, "num_warps": 8, "num_stages": 4}}}
    used, _, tuned = _launch(table=table, **kw)
    assert used == {"BLOCK": 128, "num_warps": 8, "num_stages": 4} and not tuned
    used, _, tuned = _launch(table=table, c=20, **kw)  # key missing: heuristic, not a timing
    assert used["BLOCK"] == 32 and not tuned


def test_bad_table_is_named(monkeypatch, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with knobs.override({"triton.fixed_configs": str(bad)}):
        with pytest.raises(ValueError, match="SHALLOWKERN_TRITON_FIXED_CONFIGS"):
            U.fixed_config_table()
    with knobs.override({"triton.fixed_configs": str(tmp_path / "missing.json")}):
        with pytest.raises(ValueError, match="cannot read"):
            U.fixed_config_table()


def test_dump_config_table_round_trip(monkeypatch, tmp_path):
    """What an autotuned run chose is written in the format the fixed-table mode reads."""
    cfg = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 8},
                        num_warps=4, num_stages=2)
    key = (3, 16, 12, 12, 5, 5, 1, 1, 0, 0, 1, 1, 2, True, 144, "torch.float32")
    monkeypatch.setitem(tk.FWD.autotuned.cache, key, cfg)
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"other_kernel": {"(1,)": {"kwargs": {}, "num_warps": 1,
                                                            "num_stages": 1}}}))
    table = U.dump_config_table(path)
    assert json.loads(path.read_text()) == table
    assert "other_kernel" in table  # merged, not overwritten
    assert table["wide_conv2d_fwd"][repr(key)] == dict(
        kwargs={"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 8}, num_warps=4,
        num_stages=2)


def test_kernels_registered_with_batch_free_keys():
    assert {"wide_conv2d_fwd", "wide_conv2d_bwd_input", "wide_conv2d_bwd_weight"} <= set(U.KERNELS)
    for name in ("wide_conv2d_fwd", "wide_conv2d_bwd_input", "wide_conv2d_bwd_weight"):
        keys = U.KERNELS[name].keys
        assert not {"MP", "M", "MR", "N", "nb"} & set(keys), (name, keys)
        assert U.KERNELS[name].autotuned.keys == list(keys)
    with pytest.raises(ValueError, match="not arguments"):
        U.TunedKernel("x", tk._wide_conv2d_fwd_kernel, tk.FWD_CONFIGS, ["BATCH"], tk._prune_fwd, {})
    with pytest.raises(ValueError, match="twice"):
        U.TunedKernel("wide_conv2d_fwd", tk._wide_conv2d_fwd_kernel, tk.FWD_CONFIGS, ["C"],
                      tk._prune_fwd, {})


@pytest.mark.skipif(not tk.interpreting() and not torch.cuda.is_available(),
                    reason="kernels defined without TRITON_INTERPRET and no GPU")
def test_forward_and_backward_keys_do_not_depend_on_batch(monkeypatch):
    """The autotune key of a real launch is the same for batch 1 and 3, and differs for
    channels_last (layout) and another width."""
    seen = []
    real = U.launch

    def spy(kernel, autotuned, prune, grid, args, meta, config, interp, name=None, keys=()):
        seen.append((name, U.config_key(keys, {**dict(zip(kernel.arg_names, args)), **meta})))
        return real(kernel, autotuned, prune, grid, args, meta, config, interp, name, keys)

    monkeypatch.setattr(U, "launch", spy)
    dev = "cuda" if torch.cuda.is_available() else "cpu"

    def keys_for(n, k=8, cl=False):
        seen.clear()
        x = torch.randn(n, 16, 8, 8, device=dev, requires_grad=True)
        if cl:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        w = torch.randn(k, 16, 3, 3, device=dev)
        out, idx = tk.forward(x, w, None, [1, 1], [0, 0], [1, 1], True, 2, True)
        tb.backward(torch.ones_like(out), x, w, idx, [1, 1], [0, 0], [1, 1], True, 2,
                    [True, True, True])
        return dict(seen)

    with knobs.override({"triton.autotune": False}):
        one, three = keys_for(1), keys_for(3)
        assert set(one) == {"wide_conv2d_fwd", "wide_conv2d_bwd_input", "wide_conv2d_bwd_weight"}
        assert one == three
        cl = keys_for(3, cl=True)
        assert cl["wide_conv2d_fwd"] != three["wide_conv2d_fwd"]
        assert keys_for(3, k=24)["wide_conv2d_fwd"] != three["wide_conv2d_fwd"]


def test_input_precision():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
        assert U.input_precision(torch.float32) == "tf32"
        assert U.input_precision(torch.float32, "matmul") == "ieee"
        assert U.input_precision(torch.bfloat16, "conv") == "ieee"
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = False, True
        assert U.input_precision(torch.float32, "matmul") == "tf32"
        assert U.input_precision(torch.float32, "conv") == "ieee"
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    with pytest.raises(ValueError, match="kind"):
        U.input_precision(torch.float32, "attention")


def test_autotune_switch():
    with knobs.override({"triton.autotune": True}):
        assert U.autotune_enabled() == (not U.interpreting())
    with knobs.override({"triton.autotune": False}):
        assert not U.autotune_enabled()
