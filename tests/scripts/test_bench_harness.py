"""The benchmark harness (benchmarks/common.py) and its summary (benchmarks/summarize.py).

One subprocess runs a tiny OpBench grid through pytest-benchmark (as `pytest benchmarks/` does)
and checks the JSON: one benchmark per provider and pass, grouped, with speedups, work counts,
roofline and the rows file written as it goes; the smoke run runs the first case only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import common, summarize  # noqa: E402

BENCH_FILE = '''
import torch
from benchmarks.common import OpBench

def inputs(case, dev, dtype):
    a = torch.randn(case["n"], case["n"], device=dev, dtype=dtype, requires_grad=True)
    return a, torch.randn(case["n"], case["n"], device=dev, dtype=dtype)

def slow(a, b):
    return sum(a @ b for _ in range(4)) / 4

BENCH = OpBench(
    op="toy_mm",
    cases=[dict(name="n16", n=16), dict(name="n32", n=32)],
    providers={"shallowkern": lambda c, d, t: (torch.mm, inputs(c, d, t)),
               "eager": lambda c, d, t: (slow, inputs(c, d, t))},
    flops=lambda c, p: 2 * c["n"] ** 3 * (1 if p == "fwd" else 2),
    nbytes=lambda c, t, p: 3 * c["n"] ** 2 * 4,
    items=lambda c: c["n"],
    dtypes=("fp32",), seconds=0.02,
)
test_toy_mm = BENCH.test()
'''


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    f = tmp_path / "test_bench_toy.py"
    f.write_text(BENCH_FILE)
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               SHALLOWKERN_BENCH_ROWS=str(tmp_path / "rows.jsonl"))
    return subprocess.run([sys.executable, "-m", "pytest", str(f), "-q", "-p", "no:cacheprovider",
                           "-p", "benchmarks.conftest", "--rootdir", str(tmp_path), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU timing path")
def test_grid_json_speedups_rows_and_summary(tmp_path):
    r = _run(tmp_path, f"--benchmark-json={tmp_path / 'b.json'}")
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    benches = data["benchmarks"]
    assert len(benches) == 2 * 2 * 2  # cases x providers x passes
    ids = {b["param"] for b in benches}
    assert "n16-fp32-shallowkern-fwd" in ids and "n32-fp32-eager-fwdbwd" in ids
    by = {(b["extra_info"]["case"], b["extra_info"]["provider"], b["extra_info"]["pass_"]): b
          for b in benches}
    for case in ("n16", "n32"):
        for p in ("fwd", "fwdbwd"):
            mine, other = by[(case, "shallowkern", p)], by[(case, "eager", p)]
            assert mine["group"] == other["group"] == f"toy_mm {case} fp32 {p}"
            s = mine["extra_info"]["speedup_vs"]["eager"]
            assert s == pytest.approx(other["stats"]["median"] / mine["stats"]["median"])
            assert other["extra_info"]["speedup_vs"]["shallowkern"] == pytest.approx(1 / s)
            e = mine["extra_info"]
            n = int(case[1:])
            assert e["flops"] == 2 * n**3 * (1 if p == "fwd" else 2)
            assert e["bytes"] == 3 * n * n * 4
            assert e["items_per_s"] == pytest.approx(n / mine["stats"]["median"])
            assert 0 < e["pct_of_roofline"] <= 100 * 1.5  # a noisy CPU may beat its peak a bit
            assert e["roofline_floor_s"] > 0 and e["bound"] in ("compute", "memory")
            assert e["device"] and e["torch"] == torch.__version__
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    assert {r["extra_info"]["provider"] for r in rows} == {"shallowkern", "eager"}
    text = summarize.summarize(data)
    assert "**toy_mm**" in text and "| n32 | fp32 | fwdbwd |" in text and "vs eager" in text
    # the rows file summarizes the same way, even with a last line cut short by a timeout
    with open(tmp_path / "rows.jsonl", "a") as f:
        f.write('{"name": "cut')
    assert summarize.summarize(summarize.load(tmp_path / "rows.jsonl")).count("| n16 |") == 2
    png = summarize.chart(data, tmp_path / "c.png")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert summarize.main([str(tmp_path / "b.json"), "--png", str(tmp_path / "d.png")]) == 0


def test_smoke_run_runs_first_case_only(tmp_path):
    r = _run(tmp_path, "--benchmark-disable", "-rs")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 passed, 4 skipped" in r.stdout, r.stdout


def test_add_speedups_within_groups_only():
    rows = [dict(stats=dict(median=m), extra_info=dict(group=g, provider=p))
            for g, p, m in (("a", "shallowkern", 1.0), ("a", "eager", 3.0), ("a", "vendor", 0.5),
                            ("b", "shallowkern", 2.0))]
    rows.append(dict(stats=None, extra_info={}))  # a law benchmark: untouched
    common.add_speedups(rows)
    assert rows[0]["extra_info"]["speedup_vs"] == {"eager": 3.0, "vendor": 0.5}
    assert rows[1]["extra_info"]["speedup_vs"] == {"shallowkern": 1 / 3, "vendor": 0.5 / 3}
    assert rows[3]["extra_info"]["speedup_vs"] == {}
    assert rows[4]["extra_info"] == {}


def test_bad_declarations_are_named():
    kw = dict(op="x", cases=[dict(name="a")], providers={"p": None}, flops=len, nbytes=len)
    with pytest.raises(ValueError, match="passes"):
        common.OpBench(**kw, passes=("backward",))
    with pytest.raises(ValueError, match="providers is empty"):
        common.OpBench(**{**kw, "providers": {}})
    with pytest.raises(ValueError, match="unique"):
        common.OpBench(**{**kw, "cases": [dict(name="a"), dict(name="a")]}).grid()
    with pytest.raises(ValueError, match="unknown dtype"):
        common.OpBench(**kw, dtypes=("fp8",)).grid()


def test_make_pass_fwdbwd_gradients_and_skip():
    a = torch.randn(3, 3, requires_grad=True)
    b = torch.randn(3, 3)
    grads = common.make_pass(torch.mm, (a, b), "fwdbwd")((a, b))
    assert len(grads) == 1 and grads[0].shape == a.shape
    out = common.make_pass(torch.mm, (a, b), "fwd")((a, b))
    assert not out.requires_grad
    with pytest.raises(pytest.skip.Exception):
        common.make_pass(torch.mm, (b, b), "fwdbwd")
    with pytest.raises(ValueError, match="pass_"):
        common.make_pass(torch.mm, (a, b), "bwd")


def test_smoke_shrinks_batch():
    assert common._shrink(dict(name="x", n=128, batch=512, c=3)) == dict(name="x", n=4, batch=4,
                                                                      c=3)


def test_slice_and_dtype_filters(monkeypatch):
    """The GPU check's short slice: SHALLOWKERN_BENCH_SLICE / _DTYPES narrow every grid."""
    cases = [dict(name=f"c{i}") for i in range(4)]
    kw = dict(op="x", cases=cases, providers={"a": None, "b": None}, flops=len, nbytes=len,
              dtypes=("bf16", "fp32"), passes=("fwd",))
    ids = lambda b: [p.id for p in b.grid(torch.device("cpu"))]  # noqa: E731
    assert len(ids(common.OpBench(**kw))) == 4 * 2 * 2
    monkeypatch.setenv("SHALLOWKERN_BENCH_SLICE", "2")
    monkeypatch.setenv("SHALLOWKERN_BENCH_DTYPES", "fp32")
    assert ids(common.OpBench(**kw)) == ["c0-fp32-a-fwd", "c0-fp32-b-fwd", "c1-fp32-a-fwd",
                                         "c1-fp32-b-fwd"]
    assert {i.split("-")[0] for i in ids(common.OpBench(**kw, slice_cases=("c3",)))} == {"c3"}


