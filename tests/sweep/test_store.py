"""The JSONL store: atomic appends that refuse duplicates, diverged trials as strict JSON,
validated reads (one line per bad record), SQLite index and CSV."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shallowkern.sweep import (
    TrialConfig,
    append_record,
    completed_ids,
    export_csv,
    index,
    read_csv,
    read_records,
)
from shallowkern.sweep.store import (
    INDEX_COLUMNS,
    RecordError,
    completed,
    decode_record,
    diverged_ids,
    encode_record,
    flat_row,
    load_results,
    usable,
)

from ._helpers import fake_record


def _records(n: int, d1s=(4, 8, 16)) -> list[dict]:
    return [fake_record(TrialConfig("lenet", d1=d, seed=s), 0.1 + 0.001 * i)
            for i, (d, s) in enumerate((d, s) for d in d1s for s in range(n))]


def test_append_and_read_round_trip(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    recs = _records(2)
    for r in recs:
        append_record(path, r)
    assert read_records(path) == recs
    assert completed_ids(path) == {r["trial_id"] for r in recs}
    assert all(line.endswith("}") for line in path.read_text().splitlines())
    assert completed_ids(tmp_path / "missing.jsonl") == set()


def test_corrupted_lines_are_skipped_with_their_line_number(tmp_path):
    path = tmp_path / "r.jsonl"
    good = _records(1)
    append_record(path, good[0])
    with open(path, "a") as f:
        f.write('{"trial_id": "x", "test_err\n')  # truncated JSON
        f.write('[1, 2]\n')  # JSON, but not a record
    append_record(path, good[1])
    with pytest.warns(RuntimeWarning) as caught:
        out = read_records(path)
    assert out == good[:2]
    messages = [str(w.message) for w in caught]
    assert any(":2:" in m for m in messages) and any(":3:" in m for m in messages)


def test_append_after_a_torn_last_line_starts_a_new_line(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = _records(1)
    append_record(path, recs[0])
    with open(path, "ab") as f:  # a crash mid-write: half a line, no newline
        f.write(json.dumps(recs[1]).encode()[:40])
    append_record(path, recs[2])
    with pytest.warns(RuntimeWarning, match=":2:"):
        assert read_records(path) == [recs[0], recs[2]]


def test_the_store_refuses_a_trial_it_holds_and_the_reader_keeps_the_first(tmp_path):
    """Issue 9 item 4: the store never holds a trial twice. append_record refuses a done
    trial; a duplicate written by other means is ignored on read, reported with its line."""
    path = tmp_path / "r.jsonl"
    a = _records(1)[0]
    assert append_record(path, a) is True
    assert append_record(path, {**a, "test_error": 0.99}) is False
    assert len(path.read_text().splitlines()) == 1
    with open(path, "a") as f:  # e.g. an old version, or a hand merge of two files
        f.write(json.dumps({**a, "test_error": 0.99}) + "\n")
    with pytest.warns(RuntimeWarning, match=r"r\.jsonl:2: duplicate record of trial \w+ \(first at "
                      r"line 1\), ignored"):
        assert read_records(path) == [a]
    with pytest.warns(RuntimeWarning):
        assert len(read_records(path, dedupe=False)) == 2


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = _records(40, d1s=(4, 8, 16, 32))  # 160 records, ~1 KB each

    def write(chunk):
        for r in chunk:
            append_record(path, r)

    threads = [threading.Thread(target=write, args=(recs[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = read_records(path)  # any torn line would warn, and pytest's -W error... counts below
    assert sorted(r["trial_id"] for r in out) == sorted(r["trial_id"] for r in recs)


def test_sqlite_index_and_csv_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = _records(2) + [fake_record(TrialConfig("vgg16", width=0.25), 0.3, bytes=None)]
    for r in recs:
        append_record(path, r)
    db = index(path)
    assert db == tmp_path / "r.sqlite"
    con = sqlite3.connect(db)
    try:
        names = [c for c, _ in INDEX_COLUMNS]
        query = f"SELECT {', '.join(names)}, record FROM trials ORDER BY rowid"
        rows = con.execute(query).fetchall()
    finally:
        con.close()
    assert [dict(zip(names, row[:-1])) for row in rows] == [flat_row(r) for r in recs]
    assert [json.loads(row[-1]) for row in rows] == recs
    index(path)  # rebuilding replaces, never duplicates
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == len(recs)
    con.close()

    csv_path = export_csv(path, tmp_path / "out.csv")
    assert read_csv(csv_path) == [flat_row(r) for r in recs]
    assert flat_row(recs[-1])["family"] == "vgg16" and flat_row(recs[-1])["d1"] is None


def test_index_of_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        index(tmp_path / "none.jsonl")


# ------------------------------------------------------------- issue 9 items 3, 5 and 6


def _strict_json(text: str):
    """json.loads that refuses NaN/Infinity tokens, as jq, browsers and pandas' C parser do."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def _diverged(cfg: TrialConfig) -> dict:
    nan = float("nan")
    return fake_record(cfg, nan, train_error=nan, val_error=float("-inf"),
                       history=[{"epoch": 1, "train_loss": 2.3},
                                {"epoch": 2, "train_loss": float("inf")}])


