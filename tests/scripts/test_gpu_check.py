"""The GPU device check's own logic, without a GPU (issue 13 item 5): plans fit the budget,
stage selection, budget accounting on a fake clock, timeouts and failures on the real clock,
the summary written as it goes, results.json, at most 4 output files, bundle depth, parsers."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "gpu_check"))

import check as gc  # noqa: E402
import sanitize_calls  # noqa: E402

TOOL_LIMIT_S = 480  # the device tool's limit for one call


@pytest.mark.parametrize("name", sorted(gc.PLANS))
def test_plans_fit_the_budget(name):
    plan = gc.PLANS[name]()
    gc.validate(plan, gc.BUDGET_S)
    assert gc.required_caps(plan) + gc.RESERVE_S <= gc.BUDGET_S < TOOL_LIMIT_S
    assert all(s.cap > 0 for s in plan)


def test_first_plan_has_every_stage_the_issue_asks_for():
    plan = {s.name: s for s in gc.first_plan()}
    assert {"env", "roofline", "triton_tests", "build", "ops_check", "memcheck", "bench",
            "racecheck", "ncu"} <= set(plan)
    assert plan["triton_tests"].background and "-n 8" in plan["triton_tests"].argv
    assert plan["racecheck"].optional and plan["ncu"].optional
    assert plan["memcheck"].env["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1"
    assert gc.COMMON_ENV["SHALLOWKERN_TRITON_AUTOTUNE"] == "0"
    assert gc.COMMON_ENV["SHALLOWKERN_BENCH_ROWS"] == "{out}/rows.jsonl"
    order = [s.name for s in gc.first_plan()]
    assert order.index("roofline") < order.index("bench")  # roofline first
    assert {s.name for s in gc.followup_plan()} >= {"bench_tuned", "training", "speedup"}


def test_validate_rejects_bad_plans():
    def S(*a, **k):
        return gc.Stage(*a, **{"min_s": 0, **k})

    with pytest.raises(ValueError, match="caps \\+ reserve"):
        gc.validate([S("a", "true", cap=300), S("b", "true", cap=200)], 440)
    with pytest.raises(ValueError, match="repeat"):
        gc.validate([S("a", "true", cap=1), S("a", "true", cap=1)], 440)
    with pytest.raises(ValueError, match="needs b"):
        gc.validate([S("a", "true", cap=1, needs=("b",)), S("b", "true", cap=1)], 440)
    with pytest.raises(ValueError, match="min_s"):
        gc.validate([gc.Stage("a", "true", cap=5, min_s=10)], 440)
    with pytest.raises(ValueError, match="after its join"):
        gc.validate([S("bg", "true", cap=300, background=True), S("bench", "true", cap=200)],
                    440)
    # optional stages do not count: they run only if their whole cap is left
    gc.validate([S("a", "true", cap=400), S("racecheck", "true", cap=400, optional=True)], 440)


def test_select_stages():
    plan = gc.first_plan()
    assert [s.name for s in gc.select(plan, "env,bench", None)] == ["env", "bench"]
    assert "ncu" not in [s.name for s in gc.select(plan, None, "ncu,racecheck")]
    with pytest.raises(ValueError, match="unknown stage"):
        gc.select(plan, "env,warp_drive", None)


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def test_dry_run_writes_four_files_summary_results_and_bundle(tmp_path):
    out = tmp_path / "out"
    rc = gc.main([str(out), "--dry-run", "--simulate",
                  "env=3,roofline=8,triton_tests=150,build=100,cuda_tests=20,ops_check=70,"
                  "memcheck=40,bench=90"])
    assert rc == 1  # ops_check ran past its 60 s cap: a timeout is a failure of the check
    assert _files(out) == sorted(gc.OUT_FILES)
    assert len(_files(out)) <= 4 and all((out / f).is_file() for f in _files(out))
    lines = (out / "summary.txt").read_text().splitlines()
    assert lines[0].startswith("gpu_check plan=first budget=440s") and "DRY-RUN" in lines[0]
    stage_lines = [x for x in lines if x.startswith("[t=") and "started in the background" not in x]
    assert len(stage_lines) == len(gc.first_plan())
    by = {x.split()[2 if x.startswith("[t= ") else 1]: x for x in stage_lines}
    by = {}
    for x in stage_lines:
        name, status = x.split("]", 1)[1].split()[:2]
        by[name] = (status, x)
    assert by["ops_check"][0] == "timeout" and "60s/60s" in by["ops_check"][1]
    assert by["triton_tests"][0] == "dry-run" and "150s/200s" in by["triton_tests"][1]
    assert by["racecheck"][0] == "dry-run"  # 321 s used: 107 s left >= its 40 s cap
    assert lines[-1].startswith("total 321s of 440s")
    assert "files: gpu_check.tar.gz, results.json, rows.jsonl, summary.txt" in lines[-1]
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["plan"] == "first" and doc["meta"]["dry_run"]
    assert doc["meta"]["status_counts"] == {"dry-run": 9, "timeout": 1}
    assert [s["name"] for s in doc["stages"]][:3] == ["env", "roofline", "build"]
    with tarfile.open(out / "gpu_check.tar.gz") as tf:
        names = tf.getnames()
    assert "gpu_check/build.log" in names and "gpu_check/bench.log" in names
    assert all(len(Path(n).parts) <= 3 for n in names)  # at most two folders deep


def test_dry_run_all_stages_at_their_caps_stays_inside_the_budget(tmp_path):
    caps = ",".join(f"{s.name}={s.cap + 50}" for s in gc.first_plan())
    out = tmp_path / "out"
    gc.main([str(out), "--dry-run", "--simulate", caps])
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["elapsed_s"] <= gc.BUDGET_S - gc.RESERVE_S
    status = {s["name"]: s["status"] for s in doc["stages"]}
    assert status["racecheck"] == "timeout"  # 40 s were left: exactly its cap
    assert status["ncu"] == "skipped"  # optional: 8 s left
    assert status["cuda_tests"] == "skipped"  # its build timed out
    assert all(status[s.name] == "timeout" for s in gc.first_plan()
               if not s.optional and s.name != "cuda_tests")


def test_budget_rule_on_the_fake_clock(tmp_path):
    plan = [gc.Stage("a", "true", cap=50, min_s=10), gc.Stage("b", "true", cap=50, min_s=30),
            gc.Stage("c", "true", cap=20, optional=True),
            gc.Stage("d", "true", cap=20, optional=True)]
    chk = gc.Check(tmp_path / "o", plan, budget=120, dry_run=True, simulate={"c": 5})
    chk.clock.advance(80)  # as if something outside the plan took 80 s: 28 s left
    chk.run_stage(plan[1])  # needs 30: skipped
    chk.run_stage(plan[2])  # optional, its 20 s cap fits: runs 5 s
    chk.clock.advance(5)  # 18 s left
    chk.run_stage(plan[3])  # optional, 20 s cap does not fit: skipped
    chk.run_stage(plan[0])  # min 10: runs, limited to the 18 s left
    r = {x.name: x for x in chk.results}
    assert r["b"].status == "skipped" and "28s left" in r["b"].note
    assert r["c"].status == "dry-run" and r["c"].seconds == 5
    assert r["d"].status == "skipped" and "optional" in r["d"].note
    assert r["a"].status == "dry-run" and r["a"].limit == 18


def test_real_run_timeout_failure_needs_and_background(tmp_path):
    S = gc.Stage
    plan = [S("bg", "sleep 1; echo done", cap=20, min_s=0, background=True),
            S("ok", "echo hello {work}; mkdir -p {work}/bin; echo x > {work}/bin/tool", cap=5,
              min_s=0),
            S("fail", "echo broken; exit 3", cap=5, min_s=0),
            S("slow", "sleep 30", cap=2, min_s=0),
            S("after", "echo never", cap=5, min_s=0, needs=("fail",))]
    out = tmp_path / "o"
    t0 = time.monotonic()
    chk = gc.Check(out, plan, budget=60, python=sys.executable, work=tmp_path / "w")
    rc = chk.run()
    assert time.monotonic() - t0 < 20  # the sleep 30 was stopped at its 2 s cap
    assert rc == 1
    r = {x.name: x for x in chk.results}
    assert r["ok"].status == "ok" and r["ok"].rc == 0
    assert r["fail"].status == "failed" and r["fail"].rc == 3 and "broken" in r["fail"].note
    assert r["slow"].status == "timeout" and r["slow"].seconds < 10
    assert r["after"].status == "skipped" and "needs fail" in r["after"].note
    assert r["bg"].status == "ok" and r["bg"].seconds < 10
    with tarfile.open(out / "gpu_check.tar.gz") as tf:
        logs = {n: tf.extractfile(n).read().decode() for n in tf.getnames()}
    assert "hello" in logs["gpu_check/ok.log"] and "done" in logs["gpu_check/bg.log"]
    assert not any("bin" in n for n in logs)  # borrowed tools are not results
    assert _files(out) == sorted(gc.OUT_FILES)
    assert not (tmp_path / "w").exists()  # work files are removed once bundled


def test_out_must_be_empty(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "old.log").write_text("x")
    assert gc.main([str(tmp_path / "o"), "--dry-run"]) == 2


def test_shell_wrapper_lists_the_plan(tmp_path):
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "o"),
                        "--list"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "required caps" in p.stdout and "memcheck" in p.stdout


def test_parsers(tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite tests="5" failures="1" errors="1" skipped="1">'
                     '<testcase classname="t" name="a"><failure/></testcase>'
                     '<testcase classname="t" name="b"><error/></testcase>'
                     '</testsuite></testsuites>')
    c = gc.junit_counts(junit)
    assert (c["passed"], c["failed"], c["errors"], c["skipped"]) == (2, 1, 1, 1)
    assert c["failing"] == ["t::a", "t::b"]
    log = ("========= Invalid __global__ read of size 4 bytes\n"
           "=========     at _wide_conv2d_fwd_kernel+0x10\n"
           "========= ERROR SUMMARY: 1 error\n")
    assert gc.sanitizer_errors(log)["errors"] == 1
    assert gc.sanitizer_errors("========= ERROR SUMMARY: 0 errors")["errors"] == 0
    assert gc.bundle_name(Path("a.log")) == "gpu_check/a.log"
    assert gc.bundle_name(Path("ncu/x/y.txt")) == "gpu_check/ncu/x__y.txt"
    rows = tmp_path / "r.jsonl"
    rows.write_text('{"a": 1}\n{"b": \n')
    assert gc.read_rows(rows) == [{"a": 1}]


def test_kernel_filter_covers_every_kernel():
    names = sanitize_calls.kernel_names()
    assert {"_wide_conv2d_fwd_kernel", "_wide_conv2d_bwd_input_kernel",
            "_wide_conv2d_bwd_weight_kernel", "wide_conv2d_fwd_kernel"} <= set(names)
    argv = sanitize_calls.sanitizer_argv("memcheck", names, False, "--kernel-name <filter>")
    assert argv[:3] == ["compute-sanitizer", "--tool", "memcheck"]
    i = argv.index("--kernel-name")
    assert argv[i + 1].startswith("regex=(") and "_wide_conv2d_fwd_kernel" in argv[i + 1]
    assert argv[-1] == "--calls"
    assert "--kernel-name" not in sanitize_calls.sanitizer_argv("memcheck", names, True, "")


def test_ops_check_logic_on_cpu(tmp_path):
    """The op checks' rows on the CPU backends (the GPU run uses the same code on CUDA)."""
    rows = tmp_path / "rows.jsonl"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check" / "ops_check.py"),
                        str(tmp_path / "ops.json"), "--rows", str(rows), "--device", "cpu",
                        "--ops", "wide_conv2d", "--checks", "numerics",
                        "--deadline", str(time.time() + 20)],
                       capture_output=True, text=True, timeout=180, cwd=ROOT,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    doc = json.loads((tmp_path / "ops.json").read_text())
    written = [json.loads(x) for x in rows.read_text().splitlines()]
    assert written == json.loads(json.dumps(doc["rows"], default=str))
    checks = [r for r in written if r["check"] in ("numerics", "bitwise")]
    assert checks and all(r["ok"] for r in checks), [r for r in checks if not r["ok"]]
    num = [r for r in checks if r["check"] == "numerics"]
    assert all(r["kind"] == "op_check" and r["op"] == "wide_conv2d" for r in num)
    assert {"fwd_err", "torch_fwd_err", "grad_errs", "routed", "reason"} <= set(num[0])
    assert any(r["layout"] == "channels_last" for r in num)
    assert "checks over 1 ops" in doc["summary"]


