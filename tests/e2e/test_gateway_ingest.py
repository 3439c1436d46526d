"""End to end: generator devices -> real Mosquitto -> `nabd-gateway serve` (a real process) -> SQLite
or PostgreSQL, and back (signed acks). Every test runs on both databases (``db_url``)."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import jws
from gateway.db import Database
from gateway.store import Message, Store
from gateway.verify import check_values
from tests.support.generator import Fleet, SimDevice, reading, sign_reading, topic
from tests.support.harness import GatewayProcess, register, rows, scalar, wait_for, write_config

pytestmark = [pytest.mark.broker]

PERSISTENT = "allow_anonymous true\npersistence true\npersistence_location {dir}/\nautosave_interval 1\n" \
             "max_queued_messages 100000\n"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return request.getfixturevalue("pg_url")


def _count(url: str, table: str = "readings") -> int:
    return int(scalar(url, f"SELECT COUNT(*) FROM {table}"))


def _assert_each_once(url: str, devices: list[SimDevice]) -> None:
    got = rows(url, "SELECT device_id, seq FROM readings")
    assert len(got) == len(set(got)), "a reading was stored twice"
    want = {(d.id, s) for d in devices for s in range(1, d.seq + 1)}
    assert set(got) == want


def _raw_client(url: str) -> mqtt.Client:
    host, port = url.split("://")[1].split(":")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="intruder-" + os.urandom(3).hex(),
                    protocol=mqtt.MQTTv311)
    c.connect(host, int(port))
    c.loop_start()
    return c


def test_readings_arrive_once_and_are_acknowledged(broker_factory, tmp_path, db_url):
    b = broker_factory()
    cfg = write_config(tmp_path, b.url, db_url)
    devs = [SimDevice(f"nabd-a1b2c3d4e5{i:02x}") for i in range(4)]
    register(cfg, devs)
    with GatewayProcess(cfg):
        fleet = Fleet(b.url, devs).start()
        try:
            seq1, first = devs[1].next_reading(patient="p-7Hq2xK")
            fleet.publish(devs[1].id, first)
            for d in devs:
                fleet.send_new(d.id, 25 - (d is devs[1]), patient="p-7Hq2xK")
            fleet.send_new(devs[0].id, 1, ts_ok=False, ts=42)   # unsynced clock: flagged, receipt time kept
            assert fleet.run_until_acked(timeout=30), f"{fleet.pending()} readings never acknowledged"
            # the exact bytes again (a device that missed the ack): acknowledged again, nothing stored
            acks = devs[1].acks_received
            fleet.publish(devs[1].id, first)
            assert wait_for(lambda: devs[1].acks_received > acks, timeout=10)
        finally:
            fleet.stop()
    _assert_each_once(db_url, devs)
    assert _count(db_url, "observations") == 4 * 101
    assert _count(db_url, "quarantine") == 0
    assert all(d.bad_acks == 0 for d in devs)
    ts_ok, received = rows(db_url, "SELECT ts_ok, received_at FROM readings WHERE device_id = ? AND seq = ?",
                           (devs[0].id, 26))[0]
    assert not ts_ok and received is not None
    eff = rows(db_url, "SELECT r.effective_at FROM observations o JOIN readings r ON r.id = o.reading_id "
                       "WHERE r.device_id = ? AND r.seq = ?", (devs[0].id, 26))
    assert eff and "1970" not in str(eff[0][0])
    assert _count(db_url, "patients") == 1


def test_bad_messages_are_quarantined_with_their_reason(broker_factory, tmp_path, db_url):
    b = broker_factory()
    cfg = write_config(tmp_path, b.url, db_url)
    good, gone, other = SimDevice("nabd-good01"), SimDevice("nabd-revoked01"), SimDevice("nabd-other01")
    register(cfg, [good, gone, other])
    from gateway import admin
    admin.revoke_device(Database(db_url), gone.id)
    stranger = SimDevice("nabd-unknown01")
    now = int(time.time())

    def signed(dev: SimDevice, seq: int, **kw) -> bytes:
        return sign_reading(dev.key, dev.kid, reading(dev.id, seq, **kw))

    cases = {
        "bad_signature": (topic(good.id), sign_reading(os.urandom(32), good.kid, reading(good.id, 5))),
        "revoked": (topic(gone.id), signed(gone, 1)),
        "unknown_device": (topic(stranger.id), signed(stranger, 1)),
        "topic_mismatch": (topic(other.id), signed(good, 6)),
        "oversized": (topic(good.id), b"x" * 2049),
        "malformed": (topic(good.id), b"not.a.jws!"),
        "invalid": (topic(good.id), signed(good, 7, values={"temp": 47.5})),
        "future_ts": (topic(good.id), signed(good, 8, ts=now + 3600)),
    }
    with GatewayProcess(cfg):
        c = _raw_client(b.url)
        original = signed(good, 1)
        c.publish(topic(good.id), original, qos=1).wait_for_publish(5)
        assert wait_for(lambda: _count(db_url) == 1)
        c.publish(topic(good.id), original, qos=1)                                   # duplicate: nothing stored
        c.publish(topic(good.id), signed(good, 1, values={"hr": 99}), qos=1)         # replay: other bytes, same seq
        for t, raw in cases.values():
            c.publish(t, raw, qos=1)
        ok = wait_for(lambda: _count(db_url, "quarantine") >= len(cases) + 1)
        c.loop_stop()
        c.disconnect()
        assert ok, rows(db_url, "SELECT reason, detail FROM quarantine")
        time.sleep(0.3)
    got = rows(db_url, "SELECT reason, topic, device_hint, detail, raw FROM quarantine ORDER BY id")
    reasons = [r[0] for r in got]
    assert sorted(reasons) == sorted(list(cases) + ["replay"]), got
    for reason, (t, raw) in cases.items():
        row = next(r for r in got if r[0] == reason)
        assert row[1] == t and bytes(row[4]) == raw[:4096], reason
    assert _count(db_url) == 1                     # only the original
    events = rows(db_url, "SELECT kind, device_id FROM security_events")
    assert ("replay", good.id) in events and ("bad_signature", good.id) in events


def _stream(fleet: Fleet, devs: list[SimDevice], per_device: int, rate: float, stop: threading.Event) -> None:
    """Publish ``per_device`` new readings per device at about ``rate`` readings/s in total."""
    gap = len(devs) / rate
    for _ in range(per_device):
        if stop.is_set():
            return
        for d in devs:
            fleet.send_new(d.id, 1)
        time.sleep(gap)


@pytest.mark.slow
def test_sigkill_and_broker_restart_lose_nothing_and_duplicate_nothing(broker_factory, tmp_path, db_url):
    b = broker_factory(config=PERSISTENT)
    cfg = write_config(tmp_path, b.url, db_url)
    devs = [SimDevice(f"nabd-crash{i:02d}") for i in range(5)]
    register(cfg, devs)
    gw = GatewayProcess(cfg).start()
    fleet = Fleet(b.url, devs).start()
    stop = threading.Event()
    pub = threading.Thread(target=_stream, args=(fleet, devs, 120, 300.0, stop))
    try:
        pub.start()
        assert wait_for(lambda: _count(db_url) >= 100, timeout=20)
        gw.kill()                                         # SIGKILL mid-stream
        time.sleep(0.5)
        gw.start()
        assert wait_for(lambda: _count(db_url) >= 300, timeout=20)
        b.restart()                                       # broker restart mid-stream (persistence on)
        pub.join(timeout=60)
        assert fleet.run_until_acked(timeout=60, resend_every=1.0), f"{fleet.pending()} never acknowledged"
        # one more SIGKILL after everything was acknowledged changes nothing
        gw.kill()
        gw.start()
        time.sleep(0.5)
    finally:
        stop.set()
        fleet.stop()
        gw.kill()
    _assert_each_once(db_url, devs)
    assert _count(db_url, "quarantine") == 0, rows(db_url, "SELECT reason, detail FROM quarantine")
    assert _count(db_url, "observations") == 4 * 5 * 120


def test_graceful_sigterm_drains_and_exits_zero(broker_factory, tmp_path, db_url):
    b = broker_factory()
    cfg = write_config(tmp_path, b.url, db_url)
    devs = [SimDevice("nabd-term01")]
    register(cfg, devs)
    gw = GatewayProcess(cfg).start()
    fleet = Fleet(b.url, devs).start()
    try:
        fleet.send_new(devs[0].id, 200)
        time.sleep(0.05)
        assert gw.terminate() == 0
        assert "stopped;" in gw.log
        gw.start()
        assert fleet.run_until_acked(timeout=30, resend_every=1.0)
    finally:
        fleet.stop()
        gw.kill()
    _assert_each_once(db_url, devs)


# -- property-based fuzz: verify + store never crash and never store anything unverified ------------

_DEV = SimDevice("nabd-fuzz01", key=bytes(range(32)))
_parts = st.one_of(st.binary(max_size=64).map(jws.b64url), st.text(max_size=40).map(str.encode),
                   st.sampled_from([b"", b"=", b"eyJ", b"e30"]))
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=12)


def _valid(seq: int) -> bytes:
    return sign_reading(_DEV.key, _DEV.kid, reading(_DEV.id, seq))


@st.composite
def _messages(draw) -> tuple[str, bytes]:
    kind = draw(st.integers(0, 4))
    seq = draw(st.integers(1, 50))
    base = _valid(seq)
    if kind == 0:   # byte-level mutations of a valid message
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        raw = bytes(data)
    elif kind == 1:  # JWS parts replaced
        parts = base.split(b".")
        i = draw(st.integers(0, 2))
        parts[i] = draw(_parts)
        raw = b".".join(parts)
    elif kind == 2:  # correctly signed payloads of any shape (a buggy or hostile device with its key)
        payload = reading(_DEV.id, seq)
        for k, v in draw(st.dictionaries(st.sampled_from(sorted(payload) + ["x"]), _json_values, max_size=3)).items():
            payload[k] = v
        raw = jws.sign(_DEV.key, jws.TYP_READING, _DEV.kid, payload)
    elif kind == 3:  # signed, arbitrary header members
        header = draw(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "x"]), _json_values, max_size=4))
        si = jws.b64url(jws.dumps(header)) + b"." + base.split(b".")[1]
        raw = si + b"." + jws.b64url(jws.mac(_DEV.key, si))
    else:            # arbitrary bytes
        raw = draw(st.binary(max_size=300))
    t = draw(st.sampled_from([topic(_DEV.id), topic("nabd-other1"), "nabd/v1/dev//reading", "x"]))
    return t, raw


def _truly_valid(raw: bytes) -> bool:
    h, p, s = raw.split(b".")
    if not hmac.compare_digest(jws.mac(_DEV.key, h + b"." + p), jws.b64url_decode(s)):
        return False
    import json
    return check_values(json.loads(jws.b64url_decode(p)), time.time()) is None


@pytest.fixture
def fuzz_store(db_url, tmp_path):
    import tests.support.harness as h
    cfg = write_config(tmp_path / "fz", "mqtt://127.0.0.1:1", db_url)
    h.register(cfg, [_DEV])
    from gateway.config import load
    c = load(cfg)
    db = Database(c.database.url)
    store = Store(db, c.security.kek(), forward=True)
    conn = db.open()
    yield store, conn, db_url
    conn.close()


def test_fuzz_payload_bytes_and_jws_parts_never_crash_nor_store_unverified(fuzz_store):
    store, conn, url = fuzz_store

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_messages(), min_size=1, max_size=6))
    def run(batch):
        before = _count(url)
        now = dt.datetime.now(dt.timezone.utc)
        res = store.process(conn, [Message(t, raw, now) for t, raw in batch])
        assert len(res.verdicts) == len(batch)
        accepted = [v for v in res.verdicts if v.kind == "accept"]
        assert _count(url) == before + len(accepted)
        for (t, raw), v in zip(batch, res.verdicts, strict=True):
            if v.kind == "accept":
                assert t == topic(_DEV.id) and _truly_valid(raw)
            if v.kind == "reject":
                assert v.reason in ("oversized", "malformed", "unknown_device", "revoked", "bad_signature",
                                    "topic_mismatch", "replay", "invalid", "future_ts")
    run()
    for (raw,) in rows(url, "SELECT raw FROM readings"):
        assert _truly_valid(bytes(raw))
        got = rows(url, "SELECT sha256 FROM readings WHERE sha256 = ?", (hashlib.sha256(bytes(raw)).hexdigest(),))
        assert len(got) == 1


def test_broker_redelivers_what_was_not_committed_after_sigkill(broker_factory, tmp_path, db_url):
    """No device resend here: only the broker's redelivery of messages the killed gateway had not
    acknowledged (manual_ack after commit, persistent session) brings the rest in."""
    b = broker_factory(config=PERSISTENT)
    cfg = write_config(tmp_path, b.url, db_url)
    devs = [SimDevice(f"nabd-redeliver{i}") for i in range(4)]
    register(cfg, devs)
    gw = GatewayProcess(cfg).start()
    c = _raw_client(b.url)
    total = 3000
    try:
        infos = [c.publish(topic(d.id), d.next_reading()[1], qos=1) for _ in range(total // 4) for d in devs]
        assert wait_for(lambda: _count(db_url) > 0, timeout=20, every=0.005)
        gw.kill()
        at_kill = _count(db_url)
        for i in infos:
            i.wait_for_publish(10)
        gw.start()
        assert wait_for(lambda: _count(db_url) == total, timeout=60), (at_kill, _count(db_url))
    finally:
        c.loop_stop()
        c.disconnect()
        gw.kill()
    assert at_kill < total, "the gateway finished before the kill: the test proved nothing"
    _assert_each_once(db_url, devs)


def _store_child(pid: int) -> int | None:
    """The pid of a gateway's store process (gateway/writer.py), from /proc."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == pid and b"spawn_main" in cmd:
            return int(d)
    return None