def test_a_diverged_trial_is_stored_as_strict_json_and_round_trips(tmp_path):
    """Issue 9 item 3: a NaN in the history hit allow_nan=False, so the trial was reported
    failed and retried forever. It is now stored, marked diverged, and done."""
    path = tmp_path / "r.jsonl"
    cfg = TrialConfig("lenet", d1=8)
    rec = _diverged(cfg)
    assert append_record(path, rec)
    line = _strict_json(path.read_text())
    assert line["diverged"] is True and line["test_error"] is None
    assert line["nonfinite"] == {"/history/1/train_loss": "inf", "/test_error": "nan",
                                 "/train_error": "nan", "/val_error": "-inf"}
    res = load_results(path)
    assert not res.problems and res.counts()["diverged"] == 1 and res.ok == []
    back = res.records[0]
    assert math.isnan(back["test_error"]) and back["val_error"] == -math.inf
    assert back["history"][1]["train_loss"] == math.inf
    assert decode_record(encode_record(rec))["history"] == back["history"]
    assert completed_ids(path) == {cfg.trial_id} == completed(res.records)
    assert diverged_ids(path) == {cfg.trial_id}
    assert usable(res.records) == []  # done, but never averaged
    assert append_record(path, rec) is False  # done: not stored again


def test_a_diverged_flag_without_non_finite_values_and_a_finite_record(tmp_path):
    path = tmp_path / "r.jsonl"
    a = fake_record(TrialConfig("lenet", d1=4), 0.9, diverged=True)  # chance-level, finite
    b = fake_record(TrialConfig("lenet", d1=8), 0.3, diverged=False)
    append_record(path, a)
    append_record(path, b)
    res = load_results(path)
    assert [r["trial_id"] for r in res.diverged] == [a["trial_id"]]
    assert usable(res.records) == [b]
    assert "nonfinite" not in _strict_json(path.read_text().splitlines()[1])


BAD_VALUES = [
    ("null", None, "test_error is null"),
    ("negative", -0.1, r"test_error is -0\.1, outside \[0, 1\]"),
    ("above_one", 1.5, r"test_error is 1\.5, outside \[0, 1\]"),
    ("nan", float("nan"), "test_error is nan but the record is not marked diverged"),
    ("string", "0.1", "test_error is a str"),
    ("bool", True, "test_error is a bool"),
]


@pytest.mark.parametrize("value, why", [v[1:] for v in BAD_VALUES], ids=[v[0] for v in BAD_VALUES])
def test_bad_test_errors_are_one_line_naming_file_and_line_and_never_done(tmp_path, value, why):
    """Issue 9 item 5: null, negative or > 1 errors were averaged into "± 0.00"; NaN or a
    string crashed report. Each is now one warning line (file:line: trial: why), the record
    is not done (the sweep runs it again) and never reaches an average."""
    path = tmp_path / "r.jsonl"
    good = _records(1)[0]
    append_record(path, good)
    bad = fake_record(TrialConfig("lenet", d1=8), 0.2)
    bad["test_error"] = value
    with open(path, "a") as f:
        f.write(json.dumps(bad) + "\n")  # NaN as the non-standard token other tools write
    with pytest.warns(RuntimeWarning) as caught:
        recs = read_records(path)
    assert recs == [good]
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert re.fullmatch(rf"{re.escape(str(path))}:2: invalid record: trial {bad['trial_id']}: "
                        rf"{why}.*", msg), msg
    assert "\n" not in msg
    assert completed_ids(path) == {good["trial_id"]}
    with pytest.raises(RecordError, match=rf"r\.jsonl:2: invalid record: .*{why}"):
        load_results(path, strict=True)
    other = tmp_path / "other.jsonl"
    if isinstance(value, float) and math.isnan(value):  # from a trial: stored as diverged
        assert append_record(other, bad) and load_results(other).diverged
        return
    with pytest.raises(RecordError, match=why):  # and the store never writes one
        append_record(other, bad)
    assert not other.exists()


@pytest.mark.parametrize("line, why", [
    ('{"trial_id": "abc"}', "trial abc: no test_error"),
    ('{"test_error": 0.1}', "no trial_id"),
    ('{"trial_id": "", "test_error": 0.1}', "trial_id must be a non-empty string"),
    ('{"trial_id": 7, "test_error": 0.1}', "trial_id must be a non-empty string"),
    ('"just a string"', "not a record"),
    ('{"trial_id": "abc", "test_error": 0.1, "config": [1]}', "config must be an object"),
    ('{"trial_id": "abc", "test_error": 0.1, "diverged": "yes"}', "diverged must be true or"),
    ('{"trial_id": "abc", "test_error": null, "nonfinite": {"/x/y": "nan"}}',
     "which the record does not have"),
    ('{"trial_id": "abc", "test_error": null, "nonfinite": {"/test_error": "big"}}',
     "must be 'nan', 'inf' or '-inf'"),
])
def test_malformed_records_are_skipped_with_their_line(tmp_path, line, why):
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n")
    with pytest.warns(RuntimeWarning, match=rf":1: invalid record: .*{re.escape(why)}"):
        assert read_records(path) == []
    assert completed_ids(path) == set()


