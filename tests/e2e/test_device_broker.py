"""The device's communication layer (firmware/uplink.py and below, run under CPython with real
sockets) against a REAL Mosquitto configured as docs/protocol.md says: per-device password file
(mosquitto_passwd), ACL `pattern` lines, a TLS listener with certificates generated here.

The test plays the gateway with paho-mqtt (MQTT 5): it verifies every reading with CPython's hmac
(an implementation independent of the firmware's) and sends signed acks and commands."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware import config as fw_config
from firmware import jws, reading
from firmware.log import Log
from firmware.mqtt import MQTTClient
from firmware.outbox import Outbox
from firmware.seq import SeqCounter
from firmware.uplink import Uplink
from tests.firmware._commsboard import make_board

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.broker

ACL = """\
user gateway
topic read nabd/v1/dev/+/reading
topic read nabd/v1/dev/+/status
topic write nabd/v1/dev/+/ack
topic write nabd/v1/dev/+/cmd

pattern write nabd/v1/dev/%u/reading
pattern write nabd/v1/dev/%u/status
pattern read nabd/v1/dev/%u/ack
pattern read nabd/v1/dev/%u/cmd
"""
GW_PASSWORD = "gateway-secret-pw"


# --- certificates ---------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "nabd test CA"):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca, cn: str, server: bool):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# --- devices and broker ---------------------------------------------------------------------------

def device_identity(seed: int) -> dict:
    rnd = random.Random(seed)
    return {"device_id": f"nabd-240ac4{seed:06x}", "key": rnd.randbytes(32).hex(), "key_version": 1,
            "mqtt_password": rnd.randbytes(12).hex(), "wifi": {"ssid": "clinic", "psk": "wifi-psk-1"},
            "facility": "MA-04-chu-ibn-sina",
            "calibration": {"id": "cal-2026-11-02", "date": "2026-11-02", "due": "2027-11-02"}}


def start_broker(broker_factory, tmp: Path, devices: list[dict], tls: str | None = None, ca=None,
                 name="broker"):
    """Mosquitto with password file, ACL, persistence; TLS listener when ``tls`` is
    "server" (server certificate only) or "client" (client certificate required)."""
    sec = tmp / ("sec-" + name)
    sec.mkdir(parents=True, exist_ok=True)
    write_security(sec, devices, ca)
    # Mosquitto started as root drops to user "mosquitto", which cannot read pytest's private tmp dirs
    conf = (f"user root\nallow_anonymous false\npassword_file {sec}/passwd\nacl_file {sec}/acl\n"
            "persistence true\npersistence_location {dir}/\n")
    tls_conf = None
    if tls:
        tls_conf = (f"cafile {sec}/ca.pem\ncertfile {sec}/server.pem\nkeyfile {sec}/server.key\n"
                    f"require_certificate {'true' if tls == 'client' else 'false'}\n")
    return broker_factory(config=conf, tls_config=tls_conf, name=name)


def write_security(d: Path, devices: list[dict], ca) -> None:
    passwd = d / "passwd"
    passwd.write_text("")
    for user, pw in [("gateway", GW_PASSWORD)] + [(x["device_id"], x["mqtt_password"]) for x in devices]:
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True, capture_output=True)
    (d / "acl").write_text(ACL)
    if ca is not None:
        cert, key = issue(ca, "localhost", server=True)
        (d / "ca.pem").write_text(pem(ca[1]))
        (d / "server.pem").write_text(cert)
        (d / "server.key").write_text(key)


class Device:
    """The firmware's communication layer on a board whose flash is ``flash``."""

    def __init__(self, flash: Path, ident: dict, broker_url: str, ca_pem: str | None = None,
                 client_cert: tuple[str, str] | None = None, unix_time: int | None = 1795430400, **uplink_kw):
        self.board = make_board(str(flash), unix_time=unix_time, seed=int(ident["device_id"][-6:], 16))
        data = dict(ident, broker=broker_url, ca=ca_pem, client_cert=None, client_key=None)
        if client_cert:
            data["client_cert"], data["client_key"] = client_cert
        if not (flash / "config.json").exists():
            fw_config.save(self.board, data)
        self.cfg = fw_config.load(self.board)
        self.outbox = Outbox(self.board)
        self.seq = SeqCounter(self.board, floor=self.outbox.max_seq)
        self.log = Log(self.board)
        self.commands: list[tuple[str, dict]] = []
        uplink_kw.setdefault("backoff_max_ms", 2000)
        self.up = Uplink(self.board, self.cfg, self.outbox, self.seq, self.log,
                         on_command=lambda c, a: self.commands.append((c, a)), **uplink_kw)

    def measure(self) -> int:
        obs, flags = reading.observations(temp_mc=36870, spo2=97, hr=72, pi_cp=240, q_temp=970, q_ppg=910)
        ts, ok = self.up.timestamp()
        return self.up.submit(reading.build_reading(ts, ok, self.up.uptime_s(), "0.1.0", self.cfg.calibration,
                                                    "p-7Hq2xK", obs, flags))

    def run(self, until, timeout: float = 10.0, step_ms: int = 20) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.up.step()
            if until():
                return True
            self.board.clock.sleep_ms(step_ms)
            time.sleep(0.002)
        return until()


