"""gateway.db / secrets / config / admin / store on both databases: migrations, the unique
constraint, keys encrypted at rest and never shown, the store transaction, the admin CLI."""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import stat

import pytest

from gateway import admin, secrets
from gateway.cli import main as gw
from gateway.config import ConfigError, from_dict, load
from gateway.db import Database, migrations
from gateway.store import Message, Store
from tests.support.generator import SimDevice, topic

UTC = dt.timezone.utc


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def db(db_url):
    d = Database(db_url)
    d.migrate()
    return d


TABLES = {"devices", "device_keys", "patients", "patient_identities", "readings", "observations", "outbox",
          "quarantine", "audit_log", "security_events", "schema_version"}


def _tables(db):
    with db.connect() as c:
        if db.dialect == "sqlite":
            return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return {r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}


def test_migrations_create_the_schema_once(db_url):
    d = Database(db_url)
    assert d.migrate() == [v for v, _, _ in migrations()]
    assert d.migrate() == []
    assert TABLES <= _tables(d)
    assert d.schema_version() == max(v for v, _, _ in migrations())
    if d.dialect == "sqlite":
        with d.connect() as c:
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_unique_device_seq_is_enforced_by_the_database(db):
    kek = os.urandom(32)
    admin.add_device(db, kek, "nabd-uniq01", os.urandom(32), "F", "MA-01")
    ins = db.sql("INSERT INTO readings (device_id, seq, sha256, raw, ts, ts_ok, received_at, effective_at) "
                 "VALUES (?,?,?,?,?,?,?,?)")
    now = dt.datetime.now(UTC)
    row = ("nabd-uniq01", 1, "a" * 64, b"x", 1, True, now, now)
    with db.connect() as c:
        c.execute(ins, row)
    with pytest.raises(Exception) as e:
        with db.connect() as c:
            c.execute(ins, row)
    assert "unique" in str(e.value).lower()
    on_conflict = ins + " ON CONFLICT (device_id, seq) DO NOTHING RETURNING id"
    with db.connect() as c:
        assert c.execute(on_conflict, row).fetchone() is None


def test_region_check_constraint(db):
    import sqlite3

    import psycopg
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.CheckViolation)):
        with db.connect() as c:
            c.execute(db.sql("INSERT INTO devices (id, facility, region, registered_at) VALUES (?,?,?,?)"),
                      ("nabd-reg001", "F", "MA-13", dt.datetime.now(UTC)))


def test_keys_are_encrypted_at_rest_bound_to_their_row_and_never_shown(db, caplog):
    kek, key = os.urandom(32), os.urandom(32)
    admin.add_device(db, kek, "nabd-keys01", key, "F", "MA-02")
    with db.connect() as c:
        blob = bytes(c.execute(db.sql("SELECT key_enc FROM device_keys WHERE device_id = ?"),
                               ("nabd-keys01",)).fetchone()[0])
        audit = " ".join(str(r) for r in c.execute("SELECT * FROM audit_log").fetchall())
    assert key not in blob and key.hex() not in audit
    dk = secrets.decrypt_key(kek, "nabd-keys01", 1, blob)
    assert dk.secret == key
    assert key.hex() not in repr(dk) and key.hex() not in str(dk) and "redacted" in repr(dk)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("t").info("key %s %r", dk, dk)
    assert key.hex() not in caplog.text
    with pytest.raises(secrets.KeyDecryptError):
        secrets.decrypt_key(os.urandom(32), "nabd-keys01", 1, blob)          # wrong KEK
    with pytest.raises(secrets.KeyDecryptError):
        secrets.decrypt_key(kek, "nabd-keys02", 1, blob)                     # moved to another device
    with pytest.raises(secrets.KeyDecryptError):
        secrets.decrypt_key(kek, "nabd-keys01", 2, blob)                     # or another version
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(dk)