def test_report_fit_and_sweep_agree_on_done(tmp_path):
    """Issue 9 item 5: fit/plot dropped a record that sweep counted as done. One definition:
    completed() of the validated records == completed_ids() used by the sweep."""
    path = tmp_path / "r.jsonl"
    recs = _records(2)
    for r in recs:
        append_record(path, r)
    append_record(path, _diverged(TrialConfig("lenet", d1=64)))
    with open(path, "a") as f:
        f.write('{"trial_id": "zz", "test_error": -1}\n{"trial_id": "yy"}\n{"torn": \n')
    with pytest.warns(RuntimeWarning):
        res_records = read_records(path)
    assert completed(res_records) == completed_ids(path)
    assert len(usable(res_records)) == len(recs)
    counts = load_results(path).counts()
    assert counts == {"done": len(recs) + 1, "ok": len(recs), "diverged": 1, "invalid": 3,
                      "duplicate": 0}


def test_a_retried_diverged_trial_supersedes_its_diverged_record(tmp_path):
    path = tmp_path / "r.jsonl"
    cfg = TrialConfig("lenet", d1=8)
    append_record(path, _diverged(cfg))
    assert append_record(path, _diverged(cfg), supersede_diverged=True) is False  # again
    fixed = fake_record(cfg, 0.25)
    assert append_record(path, fixed) is False  # without the flag: done is done
    assert append_record(path, fixed, supersede_diverged=True) is True
    assert diverged_ids(path) == set() and completed_ids(path) == {cfg.trial_id}
    res = load_results(path)
    assert res.records == [fixed] and [p.kind for p in res.problems] == ["superseded"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # superseding is no fault of the file: no warning
        assert read_records(path) == [fixed]
    assert append_record(path, fixed, supersede_diverged=True) is False


def test_completed_ids_follows_appends_by_others_and_a_replaced_file(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = _records(2)
    append_record(path, recs[0])
    assert completed_ids(path) == {recs[0]["trial_id"]}
    with open(path, "a") as f:  # another process, another writer
        f.write(json.dumps(recs[1]) + "\n" + json.dumps(recs[2])[:30])  # + a torn tail
    assert completed_ids(path) == {recs[0]["trial_id"], recs[1]["trial_id"]}
    path.unlink()
    append_record(path, recs[3])  # a new file at the same path
    assert completed_ids(path) == {recs[3]["trial_id"]}


def test_concurrent_appends_of_the_same_trials_store_each_once(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = _records(10)
    stored = []

    def write():
        stored.append(sum(append_record(path, r) for r in recs))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(stored) == len(recs)
    assert len(path.read_text().splitlines()) == len(recs)


def test_index_and_csv_hold_a_diverged_record_without_nan(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, _diverged(TrialConfig("lenet", d1=8)))
    db = index(path)
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT test_error, diverged, record FROM trials").fetchone()
    finally:
        con.close()
    assert row[0] is None and row[1] == 1 and _strict_json(row[2])["diverged"] is True
    rows = read_csv(export_csv(path))
    assert rows[0]["diverged"] == 1 and rows[0]["test_error"] is None


def test_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(IsADirectoryError):
        load_results(tmp_path)


def test_null_train_and_val_errors_are_valid(tmp_path):
    """run_trial stores val_error null when there is no validation split: still a result."""
    path = tmp_path / "r.jsonl"
    rec = fake_record(TrialConfig("lenet", d1=4), 0.3, val_error=None, train_error=None)
    assert append_record(path, rec) and read_records(path) == [rec]
    assert usable([rec]) == [rec]


_json_leaf = (st.none() | st.booleans() | st.integers(-10**6, 10**6)
              | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5))
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(alphabet="ab/~_0", max_size=4), inner, max_size=4),
                     max_leaves=20)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(payload=st.dictionaries(st.text(alphabet="ab/~_", min_size=1, max_size=4), _json,
                               max_size=5))
def test_non_finite_encoding_round_trips_any_json_with_any_keys(payload):
    """Any nesting, any key (JSON-pointer escapes for '/' and '~'), any non-finite float."""
    rec = {"trial_id": "t", "test_error": 0.5, "extra": payload}
    text = json.dumps(encode_record(rec), allow_nan=False)  # strict JSON, or this raises
    back = decode_record(json.loads(text))
    back.pop("nonfinite", None)
    back.pop("diverged", None)  # set when a non-finite value sits at a metric-like key
    assert _same(back, rec)
