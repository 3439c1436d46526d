"""Forwarder against an independent FHIR implementation (Medplum's FHIR router and in-memory
repository, tests/gateway/fhirserver/): server down -> nothing lost; back up -> everything arrives
exactly once, even when a bundle is re-sent after a timeout; per-device order; observatory push."""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway import observatory
from gateway import recordstore as rs
from gateway.forward import Forwarder
from tests.conftest import free_port, wait_port
from tests.gateway import _records
from tests.gateway._records import UTC, add_device, make_db, payload, store_reading

db_url = _records.db_url  # fixture: SQLite and PostgreSQL

SERVER_DIR = Path(__file__).resolve().parent / "fhirserver"
T0 = dt.datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DEVS = ["nabd-0000000000a1", "nabd-0000000000a2", "nabd-0000000000a3"]


@pytest.fixture(scope="session")
def fhirserver_installed() -> Path:
    node = shutil.which("node")
    if not node:
        pytest.fail("node is not installed (make setup installs it)")
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        npm = shutil.which("npm")
        r = subprocess.run([npm, "ci" if (SERVER_DIR / "package-lock.json").exists() else "install",
                            "--no-audit", "--no-fund"], cwd=SERVER_DIR, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.fail(f"npm install in {SERVER_DIR} failed:\n{r.stderr[-2000:]}")
    return SERVER_DIR


class FhirServer:
    """The Medplum-based server on a fixed port, started and stopped by the test."""

    def __init__(self, folder: Path, port: int):
        self.folder, self.port, self.proc = folder, port, None
        self.base = f"http://127.0.0.1:{port}/fhir"

    def start(self) -> "FhirServer":
        self.proc = subprocess.Popen(["node", "server.mjs", str(self.port)], cwd=self.folder,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.port, timeout=30)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def control(self, **kw) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/__control", data=json.dumps(kw).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def search(self, rtype: str, **params) -> dict:
        url = f"{self.base}/{rtype}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def count(self, rtype: str, system: str, value: str) -> int:
        b = self.search(rtype, identifier=f"{system}|{value}", _count=100)
        return len(b.get("entry", []))


@pytest.fixture
def fhirserver(fhirserver_installed):
    s = FhirServer(fhirserver_installed, free_port())
    yield s
    s.stop()


def seeded(db_url, readings_per_device=3):
    db = make_db(db_url)
    for i, d in enumerate(DEVS):
        add_device(db, d, region=f"MA-0{i + 1}")
    seq = 0
    for k in range(readings_per_device):
        for i, d in enumerate(DEVS):
            seq += 1
            store_reading(db, payload(d, 10 + k, T0 + dt.timedelta(minutes=seq), patient=f"p-pat{i}{k % 2}"),
                          received_at=rs.now_utc() - dt.timedelta(seconds=1))
    return db


def outbox(db):
    with db.connect() as c:
        return rs.rows(c, "SELECT id, kind, partition_key, attempts, next_attempt_at, sent_at, last_error "
                          "FROM outbox ORDER BY id")


def forwarder(db, url, **kw):
    cfg = {"fhir_forward": {"enabled": True, "url": url}}
    kw.setdefault("timeout", 5.0)
    kw.setdefault("backoff_base", 0.05)
    kw.setdefault("backoff_cap", 0.2)
    return Forwarder(cfg, db, **kw)


def drain(fw, rounds=50):
    for _ in range(rounds):
        fw.run_once(rs.now_utc() + dt.timedelta(hours=1))
        if fw.pending() == 0:
            return
    raise AssertionError(f"outbox not drained: {fw.pending()} pending")


def assert_exactly_once(server, readings_per_device=3):
    for d in DEVS:
        assert server.count("Device", "urn:nabd:device", d) == 1
        for k in range(readings_per_device):
            for code in ("temp", "spo2", "hr", "pi"):
                assert server.count("Observation", "urn:nabd:obs", f"{d}/{10 + k}/{code}") == 1
    total = server.search("Observation", _count=1000)
    assert len(total["entry"]) == len(DEVS) * readings_per_device * 4
    # references resolved to the server's own Device and Patient
    o = server.search("Observation", identifier=f"urn:nabd:obs|{DEVS[0]}/10/temp")["entry"][0]["resource"]
    dev = server.search("Device", identifier=f"urn:nabd:device|{DEVS[0]}")["entry"][0]["resource"]
    assert o["device"]["reference"] == f"Device/{dev['id']}"
    pat = server.search("Patient", identifier="urn:nabd:patient|p-pat00")["entry"][0]["resource"]
    assert o["subject"]["reference"] == f"Patient/{pat['id']}"
    assert len(server.search("Patient", _count=100)["entry"]) == 6


def test_server_down_then_up_nothing_lost_nothing_duplicated(db_url, fhirserver):
    db = seeded(db_url)
    fw = forwarder(db, fhirserver.base, backoff_base=30.0, backoff_cap=60.0)
    # down: every partition head fails, nothing is marked sent, nothing deleted
    st = fw.run_once()
    assert st["sent"] == 0 and st["failed"] == len(DEVS)
    rows = outbox(db)
    assert len(rows) == 9 and all(r["sent_at"] is None for r in rows)
    heads = [r for r in rows if r["attempts"] == 1]
    assert len(heads) == len(DEVS) and all("unreachable" in r["last_error"] for r in heads)
    # backoff: an immediate second pass waits instead of hammering the server
    st = fw.run_once()
    assert st == {"sent": 0, "failed": 0, "waiting": len(DEVS)}
    # still down after the backoff: attempts grow, the rows stay
    st = fw.run_once(rs.now_utc() + dt.timedelta(hours=1))
    assert st["failed"] == len(DEVS) and {r["attempts"] for r in outbox(db) if r["attempts"]} == {2}
    from gateway.metrics import REGISTRY
    assert REGISTRY.get("nabd_forward_pending").value() == 9
    # the server comes up: everything arrives, once
    fhirserver.start()
    drain(fw)
    assert all(r["sent_at"] is not None and r["last_error"] is None for r in outbox(db))
    assert_exactly_once(fhirserver)
    # a second forwarder pass has nothing to do
    assert fw.run_once(rs.now_utc() + dt.timedelta(hours=1))["sent"] == 0
    from gateway.metrics import REGISTRY
    assert REGISTRY.get("nabd_forward_pending").value() == 0


def test_resend_after_timeout_creates_no_duplicate(db_url, fhirserver):
    db = seeded(db_url, readings_per_device=2)
    fhirserver.start()
    fhirserver.control(delay_ms=1500)         # the server applies each bundle, then answers too late
    fw = forwarder(db, fhirserver.base, timeout=0.5)
    st = fw.run_once()
    assert st["sent"] == 0 and st["failed"] == len(DEVS)
    assert all("timed out" in (r["last_error"] or "") for r in outbox(db) if r["attempts"])
    deadline = time.monotonic() + 30          # let the server finish those requests (slow when loaded)
    while fhirserver.count("Observation", "urn:nabd:obs", f"{DEVS[0]}/10/temp") == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fhirserver.count("Observation", "urn:nabd:obs", f"{DEVS[0]}/10/temp") == 1  # it did apply them
    fhirserver.control(delay_ms=0)
    fw.timeout = 5.0                          # 0.5 s made each retry time out again on a loaded machine
    drain(fw)                                 # the same bundles again: conditional creates match
    assert_exactly_once(fhirserver, readings_per_device=2)


def test_partition_order_and_isolation(db_url, fhirserver):
    db = seeded(db_url, readings_per_device=2)
    fhirserver.start()
    # the national server already holds two Observations with the identifier of DEVS[0]'s first
    # reading (someone else's bad upload): its conditional create is ambiguous and refused (412)
    dup = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "identifier": [{"system": "urn:nabd:obs", "value": f"{DEVS[0]}/10/temp"}]}
    for _ in range(2):
        req = urllib.request.Request(f"{fhirserver.base}/Observation", data=json.dumps(dup).encode(), method="POST",
                                     headers={"Content-Type": "application/fhir+json"})
        urllib.request.urlopen(req, timeout=10).close()
    fw = forwarder(db, fhirserver.base)
    for _ in range(5):
        fw.run_once(rs.now_utc() + dt.timedelta(hours=1))
    rows = outbox(db)
    blocked = [r for r in rows if r["partition_key"] == DEVS[0]]
    assert all(r["sent_at"] is None for r in blocked)              # the later reading waits its turn
    assert blocked[0]["attempts"] == 5 and "412" in blocked[0]["last_error"], blocked[0]["last_error"]
    assert blocked[1]["attempts"] == 0
    assert all(r["sent_at"] is not None for r in rows if r["partition_key"] != DEVS[0])
    assert fhirserver.count("Observation", "urn:nabd:obs", f"{DEVS[0]}/11/temp") == 0
    assert fhirserver.count("Observation", "urn:nabd:obs", f"{DEVS[1]}/11/temp") == 1