def _b64d(s: bytes) -> bytes:
    return base64.urlsafe_b64decode(s + b"=" * (-len(s) % 4))


def independent_verify(token: bytes, key: bytes, typ: str, kid: str) -> dict:
    """Verification with CPython's hmac, not the firmware's code."""
    h, p, s = token.split(b".")
    assert json.loads(_b64d(h)) == {"alg": "HS256", "kid": kid, "typ": typ}
    assert _b64d(h) == ('{"alg":"HS256","kid":"%s","typ":"%s"}' % (kid, typ)).encode()
    assert hmac.compare_digest(hmac.new(key, h + b"." + p, hashlib.sha256).digest(), _b64d(s))
    assert b"=" not in token
    return json.loads(_b64d(p))


class Gateway:
    """The test's gateway: MQTT 5 client as user `gateway`; verifies readings, acks on request."""

    def __init__(self, broker, keys: dict[str, bytes], auto_ack: bool = True):
        self.keys = keys
        self.auto_ack = auto_ack
        self.readings: list[tuple[str, dict, bytes]] = []   # (topic device, payload, raw)
        self.status: dict[str, dict] = {}
        self.raw: list[tuple[str, bytes]] = []
        self.bad: list[str] = []
        self.lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="gw-" + os.urandom(3).hex(),
                             protocol=paho.MQTTv5)
        self.c.username_pw_set("gateway", GW_PASSWORD)
        self.c.on_message = self._on_message
        self.subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(
            [("nabd/v1/dev/+/reading", 1), ("nabd/v1/dev/+/status", 1)])
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        assert self.subscribed.wait(5), "test gateway did not subscribe"

    def _on_message(self, c, u, m):
        dev, kind = m.topic.split("/")[3], m.topic.split("/")[4]
        with self.lock:
            self.raw.append((m.topic, m.payload))
        key = self.keys.get(dev)
        try:
            typ = "nabd-reading+jws" if kind == "reading" else "nabd-status+jws"
            p = independent_verify(m.payload, key, typ, dev + "/1")
            assert p["dev"] == dev
        except Exception as e:  # noqa: BLE001 - recorded and asserted on by the tests
            with self.lock:
                self.bad.append(f"{m.topic}: {e!r}")
            return
        with self.lock:
            if kind == "status":
                self.status[dev] = p
                return
            self.readings.append((dev, p, m.payload))
        if self.auto_ack:
            self.ack(dev, [p["seq"]])

    def send(self, dev: str, kind: str, payload: dict, key: bytes | None = None, typ: str | None = None,
             kid: str | None = None) -> None:
        tok = jws.sign(key or self.keys[dev], kid or dev + "/1", typ or f"nabd-{kind}+jws",
                       json.dumps(payload, separators=(",", ":")).encode())
        info = self.c.publish(f"nabd/v1/dev/{dev}/{kind}", tok, qos=1)
        if threading.current_thread() is not self.c._thread:  # never block paho's own loop thread
            info.wait_for_publish(5)

    def ack(self, dev: str, seqs: list[int], **kw) -> None:
        self.send(dev, "ack", {"v": 1, "dev": dev, "seqs": seqs, "ts": int(time.time())}, **kw)

    def seqs(self, dev: str) -> list[int]:
        with self.lock:
            return [p["seq"] for d, p, _ in self.readings if d == dev]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def ident():
    return device_identity(1)