def test_measured_roofline_file_is_used(monkeypatch, tmp_path):
    f = tmp_path / "roof.json"
    f.write_text(json.dumps(dict(device="H200", bytes_per_s=4.0e12, source="measured",
                                 flops_per_s={"bfloat16": 700e12, "tf32": 350e12,
                                              "float32": 50e12})))
    monkeypatch.setenv("SHALLOWKERN_BENCH_ROOFLINE", str(f))
    r = common.roofline_for(torch.device("cpu"), torch.bfloat16, False)
    assert (r.flops_per_s, r.bytes_per_s, r.dtype) == (700e12, 4.0e12, "bfloat16")
    assert common.roofline_for(torch.device("cpu"), torch.float32, True).flops_per_s == 350e12
    assert common.roofline_for(torch.device("cpu"), torch.float32, False).flops_per_s == 50e12


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU timing path")
def test_without_pytest_benchmark_rows_are_still_written(tmp_path):
    """The GPU machine has no pytest-benchmark: the stand-in fixture keeps the rows coming."""
    block = tmp_path / "block" / "pytest_benchmark"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('not installed here')\n")
    f = tmp_path / "test_bench_toy.py"
    f.write_text(BENCH_FILE)
    rows = tmp_path / "rows.jsonl"
    env = dict(os.environ, PYTHONPATH=f"{block.parent}{os.pathsep}{ROOT}",
               SHALLOWKERN_BENCH_ROWS=str(rows), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    r = subprocess.run([sys.executable, "-m", "pytest", str(f), "-q", "-p", "no:cacheprovider",
                        "-p", "benchmarks.conftest", "--rootdir", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "8 passed" in r.stdout
    got = [json.loads(x) for x in rows.read_text().splitlines()]
    assert len(got) == 8 and all(g["stats"]["median"] > 0 for g in got)
    assert {g["group"] for g in got} == {f"toy_mm {c} fp32 {p}" for c in ("n16", "n32")
                                         for p in ("fwd", "fwdbwd")}
    text = summarize.summarize(summarize.load(rows))
    assert "| n32 | fp32 | fwdbwd |" in text


def test_docstring_example_runs():
    """The API example at the top of benchmarks/common.py is valid code (helpers copy it)."""
    import textwrap

    doc = common.__doc__
    example = textwrap.dedent(doc[doc.index("    import torch\n"):doc.index("The provider")])
    ns: dict = {}
    exec(compile(example, "common.py docstring", "exec"), ns)
    bench = ns["BENCH"]
    torch.manual_seed(0)  # as the harness does before every builder
    fn, inputs = bench.providers["shallowkern"](bench.cases[0], torch.device("cpu"),
                                                torch.float32)
    torch.manual_seed(0)
    ref_fn, ref_inputs = bench.providers["eager"](bench.cases[0], torch.device("cpu"),
                                                  torch.float32)
    torch.testing.assert_close(fn(*inputs), ref_fn(*ref_inputs), rtol=1e-4, atol=1e-2)
    assert len(bench.grid(torch.device("cpu"))) == 3 * 2


def test_summarize_reads_the_pre_harness_results_file():
    """benchmarks/results/cpu-2core-2026-11-21.json (one benchmark per case, provider times in
    extra_info) still renders, with the same speedups it recorded."""
    path = ROOT / "benchmarks" / "results" / "cpu-2core-2026-11-21.json"
    data = summarize.load(path)
    text = summarize.summarize(data)
    old = {b["extra_info"]["case"]: b["extra_info"] for b in data["benchmarks"]
           if b["name"].startswith("test_wide_conv2d")}
    want = old["conv1_n32_d6"]["fwd_speedup_vs_eager"]
    assert "| conv1_n32_d6 | fp32 | fwd | " in text and f"{want:.2f}×" in text
    assert "**lenet_training**" in text and "Law benchmark" in text


def test_route_notes_pick_the_faster_fp32_path():
    def row(case, prov, t, routed=None):
        return dict(stats=dict(median=t), extra_info=dict(
            op="wide_conv2d", case=case, dtype="fp32", pass_="fwdbwd", provider=prov,
            group=f"wide_conv2d {case} fp32 fwdbwd", routed=routed))
    data = dict(benchmarks=[row("a", "shallowkern", 10.0, "vendor"), row("a", "sk_triton", 5.0),
                            row("b", "shallowkern", 10.0, "vendor"), row("b", "sk_triton", 20.0),
                            row("c", "eager", 10.0), row("c", "sk_triton", 10.2)])
    notes = "\n".join(summarize.route_notes(data))
    assert "| wide_conv2d | a | fwdbwd | 5000.00 | 10000.00 | 2.00× | Triton |" in notes
    assert "| b | fwdbwd | 20000.00 | 10000.00 | 0.50× | cuDNN |" in notes
    assert "| c |" in notes and "either (within 5 %)" in notes
    assert summarize.route_notes(dict(benchmarks=[row("a", "eager", 1.0)])) == []