def test_store_transaction_and_key_rotation(db):
    kek = os.urandom(32)
    dev = SimDevice("nabd-rot001")
    admin.add_device(db, kek, dev.id, dev.key, "F", "MA-03")
    store = Store(db, kek, forward=True)
    conn = db.open()
    now = dt.datetime.now(UTC)
    old = [dev.next_reading()[1] for _ in range(2)]
    new_key = os.urandom(32)
    assert admin.rotate_key(db, kek, dev.id, new_key, grace_hours=1) == 2
    dev.key, dev.key_version = new_key, 2
    fresh = dev.next_reading()[1]
    r = store.process(conn, [Message(topic(dev.id), m, now) for m in old + [fresh, fresh]])
    assert [v.kind for v in r.verdicts] == ["accept", "accept", "accept", "duplicate"]
    assert sorted(t for t, _ in r.acks) == [topic(dev.id, "ack")] * 2   # one per key version
    with db.connect() as c:
        assert c.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'fhir'").fetchone()[0] == 3
        assert c.execute("SELECT COUNT(*) FROM observations").fetchone()[0] == 12
    # grace 0: the old version is revoked at once
    admin.rotate_key(db, kek, dev.id, os.urandom(32), grace_hours=0)
    dev.key, dev.key_version = new_key, 2
    v = store.process(conn, [Message(topic(dev.id), dev.next_reading()[1], now)]).verdicts[0]
    assert v.reason == "revoked"
    conn.close()
    with db.connect() as c:
        actions = [r[0] for r in c.execute("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["devices.add", "devices.rotate-key", "devices.rotate-key"]


def test_observations_are_rendered_from_the_signed_reading(db):
    """The store keeps values only; the API's page and the forwarder's bundle render the FHIR
    Observations from the reading's signed bytes and receipt time: exactly what
    fhir.observations_for_reading gives, valid R4, unsynced clocks keeping the receipt time."""
    from fhir.resources.R4B.observation import Observation

    from gateway import fhir
    from gateway import recordstore as rs
    from gateway.forward import Forwarder

    kek = os.urandom(32)
    dev = SimDevice("nabd-render01")
    admin.add_device(db, kek, dev.id, dev.key, "F", "MA-05")
    store = Store(db, kek, forward=True)
    received = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    raws = [dev.next_reading(patient="p-render1", flags=["fever"], values={"temp": 38.4})[1],
            dev.next_reading(ts_ok=False, ts=42, codes=("spo2", "hr"))[1]]
    conn = db.open()
    r = store.process(conn, [Message(topic(dev.id), m, received) for m in raws])
    conn.close()
    assert [v.kind for v in r.verdicts] == ["accept", "accept"]
    payloads = [v.payload for v in r.verdicts]
    expected = [o for p in payloads for o in fhir.observations_for_reading(p, received)]
    with db.connect() as c:
        assert c.execute("SELECT COUNT(*) FROM observations WHERE resource IS NULL").fetchone()[0] == 6
        page, total = rs.observations_page(db, c, "device_id", dev.id, 50, 0)
        bodies = [json.loads(b) for (b,) in c.execute("SELECT body FROM outbox ORDER BY id")]
    assert total == 6 and sorted(page, key=lambda o: o["id"]) == sorted(expected, key=lambda o: o["id"])
    for o in page:
        Observation.model_validate(o)
    unsynced = [o for o in page if o["id"].startswith(f"{dev.id}-2-")]
    assert {o["effectiveDateTime"] for o in unsynced} == {"2026-03-04T05:06:07+00:00"}
    assert [b.keys() for b in bodies] == [{"reading_id"}, {"reading_id"}]
    fw = Forwarder({"fhir_forward": {"url": "http://127.0.0.1:9/fhir", "enabled": True}}, db)
    with db.connect() as c:
        row = {"id": 1, "body": json.dumps(bodies[0])}
        _, sent, _ = fw._fhir_request(c, row)
        row_old = {"id": 1, "body": json.dumps(fhir.transaction_bundle(expected[:4]))}
        _, sent_old, _ = fw._fhir_request(c, row_old)
    assert sent == sent_old  # the same bundle as one stored at ingest time would give


def test_config_validation_gives_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.toml")
    for data, msg in [({"brokr": {}}, "unknown section"), ({"broker": {"url": "http://x"}}, "broker.url"),
                      ({"ingest": {"batch_max": 0}}, "batch_max"), ({"ingest": {"queue_max": "big"}}, "integer"),
                      ({"database": {"url": "mysql://x"}}, "database.url"),
                      ({"fhir_forward": {"enabled": True}}, "needs a url"),
                      ({"api": {"tokn": "x"}}, "unknown key"),
                      ({"console": {"timezone": "Mars/Olympus"}}, "not an IANA zone"),
                      ({"console": {"timezone": "../../etc/passwd"}}, "not an IANA zone")]:
        with pytest.raises(ConfigError, match=msg):
            from_dict(data)
    p = tmp_path / "bad.toml"
    p.write_text("[broker\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(p)


def _cli(capsys, *argv):
    rc = gw(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_admin_cli_init_devices_quarantine(tmp_path, capsys, db_url, monkeypatch):
    monkeypatch.delenv("NABD_KEK", raising=False)
    cfg = tmp_path / "gw.toml"
    rc, out, _ = _cli(capsys, "init", "--config", str(cfg), "--db", db_url, "--broker", "mqtt://127.0.0.1:1884",
                      "--listen", "127.0.0.1:9000", "--json")
    assert rc == 0
    token = json.loads(out)["admin_token"]
    text = cfg.read_text()
    import hashlib
    assert token not in text and hashlib.sha256(token.encode()).hexdigest() in text
    kek_file = tmp_path / "gw.toml.kek"
    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600
    assert kek_file.read_text().strip() not in text
    c = load(cfg)
    assert c.broker.port == 1884 and c.api.listen == "127.0.0.1:9000" and c.database.url == db_url
    rc, _, err = _cli(capsys, "init", "--config", str(cfg))
    assert rc == 2 and "--force" in err and cfg.read_text() == text      # usage: says to add --force

    key = os.urandom(32).hex()
    base = ("--config", str(cfg))
    assert _cli(capsys, "devices", "add", "nabd-cli001", "--key", key, "--facility", "CS Anfa", "--region", "MA-06", *base)[0] == 0
    assert _cli(capsys, "devices", "add", "nabd-cli002", "--key", key[:10], "--facility", "X", "--region", "MA-06", *base)[0] == 2
    assert _cli(capsys, "devices", "add", "nabd-cli002", "--key", key, "--facility", "X", "--region", "MA-99", *base)[0] == 2
    assert _cli(capsys, "devices", "add", "nabd-cli001", "--key", key, "--facility", "X", "--region", "MA-01", *base)[0] == 4
    rc, out, _ = _cli(capsys, "devices", "rotate-key", "nabd-cli001", "--key", os.urandom(32).hex(), "--json", *base)
    assert rc == 0 and json.loads(out)["key_version"] == 2
    rc, out, _ = _cli(capsys, "devices", "list", "--json", *base)
    devs = json.loads(out)
    assert [(d["id"], d["region"], d["status"], d["key_version"]) for d in devs] == [("nabd-cli001", "MA-06", "active", 2)]
    assert key not in out
    assert _cli(capsys, "devices", "revoke", "nabd-cli001", *base)[0] == 0
    assert _cli(capsys, "devices", "revoke", "nabd-cli001", *base)[0] == 4
    rc, out, _ = _cli(capsys, "devices", "list", *base)
    assert "revoked" in out and key not in out

    db = Database(db_url)
    store = Store(db, load(cfg).security.kek())
    conn = db.open()
    store.process(conn, [Message("nabd/v1/dev/nabd-cli001/reading", b"garbage", dt.datetime.now(UTC))])
    conn.close()
    rc, out, _ = _cli(capsys, "quarantine", "list", "--json", *base)
    q = json.loads(out)
    assert rc == 0 and q[0]["reason"] == "malformed" and q[0]["device"] == "nabd-cli001" and q[0]["bytes"] == 7
    with db.connect() as c:
        rows = c.execute("SELECT actor, action, target FROM audit_log ORDER BY id").fetchall()
    assert [r[1] for r in rows] == ["devices.add", "devices.rotate-key", "devices.revoke"]
    assert all(r[0].startswith("cli:") and r[2] == "nabd-cli001" for r in rows)


def test_unique_constraint_is_the_final_guard_when_another_process_raced(db):
    """Another gateway may commit the same (device, seq) while we verify: the store looks no
    digest up before its insert (gateway/store.py), the INSERT ... ON CONFLICT finds the stored row
    and its digest decides duplicate (same bytes) or replay."""
    kek = os.urandom(32)
    dev = SimDevice("nabd-race001")
    admin.add_device(db, kek, dev.id, dev.key, "F", "MA-05")
    store = Store(db, kek)
    conn = db.open()
    now = dt.datetime.now(UTC)
    seq, raw = dev.next_reading()
    other = dev.next_reading()[1]
    from tests.support.generator import reading, sign_reading
    clone = sign_reading(dev.key, dev.kid, reading(dev.id, seq, values={"hr": 99}))
    assert [v.kind for v in store.process(conn, [Message(topic(dev.id), raw, now)]).verdicts] == ["accept"]
    res = store.process(conn, [Message(topic(dev.id), m, now) for m in (raw, clone, other)])
    assert [(v.kind, v.reason) for v in res.verdicts] == [("duplicate", ""), ("reject", "replay"), ("accept", "")]
    assert [t for t, _ in res.acks] == [topic(dev.id, "ack")]
    conn.close()
    with db.connect() as c:
        assert c.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 2
        assert c.execute("SELECT reason FROM quarantine").fetchall()[0][0] == "replay"


def test_a_replayed_seq_is_a_replay_even_when_its_values_are_also_wrong(db):
    """docs/protocol.md checks replay (step 5) before values (step 6): a signed message reusing a
    stored seq is quarantined as a replay whatever else is wrong with it, in a later batch or in the
    same one; a fresh seq with the same wrong values is 'invalid' / 'future_ts'."""
    from tests.support.generator import reading, sign_reading

    kek = os.urandom(32)
    dev = SimDevice("nabd-order01")
    admin.add_device(db, kek, dev.id, dev.key, "F", "MA-05")
    store = Store(db, kek)
    now = dt.datetime.now(UTC)
    seq, raw = dev.next_reading()
    bad_hr = sign_reading(dev.key, dev.kid, reading(dev.id, seq, values={"hr": 400}))
    future = sign_reading(dev.key, dev.kid, reading(dev.id, seq, ts=int(now.timestamp()) + 86400))
    fresh_bad = sign_reading(dev.key, dev.kid, reading(dev.id, seq + 100, values={"hr": 400}))
    with db.connect() as conn:
        res = store.process(conn, [Message(topic(dev.id), m, now) for m in (raw, bad_hr)])
        assert [(v.kind, v.reason) for v in res.verdicts] == [("accept", ""), ("reject", "replay")]
        res = store.process(conn, [Message(topic(dev.id), m, now) for m in (future, fresh_bad, raw)])
        assert [(v.kind, v.reason) for v in res.verdicts] == [
            ("reject", "replay"), ("reject", "invalid"), ("duplicate", "")]
        assert sorted(r[0] for r in conn.execute("SELECT reason FROM quarantine").fetchall()) == [
            "invalid", "replay", "replay"]
        assert conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 1


def test_reading_ids_are_never_reused(db):
    """Reading ids name FHIR resources and outbox rows: a new reading never takes the id of one
    that was deleted (AUTOINCREMENT on SQLite, an identity on PostgreSQL)."""
    kek = os.urandom(32)
    dev = SimDevice("nabd-ids0001")
    admin.add_device(db, kek, dev.id, dev.key, "F", "MA-05")
    store = Store(db, kek)
    now = dt.datetime.now(UTC)
    with db.connect() as conn:
        store.process(conn, [Message(topic(dev.id), dev.next_reading()[1], now) for _ in range(3)])
        ids = [r[0] for r in conn.execute("SELECT id FROM readings ORDER BY id").fetchall()]
        assert len(set(ids)) == 3
        conn.execute(db.sql("DELETE FROM observations WHERE reading_id = ?"), (ids[-1],))
        conn.execute(db.sql("DELETE FROM readings WHERE id = ?"), (ids[-1],))
        conn.commit()
        store.process(conn, [Message(topic(dev.id), dev.next_reading()[1], now) for _ in range(2)])
        new = [r[0] for r in conn.execute(db.sql("SELECT id FROM readings WHERE id > ? ORDER BY id"),
                                          (ids[1],)).fetchall()]
        assert len(new) == 2 and min(new) > ids[-1]
        n_obs = conn.execute("SELECT COUNT(*) FROM observations o JOIN readings r ON r.id = o.reading_id").fetchone()[0]
        assert n_obs == conn.execute("SELECT COUNT(*) FROM observations").fetchone()[0]


def test_upgrade_to_version_4_keeps_every_observation_in_order(db_url, monkeypatch):
    """A database written at schema version 3 (observations carrying device, patient and time,
    some with a stored resource) upgraded to 4: nothing lost, the time moves to the reading, the
    payload order is kept, and the API serves the same resources."""
    import gateway.db as gdb
    from gateway import fhir
    from gateway import recordstore as rs

    all_migrations = gdb.migrations()
    monkeypatch.setattr(gdb, "migrations", lambda: [m for m in all_migrations if m[0] <= 3])
    db = Database(db_url)
    assert db.migrate() == [1, 2, 3]
    kek = os.urandom(32)
    dev = SimDevice("nabd-upgr001")
    admin.add_device(db, kek, dev.id, dev.key, "F", "MA-05")
    received = dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    expected = []
    with db.connect() as c:
        for seq, (ts_ok, stored) in enumerate([(True, True), (False, False)], start=1):
            raw = dev.next_reading(ts_ok=ts_ok, ts=1_770_000_000 + seq, patient="p-upgrade1")[1]
            payload = rs.reading_payload(raw)
            obs = fhir.observations_for_reading(payload, received)
            c.execute(db.sql("INSERT INTO readings (device_id, seq, sha256, raw, ts, ts_ok, received_at, patient_id, "
                             "fw) VALUES (?,?,?,?,?,?,?,?,?)"),
                      (dev.id, seq, "0" * 64, raw, payload["ts"], ts_ok, received, "p-upgrade1", "0.1.0"))
            rid = c.execute(db.sql("SELECT id FROM readings WHERE seq = ?"), (seq,)).fetchone()[0]
            for o, item in zip(obs, payload["obs"], strict=True):
                c.execute(db.sql("INSERT INTO observations (reading_id, device_id, patient_id, code, value, unit, q, "
                                 "effective_at, resource) VALUES (?,?,?,?,?,?,?,?,?)"),
                          (rid, dev.id, "p-upgrade1", item["code"], item["value"], item["unit"], item["q"],
                           o["effectiveDateTime"], json.dumps(o) if stored else None))
            expected += obs
    monkeypatch.setattr(gdb, "migrations", lambda: all_migrations)
    assert db.migrate() == [v for v, _, _ in all_migrations if v > 3]
    with db.connect() as c:
        eff = [rs.parse_time(r[0]) for r in c.execute("SELECT effective_at FROM readings ORDER BY seq").fetchall()]
        assert eff == [dt.datetime.fromtimestamp(1_770_000_001, UTC), received]   # unsynced clock: receipt time
        pos = c.execute("SELECT pos, code FROM observations ORDER BY reading_id, pos").fetchall()
        assert [tuple(p) for p in pos] == [(i, k) for _ in range(2) for i, k in enumerate(("temp", "spo2", "hr", "pi"))]
        for column, value in (("device_id", dev.id), ("patient_id", "p-upgrade1")):
            page, total = rs.observations_page(db, c, column, value, 50, 0)
            assert total == 8 and page == expected


def test_a_large_mixed_batch_stores_exactly_its_good_readings_with_their_observations(db):
    """One batch of readings from several devices with one to four observations each (more
    observation rows than one SQLite INSERT carries, and a remainder), a forged one, a duplicate
    within the batch and one of an earlier batch: only the authentic new readings are stored,
    each once, every observation with its reading's values in payload order, and the effective
    time is the device's synced clock or, unsynced, the receipt time."""
    from gateway.store import OBS_PER_INSERT
    from tests.support.generator import reading, sign_reading

    kek = os.urandom(32)
    devs = [SimDevice(f"nabd-mixed{i:03d}") for i in range(3)]
    for d in devs:
        admin.add_device(db, kek, d.id, d.key, "F", "MA-05")
    store = Store(db, kek)
    received = dt.datetime.now(UTC).replace(microsecond=123456)
    t0 = int(received.timestamp()) - 600
    conn = db.open()
    earlier = devs[0].next_reading(ts=t0)[1]
    assert [v.kind for v in store.process(conn, [Message(topic(devs[0].id), earlier, received)]).verdicts] == ["accept"]
    codes = (("temp", "spo2", "hr", "pi"), ("spo2", "hr"), ("temp",), ("hr", "pi", "spo2"))
    batch, want = [], {}
    for k in range(31):
        d = devs[k % 3]
        c = codes[k % 4]
        synced = k % 5 != 0
        seq, raw = d.next_reading(codes=c, ts=t0 + k // 4 if synced else 7, ts_ok=synced,
                                  values={"temp": 36.0 + k / 10, "hr": 60 + k})
        batch.append((d, raw))
        want[(d.id, seq)] = raw
    forged_seq = devs[1].seq + 1
    forged = sign_reading(os.urandom(32), devs[1].kid, reading(devs[1].id, forged_seq))
    dup = batch[3]
    batch.insert(9, (devs[1], forged))
    batch.insert(20, dup)                           # a duplicate within the batch
    batch.append((devs[0], earlier))                # stored by the earlier batch
    assert sum(len(codes[k % 4]) for k in range(31)) > OBS_PER_INSERT
    res = store.process(conn, [Message(topic(d.id), raw, received) for d, raw in batch])
    kinds = [(v.kind, v.reason) for v in res.verdicts]
    assert kinds.count(("accept", "")) == 31
    assert kinds[9] == ("reject", "bad_signature")
    assert kinds[20] == kinds[-1] == ("duplicate", "")
    assert len(kinds) == 34
    # one signed ack per device, naming its accepted and duplicate seqs, its payload exactly the
    # compact JSON the protocol shows
    from gateway import jws
    assert sorted(t for t, _ in res.acks) == sorted(topic(d.id, "ack") for d in devs)
    for t, ack in res.acks:
        d = next(d for d in devs if topic(d.id, "ack") == t)
        body = jws.verify(d.key, ack, jws.TYP_ACK)
        seqs = sorted({v.seq for v in res.verdicts if v.device == d.id and v.kind != "reject"})
        assert body == {"v": 1, "dev": d.id, "seqs": seqs, "ts": body["ts"]} and seqs
        assert jws.b64url_decode(ack.split(b".")[1]) == jws.dumps(body)
    with db.connect() as c:
        rows = c.execute("SELECT id, device_id, seq, raw, received_at, effective_at FROM readings").fetchall()
        obs = c.execute("SELECT reading_id, pos, code, value, unit, q FROM observations "
                        "ORDER BY reading_id, pos").fetchall()
        assert c.execute(db.sql("SELECT COUNT(*) FROM readings WHERE device_id = ? AND seq = ?"),
                         (devs[1].id, forged_seq)).fetchone()[0] == 0
        assert [r[0] for r in c.execute("SELECT reason FROM quarantine").fetchall()] == ["bad_signature"]
    conn.close()
    assert len(rows) == 32
    by_id = {}
    for rid, dev, seq, raw, rec, eff in rows:
        if (dev, seq) not in want:
            assert bytes(raw) == earlier
            continue
        assert bytes(raw) == want[(dev, seq)]
        p = json.loads(jws_payload(bytes(raw)))
        rec = rec if isinstance(rec, dt.datetime) else dt.datetime.fromisoformat(rec)
        eff = eff if isinstance(eff, dt.datetime) else dt.datetime.fromisoformat(eff)
        assert rec == received
        assert eff == (dt.datetime.fromtimestamp(p["ts"], UTC) if p["ts_ok"] else received)
        by_id[rid] = p
    assert len(by_id) == 31
    got: dict = {}
    for rid, pos, code, value, unit, q in obs:
        got.setdefault(rid, []).append((pos, code, value, unit, q))
    for rid, p in by_id.items():
        assert got[rid] == [(i, o["code"], o["value"], o["unit"], o["q"]) for i, o in enumerate(p["obs"])]


def jws_payload(raw: bytes) -> bytes:
    from gateway import jws

    return jws.b64url_decode(raw.split(b".")[1])


def test_sqlite_time_texts_are_isoformat_to_the_microsecond(tmp_path):
    """The store writes a receipt time as isoformat(timespec="microseconds") text, its part up to
    the second cached: the same text for every instant (zero microseconds, second and year
    boundaries, a cache cleared when full), and other time zones formatted as they are."""
    db = Database(f"sqlite:///{tmp_path}/t.db")
    store = Store(db, os.urandom(32))
    base = dt.datetime(2026, 12, 31, 23, 59, 58, 0, tzinfo=UTC)
    times = [base + dt.timedelta(microseconds=k * 250_001) for k in range(400)]
    times += [dt.datetime(2027, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC)]
    for t in times + times[::-1]:
        assert store._iso(t) == t.isoformat(timespec="microseconds")
    east = dt.datetime(2026, 3, 4, 5, 6, 7, 8, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert store._iso(east) == "2026-03-04T05:06:07.000008+01:00"
