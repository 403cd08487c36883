"""docs/sweeps.md's recipe table and preset list agree with the code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from shallowkern.sweep.presets import PRESETS, describe_preset
from shallowkern.train import RECIPES, Recipe

DOC = Path(__file__).resolve().parents[2] / "docs" / "sweeps.md"
FIELDS = {f.name for f in dataclasses.fields(Recipe)}


def _recipe_table() -> tuple[list[str], dict[str, list[str]]]:
    """(recipe names of the columns, {field: [cell per recipe]}) of the table whose header is
    ``| field | `lab` ... |``."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| field | `lab`"))
    names = re.findall(r"`(\w+)`", lines[start])
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        m = re.match(r"`(\w+)`", cells[0])
        if m:
            rows[m.group(1)] = cells[1:]
    return names, rows


def _parse(cell: str, default):
    token = cell.split(" (")[0].split()[0].replace(",", "")
    if token == "same":
        return default
    if token == "all":
        return None
    if token in ("true", "false"):
        return token == "true"
    try:
        return float(token) if any(c in token for c in ".e") else int(token)
    except ValueError:
        return token


def test_recipe_table_matches_the_code():
    names, rows = _recipe_table()
    assert names == sorted(RECIPES, key=["lab", "quick"].index) == ["lab", "quick"]
    unknown = sorted(set(rows) - FIELDS)
    assert not unknown, f"docs/sweeps.md names fields Recipe does not have: {unknown}"
    # Every field a user would tune is in the table.
    for must in ("epochs", "batch_size", "lr", "lr_step", "lr_gamma", "val_size", "train_subset",
                 "weight_decay", "momentum"):
        assert must in rows, f"docs/sweeps.md's recipe table lacks {must}"
    for field, cells in rows.items():
        for name, cell in zip(names, cells):
            want = getattr(RECIPES[name], field)
            got = _parse(cell, getattr(RECIPES["lab"], field))
            assert got == pytest.approx(want) if isinstance(want, float) else got == want, \
                f"docs/sweeps.md says {name}.{field} = {cell!r}; the code has {want!r}"


def test_the_table_check_can_fail(monkeypatch):
    monkeypatch.setitem(RECIPES, "quick", RECIPES["quick"].with_overrides({"epochs": 5}))
    with pytest.raises(AssertionError, match="quick.epochs"):
        test_recipe_table_matches_the_code()


def test_every_preset_is_documented_with_a_one_line_description():
    text = DOC.read_text()
    for name in PRESETS:
        assert f"**`{name}`**" in text, f"preset {name} is not described in docs/sweeps.md"
        desc = describe_preset(name)
        assert desc and "\n" not in desc and len(desc) < 120
