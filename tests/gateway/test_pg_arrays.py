"""The store's PostgreSQL array literals (gateway/store.py ``_pg_array``): every value comes back
from the server exactly as it went in, whatever characters a device put in it."""
from __future__ import annotations

import datetime as dt

import pytest

from gateway.store import _pg_array

TEXTS = ['plain', 'with "quotes"', 'back\\slash', '\\"', 'comma, {brace} }', 'NULL', '', ' spaced ',
         'tab\tnew\nline', 'ünï€ødé', "quote's", '\\x41']


@pytest.mark.parametrize("sqltype,kind,values", [
    ("text", "text", TEXTS + [None]),
    ("bigint", "num", [0, -1, 2**62, None]),
    ("smallint", "num", [0, 5, -7]),
    ("float8", "num", [0.1, 1e-300, -2.5e17, 72, 1 / 3, None]),
    ("boolean", "num", [True, False, None]),
    ("bytea", "bytes", [b"", b"\x00\xff\\\"{},", bytes(range(256)), None]),
    ("timestamptz", "time", [dt.datetime(2026, 11, 30, 15, 20, 0, 123456, tzinfo=dt.timezone.utc),
                             dt.datetime(1999, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=1))), None]),
    ("date", "text", ["2027-02-28", "2027-11-02", None]),
    ("date", "time", [dt.date(2027, 2, 28), None]),
])
def test_values_come_back_unchanged(pg_url, sqltype, kind, values):
    import psycopg

    with psycopg.connect(pg_url) as c:
        got = c.execute(f"SELECT x FROM unnest(%s::{sqltype}[]) WITH ORDINALITY AS t(x, i) ORDER BY i",
                        (_pg_array(values, kind),)).fetchall()
    want = [dt.date.fromisoformat(v) if isinstance(v, str) and sqltype == "date" else v for v in values]
    assert [r[0] for r in got] == want


def test_an_element_cannot_end_the_array_early(pg_url):
    import psycopg

    evil = ['a"}', '"},{"x', 'b\\', '\\"}']
    with psycopg.connect(pg_url) as c:
        n = c.execute("SELECT cardinality(%s::text[])", (_pg_array(evil, "text"),)).fetchone()[0]
    assert n == len(evil)