def test_backoff_grows_with_jitter_and_cap():
    fw = Forwarder({"fhir_forward": {"enabled": True, "url": "http://127.0.0.1:9/fhir"}}, None,
                   backoff_base=1.0, backoff_cap=60.0)
    for attempts, full in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (40, 60)]:
        samples = [fw.backoff(attempts) for _ in range(200)]
        assert all(full * 0.5 <= s <= full for s in samples)
        assert max(samples) - min(samples) > 0.1 * full          # jittered: instances do not sync up


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.got.append((self.headers.get("Idempotency-Key"), json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_observatory_push_and_thread_loop(db_url, fhirserver):
    db = seeded(db_url, readings_per_device=1)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    sink.got = []
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        assert observatory.enqueue_daily_push(db, T0.date(), 1)
        fhirserver.start()
        cfg = {"fhir_forward": {"enabled": True, "url": fhirserver.base},
               "observatory": {"endpoint": f"http://127.0.0.1:{sink.server_address[1]}/counts"}}
        fw = Forwarder(cfg, db, backoff_base=0.05, backoff_cap=0.2).start(interval=0.05)
        try:
            end = time.monotonic() + 30
            while fw.pending() and time.monotonic() < end:
                time.sleep(0.05)
        finally:
            fw.stop()
        assert fw.pending() == 0
        (key, body), = sink.got
        assert key == f"observatory:{T0.date()}" and body["report"]["from"] == str(T0.date())
        assert fhirserver.count("Observation", "urn:nabd:obs", f"{DEVS[2]}/10/pi") == 1
    finally:
        sink.shutdown()


def test_reading_attached_later_reaches_the_national_record_with_its_patient(db_url, fhirserver):
    """A reading taken before any assignment goes out without a subject; once a clinician attaches
    it to a patient (the console's inbox), the same Observations are updated in place on the
    national server (conditional update on their identifiers): the patient is there, nothing doubles."""
    from gateway.web import records as rec

    db = make_db(db_url)
    add_device(db, DEVS[0])
    store_reading(db, payload(DEVS[0], 10, T0, patient=None), received_at=rs.now_utc() - dt.timedelta(seconds=1))
    fhirserver.start()
    fw = forwarder(db, fhirserver.base)
    drain(fw)
    o = fhirserver.search("Observation", identifier=f"urn:nabd:obs|{DEVS[0]}/10/hr")["entry"][0]["resource"]
    assert "subject" not in o
    with db.connect() as c:
        rid = rs.rows(c, "SELECT id FROM readings")[0]["id"]
    rec.attach_reading(db, rid, "p-late01", "user:amina", forward=True)
    assert [r["sent_at"] for r in outbox(db)][-1] is None
    drain(fw)
    pat = fhirserver.search("Patient", identifier="urn:nabd:patient|p-late01")["entry"][0]["resource"]
    for code in ("temp", "spo2", "hr", "pi"):
        assert fhirserver.count("Observation", "urn:nabd:obs", f"{DEVS[0]}/10/{code}") == 1
        o = fhirserver.search("Observation", identifier=f"urn:nabd:obs|{DEVS[0]}/10/{code}")["entry"][0]["resource"]
        assert o["subject"]["reference"] == f"Patient/{pat['id']}"
    assert len(fhirserver.search("Observation", _count=100)["entry"]) == 4
    # an attach with forwarding off adds no outbox row
    store_reading(db, payload(DEVS[0], 11, T0, patient=None), received_at=rs.now_utc())
    n = len(outbox(db))
    with db.connect() as c:
        rid2 = rs.rows(c, "SELECT id FROM readings WHERE seq = 11")[0]["id"]
    rec.attach_reading(db, rid2, "p-late01", "user:amina")
    assert len(outbox(db)) == n
