"""The JSONL store: atomic appends, a reader that survives corruption, SQLite index and CSV."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from shallowkern.sweep import (
    TrialConfig,
    append_record,
    completed_ids,
    export_csv,
    index,
    read_csv,
    read_records,
)
from shallowkern.sweep.store import INDEX_COLUMNS, flat_row

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
