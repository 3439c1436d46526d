"""Read-side helpers over the gateway's schema (gateway/db.py, gateway/migrations/) used by the API, the
forwarder and the observatory: configuration access, time values, and the record queries.

Written against the schema contract only (table and column names), on both dialects: SQL uses the
database's ``placeholder`` and nothing dialect-specific except where a helper says so.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

UTC = dt.timezone.utc


def cfg(config: Any, section: str, key: str, default: Any = None) -> Any:
    """``config.section.key`` for the gateway's Config (attributes) or plain dicts (tests, TOML)."""
    if config is None:
        return default
    sec = config.get(section) if isinstance(config, dict) else getattr(config, section, None)
    if sec is None:
        return default
    val = sec.get(key, default) if isinstance(sec, dict) else getattr(sec, key, default)
    return default if val is None else val


def now_utc() -> dt.datetime:
    return dt.datetime.now(UTC)


def to_iso(t: dt.datetime) -> str:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(v: Any) -> dt.datetime | None:
    """A stored time value (datetime from PostgreSQL, ISO text or Unix seconds from SQLite) as an
    aware UTC datetime; None stays None."""
    if v is None or v == "":
        return None
    if isinstance(v, dt.datetime):
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day, tzinfo=UTC)
    if isinstance(v, (int, float)):
        return dt.datetime.fromtimestamp(v, UTC)
    s = str(v).strip().replace("Z", "+00:00")
    t = dt.datetime.fromisoformat(s)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_date(v: Any) -> dt.date | None:
    if v is None or v == "":
        return None
    if isinstance(v, dt.datetime):
        return parse_time(v).date()
    if isinstance(v, dt.date):
        return v
    return dt.date.fromisoformat(str(v)[:10])


def load_json(v: Any) -> Any:
    if isinstance(v, (dict, list)):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        v = bytes(v).decode()
    return json.loads(v)


def rows(conn, sql: str, params: tuple = ()) -> list[dict]:
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        cur.close()


def execute(conn, sql: str, params: tuple = ()) -> int:
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        return cur.rowcount
    finally:
        cur.close()


def q(db, sql: str) -> str:
    """Rewrite '?' placeholders to the database's own."""
    return sql if db.placeholder == "?" else sql.replace("?", db.placeholder)


DEVICE_COLS = "id, facility, region, status, fw, cal_id, cal_date, cal_due, registered_at, last_seen_at"


def device_info(db, conn, device_id: str) -> dict | None:
    r = rows(conn, q(db, f"SELECT {DEVICE_COLS} FROM devices WHERE id = ?"), (device_id,))
    return r[0] if r else None


def patient_exists(db, conn, token: str) -> bool:
    return bool(rows(conn, q(db, "SELECT id FROM patients WHERE id = ?"), (token,)))


def reading_payload(raw: Any) -> dict:
    """The payload of a stored reading: ``readings.raw`` holds the signed JWS bytes the gateway
    verified at ingest (raises ValueError when they are not a reading's JWS)."""
    from gateway import jws

    return jws.parse_compact(raw, jws.TYP_READING).payload


def render_observations(raw: Any, received_at: Any) -> dict[str, dict]:
    """code -> FHIR Observation of one stored reading, rendered from its signed bytes and receipt
    time (the same function, on the same inputs, as at ingest: identical resources)."""
    from gateway.fhir import observations_for_reading

    obs = observations_for_reading(reading_payload(raw), parse_time(received_at))
    return {o["identifier"][0]["value"].rsplit("/", 1)[1]: o for o in obs}


def _observation(r: dict, cache: dict) -> dict:
    """An observation row's resource: the stored JSON (rows written before schema version 3, or by
    other writers) or rendered from its reading. When the row carries the reading's ``patient_id``
    and the signed payload named no patient (a reading a clinician attached from the console's
    inbox, audited as ``readings.attach``), the resource gets that patient as its ``subject``."""
    if r["resource"] is not None:
        res = load_json(r["resource"])
    else:
        rid = r["reading_id"]
        if rid not in cache:
            cache[rid] = render_observations(r["raw"], r["received_at"])
        res = cache[rid][r["code"]]
    pid = r.get("patient_id")
    if pid and "subject" not in res:
        res = {**res, "subject": {"reference": f"Patient/{pid}"}}
    return res


# for the API's queries (row: reading_id, code, resource, raw, received_at, and patient_id for attached readings)
observation_resource = _observation


def reading_observations(db, conn, reading_id: int) -> list[dict]:
    """The Observations of one reading (stored or rendered), in their stored order."""
    page = rows(conn, q(db, "SELECT o.reading_id, o.code, o.resource, r.raw, r.received_at, r.patient_id "
                            "FROM observations o JOIN readings r ON r.id = o.reading_id WHERE o.reading_id = ? "
                            "ORDER BY o.pos"),
                (reading_id,))
    cache: dict = {}
    return [_observation(r, cache) for r in page]


def observations_page(db, conn, column: str, value: str, count: int, offset: int) -> tuple[list[dict], int]:
    """Observation resources for ``device_id`` or ``patient_id`` = value, oldest first."""
    if column not in ("device_id", "patient_id"):
        raise ValueError(column)
    # through the readings' (device_id | patient_id, effective_at) index (schema version 4)
    total = rows(conn, q(db, f"SELECT COUNT(*) AS n FROM readings r JOIN observations o ON o.reading_id = r.id "
                            f"WHERE r.{column} = ?"), (value,))[0]["n"]
    page = rows(conn, q(db, f"SELECT o.reading_id, o.code, o.resource, r.raw, r.received_at, r.patient_id "
                            f"FROM readings r "
                            f"JOIN observations o ON o.reading_id = r.id WHERE r.{column} = ? "
                            f"ORDER BY r.effective_at, r.id, o.pos LIMIT ? OFFSET ?"), (value, count, offset))
    cache: dict = {}
    return [_observation(r, cache) for r in page], int(total)