@pytest.fixture
def plain(broker_factory, ident, tmp_path):
    other = device_identity(2)
    b = start_broker(broker_factory, tmp_path, [ident, other])
    gw = Gateway(b, {ident["device_id"]: bytes.fromhex(ident["key"]),
                     other["device_id"]: bytes.fromhex(other["key"])})
    yield b, gw, other
    gw.close()


# --- tests ------------------------------------------------------------------------------------------

def test_signed_readings_arrive_and_gateway_acks_empty_the_outbox(plain, ident, tmp_path):
    b, gw, _ = plain
    dev = Device(tmp_path / "flash", ident, b.url)
    seqs = [dev.measure() for _ in range(3)]
    assert dev.up.queued == 3 and [dev.up.reading_state(s) for s in seqs] == ["queued"] * 3
    assert dev.run(lambda: dev.up.queued == 0, timeout=10), dev.log.lines()
    assert gw.seqs(ident["device_id"]) == seqs == [1, 2, 3]
    assert gw.bad == []
    _, p, raw = gw.readings[0]
    assert p["v"] == 1 and p["dev"] == ident["device_id"] and p["patient"] == "p-7Hq2xK"
    assert p["cal"] == {"id": "cal-2026-11-02", "date": "2026-11-02"} and p["ts_ok"] is True
    assert {o["code"]: o["value"] for o in p["obs"]} == {"temp": 36.9, "spo2": 97, "hr": 72, "pi": 2.4}
    assert b" " not in _b64d(raw.split(b".")[1])  # compact JSON
    assert [dev.up.reading_state(s) for s in seqs] == ["stored"] * 3
    assert dev.up.acked == 3 and dev.up.sent == 3 and dev.up.state == "online"
    st = gw.status[ident["device_id"]]
    assert st["state"] == "online" and st["cal_due"] == "2027-11-02" and st["fw"] == "0.1.0"
    # nothing secret on flash's log
    text = "\n".join(dev.log.lines())
    for secret in (ident["key"], ident["mqtt_password"], "wifi-psk-1"):
        assert secret not in text
    # the Last Will: when the device vanishes, the broker publishes its signed retained offline status
    # (Mosquitto publishes the will at once when the socket closes without DISCONNECT)
    dev.up._client.stream.sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and gw.status[ident["device_id"]]["state"] != "offline":
        time.sleep(0.02)
    will = gw.status[ident["device_id"]]
    assert will["state"] == "offline" and will["outbox"] == 3  # signed at connect time


def test_broker_down_during_five_readings_then_back(plain, ident, tmp_path):
    b, gw, other = plain
    dev = Device(tmp_path / "flash", ident, b.url)
    dev.measure()
    assert dev.run(lambda: dev.up.queued == 0)
    gw.close()
    b.stop()
    five = []
    for _ in range(5):
        five.append(dev.measure())
        dev.run(lambda: False, timeout=0.3)
    assert dev.up.state == "offline" and dev.up.queued == 5
    assert any("connection lost" in line or "connect:" in line for line in dev.log.lines())
    b.start()
    gw2 = Gateway(b, gw.keys)
    try:
        assert dev.run(lambda: dev.up.queued == 0, timeout=20), dev.log.lines()[-5:]
        got = gw2.seqs(ident["device_id"])
        assert got == five == [2, 3, 4, 5, 6], "all five, in order, no gap"
        assert gw2.bad == [] and dev.outbox.depth == 0
    finally:
        gw2.close()