def test_store_process_killed_midstream_is_restarted_and_loses_nothing(broker_factory, tmp_path, db_url):
    """SIGKILL the child that verifies and stores: the gateway starts a new one, hands it the
    batches not yet acknowledged, and every reading ends up stored once and acknowledged."""
    import signal

    b = broker_factory()
    cfg = write_config(tmp_path, b.url, db_url, batch_max=64)
    devs = [SimDevice(f"nabd-child{i}") for i in range(4)]
    register(cfg, devs)
    with GatewayProcess(cfg) as gw:
        child = _store_child(gw.proc.pid)
        assert child is not None, "no store process found"
        fleet = Fleet(b.url, devs).start()
        try:
            for d in devs:
                fleet.send_new(d.id, 400)
            assert wait_for(lambda: _count(db_url) > 0, timeout=20, every=0.005)
            os.kill(child, signal.SIGKILL)
            at_kill = _count(db_url)
            assert fleet.run_until_acked(timeout=60), f"{fleet.pending()} readings never acknowledged"
            assert wait_for(lambda: _store_child(gw.proc.pid) not in (None, child), timeout=10)
        finally:
            fleet.stop()
        assert "store process ended" in gw.log
    assert at_kill < 1600, "everything was stored before the kill: the test proved nothing"
    _assert_each_once(db_url, devs)
    assert all(d.bad_acks == 0 for d in devs)