def test_bench_slice_files_and_shares(tmp_path):
    import bench_slice

    files = [p.stem for p in bench_slice.bench_files([], ["lenet_training", "laws"])]
    assert files[0] == "test_bench_wide_conv2d"
    assert "test_bench_lenet_training" not in files and "test_bench_laws" not in files
    assert [p.stem for p in bench_slice.bench_files(["lenet_training"], [])] == [
        "test_bench_lenet_training"]
    # no time left: every file is skipped (not started), and the slice says so
    assert bench_slice.main(["--deadline", str(time.time() + 1), "--json-dir",
                             str(tmp_path)]) == 1
    plan = {s.name: s for s in gc.first_plan()}
    assert "bench_slice.py --deadline {deadline}" in plan["bench"].argv


def test_stage_notes_carry_the_key_numbers(tmp_path):
    """A finished stage's line in summary.txt shows what its artifacts say (test counts,
    sanitizer errors, op-check summary, benchmark rows)."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "junit_cuda.xml").write_text('<testsuite tests="3" failures="1" errors="0" '
                                         'skipped="0"><testcase classname="t" name="x">'
                                         '<failure/></testcase></testsuite>')
    (work / "memcheck_sanitizer.log").write_text("========= ERROR SUMMARY: 2 errors\n")
    (work / "ops.json").write_text(json.dumps(dict(summary="7 checks over 1 ops, 0 failed",
                                                   rows=[])))
    plan = [gc.Stage(n, "true", cap=5, min_s=0) for n in ("cuda_tests", "memcheck", "ops_check",
                                                          "bench")]
    out = tmp_path / "o"
    chk = gc.Check(out, plan, budget=60, dry_run=True, work=work)
    (out / "rows.jsonl").write_text(json.dumps(dict(extra_info=dict(provider="eager"))) + "\n")
    chk.run()
    text = (out / "summary.txt").read_text()
    assert "2 passed, 1 failed, 0 errors, 0 skipped" in text
    assert "2 errors" in text and "7 checks over 1 ops, 0 failed" in text
    assert "1 benchmark rows so far" in text
    doc = json.loads((out / "results.json").read_text())
    assert doc["tests"]["cuda_tests"]["failing"] == ["t::x"]
    assert doc["sanitizer"]["memcheck"]["errors"] == 2 and doc["bench_rows"] == 1


def test_sanitizer_calls_run_breadth_first_and_stop_at_the_deadline(tmp_path):
    """The tiny calls the sanitizer watches, on the CPU backends (C++ and the Triton
    interpreter): every op/backend/dtype gets its first sample first; a deadline stops cleanly."""
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check" / "sanitize_calls.py"),
                        "--calls", "--device", "cpu", "--deadline", str(time.time() + 15)],
                       capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    calls = [x for x in p.stdout.splitlines() if x.startswith("call ")]
    assert calls and all(": ok (ran " in x for x in calls), calls
    first = calls[0].split()
    assert first[1] == "wide_conv2d" or "wide_conv2d" in p.stdout
    argv = sanitize_calls.sanitizer_argv("memcheck", ["k"], False, "--kernel-name", 1000.0)
    assert argv[argv.index("--deadline") + 1] == "990"


def test_followup_commands_parse(tmp_path):
    """The follow-up plan's sweep command is a valid CLI call (checked with --dry-run)."""
    stage = {s.name: s for s in gc.followup_plan()}["speedup"]
    first = stage.argv.split(" && ")[0].replace("{py}", sys.executable)
    first = first.replace("{work}", str(tmp_path))
    argv = first.split()[1:]
    results = argv.index("--results")
    argv = argv[:results] + argv[results + 2:] + ["--dry-run"]
    p = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "2 trials" in p.stdout


def test_interrupted_check_still_bundles(tmp_path):
    """SIGTERM to the check: running stages are stopped, summary and bundle still written."""
    out = tmp_path / "o"
    script = (f"import sys; sys.path.insert(0, {str(ROOT / 'scripts' / 'gpu_check')!r}); "
              "import check as gc; from pathlib import Path; "
              "plan = [gc.Stage('bg', 'sleep 60', cap=100, min_s=0, background=True), "
              "gc.Stage('long', 'sleep 60', cap=100, min_s=0)]; "
              f"sys.exit(gc.Check(Path({str(out)!r}), plan, budget=300).run())")
    p = subprocess.Popen([sys.executable, "-c", script])
    for _ in range(100):  # until the foreground stage has started
        if (out / "summary.txt").exists() and "started" in (out / "summary.txt").read_text():
            break
        time.sleep(0.1)
    time.sleep(1)
    p.terminate()
    assert p.wait(30) == 3
    text = (out / "summary.txt").read_text()
    assert "interrupted" in text and "total" in text
    assert _files(out) == sorted(gc.OUT_FILES)