WRITER = r"""
import sys, time
sys.path[:0] = [{repo!r}, {repo!r} + '/compat']
from tests.firmware._commsboard import make_board
from firmware.outbox import Outbox
from firmware.seq import SeqCounter
from firmware import jws
board = make_board({flash!r})
box = Outbox(board, capacity=100000)
seq = SeqCounter(board, floor=box.max_seq)
key = bytes.fromhex({key!r})
print('open', box.depth, box.max_seq, box.recovered, flush=True)
while True:
    s = seq.next()
    msg = jws.sign(key, {kid!r}, 'nabd-reading+jws', b'{{"v":1,"dev":"{dev}","seq":%d,"pad":"%s"}}' % (s, b'x' * (s % 300)))
    box.append(s, msg)
    print('ok', s, flush=True)
"""


def test_sigkill_during_outbox_writes(plain, ident, tmp_path):
    """The device process is SIGKILLed at random moments while it writes its outbox, several
    times: the outbox stays readable, nothing confirmed is lost, acked records never come back,
    seq is never reused; then the device delivers exactly what is still pending."""
    b, gw, _ = plain
    flash = tmp_path / "flash"
    flash.mkdir()
    key = bytes.fromhex(ident["key"])
    kid = ident["device_id"] + "/1"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), flash=str(flash), key=ident["key"], kid=kid,
                                    dev=ident["device_id"]))
    rnd = random.Random(99)
    issued: list[int] = []
    acked: set[int] = set()
    torn_seen = 0
    for _round in range(6):
        p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=str(REPO), text=True)
        first = p.stdout.readline().split()
        assert first and first[0] == "open", p.stderr.read()
        torn_seen += int(first[3]) > 0
        # the kill lands while appends are under way (a loaded machine may be slow to start them)
        started = p.stdout.readline()
        time.sleep(rnd.uniform(0.05, 0.4))
        os.kill(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        out = started + out
        # a line cut by the kill ("ok 12" -> "ok 1" or "ok") is only complete when newline-terminated
        done = out[: out.rfind("\n") + 1]
        confirmed = [int(line.split()[1]) for line in done.splitlines() if line.startswith("ok ")]
        assert confirmed, "writer produced nothing before the kill"
        assert not issued or confirmed[0] > issued[-1], "seq reused after a kill"
        issued += confirmed
        box = Outbox(make_board(str(flash)))
        pend = box.seqs()
        assert pend == sorted(set(pend)) and not acked & set(pend), "an acked record came back"
        missing = set(issued) - acked - set(pend)
        assert not missing, f"confirmed records lost: {sorted(missing)[:5]}"
        assert all(s <= box.max_seq for s in pend) and box.max_seq >= issued[-1]
        for s, m in box.pending():  # every record is intact and verifies
            assert json.loads(jws.verify(key, m, "nabd-reading+jws", kid))["seq"] == s
        ack_now = rnd.sample(pend, k=len(pend) // 2)  # the gateway acknowledges some of them
        box.ack(ack_now)
        acked |= set(ack_now)
    # the device comes back online: exactly the unacknowledged records are delivered, in order
    dev = Device(flash, ident, b.url)
    want = dev.outbox.seqs()
    assert want and not acked & set(want)
    assert dev.run(lambda: dev.up.queued == 0, timeout=30), dev.log.lines()[-5:]
    got = gw.seqs(ident["device_id"])
    assert got == want
    assert not acked & set(got), "an acknowledged reading was sent again"
    new = dev.measure()
    assert new > max(issued)


def test_forged_ack_and_cmd_ignored_replay_refused(plain, ident, tmp_path):
    b, gw, other = plain
    d = ident["device_id"]
    dev = Device(tmp_path / "flash", ident, b.url)
    gw.auto_ack = False
    seqs = [dev.measure() for _ in range(2)]
    assert dev.run(lambda: len(gw.seqs(d)) == 2 and dev.up.sent == 2)
    bad_key = os.urandom(32)
    gw.ack(d, seqs, key=bad_key)                                 # forged: another key
    gw.ack(d, seqs, typ="nabd-cmd+jws")                          # a command's typ on the ack topic
    gw.send(d, "ack", {"v": 1, "dev": other["device_id"], "seqs": seqs})  # for another device
    gw.ack(d, seqs, kid=other["device_id"] + "/1")               # another kid
    now = dev.board.clock.unix_time()
    gw.send(d, "cmd", {"v": 1, "dev": d, "n": 1, "exp": now + 600, "cmd": "assign_patient",
                       "args": {"patient": "p-FORGED"}}, key=bad_key)  # forged command
    gw.send(d, "cmd", {"v": 1, "dev": d, "n": 1, "exp": now + 600, "cmd": "assign_patient",
                       "args": {"patient": "p-9xYz"}}, typ="nabd-ack+jws")  # command under the ack typ
    assert dev.run(lambda: dev.up.errors >= 6, timeout=10), dev.log.lines()
    assert dev.outbox.seqs() == seqs and dev.commands == []
    # the genuine ones work
    good = {"v": 1, "dev": d, "n": 1, "exp": now + 600, "cmd": "assign_patient", "args": {"patient": "p-9xYz"}}
    gw.send(d, "cmd", good)
    assert dev.run(lambda: dev.commands == [("assign_patient", {"patient": "p-9xYz"})])
    gw.send(d, "cmd", good)                                      # replayed
    gw.send(d, "cmd", dict(good, n=2, exp=now - 10))             # expired
    gw.send(d, "cmd", dict(good, n=3, cmd="reboot", args={}))    # unknown command
    assert dev.run(lambda: dev.up.errors >= 9, timeout=10), dev.log.lines()
    assert len(dev.commands) == 1
    gw.ack(d, seqs)
    assert dev.run(lambda: dev.up.queued == 0)
    assert dev.up.errors == 9
    log = "\n".join(dev.log.lines())
    for why in ("ack ignored: bad_signature", "ack ignored: wrong_typ", "ack ignored: for another device",
                "ack ignored: wrong_kid", "cmd ignored: bad_signature", "cmd ignored: wrong_typ",
                "cmd ignored: replayed n=1", "cmd ignored: expired n=2", "cmd ignored: unknown command 'reboot'"):
        assert why in log, why
    # the replay protection survives a reboot: the last accepted n is on flash
    dev2 = Device(tmp_path / "flash", ident, b.url)
    assert dev2.run(lambda: dev2.up.state == "online")
    gw.send(d, "cmd", good)
    gw.send(d, "cmd", dict(good, n=4, cmd="identify", args={"seconds": 3}))
    assert dev2.run(lambda: dev2.commands == [("identify", {"seconds": 3})])
    assert dev2.up.errors == 1


def _raw_client(dev: Device, user: str, password: str) -> MQTTClient:
    c = MQTTClient(user, user, password, 60, dev.board.clock)
    dev.board.network.connect_wifi("x", "y")
    c.connect(dev.board.network.open(dev.cfg.host, dev.cfg.port))
    return c


def test_device_cannot_publish_or_read_as_another(plain, ident, tmp_path):
    b, gw, other = plain
    a_id, b_id = ident["device_id"], other["device_id"]
    gw.auto_ack = False
    dev = Device(tmp_path / "flash", ident, b.url)
    a = _raw_client(dev, a_id, ident["mqtt_password"])
    got: list[tuple[str, bytes]] = []
    a.on_message = lambda t, m, r: got.append((t, m))
    codes = a.subscribe([(f"nabd/v1/dev/{b_id}/ack", 1), (f"nabd/v1/dev/{b_id}/cmd", 1),
                         (f"nabd/v1/dev/{a_id}/ack", 1)])
    # A signs a reading with its own key but publishes it on B's topic, then one on its own
    forged = jws.sign(bytes.fromhex(ident["key"]), a_id + "/1", "nabd-reading+jws", b'{"v":1,"seq":1}')
    a.publish(f"nabd/v1/dev/{b_id}/reading", forged, 1)
    a.publish(f"nabd/v1/dev/{b_id}/status", forged, 1, True)
    marker = jws.sign(bytes.fromhex(ident["key"]), a_id + "/1", "nabd-reading+jws", b'{"v":1,"dev":"%s","seq":7}' % a_id.encode())
    a.publish(f"nabd/v1/dev/{a_id}/reading", marker, 1)
    gw.ack(b_id, [1])       # for B: A must not see it
    gw.ack(a_id, [99])      # for A: arrives (proves A's subscription works)
    end = time.monotonic() + 5
    while time.monotonic() < end and not (got and gw.raw and any(t.endswith(a_id + "/reading") for t, _ in gw.raw)):
        a.poll()
        time.sleep(0.01)
    time.sleep(0.3)
    a.poll()
    topics = [t for t, _ in gw.raw]
    assert f"nabd/v1/dev/{a_id}/reading" in topics
    assert not any(b_id in t for t in topics), "the broker let A publish under B's topics"
    assert [t for t, _ in got] == [f"nabd/v1/dev/{a_id}/ack"], "A read B's ack or cmd"
    # Mosquitto 2.0 grants a denied MQTT 3.1.1 subscription and then delivers nothing on it
    assert codes[2] == 1 and all(c in (0x80, 1) for c in codes[:2])
    a.disconnect()
    # and A cannot log in as B with its own password
    with pytest.raises(Exception) as ei:
        _raw_client(dev, b_id, ident["mqtt_password"])
    assert "refused" in str(ei.value)


@pytest.fixture(scope="module")
def cas():
    return make_ca("nabd test CA"), make_ca("some other CA")


def test_tls_with_server_verification(broker_factory, ident, tmp_path, cas):
    ca, wrong = cas
    b = start_broker(broker_factory, tmp_path, [ident], tls="server", ca=ca)
    gw = Gateway(b, {ident["device_id"]: bytes.fromhex(ident["key"])})
    try:
        url = f"mqtts://127.0.0.1:{b.tls_port}"
        bad = Device(tmp_path / "bad", ident, url, ca_pem=pem(wrong[1]))
        bad.measure()
        assert not bad.run(lambda: bad.up.state == "online", timeout=2)
        assert any("CERTIFICATE_VERIFY_FAILED" in line for line in bad.log.lines()), bad.log.lines()
        # plain MQTT on the TLS port fails too (no silent downgrade)
        dev = Device(tmp_path / "good", ident, url, ca_pem=pem(ca[1]))
        assert dev.cfg.tls is not None and dev.cfg.tls["server_hostname"] == "127.0.0.1"
        s = dev.measure()
        assert dev.run(lambda: dev.up.queued == 0, timeout=10), dev.log.lines()
        assert gw.seqs(ident["device_id"]) == [s]
    finally:
        gw.close()


def test_tls_with_client_certificate(broker_factory, ident, tmp_path, cas):
    ca, _ = cas
    b = start_broker(broker_factory, tmp_path, [ident], tls="client", ca=ca, name="mtls")
    gw = Gateway(b, {ident["device_id"]: bytes.fromhex(ident["key"])})
    try:
        url = f"mqtts://127.0.0.1:{b.tls_port}"
        nocert = Device(tmp_path / "nocert", ident, url, ca_pem=pem(ca[1]))
        nocert.measure()
        assert not nocert.run(lambda: nocert.up.state == "online", timeout=2)
        dev = Device(tmp_path / "cert", ident, url, ca_pem=pem(ca[1]),
                     client_cert=issue(ca, ident["device_id"], server=False))
        s = dev.measure()
        assert dev.run(lambda: dev.up.queued == 0, timeout=10), dev.log.lines()
        assert gw.seqs(ident["device_id"]) == [s]
    finally:
        gw.close()