def test_a_drained_backlog_is_acknowledged_message_by_message(broker_factory, tmp_path, db_url):
    """A backlog queued in the gateway's session is stored in large batches whose PUBACKs go out as
    one write per batch (gateway/ingest.py ack_many): after a graceful stop the broker must hold
    none of them unacknowledged. A client that resumes the session gets nothing redelivered."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from gateway.ingest import SUBSCRIPTION

    b = broker_factory(config=PERSISTENT)
    cfg = write_config(tmp_path, b.url, db_url)
    devs = [SimDevice(f"nabd-backlog{i}") for i in range(5)]
    register(cfg, devs)
    host, port = b.url.split("://")[1].split(":")

    def session(on_message=None) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="nabd-gateway-test", protocol=mqtt.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        connected = threading.Event()
        c.on_connect = lambda *a: connected.set()
        if on_message:
            c.on_message = on_message
        c.connect(host, int(port), clean_start=False, properties=props)
        c.loop_start()
        assert connected.wait(10)
        return c

    c = session()   # the gateway's session, subscribed and left offline: the backlog queues in it
    sub = threading.Event()
    c.on_subscribe = lambda *a: sub.set()
    c.subscribe(SUBSCRIPTION, qos=1)
    assert sub.wait(10)
    c.disconnect()
    c.loop_stop()
    pub = _raw_client(b.url)
    total = 2500
    infos = [pub.publish(topic(d.id), d.next_reading()[1], qos=1) for _ in range(total // 5) for d in devs]
    for i in infos:
        i.wait_for_publish(30)
    pub.loop_stop()
    pub.disconnect()
    with GatewayProcess(cfg):
        assert wait_for(lambda: _count(db_url) == total, timeout=60), _count(db_url)
    redelivered: list[int] = []
    c = session(lambda client, userdata, m: redelivered.append(m.mid))
    time.sleep(2.0)
    c.disconnect()
    c.loop_stop()
    assert redelivered == [], f"{len(redelivered)} messages the broker still held unacknowledged"
    _assert_each_once(db_url, devs)
