"""The `shallowkern` command: help, fit/report/plot on synthetic results, profile, bad input.

Results files here are fabricated (no training) or come from 1-epoch trials on a tiny
synthetic dataset, so the whole file runs in seconds; only the `slow` smoke test reads real
CIFAR-10 (from SHALLOWKERN_DATA).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from shallowkern.cli import main, parse_model_spec
from shallowkern.sweep import TrialConfig, append_record, read_records

from .sweep._helpers import fake_record

SUBCOMMANDS = ("profile", "sweep", "fit", "plot", "report", "bench", "run")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def results(tmp_path) -> Path:
    """LeNet d1 in {6..128} x k in {2, 2.8, 4} x 3 seeds, error ~ 0.9 d1^-0.35, plus VGG."""
    rng = random.Random(0)
    path = tmp_path / "results.jsonl"
    for d1 in (6, 16, 32, 64, 128):
        for k in (2.0, 2.8, 4.0):
            for s in range(3):
                err = 0.9 * d1**-0.35 + 0.02 * abs(k - 2.8) + rng.gauss(0, 0.004)
                append_record(path, fake_record(TrialConfig("lenet", d1=d1, k=k, seed=s), err))
    for w in (0.125, 0.25, 0.5):
        for s in range(3):
            append_record(path, fake_record(TrialConfig("vgg16", width=w, seed=s),
                                            0.3 * w**-0.3 + rng.gauss(0, 0.004)))
    return path


@pytest.mark.parametrize("cmd", (None, *SUBCOMMANDS))
def test_help(capsys, cmd):
    code, out, _ = run_cli(capsys, *([cmd] if cmd else []), "--help")
    assert code == 0 and "usage: shallowkern" in out
    if cmd:
        assert cmd in out


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "shallowkern", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert all(c in proc.stdout for c in SUBCOMMANDS)


def test_fit_recovers_the_law_and_writes_json(capsys, results, tmp_path):
    out_json = tmp_path / "fit.json"
    code, out, err = run_cli(capsys, "fit", "--results", results, "--n-boot", 200,
                             "--out", out_json)
    assert code == 0, err
    assert "rho = 0.3" in out and "95% CI" in out and "held-out check" in out
    assert "vs forward FLOPs" in out and "k=2.8" in out
    fit = json.loads(out_json.read_text())
    lo, hi = fit["width_fit"]["ci"]["rho"]
    assert lo < 0.35 < hi and abs(fit["width_fit"]["fit"]["rho"] - 0.35) < 0.03
    assert fit["holdout"]["x_held"] == 128 and fit["flops_fit"]["fit"]["x_label"] == "flops"

    code, out, _ = run_cli(capsys, "fit", "--results", results, "--n-boot", 50, "--floor",
                           "--k", 2.0, "--out", out_json)
    assert code == 0 and "eps_inf" in out and "k=2" in out
    code, out, _ = run_cli(capsys, "fit", "--results", results, "--family", "vgg16",
                           "--n-boot", 50, "--out", out_json)
    assert code == 0 and "first-layer width" in out


def test_report_table_and_index(capsys, results):
    code, out, _ = run_cli(capsys, "report", "--results", results, "--index")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["family", "dataset", "model"]
    assert sum("d1=" in line for line in lines) == 15
    assert sum("width=" in line for line in lines) == 3
    assert "±" in out and "(b=100)" in out
    assert results.with_suffix(".sqlite").stat().st_size > 0
    assert results.with_suffix(".csv").read_text().count("\n") == 1 + 15 * 3 + 9
    code, out, _ = run_cli(capsys, "report", "--results", results, "--json")
    rows = json.loads(out)
    assert len(rows) == 18 and rows[0]["seeds"] == 3


def test_plain_trials_are_reported_beside_ours_and_kept_out_of_fits(capsys, results):
    """Records of ``sweep --impl plain`` get their own report rows, a speedup table over the
    seeds run both ways, and stay out of the default fit (``--impl plain`` fits them)."""
    for d1 in (6, 16):
        for s in range(2):  # seeds 0, 1 of the shallowkern trials already in the file
            cfg = TrialConfig("lenet", d1=d1, k=2.8, seed=s, impl="plain")
            append_record(results, fake_record(cfg, 0.9 * d1**-0.35, train_time=3.0 * d1,
                                               wall_time=4.0 * d1))
    code, out, _ = run_cli(capsys, "report", "--results", results)
    assert code == 0
    summary, speedups = out.split("== shallowkern vs plain PyTorch")
    assert sum(" plain " in line for line in summary.splitlines()) == 2  # a row per plain model
    rows = {line.split()[2]: line.split() for line in speedups.splitlines()
            if line.startswith("lenet")}
    assert set(rows) == {"d1=6", "d1=16"}
    # model, seeds, train s (ours), train s (plain), speedup, wall s (ours), (plain), speedup
    assert rows["d1=6"][3:8] == ["2", "0.80", "36.0", "45.00x", "1.00"]
    assert rows["d1=16"][8:] == ["128.0", "128.00x"]
    total = speedups.splitlines()[-1].split()
    assert total[:5] == ["all", "4", "1.60", "132.0", "82.50x"]

    code, out, _ = run_cli(capsys, "fit", "--results", results, "--n-boot", 50)
    assert code == 0 and "5 widths" in out  # the plain trials are not in the default fit
    code, out, _ = run_cli(capsys, "fit", "--results", results, "--impl", "plain", "--n-boot",
                           50)
    assert code == 0 and "2 widths" in out


def test_plot_writes_png_and_svg(capsys, results, tmp_path):
    out_dir = tmp_path / "plots"
    code, out, err = run_cli(capsys, "plot", "--results", results, "--out-dir", out_dir,
                             "--n-boot", 100)
    assert code == 0, err
    for stem in ("error_vs_width", "error_vs_flops", "k_scan"):
        png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert b"<svg" in svg.read_bytes()[:1000] and svg.stat().st_size > 5000
        assert str(png) in out


def test_profile_prints_a_table(capsys):
    code, out, err = run_cli(capsys, "profile", "lenet:d1=4,k=2.8", "--batch", 2)
    assert code == 0, err
    assert "GeneralizedLeNet" in out and "features.0" in out and "FLOPs" in out
    code, out, _ = run_cli(capsys, "profile", "vgg16:0.125", "--device", "meta", "--json")
    assert code == 0 and json.loads(out)["totals"]["flops"] > 0


def test_model_specs():
    assert parse_model_spec("lenet:16").d1 == 16
    assert parse_model_spec("lenet:d1=8,d2=20").d2 == 20
    v = parse_model_spec("vgg16:width=0.5,bn")
    assert v.width == 0.5 and v.batch_norm


def _bad(capsys, *argv) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    assert "error:" in err and "Traceback" not in err + out
    return err


def test_bad_input_gives_a_clear_message_not_a_traceback(capsys, tmp_path, results, monkeypatch):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "holds no records" in _bad(capsys, "fit", "--results", empty)
    assert "holds no records" in _bad(capsys, "report", "--results", empty)
    assert "does not exist" in _bad(capsys, "plot", "--results", tmp_path / "nope.jsonl")

    one = tmp_path / "one.jsonl"
    for s in range(3):
        append_record(one, fake_record(TrialConfig("lenet", d1=8, seed=s), 0.5))
    assert "needs at least 2" in _bad(capsys, "fit", "--results", one)

    zero = tmp_path / "zero.jsonl"
    for d1 in (4, 8):
        append_record(zero, fake_record(TrialConfig("lenet", d1=d1), 0.0))
    assert "strictly between 0 and 1" in _bad(capsys, "fit", "--results", zero)
    assert "strictly between 0 and 1" in _bad(capsys, "plot", "--results", zero,
                                              "--out-dir", tmp_path / "p")

    assert "no records left" in _bad(capsys, "fit", "--results", results, "--k", 3.3)
    assert "no 'vgg16' records" in _bad(capsys, "fit", "--results", one, "--family", "vgg16")
    assert "model spec" in _bad(capsys, "profile", "lenet:d1=x")
    assert "model spec" in _bad(capsys, "profile", "resnet:3")
    assert "--preset" in _bad(capsys, "sweep", "--results", tmp_path / "r.jsonl")
    assert "KEY=VALUE" in _bad(capsys, "sweep", "--family", "lenet", "--d1", 4, "--set", "epochs",
                               "--results", tmp_path / "r.jsonl")
    assert "unknown recipe field" in _bad(capsys, "sweep", "--family", "lenet", "--d1", 4,
                                          "--set", "epoch=3", "--results", tmp_path / "r.jsonl")
    # Missing data: named, with what to do; nothing was run.
    monkeypatch.delenv("SHALLOWKERN_DATA", raising=False)
    err = _bad(capsys, "sweep", "--preset", "quick", "--results", tmp_path / "q.jsonl")
    assert "SHALLOWKERN_DATA" in err and "--data-root" in err
    err = _bad(capsys, "run", "--data-root", tmp_path, "--results", tmp_path / "q.jsonl")
    assert "missing under" in err and "cifar-10-batches-py" in err
    assert not (tmp_path / "q.jsonl").exists()
    # A torn line is a warning, not a failure.
    with open(results, "a") as f:
        f.write('{"trial_id": "abc", "te')
    code, _, err = run_cli(capsys, "report", "--results", results)
    assert code == 0 and f"{results}:55:" in err and "warning" in err


def test_bad_usage_exits_2(capsys):
    assert main(["sweep", "--workers", "many"]) == 2
    assert main([]) == 2
    assert main(["nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_sweep_and_run_on_synthetic_data_resume(capsys, tmp_path):
    res = tmp_path / "s.jsonl"
    args = ["sweep", "--family", "lenet", "--d1", 2, 3, "--k", 2.8, "--dataset", "synthetic",
            "--recipe", "quick", "--set", "epochs=1", "--set", "val_size=100",
            "--train-subset", 200, "--results", res, "--workers", 0, "--no-progress"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "2 trial(s) run" in out
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "0 trial(s) run, 2 already in" in out
    recs = read_records(res)
    assert {r["model"]["d1"] for r in recs} == {2, 3}
    assert all(0 <= r["test_error"] <= 1 and r["flops"] > 0 and r["latency"] > 0 for r in recs)
    code, out, _ = run_cli(capsys, "sweep", "--preset", "paper", "--results", res, "--dry-run")
    assert code == 0 and "84 trials" in out
    code, out, _ = run_cli(capsys, *args, "--impl", "plain")  # new trials: their ids differ
    assert code == 0 and "2 trial(s) run, 0 already in" in out
    assert sorted(r.get("impl") for r in read_records(res)) == ["plain", "plain", "shallowkern",
                                                                 "shallowkern"]


def test_bench_passes_arguments_through(capsys, tmp_path):
    (tmp_path / "test_dummy.py").write_text("def test_x():\n    pass\n")
    assert main(["bench", "--dir", str(tmp_path), "-q", "-p", "no:cacheprovider"]) == 0
    assert main(["bench", "--dir", str(tmp_path), "-k", "nothing_matches",
                 "-p", "no:cacheprovider"]) == 5  # pytest's "no tests collected"
    assert "no benchmarks folder" in _bad(capsys, "bench", "--dir", tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SHALLOWKERN_DATA"), reason="needs SHALLOWKERN_DATA")
def test_smoke_on_real_cifar10(capsys, tmp_path):
    """One tiny real trial end to end: sweep (1 epoch, 300 images) -> report."""
    res = tmp_path / "c.jsonl"
    code, out, err = run_cli(capsys, "sweep", "--family", "lenet", "--d1", 2, "--recipe", "quick",
                             "--set", "epochs=1", "--set", "val_size=100", "--set",
                             "test_subset=500", "--train-subset", 300, "--results", res,
                             "--workers", 0, "--no-progress")
    assert code == 0, err
    (rec,) = read_records(res)
    assert rec["n_train"] == 300 and rec["n_test"] == 500 and 0 < rec["test_error"] < 1
    assert run_cli(capsys, "report", "--results", res)[0] == 0


# ----------------------------------------------------------------------------- issue 9: one line


def _one_line(capsys, *argv, code: int = 2) -> str:
    """The command fails with ``code`` and exactly one line on stderr, nothing on stdout that
    looks like a traceback."""
    got, out, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, (got, out, err)
    assert len(lines) == 1 and "error:" in lines[0], err
    assert "Traceback" not in out + err
    return lines[0]


SYNTH = ("--family", "lenet", "--d1", 2, "--dataset", "synthetic", "--recipe", "quick",
         "--set", "epochs=1", "--set", "val_size=100")


def test_results_path_errors_are_one_line(capsys, tmp_path, results):
    assert "is a directory" in _one_line(capsys, "sweep", *SYNTH, "--results", tmp_path)
    assert "is a directory" in _one_line(capsys, "report", "--results", tmp_path)
    assert "is a directory" in _one_line(capsys, "run", "--dataset", "synthetic",
                                         "--results", tmp_path)
    if Path("/dev/full").exists():  # writes fail with ENOSPC, reads never end
        assert "not a regular file" in _one_line(capsys, "sweep", *SYNTH, "--results",
                                                 "/dev/full")
        assert "not a regular file" in _one_line(capsys, "report", "--results", "/dev/full")
    if Path("/dev/null").exists():  # it exists: it holds no records
        assert "holds no records" in _one_line(capsys, "fit", "--results", "/dev/null")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "is a file, not a folder" in _one_line(capsys, "sweep", *SYNTH, "--results",
                                                  blocker / "r.jsonl")


def test_output_path_errors_come_before_any_work(capsys, tmp_path, results):
    assert "--out" in _one_line(capsys, "fit", "--results", results, "--out", tmp_path)
    f = tmp_path / "plots_file"
    f.write_text("")
    assert "--out-dir" in _one_line(capsys, "plot", "--results", results, "--out-dir", f)
    assert "is a file, not a folder" in _one_line(capsys, "run", "--dataset", "synthetic",
                                                  "--results", tmp_path / "q.jsonl",
                                                  "--out-dir", f)
    assert not (tmp_path / "q.jsonl").exists()  # refused before the sweep


def test_profile_errors_are_one_line(capsys):
    assert "--device 'tpu'" in _one_line(capsys, "profile", "lenet:4", "--device", "tpu")
    assert "--device" in _one_line(capsys, "profile", "lenet:4", "--device", "cpu:x")
    assert "unknown parameter 'stride'" in _one_line(capsys, "profile", "lenet:4,stride=1.5")
    assert "must be an integer, got 1.5" in _one_line(capsys, "profile", "lenet:d1=1.5")
    assert "--batch" in _one_line(capsys, "profile", "lenet:4", "--batch", 0)


def test_profile_refuses_what_will_not_fit_before_building_it(capsys, monkeypatch):
    import shallowkern.cli as cli

    def no_build(*a, **k):
        raise AssertionError("the model was built")

    monkeypatch.setattr("shallowkern.sweep.build_model", no_build)
    line = _one_line(capsys, "profile", "lenet:d1=100000")
    assert "needs about" in line and "GiB" in line and "is free" in line and "--device meta" in line
    # the estimate is the family's cost hook: weights alone are 4 bytes x 7e11 parameters
    est = cli.estimate_profile_memory(cli.parse_model_spec("lenet:d1=100000"), 100)
    assert est["bytes"] > 4 * 7e11
    # on meta nothing is allocated, so it is allowed
    monkeypatch.undo()
    code, out, _ = run_cli(capsys, "profile", "lenet:d1=2000", "--device", "meta", "--json")
    assert code == 0 and json.loads(out)["totals"]["flops"] > 0


def test_validation_happens_before_the_sweep(capsys, tmp_path):
    res = tmp_path / "r.jsonl"
    for bad in ("1", "0", "x"):
        assert "--n-boot" in _one_line(capsys, "run", "--dataset", "synthetic", "--n-boot", bad,
                                       "--results", res)
    assert "--level" in _one_line(capsys, "run", "--dataset", "synthetic", "--level", "1.5",
                                  "--results", res)
    assert "larger than the 1,100 training images" in _one_line(
        capsys, "sweep", *SYNTH, "--train-subset", 5000, "--results", res)
    assert "larger than" in _one_line(capsys, "sweep", *SYNTH, "--set", "train_subset=5000",
                                      "--results", res)
    assert "lower it with --set val_size" in _one_line(
        capsys, "sweep", "--family", "lenet", "--d1", 2, "--dataset", "synthetic",
        "--results", res)  # the lab recipe holds out 5,000 of 1,200 images
    assert "unknown preset" in _one_line(capsys, "sweep", "--preset", "huge", "--results", res)
    assert "unknown model family" in _one_line(capsys, "sweep", "--family", "resnet", "--d1", 2,
                                               "--results", res)
    assert not res.exists()


def test_dry_run_needs_no_results_and_presets_are_listed(capsys):
    code, out, _ = run_cli(capsys, "sweep", "--preset", "quick", "--dry-run")
    assert code == 0 and "8 trials {'lenet': 8}" in out
    assert "--results PATH is required" in _one_line(capsys, "sweep", "--preset", "quick")
    code, out, _ = run_cli(capsys, "sweep", "--list-presets")
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert set(rows) == {"quick", "main", "paper", "study", "study-pilot"} and "84" in rows["paper"].split()
    code, out, _ = run_cli(capsys, "sweep", "--list-families")
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert code == 0 and {"lenet", "vgg16"} <= set(rows)
    assert "d1=required d2=- k=-" in rows["lenet"] and "width=1.0" in rows["vgg16"]


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == "shallowkern 0.1.0"


def test_bench_says_how_to_get_pytest(capsys, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytest_benchmark" else real(name, *a))
    line = _one_line(capsys, "bench", "--dir", tmp_path)
    assert "pytest-benchmark" in line and "shallowkern[test]" in line


def test_debug_env_shows_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SHALLOWKERN_DEBUG", "1")
    from shallowkern.reports import ReportError

    with pytest.raises(ReportError, match="is a directory"):
        main(["report", "--results", str(tmp_path)])


def test_internal_errors_are_one_line_too(capsys, monkeypatch, results):
    def boom(*a, **k):
        raise KeyError("surprise")

    monkeypatch.setattr("shallowkern.reports.summary_rows", boom)
    line = _one_line(capsys, "report", "--results", results, code=1)
    assert "KeyError" in line and "SHALLOWKERN_DEBUG=1" in line


def test_bad_records_are_never_averaged_and_diverged_ones_are_shown(capsys, tmp_path):
    """Issue 9 failure 5: null / negative / > 1 / NaN / string / id-only records are not
    averaged and give no traceback; a diverged trial is listed and counted, never averaged."""
    path = tmp_path / "r.jsonl"
    for s, err in ((0, 0.40), (1, 0.44)):
        append_record(path, fake_record(TrialConfig("lenet", d1=8, seed=s), err))
    for d1 in (4, 16):
        append_record(path, fake_record(TrialConfig("lenet", d1=d1, seed=0), 0.9 * d1**-0.35))
    diverged = fake_record(TrialConfig("lenet", d1=8, seed=2), 0.5)
    diverged.update(test_error=None, val_error=None, train_error=None, diverged=True)
    with open(path, "a") as f:
        f.write(json.dumps(diverged) + "\n")
        for i, bad in enumerate((None, -0.1, 1.5, "0.3")):
            rec = fake_record(TrialConfig("lenet", d1=8, seed=10 + i), 0.5)
            rec["test_error"] = bad
            f.write(json.dumps(rec) + "\n")
        rec = fake_record(TrialConfig("lenet", d1=8, seed=20), 0.5)
        f.write(json.dumps(rec).replace('"test_error": 0.5', '"test_error": NaN') + "\n")
        f.write('{"trial_id": "only-an-id"}\n')
    code, out, err = run_cli(capsys, "report", "--results", path, "--json")
    assert code == 0 and "Traceback" not in err
    rows = {r["model"]: r for r in json.loads(out) if r["family"] == "lenet"}
    row = rows["d1=8 d2=22"]
    assert row["test_error_mean"] == pytest.approx(0.42)  # the two valid seeds only
    assert row["seeds"] == 2
    code, out, err = run_cli(capsys, "report", "--results", path)
    assert code == 0 and "diverged trial(s)" in out and diverged["trial_id"] in out
    code, out, err = run_cli(capsys, "fit", "--results", path, "--n-boot", 20,
                             "--out", tmp_path / "f.json")
    assert code == 0, err
    assert "4 trials, 3 widths" in out  # 2 + 1 + 1 valid records
    # reports and the sweep agree on which trials are done (the diverged one is)
    from shallowkern.reports import load_records
    from shallowkern.sweep import completed_ids

    assert {r["trial_id"] for r in load_records(path).records} == completed_ids(path)
    assert diverged["trial_id"] in completed_ids(path)


@pytest.mark.slow
def test_ctrl_c_during_worker_start_up_is_one_line(tmp_path):
    """Issue 9 failure 6: SIGINT to the whole process group while the workers start."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "shallowkern", "sweep", *map(str, SYNTH), "--d1", "3",
         "--train-subset", "200", "--results", str(tmp_path / "r.jsonl"), "--workers", "2",
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # as from a terminal: a background job of a non-interactive shell (`bash .ci/run &`)
        # starts with SIGINT ignored, and Python then installs no KeyboardInterrupt handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()  # printed just before the workers are spawned
        assert line.startswith("sweep: "), line
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [x for x in err.splitlines() if x.strip()]
    assert proc.returncode == 130, (out, err)
    assert lines == ["shallowkern sweep: interrupted (finished trials are kept; rerun to resume)"]


def test_diverged_trials_are_done_unless_retried(capsys, tmp_path):
    res = tmp_path / "d.jsonl"
    argv = [*SYNTH, "--train-subset", 200, "--results", res, "--workers", 0, "--no-progress"]
    cfg = TrialConfig("lenet", d1=2, dataset="synthetic", recipe="quick",
                      overrides={"epochs": 1, "val_size": 100}, train_subset=200)
    rec = fake_record(cfg, 0.5)
    rec.update(test_error=None, val_error=None, train_error=None, diverged=True)
    res.write_text(json.dumps(rec) + "\n")
    code, out, err = run_cli(capsys, "sweep", *argv)
    assert code == 0, err
    assert "1 already in" in out and "0 trial(s) run" in out
    code, out, err = run_cli(capsys, "sweep", *argv, "--retry-diverged")
    assert code == 0, err
    assert "1 trial(s) run" in out
    recs = [r for r in read_records(res) if not r.get("diverged")]
    assert len(recs) == 1 and 0 <= recs[0]["test_error"] <= 1
