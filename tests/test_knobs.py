"""The knob registry: read once, overridable, bad values named, and the README's table in sync."""

from pathlib import Path

import pytest

from shallowkern import _knobs


def test_readme_lists_every_knob():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert _knobs.markdown_table() in readme, "README's knob table is stale: paste markdown_table()"


def test_override_and_restore():
    before = _knobs.get("triton.autotune")
    with _knobs.override({"triton.autotune": "0"}):
        assert _knobs.get("triton.autotune") is False
    assert _knobs.get("triton.autotune") == before


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("SHALLOWKERN_BACKEND", "gpu")
    monkeypatch.setattr(_knobs, "_values", {})
    with pytest.raises(ValueError, match="SHALLOWKERN_BACKEND='gpu'"):
        _knobs.get("ops.backend")


def test_unknown_knob():
    with pytest.raises(KeyError, match="unknown knob"):
        _knobs.get("nope")


def test_env_is_read_once(monkeypatch):
    monkeypatch.setattr(_knobs, "_values", {})
    monkeypatch.setenv("SHALLOWKERN_CPU_PARTIALS_MB", "64")
    assert _knobs.get("wide_conv2d.cpu_partials_mb") == 64
    monkeypatch.setenv("SHALLOWKERN_CPU_PARTIALS_MB", "128")
    assert _knobs.get("wide_conv2d.cpu_partials_mb") == 64
